"""Entropy head: features at one step's positions -> 6 logits per pixel.

Runs on the quarter grid only (the step's positions), never at full
resolution::

    [plane ctx | latent | space ctx] ─ ECA ─ 1x1 ─ depth × ResBlock ─ act ─ 3x3 ─ (lr, lg, lb, a, b, c)

Its 3x3 convolutions mix neighbouring positions of the same step, whose
inputs are all known to the decoder, so the head stays causal.
"""
from __future__ import annotations

from torch import Tensor, nn

from aribbps.models.layers import ECA, ResBlock, activation, conv1x1, conv3x3, zero_init

#: Logits per pixel: (lr, lg, lb, a, b, c).
NUM_LOGITS = 6


class EntropyHead(nn.Module):
    """Args:
        in_channels: width of the concatenated input features.
        width: ``entropy_width``.
        depth: ``entropy_depth`` residual blocks.
        dropout: dropout in the residual blocks.

    The output convolution starts at zero: an untrained head predicts
    P = 1/2 (one bit per bit) everywhere.
    """

    def __init__(self, in_channels: int, width: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.eca = ECA(in_channels)
        self.conv_in = conv1x1(in_channels, width)
        self.blocks = nn.ModuleList(ResBlock(width, dropout=dropout) for _ in range(depth))
        self.act = activation()
        self.conv_out = zero_init(conv3x3(width, NUM_LOGITS))

    def forward(self, features: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, in_channels, h, w) -> (B, 6, h, w); ``valid`` (B, 1, h, w) masks the ECA mean."""
        h = self.conv_in(self.eca(features, valid))
        for block in self.blocks:
            h = block(h)
        return self.conv_out(self.act(h))
