"""Bit-plane slicing, lattice steps and the network inputs built from them.

Everything here is exact: integer operations, and integer-to-float maps that
are exact in float32, so the decoder rebuilds bit for bit what the encoder
fed to the networks. Pure torch, on any device.

Conventions (the codec depends on them):

* images are uint8 tensors ``(B, C, H, W)`` with H and W even;
* plane ``k`` (1..8) holds bit ``8-k``; plane 1 is the most significant;
* the "known image before plane k" is ``x`` with its ``9-k`` low bits zeroed;
* lattice step ``s`` (1..4) covers the positions of parity
  ``(row, col)`` = (0,0), (1,1), (0,1), (1,0) respectively; its sub-image of
  ``t`` is ``t[:, :, pr::2, pc::2]`` (the "quarter grid").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: (row parity, col parity) of lattice steps 1..4.
STEP_POSITIONS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (0, 1), (1, 0))
NUM_STEPS = 4
#: Radius of the relative-feature neighbourhood (5x5).
RELATIVE_RADIUS = 2
#: Channels of :func:`relative_features` for a 3-channel image.
RELATIVE_CHANNELS = 3 * ((2 * RELATIVE_RADIUS + 1) ** 2 - 1) + 3


def _check_plane(k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= 8:
        raise ValueError(f"plane index must be an int in 1..8, got {k!r}")


def _check_step(s: int) -> None:
    if not isinstance(s, int) or not 1 <= s <= NUM_STEPS:
        raise ValueError(f"lattice step must be an int in 1..4, got {s!r}")


def plane_bits(x: Tensor, k: int) -> Tensor:
    """Bits of plane ``k`` of uint8 ``x``: uint8 tensor of 0/1, same shape."""
    _check_plane(k)
    return (x >> (8 - k)) & 1


def known_before(x: Tensor, k: int) -> Tensor:
    """``x`` with its ``9-k`` low bits zeroed: what is known before plane ``k``."""
    _check_plane(k)
    return x & ((0xFF << (9 - k)) & 0xFF)


def known_to_float(known: Tensor) -> Tensor:
    """Exact map of uint8 values to float32 in [-1, 1): ``v / 128 - 1``."""
    return known.to(torch.float32) / 128 - 1


def step_positions(s: int) -> tuple[int, int]:
    """(row parity, col parity) of lattice step ``s``."""
    _check_step(s)
    return STEP_POSITIONS[s - 1]


def step_view(t: Tensor, s: int) -> Tensor:
    """Step ``s``'s sub-image ``(B, C, H/2, W/2)`` of ``t`` (a strided view)."""
    pr, pc = step_positions(s)
    return t[:, :, pr::2, pc::2]


def scatter_step(dst: Tensor, s: int, values: Tensor) -> Tensor:
    """Write ``values`` (B, C, H/2, W/2) into step ``s``'s positions of ``dst`` in place."""
    pr, pc = step_positions(s)
    dst[:, :, pr::2, pc::2] = values
    return dst


def steps_before_mask(s: int, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """(H, W) bool mask of the positions of the steps before ``s``."""
    _check_step(s)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    for t in range(1, s):
        pr, pc = STEP_POSITIONS[t - 1]
        mask[pr::2, pc::2] = True
    return mask


def _signs(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """0/1 bits to -1/+1 floats."""
    return bits.to(dtype) * 2 - 1


def space_prior(bits: Tensor, s: int, valid: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Full-resolution space prior of a plane at step ``s``.

    Args:
        bits: (B, 3, H, W) uint8 0/1 bits of the plane; only positions of
            steps < s are read.
        s: lattice step 1..4.
        valid: optional (B, 1, H, W) bool; False positions count as unknown.

    Returns:
        (B, 3, H, W) float: +1/-1 for known bits, 0 where unknown.
    """
    mask = steps_before_mask(s, bits.shape[-2], bits.shape[-1], bits.device)
    prior = torch.where(mask, _signs(bits, dtype), torch.zeros((), dtype=dtype, device=bits.device))
    if valid is not None:
        prior = prior * valid.to(dtype)
    return prior


def space_prior_quarter(
    bits: Tensor, s: int, valid: Tensor | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Quarter-grid form of :func:`space_prior`: the known parity sub-images.

    Returns:
        (B, 3*(s-1), H/2, W/2) float: for each step t < s in order, the
        +1/-1 bits at step t's positions (0 where ``valid`` is False).
        Step 1 gives zero channels.
    """
    _check_step(s)
    parts = []
    for t in range(1, s):
        part = _signs(step_view(bits, t), dtype)
        if valid is not None:
            part = part * step_view(valid, t).to(dtype)
        parts.append(part)
    if not parts:
        b, _, h, w = bits.shape
        return bits.new_zeros((b, 0, h // 2, w // 2), dtype=dtype)
    return torch.cat(parts, dim=1)


def relative_features(known: Tensor, k: int) -> Tensor:
    """Relative-neighbour features of the known image before plane ``k``.

    With ``d = 2**(8-k)`` (the size of the interval the bit of plane k
    halves), for each pixel p and channel c the features are
    ``asinh((known(n, c) - known(p, c)) / d)`` for the 24 other pixels n of
    the 5x5 neighbourhood (replicate padding at the borders), then the three
    cross-channel terms ``(g-r, b-r, b-g) / d`` at p, through asinh. This is
    the neighbour's interval midpoint minus p's coding threshold, in units of
    d. Differences are integers and d a power of two, so everything up to the
    asinh is exact.

    Returns:
        (B, RELATIVE_CHANNELS, H, W) float32 (75 channels for RGB).
    """
    _check_plane(k)
    if known.shape[1] != 3:
        raise ValueError(f"relative_features expects 3 channels, got {known.shape[1]}")
    f = known.to(torch.float32)
    r = RELATIVE_RADIUS
    height, width = f.shape[-2:]
    padded = F.pad(f, (r, r, r, r), mode="replicate")
    diffs = [
        padded[:, :, dy:dy + height, dx:dx + width] - f
        for dy in range(2 * r + 1)
        for dx in range(2 * r + 1)
        if (dy, dx) != (r, r)
    ]
    diffs.append(torch.stack((f[:, 1] - f[:, 0], f[:, 2] - f[:, 0], f[:, 2] - f[:, 1]), dim=1))
    return torch.asinh(torch.cat(diffs, dim=1) / float(2 ** (8 - k)))
