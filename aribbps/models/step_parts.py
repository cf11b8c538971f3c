"""Split lattice steps: step 1 (and steps 2-4) coded in parts, the later parts refined.

Step 1 of a plane (the (0, 0) parity, a quarter of the pixels) sees no bit
of its own plane: on smooth images it costs 2-4x what the later steps cost
per bit. With ``split_first_step`` the step-1 positions are coded in two
halves, a checkerboard of the quarter grid; with ``split_step_1a`` as well,
the first half is itself coded in two (its even and its odd rows), and with
``split_step_1a1`` the first of those in two again (a checkerboard of it), and
with ``split_step_1a1a`` that first one in two again (its even and odd rows)::

    quarter grid     split_first_step        + split_step_1a
    (step 1 only)    a b a b                 1 b 1 b
                     b a b a                 b 2 b 2
                     a b a b                 1 b 1 b

    1a / 1a1 / 1a1a / 1a1a1: the step-1 head's logits, no bit of the plane known
    1a1a2:    + refine_a1a(features, the 1a1a1 bits): four diagonal 1a1a1 neighbours, (4, 4) pixels away
    1a1b:     + refine_a1(features, the 1a1a bits): four 1a1a neighbours at distance 4
    1a2:      + refine_a(features, the 1a1 bits): four diagonal 1a1 neighbours
    1b:       + refine(features, the 1a bits): four 1a neighbours at distance 2

With ``split_step_2`` step 2 (the (1, 1) parity) is coded as a checkerboard
of its own quarter grid too: 2a with the step-2 head's logits, 2b refined by
``refine_step2`` with the 2a bits, four of them at distance 2 (pixels).
Step 2 costs 10-30% more per bit than steps 3-4, whose four nearest
neighbours are known; 2b sees four more of its plane. ``split_step_3`` and
``split_step_4`` split steps 3 and 4 the same way (``refine_step3``,
``refine_step4``): their second halves see four more of their plane at
distance 2, besides the four (step 3) or eight (step 4) known around them;
trained on the default model they gained nothing (``docs/default_model.md``).

Each refinement (:class:`PartRefine`, one per plane) adds a correction
to the step's head logits. It reads the features the head read (plane
context and latent at the step's positions), the head's logits, the signs
of the known bits of the step (zero elsewhere) and the mask of what is known.
Its output convolution starts at zero, so a model grown into a split config
(:mod:`aribbps.models.deepen`) codes exactly as before until it is trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aribbps.models.entropy_head import NUM_LOGITS
from aribbps.models.layers import ResBlock, activation, conv3x3, zero_init

#: Channels the refinement reads besides the features: logits, known signs, known mask.
EXTRA_CHANNELS = NUM_LOGITS + 3 + 1


def pattern_mask(pattern: str, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """(1, 1, h, w) bool on the quarter grid of a lattice step.

    ``pattern``: "all"; "a" (row + column even) and "b" (odd), the halves of
    ``split_first_step``; "a1" (row and column even) and "a2" (both odd), the
    halves of "a" that ``split_step_1a`` codes apart; "a1a" and "a1b", the
    checkerboard of "a1" on its own grid (row/2 + column/2 even or odd);
    "a1a1" (row and column multiples of 4) and "a1a2" (both 2 mod 4), the
    halves of "a1a".
    """
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    if pattern == "all":
        mask = torch.ones(height, width, dtype=torch.bool, device=device)
    elif pattern in ("a", "b"):
        mask = (rows + cols) % 2 == (0 if pattern == "a" else 1)
    elif pattern in ("a1", "a2"):
        parity = 0 if pattern == "a1" else 1
        mask = (rows % 2 == parity) & (cols % 2 == parity)
    elif pattern in ("a1a", "a1b"):
        mask = (rows % 2 == 0) & (cols % 2 == 0) & ((rows // 2 + cols // 2) % 2 == (0 if pattern == "a1a" else 1))
    elif pattern in ("a1a1", "a1a2"):
        rest = 0 if pattern == "a1a1" else 2
        mask = (rows % 4 == rest) & (cols % 4 == rest)
    else:
        raise ValueError(f"unknown step-part pattern {pattern!r}")
    return mask[None, None]


@dataclass(frozen=True)
class StepPart:
    """One part of a lattice step, coded as one stage.

    Attributes:
        name: "" (the step whole), "a", "b", "a1", "a2", "a1a", "a1b", "a1a1" or "a1a2".
        known: the pattern of the step's bits it reads, None for none.
        refine: the network attribute holding its refinements ("refine",
            "refine_a", "refine_a1", "refine_a1a", "refine_step2", "refine_step3",
            "refine_step4"), None for the step's head logits as they are.
        step: the lattice step (1-4) whose quarter grid the patterns are on.
    """

    name: str
    known: str | None = None
    refine: str | None = None
    step: int = 1

    @property
    def pattern(self) -> str:
        """The positions it codes (:func:`pattern_mask`)."""
        return self.name or "all"


def first_step_parts(split_first_step: bool, split_step_1a: bool,
                     split_step_1a1: bool = False, split_step_1a1a: bool = False) -> tuple[StepPart, ...]:
    """The parts of step 1 in coding order."""
    if not split_first_step:
        return (StepPart(""),)
    second = StepPart("b", known="a", refine="refine")
    if not split_step_1a:
        return StepPart("a"), second
    fourth = StepPart("a2", known="a1", refine="refine_a")
    if not split_step_1a1:
        return StepPart("a1"), fourth, second
    third = StepPart("a1b", known="a1a", refine="refine_a1")
    if not split_step_1a1a:
        return StepPart("a1a"), third, fourth, second
    return StepPart("a1a1"), StepPart("a1a2", known="a1a1", refine="refine_a1a"), third, fourth, second


def later_step_parts(step: int, split: bool) -> tuple[StepPart, ...]:
    """The parts of lattice step 2, 3 or 4 in coding order; () when it is coded whole."""
    if step not in (2, 3, 4):
        raise ValueError(f"only lattice steps 2-4 split as a checkerboard, got {step!r}")
    if not split:
        return ()
    return StepPart("a", step=step), StepPart("b", known="a", refine=f"refine_step{step}", step=step)


class PartRefine(nn.Module):
    """Logit correction of one plane at the positions of a later part of a step.

    Args:
        feature_channels: channels of the step's features (plane context + latent).
        width, depth: of the residual stack on the quarter grid.
        dropout: dropout in the residual blocks.
    """

    def __init__(self, feature_channels: int, width: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = conv3x3(feature_channels + EXTRA_CHANNELS, width)
        self.blocks = nn.ModuleList(ResBlock(width, dropout=dropout) for _ in range(depth))
        self.act = activation()
        self.conv_out = zero_init(conv3x3(width, NUM_LOGITS))

    def forward(self, features: Tensor, logits: Tensor, step_bits: Tensor, known: Tensor) -> Tensor:
        """Refined logits (B, 6, h, w), meant for the part's positions only.

        Args:
            features: (B, C, h, w) the step's features (context and latent views).
            logits: (B, 6, h, w) the step's head logits.
            step_bits: (B, 3, h, w) the plane's bits at the step's positions;
                only the ``known`` ones are read.
            known: (B, 1, h, w) bool, the known (and valid) positions.
        """
        dtype = self.conv_in.weight.dtype
        known_f = known.to(dtype)
        # where, not a product: the decoder's unknown bits are 0, the
        # encoder's true ones; a product would give them zeros of either sign.
        signs = torch.where(known, step_bits.to(dtype) * 2 - 1, torch.zeros((), dtype=dtype, device=known.device))
        h = self.conv_in(torch.cat([features.to(dtype), logits.to(dtype), signs, known_f], dim=1))
        for block in self.blocks:
            h = block(h)
        return logits + self.conv_out(self.act(h)).to(logits.dtype)
