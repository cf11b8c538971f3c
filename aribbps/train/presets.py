"""The paper's training settings (SEED_README.md, "Training Settings").

``total_batch`` is the batch over all processes ("bs" in the table); the
per-process batch is ``total_batch / world_size``. Adam, and the learning
rate is multiplied by ``decay_rate`` every ``decay_interval`` iterations.
"""
from __future__ import annotations

from dataclasses import dataclass

MODES = ("sig", "ins", "finetune")


@dataclass(frozen=True)
class Preset:
    """One row of the table."""

    lr: float
    total_batch: int
    num_iters: int
    valid_interval: int
    decay_rate: float
    decay_interval: int
    dropout: float
    valid_num: int


def _rows(
    sig_ins: tuple[float, int, int, int, float, int, float, int],
    finetune: tuple[float, int, int, int, float, int, float, int],
) -> dict[str, Preset]:
    row = Preset(*sig_ins)
    return {"sig": row, "ins": row, "finetune": Preset(*finetune)}


#: preset name (= the config it is meant for) -> mode -> settings.
PRESETS: dict[str, dict[str, Preset]] = {
    "cifar10": _rows(
        (2e-4, 16, 740_000, 2_800, 0.99, 2_800, 0.3, 5_000),
        (1e-5, 16, 56_000, 2_800, 1.0, 2_800, 0.3, 5_000),
    ),
    "imagenet32": _rows(
        (2e-4, 128, 700_000, 10_000, 0.965, 10_000, 0.2, 50_000),
        (1e-5, 16, 100_000, 10_000, 1.0, 10_000, 0.0, 50_000),
    ),
    "imagenet64": _rows(
        (2e-4, 128, 600_000, 10_000, 0.965, 10_000, 0.0, 50_000),
        (1e-5, 16, 100_000, 10_000, 1.0, 10_000, 0.0, 50_000),
    ),
    "imagenet64_small": _rows(
        (2e-4, 128, 740_000, 2_800, 0.99, 2_800, 0.0, 50_000),
        (1e-5, 16, 130_000, 2_800, 1.0, 2_800, 0.0, 50_000),
    ),
}

#: The table's spellings, and hyphenated ones.
ALIASES: dict[str, str] = {
    "in32": "imagenet32",
    "in64": "imagenet64",
    "in64(small)": "imagenet64_small",
    "in64_small": "imagenet64_small",
    "in64-small": "imagenet64_small",
    "imagenet64-small": "imagenet64_small",
}


def preset_name(name: str) -> str:
    """Canonical preset name of ``name`` (case-insensitive, aliases accepted)."""
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        known = ", ".join(sorted(PRESETS)) + " (or IN32, IN64, IN64(small))"
        raise ValueError(f"unknown preset {name!r}; known presets: {known}")
    return key


def get_preset(name: str, mode: str) -> Preset:
    """The settings of preset ``name`` for ``mode`` (sig, ins or finetune)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return PRESETS[preset_name(name)][mode]
