"""Plane context: features of the known image before plane k.

Evaluated once per plane (the four lattice steps reuse it). A one-level
UNet, with the residual stack at half resolution where it is 4x cheaper::

    known image (3) ──conv3x3──┐
    relative feats (75) ─1x1───┴─(+)─ h0 (W, H×W) ─────────────────┐ skip
                                      │ pixel-unshuffle, 1x1       │
                                      ▼                            │
                         depth × ResBlock(W, + plane embedding)    │
                                      │  (W, H/2×W/2)              │
                                      ▼ 1x1 to 4W, pixel-shuffle   │
                                     (+)◄──────────────────────────┘
                                      ▼
                              context (W, H×W)

The pixel-shuffle gives each lattice parity its own linear read-out of the
half-resolution features, so the per-step heads see position-specific
features. H and W must be even.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aribbps.bitplanes import RELATIVE_CHANNELS, known_to_float, relative_features
from aribbps.models.layers import ResBlock, activation, conv1x1, conv3x3


class PlaneContext(nn.Module):
    """The plane-context network shared by all planes of a bit-plane net.

    Args:
        planes: plane indices this network is conditioned on.
        width: feature width ``W``; also the output width.
        depth: residual blocks at half resolution.
        relative_inputs: also read :func:`aribbps.bitplanes.relative_features`.
        dropout: dropout in the residual blocks.
    """

    def __init__(
        self, planes: tuple[int, ...], width: int, depth: int,
        relative_inputs: bool, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.planes = tuple(planes)
        self.width = width
        self.relative_inputs = relative_inputs
        self.image_in = conv3x3(3, width)
        self.relative_in = conv1x1(RELATIVE_CHANNELS, width) if relative_inputs else None
        # One learned vector per plane, unit variance. (uniform_, not
        # normal_: normal_ on the meta device, which weight loading builds
        # on, imports torch._dynamo, ~1 s.)
        bound = 3**0.5
        self.plane_embedding = nn.Parameter(torch.empty(len(self.planes), width).uniform_(-bound, bound))
        self.emb_act = activation()
        self.down = conv1x1(4 * width, width)
        self.blocks = nn.ModuleList(ResBlock(width, emb_dim=width, dropout=dropout) for _ in range(depth))
        self.act = activation()
        self.up = conv1x1(width, 4 * width)

    def plane_index(self, k: int) -> int:
        """Position of plane ``k`` in :attr:`planes`."""
        if k not in self.planes:
            raise ValueError(f"plane {k!r} is not modelled by this network (planes {self.planes})")
        return self.planes.index(k)

    def inputs(self, known: Tensor, k: int) -> tuple[Tensor, Tensor | None]:
        """The exact float inputs of plane ``k`` from the uint8 known image."""
        image = known_to_float(known)
        rel = relative_features(known, k) if self.relative_inputs else None
        return image, rel

    def features(self, image: Tensor, rel: Tensor | None, plane_idx: Tensor) -> Tensor:
        """Run the network on prepared inputs.

        Args:
            image: (B, 3, H, W) float from :func:`known_to_float`.
            rel: (B, RELATIVE_CHANNELS, H, W) or None.
            plane_idx: (B,) long, position of each item's plane in
                :attr:`planes` (lets training batch several planes).
        """
        dtype = self.image_in.weight.dtype
        h0 = self.image_in(image.to(dtype))
        if self.relative_in is not None:
            if rel is None:
                raise ValueError("this plane context needs relative features")
            h0 = h0 + self.relative_in(rel.to(dtype))
        emb = self.emb_act(self.plane_embedding[plane_idx])
        h = self.down(F.pixel_unshuffle(h0, 2))
        for block in self.blocks:
            h = block(h, emb)
        return h0 + F.pixel_shuffle(self.up(self.act(h)), 2)

    def forward(self, known: Tensor, k: int) -> Tensor:
        """Context (B, W, H, W) of plane ``k`` from the uint8 known image before it."""
        index = self.plane_index(k)
        image, rel = self.inputs(known, k)
        plane_idx = torch.full((known.shape[0],), index, dtype=torch.long, device=known.device)
        return self.features(image, rel, plane_idx)
