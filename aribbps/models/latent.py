"""The latent model of the SIG network: a ladder VAE over the significant planes.

DESIGN.md 1.4-1.7. The model sees only the significant-plane image
``x_sig`` (``x`` with its ``8 - sig_num`` low bits zeroed) and gives the SIG
entropy heads full-resolution "latent features". ``n_layers`` stochastic
layers ``z_l`` (index 0 = bottom, at H/2; index n-1 = top, at H/2**n), each
with ``latent_channels`` channels; posterior and prior are logistic with
scale 1::

    x_sig (3, H×W) ─conv3x3─► (W, H×W)
       bottom-up │  per layer l = 0..n-1: pixel-unshuffle ×2, 1x1 conv,
                 │  depth × ResBlock                    ──► f_l (W, H/2^(l+1))
                 ▼
    top-down, l = n-1 .. 0 (top first):
       h_l (W)  ── none at the top ──────────┐
         ├─ prior head ─────► mu_p_l  (C)    │  mu_p = 0 at the top
         ├─ [h_l, f_l] ─ posterior head ─► mu_q_l (C)   (only f_l at the top)
         │                                   │
         │       z_l = sample(l, mu_p_l, mu_q_l)         (caller's callback)
         ▼                                   │
       h_l + 1x1(z_l) ─ depth × ResBlock ─ 1x1 to 4W ─ pixel-shuffle ×2 ─► h_{l-1}
                                             (W, twice the resolution)
    h_{-1} (W, H×W) ─ ResBlock ─ act ─ conv3x3 ─► latent features (W, H×W)

Every layer has its own weights (the block *design* is shared across
layers, not the parameters: the layers see different scales). There is no
normalisation layer, so every output depends only on its own image (no
batch coupling) and residual blocks start as the identity.

Three verbs, as in CompressAI: :meth:`LatentModel.forward` for training
(latent features + latent bits), and :meth:`LatentModel.bottom_up` /
:meth:`LatentModel.top_down`, pure functions of their tensor inputs that the
codec drives with its own sampling callback (encoder: bins popped from the
posterior; decoder pass 1: bins popped under the uniform prior, no
posterior; decoder pass 2: posterior means given the known ``z`` to push
the bins back). Use the model in ``eval()`` mode for coding (dropout off).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aribbps.bitplanes import known_before, known_to_float
from aribbps.config import ModelConfig
from aribbps.latent_math import bin_values, bins_of, posterior_bin_log2_mass
from aribbps.models.layers import ResBlock, activation, conv1x1, conv3x3

__all__ = ["LatentModel", "LatentOutput", "SampleFn", "discretised_sample_cost", "logistic_log2_density"]

#: The callback of :meth:`LatentModel.top_down`:
#: ``sample(layer_index, mu_p, mu_q) -> z``, with ``mu_q`` None when the
#: top-down pass has no bottom-up features (the decoder's first pass).
SampleFn = Callable[[int, Tensor, "Tensor | None"], Tensor]

#: Uniform noise of the reparameterised sample is drawn from (eps, 1 - eps).
_NOISE_EPS = 1e-5


def logistic_log2_density(x: Tensor) -> Tensor:
    """``log2`` of the standard logistic density at ``x``: ``(log σ(x) + log σ(−x)) / ln 2``."""
    return (F.logsigmoid(x) + F.logsigmoid(-x)) / math.log(2.0)


def discretised_sample_cost(
    z: Tensor, mu_p: Tensor, mu_q: Tensor, qp: Tensor | None, relax: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The value fed on, and the bits paid for, one layer's posterior sample ``z``.

    ``qp`` None: ``z`` itself and the continuous single-sample cost
    ``log2 q(z) − log2 p(z)``. ``qp`` (B,) given (finetune): the bits-back
    cost of ``z``'s bin, ``qp + log2 Q_q(bin)``, with the continuous cost's
    gradient; the value fed on is the bin's centre (what the decoder will
    see) when ``relax`` is None, else the training relaxation of it:
    ``z``'s position in prior-CDF units ``c = K·σ(z − mu_p)`` plus the
    uniform noise ``relax`` in ``[−0.5, 0.5)``, kept within the outer bin
    centres. See :meth:`LatentModel.forward` for why.

    Returns:
        ``(z_out, bits, bins)``: bits per dimension (shape of ``z``); bins
        None without ``qp``.
    """
    continuous = logistic_log2_density(z - mu_q) - logistic_log2_density(z - mu_p)
    if qp is None:
        return z, continuous, None
    bins = bins_of(z, mu_p, qp)
    per_sample = (-1,) + (1,) * (z.dim() - 1)
    paid = qp.view(per_sample).to(torch.float32) + posterior_bin_log2_mass(bins, mu_q - mu_p, qp)
    bits = paid.detach() + (continuous - continuous.detach())
    if relax is None:
        return bin_values(bins, mu_p, qp), bits, bins
    kf = torch.bitwise_left_shift(torch.ones_like(qp), qp).to(torch.float32).view(per_sample)
    c = kf * torch.sigmoid(z - mu_p) + relax
    c = torch.minimum(torch.clamp_min(c, 0.5), kf - 0.5)
    return mu_p + torch.log(c) - torch.log(kf - c), bits, bins


class LatentOutput(NamedTuple):
    """What :meth:`LatentModel.forward_details` returns.

    Lists are indexed by layer (0 = bottom, H/2); tensors are float32.

    Attributes:
        features: (B, latent_feature_channels, H, W) latent features.
        latent_bits: (B,) latent cost in bits (sum over layers).
        layer_bits: per layer, (B,) bits of that layer.
        z: per layer, (B, C, h, w) the sample fed to the top-down pass (in
            finetune mode the bin centre, or its relaxation in training
            mode: :func:`discretised_sample_cost`).
        mu_p: per layer, prior means (exactly zero at the top layer).
        mu_q: per layer, posterior means.
        bins: per layer, int64 bins of ``z`` at the sample's ``qp``
            (finetune mode), else None.
    """

    features: Tensor
    latent_bits: Tensor
    layer_bits: list[Tensor]
    z: list[Tensor]
    mu_p: list[Tensor]
    mu_q: list[Tensor]
    bins: list[Tensor] | None


class _BottomUpBlock(nn.Module):
    """Squeeze (space-to-depth ×2), 1x1 conv back to W, ``depth`` residual blocks."""

    def __init__(self, width: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.squeeze = conv1x1(4 * width, width)
        self.blocks = nn.ModuleList(ResBlock(width, dropout=dropout) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        h = self.squeeze(F.pixel_unshuffle(x, 2))
        for block in self.blocks:
            h = block(h)
        return h


class _MeanHead(nn.Module):
    """Means of one logistic: conv3x3 to W, a residual block, act, conv3x3 to C."""

    def __init__(self, in_channels: int, width: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.inp = conv3x3(in_channels, width)
        self.block = ResBlock(width, dropout=dropout)
        self.act = activation()
        self.out = conv3x3(width, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.block(self.inp(x))))


class _TopDownBlock(nn.Module):
    """Maps (z, top-down input) to the next layer's input, upsampled ×2.

    ``h + 1x1(z)`` (only ``1x1(z)`` at the top), ``depth`` residual blocks,
    act, 1x1 conv to 4W and depth-to-space.
    """

    def __init__(self, width: int, channels: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.z_in = conv1x1(channels, width)
        self.blocks = nn.ModuleList(ResBlock(width, dropout=dropout) for _ in range(depth))
        self.act = activation()
        self.expand = conv1x1(width, 4 * width)

    def forward(self, z: Tensor, h: Tensor | None) -> Tensor:
        g = self.z_in(z)
        if h is not None:
            g = h + g
        for block in self.blocks:
            g = block(g)
        return F.pixel_shuffle(self.expand(self.act(g)), 2)


class LatentModel(nn.Module):
    """Ladder VAE of ArIB-BPS (Zhang et al., "Learned Lossless Image
    Compression based on Bit Plane Slicing", CVPR 2024), DESIGN.md 1.4.

    See the module docstring for the data flow. Layer index 0 is the bottom
    layer (H/2), ``n_layers - 1`` the top; the top-down pass visits them from
    the top down.

    Args:
        cfg: the model config (``use_latent`` must be true); uses
            ``n_layers``, ``latent_channels`` (channels of each ``z``),
            ``latent_width`` (feature width W), ``latent_depth`` (residual
            blocks per bottom-up / top-down layer), ``sig_num`` and
            ``latent_feature_channels`` (output channels).
        dropout: dropout probability in the residual blocks (training).

    Raises:
        ValueError: the config has no latent model (``use_latent=False``)
            or a zero width or channel count.
    """

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        if not cfg.use_latent:
            raise ValueError(f"config {cfg.name!r} has use_latent=false: it has no latent model")
        if cfg.latent_width < 1 or cfg.latent_channels < 1:
            raise ValueError(
                f"latent_width and latent_channels must be >= 1, got {cfg.latent_width!r} "
                f"and {cfg.latent_channels!r}"
            )
        if cfg.latent_depth < 0:
            raise ValueError(f"latent_depth must be >= 0, got {cfg.latent_depth!r}")
        self.cfg = cfg
        self.n_layers = cfg.n_layers
        self.channels = cfg.latent_channels
        width = cfg.latent_width
        depth = cfg.latent_depth
        n = cfg.n_layers
        self.head = conv3x3(3, width)
        self.bottom_up_blocks = nn.ModuleList(_BottomUpBlock(width, depth, dropout) for _ in range(n))
        # Posterior heads: [h, f] (2W) below the top, f alone (W) at the top.
        self.posterior_heads = nn.ModuleList(
            _MeanHead(width if l == n - 1 else 2 * width, width, cfg.latent_channels, dropout)
            for l in range(n)
        )
        # Prior heads for layers 0..n-2; the top prior is the fixed Logistic(0, 1).
        self.prior_heads = nn.ModuleList(
            _MeanHead(width, width, cfg.latent_channels, dropout) for _ in range(n - 1)
        )
        self.top_down_blocks = nn.ModuleList(
            _TopDownBlock(width, cfg.latent_channels, depth, dropout) for _ in range(n)
        )
        self.final_block = ResBlock(width, dropout=dropout)
        self.final_act = activation()
        self.final_out = conv3x3(width, cfg.latent_feature_channels)

    # -- shapes -------------------------------------------------------------
    def _check_size(self, height: int, width: int) -> None:
        m = 2**self.n_layers
        if height < m or width < m or height % m or width % m:
            raise ValueError(
                f"image size {height}x{width} is not a positive multiple of {m} "
                f"(2**n_layers); pad it to a multiple of cfg.pad_multiple={self.cfg.pad_multiple}"
            )

    def layer_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Shapes ``(C, h, w)`` of the latent layers of an ``height × width`` image.

        Args:
            height, width: image size, multiples of ``2**n_layers``.

        Returns:
            One ``(latent_channels, height >> (l+1), width >> (l+1))`` per
            layer ``l``; index 0 = bottom layer (H/2).

        Raises:
            ValueError: a size that is not a multiple of ``2**n_layers``.
        """
        self._check_size(height, width)
        return [
            (self.channels, height >> (l + 1), width >> (l + 1)) for l in range(self.n_layers)
        ]

    def latent_dims(self, height: int, width: int) -> int:
        """Number of latent dimensions (coded symbols) of one image: Σ C·h·w."""
        return sum(c * h * w for c, h, w in self.layer_shapes(height, width))

    # -- bottom-up ----------------------------------------------------------
    def bottom_up(self, x_sig: Tensor) -> list[Tensor]:
        """Bottom-up features of the significant-plane image.

        Args:
            x_sig: uint8 (B, 3, H, W). Bits below the significant planes
                are zeroed here (``known_before(x, sig_num + 1)``), so the
                full image may be passed; H, W multiples of ``2**n_layers``.

        Returns:
            Per layer, (B, latent_width, H >> (l+1), W >> (l+1)); index 0 =
            bottom layer.

        Raises:
            ValueError: wrong dtype, channel count or size.
        """
        if x_sig.dtype != torch.uint8 or x_sig.ndim != 4 or x_sig.shape[1] != 3:
            raise ValueError(
                f"x_sig must be a uint8 tensor (B, 3, H, W), got {x_sig.dtype} {tuple(x_sig.shape)}"
            )
        self._check_size(x_sig.shape[2], x_sig.shape[3])
        known = known_before(x_sig, self.cfg.sig_num + 1)
        h = self.head(known_to_float(known).to(self.head.weight.dtype))
        feats = []
        for block in self.bottom_up_blocks:
            h = block(h)
            feats.append(h)
        return feats

    # -- top-down -----------------------------------------------------------
    def top_down(
        self, sample: SampleFn, bottom_up_feats: list[Tensor] | None,
        batch: int, height: int, width: int,
    ) -> Tensor:
        """Top-down pass, with the caller choosing every ``z``.

        For ``l = n_layers-1, ..., 0`` it computes the prior means ``mu_p``
        (all zeros at the top) and, given bottom-up features, the posterior
        means ``mu_q``, calls ``z = sample(l, mu_p, mu_q)`` and feeds ``z``
        on. ``mu_p``/``mu_q`` are float32 ``(batch, C, h, w)`` with ``(C, h,
        w) = layer_shapes(height, width)[l]``; ``mu_q`` is None when
        ``bottom_up_feats`` is None. ``mu_p`` depends only on the ``z`` of
        the layers above, ``mu_q`` also on the bottom-up features.

        Args:
            sample: the callback; must return ``z`` of ``mu_p``'s shape.
            bottom_up_feats: :meth:`bottom_up`'s output, or None (no
                posterior: the decoder's first pass).
            batch, height, width: batch size and image size (checked
                against ``bottom_up_feats`` when given).

        Returns:
            float32 latent features (batch, latent_feature_channels, height, width).

        Raises:
            ValueError: a size that is not a multiple of ``2**n_layers``,
                features that do not match, or a ``z`` of the wrong shape.
        """
        shapes = self.layer_shapes(height, width)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch!r}")
        width_f = self.cfg.latent_width
        if bottom_up_feats is not None:
            if len(bottom_up_feats) != self.n_layers:
                raise ValueError(
                    f"expected {self.n_layers} bottom-up feature maps, got {len(bottom_up_feats)}"
                )
            for l, (f, (_, h, w)) in enumerate(zip(bottom_up_feats, shapes)):
                if tuple(f.shape) != (batch, width_f, h, w):
                    raise ValueError(
                        f"bottom-up features of layer {l} have shape {tuple(f.shape)}, "
                        f"expected {(batch, width_f, h, w)}"
                    )
        device = self.head.weight.device
        h_in: Tensor | None = None
        for l in reversed(range(self.n_layers)):
            shape = (batch, *shapes[l])
            if h_in is None:
                mu_p = torch.zeros(shape, dtype=torch.float32, device=device)
            else:
                mu_p = self.prior_heads[l](h_in).float()
            mu_q = None
            if bottom_up_feats is not None:
                f = bottom_up_feats[l]
                q_in = f if h_in is None else torch.cat([h_in, f], dim=1)
                mu_q = self.posterior_heads[l](q_in).float()
            z = sample(l, mu_p, mu_q)
            if not isinstance(z, Tensor) or tuple(z.shape) != shape:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"sample() returned {got} for layer {l}, expected a tensor of shape {shape}")
            z = z.to(device=device, dtype=torch.float32)
            h_in = self.top_down_blocks[l](z, h_in)
        assert h_in is not None
        out = self.final_out(self.final_act(self.final_block(h_in)))
        return out.float()

    # -- training -----------------------------------------------------------
    def forward_details(
        self, x_sig: Tensor, qp: Tensor | int | None = None, generator: torch.Generator | None = None,
    ) -> LatentOutput:
        """Training pass with every per-layer quantity (see :meth:`forward`).

        Args:
            x_sig: uint8 (B, 3, H, W) (see :meth:`bottom_up`).
            qp: None (continuous sample), or the per-sample precision (B,)
                integer tensor (an int applies to every sample) for the
                discretised sample of ``--mode finetune``.
            generator: source of the uniform noise (default: torch's global).

        Returns:
            A :class:`LatentOutput`.
        """
        batch, _, height, width = x_sig.shape
        feats = self.bottom_up(x_sig)
        qp_b: Tensor | None = None
        if qp is not None:
            if isinstance(qp, Tensor):
                if qp.shape != (batch,):
                    raise ValueError(f"qp must have shape ({batch},), got {tuple(qp.shape)}")
                qp_b = qp.to(device=x_sig.device, dtype=torch.int64)
            else:
                qp_b = torch.full((batch,), int(qp), dtype=torch.int64, device=x_sig.device)
        n = self.n_layers
        layer_bits: list[Tensor | None] = [None] * n
        zs: list[Tensor | None] = [None] * n
        mps: list[Tensor | None] = [None] * n
        mqs: list[Tensor | None] = [None] * n
        all_bins: list[Tensor | None] = [None] * n

        def sample(l: int, mu_p: Tensor, mu_q: Tensor | None) -> Tensor:
            assert mu_q is not None
            u = torch.rand(mu_q.shape, generator=generator, dtype=torch.float32, device=mu_q.device)
            u = _NOISE_EPS + (1 - 2 * _NOISE_EPS) * u
            z = mu_q + (torch.log(u) - torch.log1p(-u))
            relax = None
            if qp_b is not None and self.training:
                relax = torch.rand(z.shape, generator=generator, dtype=torch.float32, device=z.device) - 0.5
            z_out, bits, bins = discretised_sample_cost(z, mu_p, mu_q, qp_b, relax)
            all_bins[l] = bins
            layer_bits[l] = bits.flatten(1).sum(dim=1)
            zs[l], mps[l], mqs[l] = z_out, mu_p, mu_q
            return z_out

        features = self.top_down(sample, feats, batch, height, width)
        per_layer = [b for b in layer_bits if b is not None]
        assert len(per_layer) == n
        return LatentOutput(
            features=features,
            latent_bits=torch.stack(per_layer).sum(dim=0),
            layer_bits=per_layer,
            z=[t for t in zs if t is not None],
            mu_p=[t for t in mps if t is not None],
            mu_q=[t for t in mqs if t is not None],
            bins=None if qp_b is None else [t for t in all_bins if t is not None],
        )

    def forward(
        self, x_sig: Tensor, qp: Tensor | int | None = None, generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Latent features and latent bits of a batch, for training (DESIGN.md 1.7).

        ``qp`` None: reparameterised sample ``z = mu_q + logit(u)``,
        ``u ~ U(eps, 1-eps)``, and the single-sample KL estimate
        ``Σ −log2 p(z) + log2 q(z|x)`` with ``p = Logistic(mu_p, 1)``,
        ``q = Logistic(mu_q, 1)``.

        ``qp`` given (finetune): the cost is what bits-back coding pays for
        the sample's equal-prior-mass bin at that precision,
        ``Σ qp + log2 Q_q(bin)`` (``qp`` bits of the uniform prior minus the
        bits the posterior gives back; ``Q_q`` the posterior bin mass,
        clamped ``>= 1e-12``), and the value fed on is what the decoder will
        see: the bin's centre in eval mode (validation measures the coded
        cost), a noisy relaxation in training mode
        (:func:`discretised_sample_cost`). Two choices differ from the
        paper code's; without them a fine-tune of the stage-4 model
        diverged (plane and latent bits rose together), with the first
        alone it still did, with both it did not (``docs/training.md``):

        * the cost's gradient is that of the continuous cost above. With the
          sampled bin held fixed its mean is zero
          (``Σ Q_i ∂log Q_i = ∂Σ Q_i = 0``); with the bin's edges moving
          with the sample (the paper code's choice) it vanishes once the
          posterior sits in an edge bin. Near the prior the continuous
          gradient is the derivative of the expected discrete cost (within
          2% for ``|mu_q − mu_p| <= 0.5`` at qp 3, ``<= 3`` at qp 6,
          ``<= 6`` at qp 10); where the coarse discrete cost saturates it is
          steeper (1.5x at qp 3 and ``|mu_q − mu_p| = 3``), so training
          holds the posterior closer to the prior than coding would need;
          in the tail it still pulls back where the discrete cost is flat;
        * the planes train on ``c + U(−0.5, 0.5)``, with ``c = K·σ(z − mu_p)``
          the continuous sample in prior-CDF units (clamped to the outer bin
          centres, so one-sided in the edge bins), not on the bin centre
          with a straight-through gradient: with a constant value inside a bin,
          nothing stops the planes' gradient from pushing the posterior
          means outwards, and they did (mean ``|mu_q − mu_p|`` of the top
          layer 0.99 → 2.7·10^5 in 500 steps at lr 2e-5; 0.80 → 1.5 bpsp).
          The relaxation gives a similar spread of values and a gradient
          that sees where they go::

            x_sig ─► bottom_up ─► top_down(sample from q) ─► features
                                         └─► latent_bits (B,)

        Args:
            x_sig: uint8 (B, 3, H, W), H and W multiples of ``2**n_layers``.
            qp: None, or per-sample precisions (B,) (an int: all samples).
            generator: source of the uniform noise (default: torch's global).

        Returns:
            ``(features, latent_bits)``: (B, latent_feature_channels, H, W)
            float32 and (B,) float32 bits per image.
        """
        out = self.forward_details(x_sig, qp, generator)
        return out.features, out.latent_bits
