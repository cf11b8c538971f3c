"""The network of one set of bit planes (SIG or INS), without the latent model.

Data flow for plane k, lattice step s (the codec calls the two halves
separately; :meth:`BitPlaneNet.forward` chains them for training)::

    known image before k ──plane_context──► context (B, Wp, H, W)   once per plane
                                               │ step s's positions
    plane k bits, steps < s ─space prior─► SpaceContext ─┐          (quarter grid)
    latent features (SIG) ── step s's positions ─────────┤
                                               ▼          ▼
                                          EntropyHead ──► logits (B, 6, H/2, W/2)

Causality (what lets the decoder reproduce the encoder's probabilities):
the logits of (k, s) read only the known image before plane k, the bits of
plane k at the positions of steps < s and at valid positions, and the latent.
The plane context is fed to every plane, the first one included: for plane 1
the known image is all zeros and the context is a learned per-plane bias.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from aribbps.bitplanes import NUM_STEPS, known_before, plane_bits, space_prior_quarter, step_view
from aribbps.config import ModelConfig, NetConfig
from aribbps.models.entropy_head import EntropyHead
from aribbps.models.latent import LatentModel
from aribbps.models.plane_context import PlaneContext
from aribbps.models.space_context import SpaceContext
from aribbps.models.step_parts import PartRefine, StepPart, first_step_parts, later_step_parts, pattern_mask
from aribbps.probability import bits_cost


class StepHead(nn.Module):
    """Space context (None at step 1 without sharing) + entropy head."""

    def __init__(self, space: SpaceContext | None, entropy: EntropyHead) -> None:
        super().__init__()
        self.space = space
        self.entropy = entropy


def head_key(k: int, s: int, share: bool) -> str:
    """Name of the head of plane k, step s: ``p{k}`` if shared, else ``p{k}s{s}``."""
    return f"p{k}" if share else f"p{k}s{s}"


class BitPlaneNet(nn.Module):
    """Plane context + per-plane (or per plane and step) heads.

    Args:
        cfg: the network's :class:`NetConfig`.
        dropout: dropout probability in the residual blocks (training).
    """

    latent: LatentModel | None

    def __init__(self, cfg: NetConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent = None  # the ladder VAE, on SIG nets of configs with use_latent
        self.planes: tuple[int, ...] = tuple(cfg.planes)
        self.context = PlaneContext(
            self.planes, cfg.plane_width, cfg.plane_depth, cfg.relative_inputs, dropout
        )
        self.heads = nn.ModuleDict()
        steps = (1,) if cfg.share else tuple(range(1, NUM_STEPS + 1))
        for k in self.planes:
            for s in steps:
                has_space = cfg.share or s > 1
                in_channels = cfg.plane_width + cfg.latent_channels + (cfg.space_width if has_space else 0)
                space = SpaceContext(cfg.space_width, dropout=dropout) if has_space else None
                entropy = EntropyHead(in_channels, cfg.entropy_width, cfg.entropy_depth, dropout)
                self.heads[head_key(k, s, cfg.share)] = StepHead(space, entropy)
        #: The parts the lattice steps are coded in (:mod:`aribbps.models.step_parts`).
        self.first_step_parts = first_step_parts(cfg.split_first_step, cfg.split_step_1a, cfg.split_step_1a1,
                                                 cfg.split_step_1a1a)
        self.later_step_parts = {s: later_step_parts(s, split) for s, split in
                                 ((2, cfg.split_step_2), (3, cfg.split_step_3), (4, cfg.split_step_4))}
        #: Per plane ``p{k}``: the step-1b refinement (``split_first_step``),
        #: the step-1a2 one (``split_step_1a``), the step-1a1b one
        #: (``split_step_1a1``), the step-1a1a2 one (``split_step_1a1a``) and the
        #: step-2b, 3b and 4b ones (``split_step_2``, ``_3``, ``_4``).
        self.refine: nn.ModuleDict | None = None
        self.refine_a: nn.ModuleDict | None = None
        self.refine_a1: nn.ModuleDict | None = None
        self.refine_a1a: nn.ModuleDict | None = None
        self.refine_step2: nn.ModuleDict | None = None
        self.refine_step3: nn.ModuleDict | None = None
        self.refine_step4: nn.ModuleDict | None = None
        features = cfg.plane_width + cfg.latent_channels
        for part in self.first_step_parts + sum(self.later_step_parts.values(), ()):
            if part.refine is not None:
                setattr(self, part.refine, nn.ModuleDict({
                    f"p{k}": PartRefine(features, cfg.refine_width, cfg.refine_depth, dropout)
                    for k in self.planes
                }))

    def step_parts(self, s: int) -> tuple[StepPart, ...]:
        """The parts lattice step ``s`` is coded in, in coding order; () when it is coded whole."""
        if s == 1:
            return self.first_step_parts if self.refine is not None else ()
        return self.later_step_parts.get(s, ())

    def head(self, k: int, s: int) -> StepHead:
        if k not in self.planes:
            raise ValueError(f"plane {k!r} is not modelled by this network (planes {self.planes})")
        if not 1 <= s <= NUM_STEPS:
            raise ValueError(f"lattice step must be in 1..4, got {s!r}")
        return self.heads[head_key(k, s, self.cfg.share)]  # type: ignore[return-value]

    def plane_context(self, x_known: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
        """Features of the known image before plane ``k``, once per plane.

        Args:
            x_known: (B, 3, H, W) uint8, ``known_before(x, k)``; H, W even.
                Its padding positions are read too, so they must be a
                function of what the decoder knows (e.g. edge replication
                of the known image, or zeros).
            k: the plane.
            valid: (B, 1, H, W) bool or None; unused here (accepted so the
                codec passes the same arguments everywhere).

        Returns:
            (B, plane_width, H, W) float.
        """
        _check_image(x_known)
        return self.context(x_known, k)

    def step_logits(
        self, k: int, s: int, context: Tensor, plane_bits: Tensor,
        valid: Tensor | None = None, latent: Tensor | None = None,
    ) -> Tensor:
        """Logits ``(lr, lg, lb, a, b, c)`` at step ``s``'s positions of plane ``k``.

        Args:
            context: :meth:`plane_context` of plane ``k``.
            plane_bits: (B, 3, H, W) uint8 0/1 bits of plane ``k``; only the
                positions of steps < s (and valid) are read.
            valid: (B, 1, H, W) bool; False = padding, read as unknown.
            latent: (B, latent_channels, H, W) latent features, required iff
                the config has ``latent_channels > 0``.

        Returns:
            (B, 6, H/2, W/2).
        """
        head = self.head(k, s)
        parts = [step_view(context, s)]
        parts.extend(self._latent_part(latent, s))
        if head.space is not None:
            prior_q = space_prior_quarter(plane_bits, s, valid, dtype=context.dtype)
            parts.append(head.space(prior_q, s))
        valid_q = step_view(valid, s) if valid is not None else None
        return head.entropy(torch.cat(parts, dim=1), valid_q)

    def refined_logits(
        self, k: int, part: StepPart, context: Tensor, logits: Tensor, plane_bits: Tensor,
        valid: Tensor | None = None, latent: Tensor | None = None,
    ) -> Tensor:
        """Logits of a refined part of a lattice step of plane ``k`` (split configs).

        Args:
            part: one of :meth:`step_parts` with a refinement.
            context, valid, latent: as :meth:`step_logits`.
            logits: (B, 6, H/2, W/2) the head logits of plane ``k`` at the part's step.
            plane_bits: (B, 3, H, W) uint8 bits of plane ``k``; only the
                positions of ``part.known`` on the step's grid are read.

        Returns:
            (B, 6, H/2, W/2); only the part's positions are meant to be used.
        """
        s = part.step
        if part not in self.step_parts(s) or part.refine is None or part.known is None:
            raise ValueError(f"step-{s} part {part.name!r} is not refined by this network")
        self.head(k, s)  # checks k
        features = torch.cat([step_view(context, s), *self._latent_part(latent, s)], dim=1)
        batch, _, height, width = logits.shape
        known = pattern_mask(part.known, height, width, logits.device).expand(batch, 1, height, width)
        if valid is not None:
            known = known & step_view(valid, s)
        refine = getattr(self, part.refine)[f"p{k}"]
        return refine(features, logits, step_view(plane_bits, s), known)

    def plane_costs(self, x: Tensor, valid: Tensor | None = None, latent: Tensor | None = None) -> Tensor:
        """Bits (−log2 likelihood) of each plane of ``x``, teacher forced.

        The same logits as :meth:`step_logits` (up to float rounding: planes
        and shared-head steps are batched), with unquantised probabilities
        clamped to [1e-6, 1-1e-6], summed over valid positions.

        Returns:
            (B, len(planes)) float.
        """
        _check_image(x)
        if valid is not None and valid.shape != (x.shape[0], 1, *x.shape[2:]):
            raise ValueError(f"valid must have shape (B, 1, H, W), got {tuple(valid.shape)}")
        batch = x.shape[0]
        contexts = self._batched_contexts(x).split(batch)
        costs = []
        for k, context in zip(self.planes, contexts):
            bits = plane_bits(x, k)
            if self.cfg.share:
                costs.append(self._shared_plane_cost(k, context, bits, valid, latent))
            else:
                cost = context.new_zeros(batch)
                for s in range(1, NUM_STEPS + 1):
                    logits = self.step_logits(k, s, context, bits, valid, latent)
                    cost = cost + self._step_cost(k, s, logits, context, bits, valid, latent)
                costs.append(cost)
        return torch.stack(costs, dim=1)

    def forward(self, x: Tensor, valid: Tensor | None = None, latent: Tensor | None = None) -> Tensor:
        """Total bits (B,) of this network's planes of uint8 ``x`` (B, 3, H, W)."""
        return self.plane_costs(x, valid, latent).sum(dim=1)

    def _latent_part(self, latent: Tensor | None, s: int) -> list[Tensor]:
        if self.cfg.latent_channels == 0:
            if latent is not None:
                raise ValueError("this network takes no latent features (latent_channels = 0)")
            return []
        if latent is None or latent.shape[1] != self.cfg.latent_channels:
            got = None if latent is None else tuple(latent.shape)
            raise ValueError(f"need latent features with {self.cfg.latent_channels} channels, got {got}")
        return [step_view(latent, s).to(self.context.image_in.weight.dtype)]

    def _batched_contexts(self, x: Tensor) -> Tensor:
        """Plane contexts of all planes in one batch (P*B, W, H, W), plane-major."""
        images, rels, indices = [], [], []
        for i, k in enumerate(self.planes):
            image, rel = self.context.inputs(known_before(x, k), k)
            images.append(image)
            if rel is not None:
                rels.append(rel)
            indices.append(torch.full((x.shape[0],), i, dtype=torch.long, device=x.device))
        rel_all = torch.cat(rels) if rels else None
        return self.context.features(torch.cat(images), rel_all, torch.cat(indices))

    def _shared_plane_cost(
        self, k: int, context: Tensor, bits: Tensor, valid: Tensor | None, latent: Tensor | None
    ) -> Tensor:
        """All 4 steps of a plane through its shared head in one batch."""
        head = self.head(k, 1)
        assert head.space is not None
        steps = range(1, NUM_STEPS + 1)
        first = [
            head.space.first_layer(space_prior_quarter(bits, s, valid, dtype=context.dtype), s)
            for s in steps
        ]
        parts = [torch.cat([step_view(context, s) for s in steps])]
        lat = [self._latent_part(latent, s) for s in steps]
        if lat[0]:
            parts.append(torch.cat([p[0] for p in lat]))
        parts.append(head.space.block(torch.cat(first)))
        valid_q = torch.cat([step_view(valid, s) for s in steps]) if valid is not None else None
        logits = head.entropy(torch.cat(parts, dim=1), valid_q)
        bits_q = torch.cat([step_view(bits, s) for s in steps])
        parted = [s for s in steps if self.step_parts(s)]
        if not parted:
            return bits_cost(logits, bits_q, valid_q).view(NUM_STEPS, -1).sum(dim=0)
        n = context.shape[0]
        whole = [s for s in steps if s not in parted]
        cost = context.new_zeros(n)
        if whole:
            rows = torch.cat([torch.arange((s - 1) * n, s * n, device=logits.device) for s in whole])
            whole_valid = valid_q[rows] if valid_q is not None else None
            cost = bits_cost(logits[rows], bits_q[rows], whole_valid).view(len(whole), -1).sum(dim=0)
        for s in parted:
            cost = cost + self._step_cost(k, s, logits[(s - 1) * n:s * n], context, bits, valid, latent)
        return cost

    def _step_cost(
        self, k: int, s: int, logits: Tensor, context: Tensor, bits: Tensor, valid: Tensor | None,
        latent: Tensor | None,
    ) -> Tensor:
        """Bits of step ``s`` from its head ``logits``: whole, or in its parts, the later ones refined."""
        step_bits = step_view(bits, s)
        valid_q = step_view(valid, s) if valid is not None else None
        parts = self.step_parts(s)
        if not parts:
            return bits_cost(logits, step_bits, valid_q)
        batch, _, height, width = logits.shape
        cost = logits.new_zeros(batch)
        for part in parts:
            coded = pattern_mask(part.pattern, height, width, logits.device).expand(batch, 1, height, width)
            if valid_q is not None:
                coded = coded & valid_q
            part_logits = logits if part.refine is None else self.refined_logits(
                k, part, context, logits, bits, valid, latent)
            cost = cost + bits_cost(part_logits, step_bits, coded)
        return cost


def _check_image(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a uint8 (B, 3, H, W) image, got {x.dtype} {tuple(x.shape)}")
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"H and W must be even (pad the image), got {tuple(x.shape[2:])}")


def build_nets(cfg: ModelConfig, dropout: float = 0.0) -> tuple[BitPlaneNet, BitPlaneNet]:
    """The SIG and INS networks of a model config.

    With ``cfg.use_latent`` the SIG network owns the ladder VAE as its
    ``latent`` submodule (as the paper's ``sig.pth`` holds the latent model),
    so saving and loading the SIG net carries it along.
    """
    sig = BitPlaneNet(cfg.sig_net(), dropout)
    if cfg.use_latent:
        sig.latent = LatentModel(cfg, dropout)
    return sig, BitPlaneNet(cfg.ins_net(), dropout)
