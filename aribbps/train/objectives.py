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

``finetune`` (SIG with straight-through discretised latents at each image's
``qp``) needs the per-image qp lists of ``generate-finetune``, which does
not exist yet; :func:`build_objective` refuses it with that reason.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from aribbps.config import ModelConfig
from aribbps.errors import AribError
from aribbps.models import BitPlaneNet, EntropyHead


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

    @abstractmethod
    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a batch.

        Args:
            x: uint8 (B, 3, H, W), H and W multiples of ``cfg.pad_multiple``.

        Returns:
            ``(bpsp, metrics)``: the mean bits per sub-pixel of the batch
            (a differentiable scalar) and detached scalar metrics (always
            ``bpsp``, plus per-plane ``bpsp_p<k>`` and, with a latent model,
            ``bpsp_latent``), which the trainer averages over steps and
            processes.
        """


def _plane_loss(
    net: BitPlaneNet, x: Tensor, latent: Tensor | None = None, latent_bits: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Teacher-forced bits of ``net``'s planes (+ latent bits), per sub-pixel of ``x``."""
    costs = net.plane_costs(x, latent=latent).float()  # (B, P)
    per_plane = costs.sum(dim=0) / x.numel()
    bpsp = per_plane.sum()
    metrics = {}
    for k, value in zip(net.planes, per_plane.detach().unbind()):
        metrics[f"bpsp_p{k}"] = value
    if latent_bits is not None:
        latent_bpsp = latent_bits.float().sum() / x.numel()
        bpsp = bpsp + latent_bpsp
        metrics["bpsp_latent"] = latent_bpsp.detach()
    metrics["bpsp"] = bpsp.detach()
    return bpsp, metrics


class InsObjective(Objective):
    """``--mode ins``: the INS net alone; SIG is frozen."""

    mode = "ins"

    def trained(self) -> dict[str, nn.Module]:
        return {"ins": self.ins}

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return _plane_loss(self.ins, x)


class SigObjective(Objective):
    """``--mode sig``: the SIG net (and its latent model, if the config has one); INS is frozen."""

    mode = "sig"

    def __init__(self, cfg: ModelConfig, sig: BitPlaneNet, ins: BitPlaneNet) -> None:
        if cfg.use_latent and sig.latent is None:
            raise ValueError(f"config {cfg.name!r} has use_latent=true but the SIG net has no latent model")
        super().__init__(cfg, sig, ins)

    def trained(self) -> dict[str, nn.Module]:
        return {"sig": self.sig}  # sig.latent is a submodule: trained and saved with it

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if self.sig.latent is None:
            return _plane_loss(self.sig, x)
        features, latent_bits = self.sig.latent(x)  # it zeroes the insignificant bits itself
        return _plane_loss(self.sig, x, features, latent_bits)


#: Objectives by mode. ``finetune`` has none yet (see :func:`build_objective`).
OBJECTIVES: dict[str, type[Objective]] = {"sig": SigObjective, "ins": InsObjective}


def build_objective(mode: str, cfg: ModelConfig, sig: BitPlaneNet, ins: BitPlaneNet) -> Objective:
    """The objective of ``mode`` over ``sig`` and ``ins`` (from :func:`build_nets`).

    Raises:
        ModeUnavailable: ``finetune`` (see the module docstring).
        ValueError: an unknown mode.
    """
    check_mode_available(mode, cfg)
    if mode not in OBJECTIVES:
        raise ValueError(f"unknown mode {mode!r}; choose one of sig, ins, finetune")
    return OBJECTIVES[mode](cfg, sig, ins)


def check_mode_available(mode: str, cfg: ModelConfig) -> None:
    """Fail early (before data is read) for a mode that cannot be trained yet."""
    if mode == "finetune":
        what = (
            f"config {cfg.name!r} has no latent model to fine-tune (use_latent=false)"
            if not cfg.use_latent else
            "it needs per-image qp lists from 'generate-finetune', which aribbps does not implement yet"
        )
        raise ModeUnavailable(f"--mode finetune is not available: {what}")


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
