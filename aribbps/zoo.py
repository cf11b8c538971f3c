"""Which model to use: the shipped default, or weights the user names.

The model identity written into every ``.arib`` file (config name + sha256 of
the weights) comes from here, so that a decoder can refuse the wrong model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from aribbps.codec import PlaneNets
from aribbps.config import ModelConfig
from aribbps.errors import ModelLoadError
from aribbps.weights import load_model

#: The weights used when no ``--model`` is given.
DEFAULT_MODEL = Path(__file__).parent / "pretrained" / "default.safetensors"


@dataclass
class LoadedModel:
    """A model ready for coding.

    Attributes:
        cfg: its configuration (``cfg.name`` is the stored model name).
        nets: the SIG and INS networks, in eval mode, on ``device``.
        weights_hash: sha256 of the weights, 32 raw bytes.
        source: where it was loaded from.
        device: where the networks live.
    """

    cfg: ModelConfig
    nets: PlaneNets
    weights_hash: bytes
    source: str
    device: torch.device

    @property
    def name(self) -> str:
        return self.cfg.name


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" picks CUDA when available; "cuda" without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but no CUDA device is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"unsupported device {str(device)!r}: use 'cpu' or 'cuda'")
    return dev


def load(model: str | os.PathLike[str] | None = None, device: str | torch.device | None = "cpu",
         config: str | None = None) -> LoadedModel:
    """Loads a model file or folder, or the default model when ``model`` is None.

    Args:
        model: a ``.safetensors`` file written by :func:`aribbps.weights.save_model`,
            or a folder holding one, or a folder with ``sig.pth``/``ins.pth``.
        device: "cpu", "cuda" or None/"auto".
        config: config name or JSON path, needed for ``.pth`` folders without
            ``config.json``.

    Raises:
        ModelLoadError: no such model, or it cannot be loaded.
    """
    dev = resolve_device(device)
    if model is None:
        if not DEFAULT_MODEL.is_file():
            raise ModelLoadError(f"the default model is missing ({DEFAULT_MODEL}); pass --model PATH")
        source = DEFAULT_MODEL
    else:
        source = Path(model)
    cfg, sig, ins, digest = load_model(source, config, device=dev)
    return LoadedModel(cfg, PlaneNets(sig.eval(), ins.eval()), bytes.fromhex(digest), str(source), dev)
