"""Discretised logistic latents: the maths shared by the codec and training.

DESIGN.md 1.5. With precision ``qp`` bits, the axis of one latent dimension
is cut into ``K = 2**qp`` bins of equal mass under the prior
``Logistic(mu_p, 1)``::

    bin i  =  [mu_p + logit(i/K),  mu_p + logit((i+1)/K))        i = 0..K-1
    value  =   mu_p + logit((i + 0.5) / K)                        (bin_values)
    prior mass      = 1/K                                         (qp bits)
    posterior mass  = σ(logit((i+1)/K) − d) − σ(logit(i/K) − d)   d = mu_q − mu_p

The codec pops bins from the rANS stack (under the posterior while encoding,
the uniform prior while decoding), turns them into latent values with
:func:`bin_values` and feeds those to the top-down network; the coder itself
gets the posterior only as the fixed-point offset :func:`quantise_offset`
and builds its integer CDF from it (``coder/latent.hpp``). Training uses
:func:`bins_of` and :func:`posterior_bin_log2_mass` for the discretised
sample of ``--mode finetune`` (DESIGN.md 1.7).

Determinism (what the codec relies on, DESIGN.md 2.3): :func:`bin_values`
and :func:`quantise_offset` are pure functions of their tensor inputs with a
fixed order of float32 operations and no reductions, so identical inputs
give bit-identical outputs, on one device and, for :func:`bin_values`, on
every device (see its docstring). The other functions are for costs and
training only; nothing the coder sees depends on their last bit.

Every ``qp`` argument is either a Python int or an integer tensor; a 1-D
tensor of length B is a per-sample precision and is broadcast over the
trailing dimensions of a ``(B, C, h, w)`` tensor.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor
import torch.nn.functional as F

from kernels.bitplanes_cupy import quantise_latent_offsets

__all__ = [
    "LATENT_D_FRAC_BITS",
    "LATENT_D_MAX",
    "LATENT_MAX_QP",
    "LATENT_MIN_QP",
    "QP",
    "bin_logit_table",
    "bin_values",
    "bins_of",
    "posterior_bin_log2_mass",
    "posterior_bin_mass",
    "quantise_offset",
]

#: Fractional bits of the fixed-point posterior offset: ``D = round(d * 2**8)``.
#: Must equal the coder's ``kLatentDFracBits`` (``aribbps.coder.LATENT_D_FRAC_BITS``);
#: a test checks it.
LATENT_D_FRAC_BITS = 8
#: Largest ``|D|`` (``|d| <= 9.5``). Must equal the coder's ``kLatentDMax``
#: (``aribbps.coder.LATENT_D_MAX``); a test checks it.
LATENT_D_MAX = 2432
#: Precision range of the helpers here and of the coder (``kLatentMinQp``/
#: ``kLatentMaxQp``); the encoder chooses within ``aribbps.arib.QP_MIN..QP_MAX``.
LATENT_MIN_QP = 1
LATENT_MAX_QP = 16

#: A precision: a Python int, or an integer tensor (scalar, per-sample (B,),
#: or broadcastable to the data).
QP = Union[int, Tensor]

#: Smallest posterior bin mass used for costs (DESIGN.md 1.7).
_MIN_MASS = 1e-12
_LOG2_MIN_MASS = math.log2(_MIN_MASS)

#: Cached bin-centre logit tables by device (see :func:`bin_logit_table`).
_TABLES: dict[torch.device, Tensor] = {}


def _table_offset(qp: Tensor) -> Tensor:
    """Start of precision ``qp``'s bins in the concatenated table: ``2**qp - 2``."""
    return torch.bitwise_left_shift(torch.ones_like(qp), qp) - 2


def _build_table() -> Tensor:
    """The concatenated float32 table of ``logit((i + 0.5) / 2**q)``, on the CPU.

    Layout: for ``q = 1..LATENT_MAX_QP``, ``2**q`` entries starting at
    ``2**q - 2`` (total ``2**(LATENT_MAX_QP+1) - 2``). Each entry is
    ``log(2i + 1) - log(2K - 2i - 1)`` (the exact odd integers of
    ``(i + 0.5) / (K - i - 0.5)``) evaluated in float64 and rounded once to
    float32; the upper half is the exact negation of the lower half, so
    ``table[K-1-i] == -table[i]``.
    """
    parts = []
    for q in range(LATENT_MIN_QP, LATENT_MAX_QP + 1):
        k = 1 << q
        i = torch.arange(k // 2, dtype=torch.float64)
        low = (torch.log(2 * i + 1) - torch.log(2 * k - 2 * i - 1)).to(torch.float32)
        parts.append(torch.cat([low, -low.flip(0)]))
    table = torch.cat(parts)
    assert table.numel() == (1 << (LATENT_MAX_QP + 1)) - 2
    return table


def bin_logit_table(device: torch.device | str | None = None) -> Tensor:
    """The bin-centre logits of every precision, as used by :func:`bin_values`.

    Args:
        device: where the table is wanted (default CPU).

    Returns:
        float32 tensor of ``2**(LATENT_MAX_QP+1) - 2`` entries: entry
        ``2**qp - 2 + i`` is ``logit((i + 0.5) / 2**qp)`` rounded to float32.
        The same values on every device (built on the CPU in float64, then
        copied). Cached; do not modify it.
    """
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    table = _TABLES.get(dev)
    if table is None:
        cpu = _TABLES.get(torch.device("cpu"))
        if cpu is None:
            cpu = _TABLES.setdefault(torch.device("cpu"), _build_table())
        table = _TABLES.setdefault(dev, cpu.to(dev))
    return table


def _qp_tensor(qp: QP, like: Tensor) -> Tensor:
    """``qp`` as an int64 tensor on ``like``'s device, broadcastable to ``like``.

    Raises:
        ValueError: ``qp`` is out of range, not an integer, or a per-sample
            vector whose length is not ``like``'s batch size.
    """
    if isinstance(qp, Tensor):
        if qp.dtype.is_floating_point or qp.dtype.is_complex or qp.dtype == torch.bool:
            raise ValueError(f"qp must be an integer tensor, got dtype {qp.dtype}")
        q = qp.to(device=like.device, dtype=torch.int64)
        if q.numel() > 0:
            lo, hi = int(q.min()), int(q.max())
            if lo < LATENT_MIN_QP or hi > LATENT_MAX_QP:
                raise ValueError(
                    f"qp must be in {LATENT_MIN_QP}..{LATENT_MAX_QP}, got values in {lo}..{hi}"
                )
        if q.ndim == 1 and like.ndim > 1:
            if q.shape[0] != like.shape[0]:
                raise ValueError(
                    f"per-sample qp has {q.shape[0]} entries but the data has batch size {like.shape[0]}"
                )
            q = q.view(-1, *([1] * (like.ndim - 1)))
        return q
    if isinstance(qp, bool) or not isinstance(qp, int):
        raise ValueError(f"qp must be an int or an integer tensor, got {qp!r}")
    if not LATENT_MIN_QP <= qp <= LATENT_MAX_QP:
        raise ValueError(f"qp must be in {LATENT_MIN_QP}..{LATENT_MAX_QP}, got {qp!r}")
    return torch.tensor(qp, dtype=torch.int64, device=like.device)


def _check_bins(bins: Tensor, k: Tensor) -> Tensor:
    """``bins`` as int64, after checking ``0 <= bins < K``."""
    if bins.dtype.is_floating_point or bins.dtype.is_complex or bins.dtype == torch.bool:
        raise ValueError(f"bins must be an integer tensor, got dtype {bins.dtype}")
    b = bins.to(torch.int64)
    bad = (b < 0) | (b >= k)
    if bad.numel() > 0 and bool(bad.any()):
        first = torch.broadcast_to(b, bad.shape)[bad][0]
        raise ValueError(f"bin index {int(first)} is outside 0..2**qp-1 for its qp")
    return b


def bin_values(bins: Tensor, mu_p: Tensor, qp: QP) -> Tensor:
    """Latent values of bins: ``mu_p + logit((bins + 0.5) / 2**qp)``.

    Order of operations (fixed, so encoder and decoder agree bit for bit)::

        t = float32(logit((bins + 0.5) / 2**qp))   # table lookup, see bin_logit_table
        z = mu_p.float() + t                        # one float32 addition

    The table is the same on every device and the addition is one correctly
    rounded IEEE operation, so identical ``(bins, mu_p, qp)`` give identical
    ``z`` on any device and for any tensor shape. Differentiable in ``mu_p``.

    Args:
        bins: integer tensor of bin indices in ``0..2**qp-1``.
        mu_p: prior means, broadcastable with ``bins`` (float; used in float32).
        qp: precision in ``LATENT_MIN_QP..LATENT_MAX_QP``: int, or a tensor
            (per-sample ``(B,)`` broadcast over ``(B, C, h, w)``).

    Returns:
        float32 tensor of the broadcast shape.

    Raises:
        ValueError: ``qp`` out of range or a bin outside ``0..2**qp-1``.
    """
    q = _qp_tensor(qp, bins)
    k = torch.bitwise_left_shift(torch.ones_like(q), q)
    b = _check_bins(bins, k)
    table = bin_logit_table(bins.device)
    t = table[_table_offset(q) + b]
    return mu_p.to(torch.float32) + t


def bins_of(z: Tensor, mu_p: Tensor, qp: QP) -> Tensor:
    """The bin holding each ``z``: ``floor(K · σ(z − mu_p))`` clamped to ``0..K-1``.

    Computed as ``t = z − mu_p`` then, for accuracy in both tails,
    ``floor(K·σ(t))`` when ``t < 0`` and ``K − ceil(K·σ(−t))`` when
    ``t >= 0`` (the same half-open bins). The inverse of :func:`bin_values`:
    ``bins_of(bin_values(b, mu_p, qp), mu_p, qp) == b`` for
    ``qp <= LATENT_MAX_QP`` and moderate ``|mu_p|`` (tested for
    ``|mu_p| <~ 10``). Not differentiable (integer output).

    Args:
        z: latent values (float).
        mu_p: prior means, broadcastable with ``z``.
        qp: precision (int or integer tensor, see :func:`bin_values`).

    Returns:
        int64 tensor of bin indices, the broadcast shape of ``z`` and ``mu_p``.
    """
    q = _qp_tensor(qp, z)
    t = z.detach().to(torch.float32) - mu_p.detach().to(torch.float32)
    kf = torch.bitwise_left_shift(torch.ones_like(q), q).to(torch.float32)
    s = torch.sigmoid(-t.abs())  # σ of the non-positive side: accurate near 0
    low = torch.floor(kf * s)
    high = kf - torch.ceil(kf * s)
    bins = torch.where(t < 0, low, high)
    bins = torch.minimum(torch.clamp_min(bins, 0), kf - 1)
    return bins.to(torch.int64)


def _boundary_logits(i: Tensor, kf: Tensor) -> Tensor:
    """``logit(i / K)`` in float32 (``−inf`` at ``i = 0``, ``+inf`` at ``i = K``)."""
    return torch.log(i) - torch.log(kf - i)


def posterior_bin_log2_mass(bins: Tensor, d: Tensor, qp: QP) -> Tensor:
    """``log2`` of the posterior mass of bins, clamped to ``>= log2(1e-12)``.

    With ``a = logit(i/K) − d`` and ``b = logit((i+1)/K) − d`` the mass
    ``σ(b) − σ(a)`` is evaluated without cancellation as
    ``log σ(b) + log σ(−a) + log(1 − e^(a−b))`` (``a − b`` does not depend
    on ``d`` and is computed in a cancellation-free form). Differentiable in ``d``; finite gradients also in the edge
    bins, where ``a = −inf`` or ``b = +inf``.

    Args:
        bins: integer tensor of bin indices in ``0..2**qp-1``.
        d: ``mu_q − mu_p``, broadcastable with ``bins`` (used in float32).
        qp: precision (int or integer tensor, see :func:`bin_values`).

    Returns:
        float32 tensor of the broadcast shape, in bits (``<= 0``).
    """
    q = _qp_tensor(qp, bins)
    k = torch.bitwise_left_shift(torch.ones_like(q), q)
    b = _check_bins(bins, k)
    kf = k.to(torch.float32)
    lo = b.to(torch.float32)
    edge_lo = _boundary_logits(lo, kf)
    edge_hi = _boundary_logits(lo + 1, kf)
    # a − b = logit(i/K) − logit((i+1)/K) = −log1p(1/i) − log1p(1/(K−i−1)),
    # accurate in float32 even for the narrow middle bins at qp = 16 (the
    # difference of the two logits would lose ~2% there); −inf in the edge bins.
    width = -(torch.log1p(1 / lo) + torch.log1p(1 / (kf - lo - 1)))
    d32 = d.to(torch.float32)
    # Finite stand-ins at ±inf keep the autograd graph free of inf − inf.
    big = torch.tensor(1e30, dtype=torch.float32, device=d32.device)
    a = torch.where(torch.isinf(edge_lo), -big, edge_lo) - d32
    bb = torch.where(torch.isinf(edge_hi), big, edge_hi) - d32
    log_mass = F.logsigmoid(bb) + F.logsigmoid(-a) + torch.log(-torch.expm1(width))
    return torch.clamp_min(log_mass / math.log(2.0), _LOG2_MIN_MASS)


def posterior_bin_mass(bins: Tensor, d: Tensor, qp: QP) -> Tensor:
    """Posterior mass ``σ(logit((i+1)/K) − d) − σ(logit(i/K) − d)``, clamped to ``>= 1e-12``.

    For costs; :func:`posterior_bin_log2_mass` is the accurate form for
    ``log2`` (this is ``2 ** posterior_bin_log2_mass``). The coder's integer
    frequencies (``aribbps.coder.latent_freqs`` / ``2**24``) approximate it
    for ``d`` quantised by :func:`quantise_offset`.

    Args:
        bins: integer tensor of bin indices in ``0..2**qp-1``.
        d: ``mu_q − mu_p``, broadcastable with ``bins``.
        qp: precision (int or integer tensor, see :func:`bin_values`).

    Returns:
        float32 tensor of masses in ``[1e-12, 1]``.
    """
    return torch.exp2(posterior_bin_log2_mass(bins, d, qp))


def quantise_offset(d: Tensor) -> Tensor:
    """The coder's fixed-point posterior offset: ``round(d · 2**8)`` clamped to ``±2432``.

    ``d · 256`` is exact in float32 (a power-of-two scaling); the rounding
    is ``torch.round`` (half to even) and the clamp keeps ``|d| <= 9.5``.
    The constants are :data:`LATENT_D_FRAC_BITS` and :data:`LATENT_D_MAX`
    and must equal the coder's (``coder/latent.hpp``); the coder would clamp
    again, so this only makes the clamp visible to Python.

    Args:
        d: ``mu_q − mu_p`` (float, any shape; ±inf are clamped).

    Returns:
        int32 CPU tensor of the same shape.

    Raises:
        ValueError: ``d`` holds a NaN (a broken network; coding it would
            give the decoder nothing to reproduce).
    """
    # One implementation (CuPy on CUDA, NumPy on the CPU) lives in the kernel layer.
    return torch.from_numpy(quantise_latent_offsets(d))
