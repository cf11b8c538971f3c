"""Split first lattice step: a checkerboard of step 1, the second half refined.

Step 1 of a plane (the (0, 0) parity, a quarter of the pixels) sees no bit
of its own plane: on smooth images it costs 2-4x what the later steps cost
per bit. With ``split_first_step`` the step-1 positions are coded in two
halves, a checkerboard of the quarter grid::

    quarter grid   a b a b        step 1a: positions a, with the step-1 logits
                   b a b a        step 1b: positions b, with the step-1 logits
                   a b a b                 + FirstStepRefine(features, bits at a)

Each 1b position then has four 1a neighbours of its own plane at distance 2
in the image. The refinement adds a correction to the step-1 logits; it
reads the step-1 features the head read (plane context and latent at the
step-1 positions), the head's logits, and the signs of the 1a bits (zero
at 1b and invalid positions) with the mask of what is known. Its output
convolution starts at zero, so a model grown into a split config
(:mod:`aribbps.models.deepen`) codes exactly as before until it is trained.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from aribbps.models.entropy_head import NUM_LOGITS
from aribbps.models.layers import ResBlock, activation, conv3x3, zero_init

#: Channels the refinement reads besides the features: logits, 1a signs, known mask.
EXTRA_CHANNELS = NUM_LOGITS + 3 + 1


def first_half_mask(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """(1, 1, h, w) bool on the quarter grid: True at step 1a (row + column even)."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return ((rows + cols) % 2 == 0)[None, None]


class FirstStepRefine(nn.Module):
    """Logit correction at the step-1b positions of one plane.

    Args:
        feature_channels: channels of the step-1 features (plane context + latent).
        width, depth: of the residual stack on the quarter grid.
        dropout: dropout in the residual blocks.
    """

    def __init__(self, feature_channels: int, width: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = conv3x3(feature_channels + EXTRA_CHANNELS, width)
        self.blocks = nn.ModuleList(ResBlock(width, dropout=dropout) for _ in range(depth))
        self.act = activation()
        self.conv_out = zero_init(conv3x3(width, NUM_LOGITS))

    def forward(self, features: Tensor, logits: Tensor, step_bits: Tensor, valid_q: Tensor | None) -> Tensor:
        """Refined logits (B, 6, h, w), meant for the 1b positions only.

        Args:
            features: (B, C, h, w) step-1 features (context and latent views).
            logits: (B, 6, h, w) the step-1 head's logits.
            step_bits: (B, 3, h, w) the plane's bits at the step-1 positions;
                only the 1a positions are read.
            valid_q: (B, 1, h, w) bool at the step-1 positions, or None.
        """
        batch, _, height, width = logits.shape
        known = first_half_mask(height, width, logits.device).expand(batch, 1, height, width)
        if valid_q is not None:
            known = known & valid_q
        dtype = self.conv_in.weight.dtype
        known_f = known.to(dtype)
        # where, not a product: the decoder's unknown bits are 0, the
        # encoder's true ones; a product would give them zeros of either sign.
        signs = torch.where(known, step_bits.to(dtype) * 2 - 1, torch.zeros((), dtype=dtype, device=known.device))
        h = self.conv_in(torch.cat([features.to(dtype), logits.to(dtype), signs, known_f], dim=1))
        for block in self.blocks:
            h = block(h)
        return logits + self.conv_out(self.act(h)).to(logits.dtype)
