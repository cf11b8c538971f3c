"""Model configurations: the named table and JSON round trip.

A :class:`ModelConfig` describes a whole ArIB-BPS model (SIG net, INS net and
the latent model); :meth:`ModelConfig.sig_net` and :meth:`ModelConfig.ins_net`
cut out the :class:`NetConfig` of one bit-plane network.

The paper configs (``cifar10``, ``imagenet32``, ``imagenet64``,
``imagenet64_small``) follow DESIGN.md 1.8. ``tiny`` is for tests, ``small`` is
the CPU-trainable default of this project.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

#: Downsampling factor of the plane-context UNet (one level of
#: pixel-unshuffle). Images handed to the nets must be multiples of it.
PLANE_CONTEXT_MULTIPLE = 2


@dataclass(frozen=True, kw_only=True)
class StepSplits:
    """How the lattice steps are coded in parts (:mod:`aribbps.models.step_parts`).

    Both :class:`NetConfig` and :class:`ModelConfig` carry these fields; a
    model config hands its own to both of its nets.

    Attributes:
        split_first_step: code lattice step 1 in two halves, a checkerboard
            of its positions, the second refined by the first's bits.
        split_step_1a: also code the first half in two, the second refined.
        split_step_1a1: also code the first of those in two, the second refined.
        split_step_1a1a: and the first of those in two again, the second refined.
        split_step_2: code lattice step 2 in two halves, a checkerboard of its
            positions, the second refined by the first's bits.
        split_step_3, split_step_4: the same for lattice steps 3 and 4.
        refine_width, refine_depth: width and residual blocks of those refinements.
    """

    split_first_step: bool = False
    split_step_1a: bool = False
    split_step_1a1: bool = False
    split_step_1a1a: bool = False
    split_step_2: bool = False
    split_step_3: bool = False
    split_step_4: bool = False
    refine_width: int = 32
    refine_depth: int = 2

    def __post_init__(self) -> None:
        if self.split_step_1a and not self.split_first_step:
            raise ValueError("split_step_1a splits the first half of step 1: it needs split_first_step")
        if self.split_step_1a1 and not self.split_step_1a:
            raise ValueError("split_step_1a1 splits part 1a1 of step 1: it needs split_step_1a")
        if self.split_step_1a1a and not self.split_step_1a1:
            raise ValueError("split_step_1a1a splits part 1a1a of step 1: it needs split_step_1a1")
        if self.refine_width < 1:
            raise ValueError(f"refine_width must be >= 1, got {self.refine_width!r}")
        if self.refine_depth < 0:
            raise ValueError(f"refine_depth must be >= 0, got {self.refine_depth!r}")

    def step_splits(self) -> dict[str, Any]:
        """The split and refinement fields alone, e.g. to hand them to another config."""
        return {name: getattr(self, name) for name in SPLIT_FIELDS + REFINE_FIELDS}


#: The splits of the lattice steps, then the size of their refinements: the
#: fields of :class:`StepSplits`.
SPLIT_FIELDS = tuple(f.name for f in dataclasses.fields(StepSplits) if f.name.startswith("split_"))
REFINE_FIELDS = tuple(f.name for f in dataclasses.fields(StepSplits) if f.name.startswith("refine_"))


@dataclass(frozen=True)
class NetConfig(StepSplits):
    """Hyper-parameters of one bit-plane network (SIG or INS).

    Attributes:
        planes: the plane indices (1..8) this network models, in coding order.
        plane_width, plane_depth: width and number of residual blocks of the
            plane-context network.
        space_width: width of the space-context network.
        entropy_width, entropy_depth: width and residual blocks of the
            entropy heads.
        share: one head per plane serves all 4 lattice steps (True), or one
            head per (plane, step) (False).
        latent_channels: channels of the latent features given to the heads
            (0 = no latent input; the INS net).
        relative_inputs: feed the plane context the relative-neighbour
            features of :func:`aribbps.bitplanes.relative_features`.

    The lattice-step splits and their refinements are :class:`StepSplits`'.
    """

    planes: tuple[int, ...]
    plane_width: int
    plane_depth: int
    space_width: int
    entropy_width: int
    entropy_depth: int
    share: bool
    latent_channels: int = 0
    relative_inputs: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.planes or any(not 1 <= k <= 8 for k in self.planes):
            raise ValueError(f"planes must be a non-empty subset of 1..8, got {self.planes!r}")
        if list(self.planes) != sorted(set(self.planes)):
            raise ValueError(f"planes must be increasing and distinct, got {self.planes!r}")
        for name in ("plane_width", "space_width", "entropy_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("plane_depth", "entropy_depth", "latent_channels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ModelConfig(StepSplits):
    """A complete model: SIG net, INS net and latent model.

    ``pad_multiple`` is what H and W handed to the networks must be multiples
    of: the plane-context downsampling and the latent model's ``2**n_layers``.
    Leave it at 0 to get the smallest valid value; an explicit value must be
    a multiple of that.

    The latent model hands the SIG entropy heads full-resolution "latent
    features" with :attr:`latent_feature_channels` (= ``latent_width``)
    channels; ``latent_channels`` is the number of channels of each
    stochastic layer ``z``.
    """

    name: str
    share: bool
    sig_num: int
    n_layers: int
    latent_channels: int
    latent_width: int
    latent_depth: int
    sig_plane_width: int
    sig_plane_depth: int
    ins_plane_width: int
    ins_plane_depth: int
    space_width: int
    entropy_width: int
    entropy_depth: int
    ins_space_width: int
    ins_entropy_width: int
    ins_entropy_depth: int
    relative_inputs: bool = False
    pad_multiple: int = 0
    #: False = no latent model: the SIG heads get no latent features and the
    #: model codes every plane from plane and space contexts ("context" mode).
    use_latent: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.sig_num <= 7:
            raise ValueError(f"sig_num must be in 1..7, got {self.sig_num!r}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers!r}")
        need = self.min_pad_multiple()
        if self.pad_multiple == 0:
            object.__setattr__(self, "pad_multiple", need)
        elif self.pad_multiple < 0 or self.pad_multiple % need:
            raise ValueError(
                f"pad_multiple must be a positive multiple of {need} for this config, "
                f"got {self.pad_multiple!r}"
            )

    def min_pad_multiple(self) -> int:
        """Smallest H/W multiple the plane context and latent model accept."""
        return max(PLANE_CONTEXT_MULTIPLE, 2**self.n_layers)

    @property
    def latent_feature_channels(self) -> int:
        """Channels of the latent features fed to the SIG entropy heads."""
        return self.latent_width if self.use_latent else 0

    def sig_net(self) -> NetConfig:
        """Config of the network of the significant planes 1..sig_num."""
        return NetConfig(
            planes=tuple(range(1, self.sig_num + 1)),
            plane_width=self.sig_plane_width,
            plane_depth=self.sig_plane_depth,
            space_width=self.space_width,
            entropy_width=self.entropy_width,
            entropy_depth=self.entropy_depth,
            share=self.share,
            latent_channels=self.latent_feature_channels,
            relative_inputs=self.relative_inputs,
            **self.step_splits(),
        )

    def ins_net(self) -> NetConfig:
        """Config of the network of the insignificant planes sig_num+1..8."""
        return NetConfig(
            planes=tuple(range(self.sig_num + 1, 9)),
            plane_width=self.ins_plane_width,
            plane_depth=self.ins_plane_depth,
            space_width=self.ins_space_width,
            entropy_width=self.ins_entropy_width,
            entropy_depth=self.ins_entropy_depth,
            share=self.share,
            latent_channels=0,
            relative_inputs=self.relative_inputs,
            **self.step_splits(),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal configs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Build a config from a mapping; unknown or missing keys raise ValueError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(fields)}")
        required = [
            n for n, f in fields.items()
            if f.default is dataclasses.MISSING and n not in data
        ]
        if required:
            raise ValueError(f"config is missing keys {required}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = fields[name].type
            if kind in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"config key {name!r} must be a bool, got {value!r}")
            elif kind in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"config key {name!r} must be an int, got {value!r}")
            elif kind in ("str", str) and not isinstance(value, str):
                raise ValueError(f"config key {name!r} must be a string, got {value!r}")
            values[name] = value
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("config JSON must be an object")
        return cls.from_dict(data)


def _paper(
    name: str, share: bool, sig: tuple[int, int], ins: tuple[int, int],
    latent: tuple[int, int, int], space: int, entropy: tuple[int, int],
    ins_space_entropy: tuple[int, int, int] | None = None,
) -> ModelConfig:
    """One row of the DESIGN.md 1.8 table; ``None`` = "same" as SIG."""
    ins_se = ins_space_entropy or (space, *entropy)
    return ModelConfig(
        name=name, share=share, sig_num=4, n_layers=3,
        latent_width=latent[0], latent_depth=latent[1], latent_channels=latent[2],
        sig_plane_width=sig[0], sig_plane_depth=sig[1],
        ins_plane_width=ins[0], ins_plane_depth=ins[1],
        space_width=space, entropy_width=entropy[0], entropy_depth=entropy[1],
        ins_space_width=ins_se[0], ins_entropy_width=ins_se[1], ins_entropy_depth=ins_se[2],
        relative_inputs=False,
    )


#: Registry of the named configurations.
CONFIGS: dict[str, ModelConfig] = {
    "cifar10": _paper("cifar10", True, (96, 4), (128, 5), (128, 8, 3), 64, (128, 1)),
    "imagenet32": _paper("imagenet32", False, (192, 6), (256, 6), (256, 8, 3), 192, (256, 3)),
    "imagenet64": _paper(
        "imagenet64", False, (160, 3), (192, 5), (192, 8, 3), 128, (192, 2), (160, 192, 2)
    ),
    "imagenet64_small": _paper(
        "imagenet64_small", False, (96, 3), (128, 3), (128, 8, 3), 64, (128, 1)
    ),
    # Tests: a 16x16 image through all 8 planes x 4 steps in milliseconds.
    "tiny": ModelConfig(
        name="tiny", share=True, sig_num=4, n_layers=2,
        latent_channels=2, latent_width=8, latent_depth=1,
        sig_plane_width=8, sig_plane_depth=1, ins_plane_width=8, ins_plane_depth=1,
        space_width=8, entropy_width=8, entropy_depth=1,
        ins_space_width=8, ins_entropy_width=8, ins_entropy_depth=1,
        relative_inputs=True,
    ),
    # CPU-trainable default: the plane context runs once per plane, mostly at
    # half resolution; the shared per-plane heads run at quarter positions.
    "small": ModelConfig(
        name="small", share=True, sig_num=4, n_layers=3,
        latent_channels=3, latent_width=32, latent_depth=2,
        sig_plane_width=48, sig_plane_depth=3, ins_plane_width=48, ins_plane_depth=3,
        space_width=24, entropy_width=32, entropy_depth=1,
        ins_space_width=24, ins_entropy_width=32, ins_entropy_depth=1,
        relative_inputs=True,
    ),
}


# The shipped default: ``small`` with deeper residual stacks, grown from a
# trained ``small`` model by ``--init`` (aribbps/models/deepen.py).
CONFIGS["medium"] = dataclasses.replace(
    CONFIGS["small"], name="medium", sig_plane_depth=5, ins_plane_depth=5, entropy_depth=2, ins_entropy_depth=2
)
# ``medium`` with lattice step 1 split into a checkerboard of two halves, the
# second refined by the first (grown from a trained ``medium`` model).
CONFIGS["medium-split"] = dataclasses.replace(CONFIGS["medium"], name="medium-split", split_first_step=True)
# ``medium-split`` with the first half of step 1 split again (grown from a
# trained ``medium-split`` model).
CONFIGS["medium-split2"] = dataclasses.replace(CONFIGS["medium-split"], name="medium-split2", split_step_1a=True)
CONFIGS["medium-split3"] = dataclasses.replace(CONFIGS["medium-split2"], name="medium-split3", split_step_1a1=True)
CONFIGS["medium-split3-s2"] = dataclasses.replace(CONFIGS["medium-split3"], name="medium-split3-s2",
                                                  split_step_2=True)
# ``medium-split3-s2`` with steps 3 and 4 split the same way as step 2.
CONFIGS["medium-split3-s234"] = dataclasses.replace(CONFIGS["medium-split3-s2"], name="medium-split3-s234",
                                                    split_step_3=True, split_step_4=True)
CONFIGS["medium-split4-s2"] = dataclasses.replace(CONFIGS["medium-split3-s2"], name="medium-split4-s2",
                                                  split_step_1a1a=True)
# ``medium`` with a deeper INS net (planes 5-8 hold most of the bits), grown
# the same way from a trained ``medium`` model.
CONFIGS["deep-ins"] = dataclasses.replace(CONFIGS["medium"], name="deep-ins", ins_plane_depth=8, ins_entropy_depth=3)


def _without_latent(cfg: ModelConfig) -> ModelConfig:
    """A config's context-only variant: no latent model, so one level of padding suffices."""
    return dataclasses.replace(cfg, name=f"{cfg.name}-context", n_layers=1, use_latent=False, pad_multiple=0)


# Context-only variants ("context" coding mode): the test config of the
# context codec and a CPU default without latent model.
CONFIGS.update({c.name: c for c in (_without_latent(CONFIGS["tiny"]), _without_latent(CONFIGS["small"]))})


def get_config(name_or_path: str) -> ModelConfig:
    """Return a named config, or load one from a JSON file path.

    Raises:
        ValueError: the name is neither a known config nor a readable JSON
            file, or the file does not hold a valid config.
    """
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path]
    if os.path.isfile(name_or_path):
        try:
            with open(name_or_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ValueError(f"cannot read config file {name_or_path!r}: {exc}") from None
        try:
            return ModelConfig.from_json(text)
        except ValueError as exc:
            raise ValueError(f"bad config file {name_or_path!r}: {exc}") from None
    raise ValueError(
        f"unknown config {name_or_path!r}: not a known name ({', '.join(sorted(CONFIGS))}) "
        "and not a JSON file"
    )
