"""Space context: features of a plane's already coded bits at one lattice step.

The method defines it as a full-resolution 3x3 convolution over the space
prior (±1 where a bit is known, 0 elsewhere), read at step s's positions.
That map is three quarters zeros at step 2 and we only need a quarter of
its outputs, so :func:`masked_lattice_conv` computes the same numbers on the
quarter grid:

A position of step s has parity ``(pr, pc)``; its full-resolution
neighbour at offset ``(dy, dx)`` has parity ``((pr+dy)&1, (pc+dx)&1)`` and
sits at quarter-grid offset ``(floor((pr+dy)/2), floor((pc+dx)/2))`` in that
parity's sub-image. Grouping the 9 taps by neighbour parity turns the 3x3
full-resolution kernel into a 3x3 quarter-grid kernel over the sub-images of
the known parities (:func:`lattice_kernel`). Taps landing on unknown
parities are dropped: their input is zero anyway. Zero padding on the
quarter grid is zero padding at full resolution, so borders agree too.
:func:`masked_conv_ref` is the plain full-resolution version the tests
compare against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aribbps.bitplanes import STEP_POSITIONS, step_positions, step_view
from aribbps.models.layers import ResBlock


def lattice_kernel(weight: Tensor, s: int) -> Tensor:
    """Quarter-grid kernel equal to a full-res 3x3 ``weight`` at step ``s``.

    Args:
        weight: (O, C, 3, 3) full-resolution kernel.
        s: lattice step 2..4.

    Returns:
        (O, C*(s-1), 3, 3) kernel over the parity sub-images of steps
        1..s-1, concatenated in step order (as
        :func:`aribbps.bitplanes.space_prior_quarter` lays them out).
    """
    if not 2 <= s <= 4:
        raise ValueError(f"lattice_kernel needs a step in 2..4, got {s!r}")
    pr, pc = step_positions(s)
    # Quarter offset o in (-1, 0, 1) of parity q is full-res offset
    # d = 2*o + q - p in -3..3. Pad the kernel by 2 so tap d sits at index
    # d + 3 and reads 0 outside the 3x3 support; the three taps of o are then
    # the stride-2 slice starting at q - p + 1 (a view, no index tensors).
    padded = F.pad(weight, (2, 2, 2, 2))
    parts = []
    for qr, qc in STEP_POSITIONS[: s - 1]:
        r0, c0 = qr - pr + 1, qc - pc + 1
        parts.append(padded[:, :, r0:r0 + 5:2, c0:c0 + 5:2])
    return torch.cat(parts, dim=1)


def masked_lattice_conv(prior_q: Tensor, weight: Tensor, bias: Tensor | None, s: int) -> Tensor:
    """The full-res 3x3 conv of the space prior, evaluated at step ``s`` only.

    Args:
        prior_q: (B, C*(s-1), h, w) from ``space_prior_quarter``.
        weight, bias: the full-resolution 3x3 convolution.

    Returns:
        (B, O, h, w) on step ``s``'s quarter grid.
    """
    if s == 1:  # nothing known yet: a conv of all zeros is its bias
        b, _, h, w = prior_q.shape
        out = weight.new_zeros((b, weight.shape[0], h, w))
        return out if bias is None else out + bias[None, :, None, None]
    return F.conv2d(prior_q.to(weight.dtype), lattice_kernel(weight, s), bias, padding=1)


def masked_conv_ref(prior_full: Tensor, weight: Tensor, bias: Tensor | None, s: int) -> Tensor:
    """Reference: full-res conv over the zero-filled space prior, then subsampled."""
    return step_view(F.conv2d(prior_full.to(weight.dtype), weight, bias, padding=1), s)


class SpaceContext(nn.Module):
    """3x3 masked lattice convolution + one residual block on the quarter grid.

    Args:
        width: output width (``space_width``).
        in_channels: channels of the plane's bits (3 for RGB).
        dropout: dropout in the residual block.
    """

    def __init__(self, width: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.block = ResBlock(width, dropout=dropout)

    def first_layer(self, prior_q: Tensor, s: int) -> Tensor:
        """Only the masked convolution (lets a caller batch the rest over steps)."""
        return masked_lattice_conv(prior_q, self.conv.weight, self.conv.bias, s)

    def forward(self, prior_q: Tensor, s: int) -> Tensor:
        """Space features (B, width, h, w) at step ``s``'s positions."""
        return self.block(self.first_layer(prior_q, s))
