"""From network logits to bit probabilities: training costs and coder input.

A network step emits, per pixel, 6 numbers ``(lr, lg, lb, a, b, c)``; the
probabilities of a 1 are, with ``r' = 2r-1`` and ``g' = 2g-1``::

    P(r) = σ(lr)    P(g) = σ(lg + a·r')    P(b) = σ(lb + b·r' + c·g')

Contract of what goes to the entropy coder (:func:`quantise_probs7`)
--------------------------------------------------------------------
The decoder recomputes these numbers from what it has decoded; one rounding
difference from the encoder corrupts the rest of the stream. So:

1. Each probability of a 1 is a byte ``q`` in **1..255**; its meaning is the
   *probability code* (``PROB_CODES``), recorded in the file:

   * ``logit`` (written now): ``P(1) = one[q] / 2^16`` with
     ``one[q] = round(2^16 σ((q - 128) / 16))`` (23..65513, the coder's
     table, :func:`aribbps.coder.binary_code_ones`); from the coupled logit
     ``z``, ``q = clamp(round(clamp(16·z, -128, 128) + 128), 1, 255)``, the
     addition in float32. Steps of 1/16 in the logit cost at most about
     0.03% of the bits; a near-certain bit costs 0.0005 bits.
   * ``linear`` (files written before): ``P(1) = q / 256``,
     ``q = clamp(round(256·σ(z)), 1, 255)``. It cost 0.3-0.7% more: a
     near-certain bit costs at least 0.0056 bits.

   Never 0 or 1, so both values of every bit stay codable.
2. ``z`` and everything after it is float32, ``round`` = round half to even
   (``torch.round``); ``16·z`` and ``256·σ`` are exact.
3. Per pixel the 7 values ``q_r, q_g|r=0, q_g|r=1, q_b|00, q_b|01, q_b|10,
   q_b|11`` (``b|rg``, r the first index), pixels in row-major order of the
   quarter grid, as one contiguous uint8 array ``(B, h*w, 7)``; the coder
   picks the conditional ones while it codes. No floating point in the coder.
4. Degenerate logits: NaN raises ``ValueError`` (a NaN means a broken model,
   and coding with it would be silently wrong); ``±inf`` is clamped to
   ``±1e30`` before the sums, so it saturates to q = 255 or 1, and
   ``inf + (-inf)`` gives 0 (q = 128) instead of NaN.

Training and "theoretical" rates use the unquantised probabilities clamped
to ``[1e-6, 1 - 1e-6]`` (:func:`coupled_probs`, :func:`bits_cost`).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from aribbps.coder import binary_code_ones
from kernels.entropy_tail import PROB_CODES, quantise_probs7_ref

#: The probability code new files are written with.
WRITTEN_PROB_CODE = "logit"
P_MIN = 1e-6
P_MAX = 1.0 - 1e-6


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 4 or logits.shape[1] != 6:
        raise ValueError(f"logits must have shape (B, 6, h, w), got {tuple(logits.shape)}")


def _channel_logits(logits: Tensor, r_sign: Tensor | float, g_sign: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """The logits of R, G, B given the signs ``r' , g'`` of the decoded bits.

    The one place where the coupling formula lives, so training costs and
    coder probabilities use the same float operations in the same order.
    """
    lr, lg, lb, a, b, c = logits.unbind(dim=1)
    return lr, lg + a * r_sign, lb + b * r_sign + c * g_sign


def coupled_probs(logits: Tensor, bits: Tensor) -> Tensor:
    """Unquantised P(bit = 1) of R, G, B given the true bits (teacher forcing).

    Args:
        logits: (B, 6, h, w).
        bits: (B, 3, h, w) 0/1 (any integer or float dtype).

    Returns:
        (B, 3, h, w) float probabilities, not clamped.
    """
    _check_logits(logits)
    signs = bits.to(logits.dtype) * 2 - 1
    lr, lg, lb = _channel_logits(logits, signs[:, 0], signs[:, 1])
    return torch.sigmoid(torch.stack((lr, lg, lb), dim=1))


def bits_cost(logits: Tensor, bits: Tensor, valid: Tensor | None = None) -> Tensor:
    """−log2 likelihood of ``bits`` under ``logits``, summed per batch item.

    Probabilities are clamped to [1e-6, 1-1e-6]. ``valid`` (B, 1, h, w) bool
    drops padding positions from the sum; a (B, 3, h, w) or (B, 3, 1, 1)
    0/1 weight also drops channels (G and B of greyscale items).

    Returns:
        (B,) float.
    """
    p = coupled_probs(logits, bits).clamp(P_MIN, P_MAX)
    p_bit = torch.where(bits.bool(), p, 1 - p)
    cost = -torch.log2(p_bit)
    if valid is not None:
        cost = cost * valid.to(cost.dtype)
    return cost.sum(dim=(1, 2, 3))


def quantise_probs7(logits: Tensor, prob_code: str = WRITTEN_PROB_CODE) -> Tensor:
    """The 7 quantised probabilities per pixel that the coder consumes.

    Follows the contract in the module docstring.

    Args:
        logits: (B, 6, h, w) of one lattice step (any float dtype; computed
            in float32).
        prob_code: one of ``PROB_CODES``.

    Returns:
        (B, h*w, 7) contiguous uint8, every value in 1..255.

    Raises:
        ValueError: the logits hold a NaN.
    """
    return quantise_probs7_ref(logits, prob_code)


def coded_columns(bits: np.ndarray) -> np.ndarray:
    """Which of the 7 columns codes each bit: (B, 3, Q) int64 of (B, 3, Q) 0/1 bits (R: 0, G: 1 + r,
    B: 3 + 2r + g)."""
    r, g = bits[:, 0].astype(np.int64), bits[:, 1].astype(np.int64)
    return np.stack((np.zeros_like(r), 1 + r, 3 + 2 * r + g), axis=1)


def select_probs7(probs7: np.ndarray | Tensor, bits: np.ndarray | Tensor) -> np.ndarray:
    """The q of each coded bit: what the coder picks out of the 7 columns.

    Args:
        probs7: (B, h*w, 7) uint8 from :func:`quantise_probs7`.
        bits: (B, 3, h, w) 0/1 bits of the step.

    Returns:
        (B, 3, h*w) int64 q values (R, G, B).
    """
    q = np.asarray(probs7.cpu() if isinstance(probs7, Tensor) else probs7).astype(np.int64)
    bt = np.asarray(bits.cpu() if isinstance(bits, Tensor) else bits)
    columns = coded_columns(bt.reshape(bt.shape[0], 3, -1))
    return np.take_along_axis(q.transpose(0, 2, 1), columns, axis=1)


@functools.lru_cache(maxsize=None)
def probability_masses(prob_code: str) -> tuple[int, np.ndarray]:
    """``(bits, one)``: under ``prob_code`` a byte q means P(1) = one[q] / 2^bits (read-only)."""
    if prob_code not in PROB_CODES:
        raise ValueError(f"prob_code must be one of {PROB_CODES}, got {prob_code!r}")
    bits, one = binary_code_ones(PROB_CODES.index(prob_code))
    one.flags.writeable = False  # cached: shared by every caller
    return bits, one


def quantised_bits_cost(
    probs7: np.ndarray | Tensor, bits: np.ndarray | Tensor, valid: np.ndarray | Tensor | None = None,
    prob_code: str = WRITTEN_PROB_CODE,
) -> np.ndarray:
    """Exact information content (bits) of ``bits`` under the quantised probabilities.

    The ideal cost of an entropy coder that reads the bytes under ``prob_code``.

    Returns:
        (B,) float64.
    """
    precision, one = probability_masses(prob_code)
    q = one[select_probs7(probs7, bits)].astype(np.int64)
    bt = np.asarray(bits.cpu() if isinstance(bits, Tensor) else bits).astype(np.int64)
    bt = bt.reshape(bt.shape[0], 3, -1)
    mass = np.where(bt == 1, q, (1 << precision) - q).astype(np.float64)
    cost = precision - np.log2(mass)
    if valid is not None:
        v = np.asarray(valid.cpu() if isinstance(valid, Tensor) else valid).reshape(bt.shape[0], 1, -1)
        cost = cost * v
    return cost.sum(axis=(1, 2))
