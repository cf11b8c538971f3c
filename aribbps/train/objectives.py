"""What a training run minimises: one objective per ``--mode``.

An :class:`Objective` owns the networks of a model, says which of them it
trains, and turns a batch of uint8 images into a loss in bits per sub-pixel
(DESIGN.md 1.7). The trainer knows nothing else about the model, so new
objectives (``finetune``) plug in here:

* :class:`InsObjective`: the INS net on planes ``sig_num+1..8``;
* :class:`SigObjective`: the SIG net on planes ``1..sig_num``; with a
  latent config (``use_latent=True``) also its ladder VAE (``sig.latent``):
  plane bits given a reparameterised latent sample, plus the latent cost
  ``Σ −log2 p(z) + log2 q(z|x)`` (the negative ELBO).

* :class:`FinetuneObjective` (``finetune``): the SIG net and its latent
  model with the discretisation single-image coding uses: each image's
  latents are discretised at the ``qp`` the codec will give it (a qp
  list from ``generate-finetune``, :mod:`aribbps.train.finetune`, looked
  up by image name; in training relaxed with noise of one bin width), at a cost of
  ``qp`` bits per dimension minus what the posterior gives back.

Objectives see the batch's item names (``loss(x, names)``); only
``finetune`` uses them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aribbps.config import ModelConfig
from aribbps.errors import AribError
from aribbps.models import BitPlaneNet, EntropyHead
from aribbps.train.finetune import QpList


class ModeUnavailable(AribError, ValueError):
    """A training mode that cannot run (yet) with this config."""


class Objective(ABC):
    """A training objective over the nets of one model.

    Args:
        cfg: the model config.
        sig, ins: the two bit-plane nets (built with the training dropout).
            The nets not in :meth:`trained` are frozen: no gradients, eval
            mode (no dropout), so DDP and the optimizer see only the
            trained ones.
    """

    mode: str = ""

    def __init__(self, cfg: ModelConfig, sig: BitPlaneNet, ins: BitPlaneNet) -> None:
        self.cfg = cfg
        self.sig = sig
        self.ins = ins
        trained = set(map(id, self.trained().values()))
        for module in self.modules().values():
            if id(module) not in trained:
                module.requires_grad_(False)
                module.eval()

    def modules(self) -> dict[str, nn.Module]:
        """Every module a checkpoint keeps, by name (trained or frozen)."""
        return {"sig": self.sig, "ins": self.ins}

    @abstractmethod
    def trained(self) -> dict[str, nn.Module]:
        """The modules the optimizer updates, by name (a subset of :meth:`modules`)."""

    def nets(self) -> tuple[BitPlaneNet, BitPlaneNet]:
        """(sig, ins): what an exported model file holds."""
        return self.sig, self.ins

    def check_names(self, names: Sequence[str]) -> None:
        """Fail before training if some of the data set's images cannot be used (default: all can)."""

    @abstractmethod
    def loss(self, x: Tensor, names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a batch.

        Args:
            x: uint8 (B, 3, H, W), H and W multiples of ``cfg.pad_multiple``.
            names: the B item names (:mod:`aribbps.datasets`); needed by
                objectives that look images up (finetune), ignored by others.

        Returns:
            ``(bpsp, metrics)``: the mean bits per sub-pixel of the batch
            (a differentiable scalar) and detached scalar metrics (always
            ``bpsp``, plus per-plane ``bpsp_p<k>`` and, with a latent model,
            ``bpsp_latent``), which the trainer averages over steps and
            processes.
        """


def _plane_loss(
    net: BitPlaneNet, x: Tensor, latent: Tensor | None = None, latent_bits: Tensor | None = None,
    latent_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Teacher-forced bits of ``net``'s planes (+ latent bits), per sub-pixel of ``x``.

    The loss weighs the latent bits by ``latent_weight`` (KL warm-up); the
    ``bpsp`` metric is always the true cost (weight 1).
    """
    costs = net.plane_costs(x, latent=latent).float()  # (B, P)
    per_plane = costs.sum(dim=0) / x.numel()
    bpsp = per_plane.sum()
    metrics = {}
    for k, value in zip(net.planes, per_plane.detach().unbind()):
        metrics[f"bpsp_p{k}"] = value
    loss = bpsp
    if latent_bits is not None:
        latent_bpsp = latent_bits.float().sum() / x.numel()
        loss = bpsp + latent_weight * latent_bpsp
        bpsp = bpsp + latent_bpsp
        metrics["bpsp_latent"] = latent_bpsp.detach()
    metrics["bpsp"] = bpsp.detach()
    return loss, metrics


class InsObjective(Objective):
    """``--mode ins``: the INS net alone; SIG is frozen."""

    mode = "ins"

    def trained(self) -> dict[str, nn.Module]:
        return {"ins": self.ins}

    def loss(self, x: Tensor, names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return _plane_loss(self.ins, x)


class SigObjective(Objective):
    """``--mode sig``: the SIG net (and its latent model, if the config has one); INS is frozen."""

    mode = "sig"

    def __init__(self, cfg: ModelConfig, sig: BitPlaneNet, ins: BitPlaneNet) -> None:
        if cfg.use_latent and sig.latent is None:
            raise ValueError(f"config {cfg.name!r} has use_latent=true but the SIG net has no latent model")
        super().__init__(cfg, sig, ins)
        #: Weight of the latent bits in the loss (the trainer's KL warm-up
        #: raises it to 1); the reported ``bpsp`` always counts them fully.
        self.latent_weight = 1.0

    def trained(self) -> dict[str, nn.Module]:
        return {"sig": self.sig}  # sig.latent is a submodule: trained and saved with it

    def loss(self, x: Tensor, names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if self.sig.latent is None:
            return _plane_loss(self.sig, x)
        features, latent_bits = self.sig.latent(x)  # it zeroes the insignificant bits itself
        return _plane_loss(self.sig, x, features, latent_bits, self.latent_weight)


class FinetuneObjective(SigObjective):
    """``--mode finetune``: SIG and its latent model with discretised latents (DESIGN.md 1.7).

    Each image's latents are sampled from the posterior and discretised
    to their equal-prior-mass bin at the image's ``qp`` (the bin centre in
    validation, the sample plus noise of one bin width in training), and cost
    ``Σ qp + log2 Q_q(bin)`` bits: what single-image bits-back coding pays
    (``LatentModel.forward`` with ``qp``). The plane bits are those of
    :class:`SigObjective`. INS is frozen (it made the qp list: its bits are the initial bits).

    Args:
        cfg, sig, ins: as for :class:`Objective` (``cfg.use_latent`` must be true).
        qp: the qp list (image name -> qp), from ``generate-finetune``.
    """

    mode = "finetune"

    def __init__(self, cfg: ModelConfig, sig: BitPlaneNet, ins: BitPlaneNet, qp: QpList) -> None:
        if sig.latent is None:
            raise ModeUnavailable(f"config {cfg.name!r} has no latent model to fine-tune (use_latent=false)")
        super().__init__(cfg, sig, ins)
        self.qp = qp

    def check_names(self, names: Sequence[str]) -> None:
        self.qp.check_covers(list(names))

    def qp_of(self, names: Sequence[str], device: torch.device) -> Tensor:
        """(B,) int64 qp of the named images."""
        return torch.tensor(self.qp.lookup(list(names)), dtype=torch.int64, device=device)

    def loss(self, x: Tensor, names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if names is None or len(names) != x.shape[0]:
            raise ValueError("the finetune objective needs the name of every image of the batch (its qp)")
        assert self.sig.latent is not None
        features, latent_bits = self.sig.latent(x, qp=self.qp_of(names, x.device))
        return _plane_loss(self.sig, x, features, latent_bits, self.latent_weight)


#: Objectives by mode (``finetune`` also needs a qp list: :func:`build_objective`).
OBJECTIVES: dict[str, type[Objective]] = {"sig": SigObjective, "ins": InsObjective, "finetune": FinetuneObjective}

NEEDS_QP_LIST = (
    "--mode finetune needs per-image qp lists from 'generate-finetune': run "
    "'python -m aribbps.train generate-finetune --model MODEL --data_dir DIR ...' and pass --qp_path"
)


def build_objective(mode: str, cfg: ModelConfig, sig: BitPlaneNet, ins: BitPlaneNet,
                    qp: QpList | None = None) -> Objective:
    """The objective of ``mode`` over ``sig`` and ``ins`` (from :func:`build_nets`).

    Args:
        qp: the qp list; required by ``finetune``, not used by the others.

    Raises:
        ModeUnavailable: ``finetune`` without a latent model or without ``qp``.
        ValueError: an unknown mode.
    """
    check_mode_available(mode, cfg)
    if mode not in OBJECTIVES:
        raise ValueError(f"unknown mode {mode!r}; choose one of sig, ins, finetune")
    if mode == "finetune":
        if qp is None:
            raise ModeUnavailable(NEEDS_QP_LIST)
        return FinetuneObjective(cfg, sig, ins, qp)
    return OBJECTIVES[mode](cfg, sig, ins)


def check_mode_available(mode: str, cfg: ModelConfig) -> None:
    """Fail early (before data is read) for a mode that cannot be trained with this config."""
    if mode == "finetune" and not cfg.use_latent:
        raise ModeUnavailable(
            f"--mode finetune is not available: config {cfg.name!r} has no latent model to fine-tune "
            "(use_latent=false)"
        )


def keep_logits_float32(net: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Make every entropy head return float32 logits (for mixed precision).

    Under autocast the convolutions run in bfloat16, but the probability
    maths after the heads (coupling sums, sigmoid, the [1e-6, 1-1e-6]
    clamp, log2) must stay float32: in bfloat16 ``1 - 1e-6`` rounds to 1 and
    a confident wrong bit costs infinitely many bits. Returns the hook
    handles.
    """
    handles = []
    for module in net.modules():
        if isinstance(module, EntropyHead):
            handles.append(module.register_forward_hook(lambda _m, _i, out: out.float()))
    return handles
