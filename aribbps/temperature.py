"""Per-plane logit temperatures: the encoder's calibration of the model to each image.

The default model is calibrated on its training photos but overconfident on
most photos it has never seen, and underconfident on some. So the encoder
picks, for every item and every plane, the temperature that makes that
plane cheapest, and the coder's probabilities become
``quantise_probs7(logits * tau)``. One temperature per plane gained more
than one per group of planes by several times its 4 bits
(``docs/default_model.md``); one per lattice step lost.

A temperature is a 4-bit *symbol* t in 0..15 with ``tau = (t + 6) / 16``
(0.375 .. 1.3125, 1 at t = 10), exact in float32, so ``logits * tau`` is one
rounding, the same on every device. The symbol travels in the item's lane as
a uniform 4-bit value pushed right after the plane's bits, so the decoder
pops it right before them (files with container flag bit 7,
``docs/format.md``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import softplus

from aribbps.probability import P_MAX, P_MIN, _channel_logits
from kernels import dispatch

#: Bits of one temperature symbol in the lane stream.
TEMPERATURE_BITS = 4
#: Symbol t means tau = (t + TEMPERATURE_OFFSET) / TEMPERATURE_UNIT.
TEMPERATURE_OFFSET = 6
TEMPERATURE_UNIT = 16
#: The symbol of tau = 1 (the model's own probabilities).
NEUTRAL_SYMBOL = TEMPERATURE_UNIT - TEMPERATURE_OFFSET
SYMBOLS = np.arange(1 << TEMPERATURE_BITS)
#: The cost range of one bit under the clamp to [P_MIN, P_MAX].
_MIN_BITS, _MAX_BITS = -math.log2(P_MAX), -math.log2(P_MIN)


def _taus(symbols: np.ndarray) -> np.ndarray:
    return ((symbols.astype(np.float32) + TEMPERATURE_OFFSET) / TEMPERATURE_UNIT).astype(np.float32)


def temperatures(symbols: np.ndarray, device: torch.device | str) -> Tensor:
    """float32 (n,) tau of the symbols, on ``device``.

    Raises:
        ValueError: a symbol outside 0..15.
    """
    symbols = np.asarray(symbols)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= len(SYMBOLS)):
        raise ValueError(f"temperature symbols must lie in [0, {len(SYMBOLS) - 1}]")
    return torch.from_numpy(_taus(symbols)).to(device)


def scaled_probs7(logits: Tensor, tau: Tensor, prob_code: str) -> Tensor:
    """The coder's probabilities of ``logits`` (n, 6, h, w) at per-item temperatures ``tau`` (n,)."""
    return dispatch.quantise_probs7(logits * tau.view(-1, 1, 1, 1), prob_code)


def candidate_costs(logits: Tensor, step_bits: Tensor, weight: Tensor) -> Tensor:
    """Cross-entropy in bits (float64, (n, 16)) of one stage at every temperature.

    ``weight`` (n, 3, h, w) or broadcastable: 1 where a bit is coded (the
    stage's valid positions; R only for greyscale items), else 0.
    Unquantised probabilities, clamped as :func:`aribbps.probability.bits_cost`
    clamps them: with the logit code the quantised cost is within about
    0.03% of it, well below the steps between temperatures.

    The coupled logits of R, G and B are linear in the network's logits, so
    the logit of each true bit is computed once and only scaled per
    temperature: -log2 sigmoid(tau * margin).
    """
    signs = step_bits.float() * 2 - 1
    margins = torch.stack(_channel_logits(logits.float(), signs[:, 0], signs[:, 1]), dim=1) * signs
    n = len(margins)
    flat = margins.reshape(n, -1)
    w = weight.to(flat.dtype).expand_as(margins).reshape(n, -1)
    taus = torch.from_numpy(_taus(SYMBOLS)).to(flat.device).view(-1, 1, 1)
    bits = softplus(-taus * flat) * (1 / math.log(2))  # (16, n, K): -log2 sigmoid(tau * margin)
    bits = bits.clamp(_MIN_BITS, _MAX_BITS)
    return (bits * w).sum(dim=2).double().T


def choose_symbols(costs: Tensor) -> np.ndarray:
    """The cheapest symbol per item of summed :func:`candidate_costs` (ties: the one nearest tau = 1)."""
    table = costs.cpu().numpy()
    order = np.argsort(np.abs(SYMBOLS - NEUTRAL_SYMBOL), kind="stable")  # neutral first, then its neighbours
    best = order[np.argmin(table[:, order], axis=1)]
    return best.astype(np.uint32)
