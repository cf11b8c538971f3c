"""From network logits to bit probabilities: training costs and coder input.

A network step emits, per pixel, 6 numbers ``(lr, lg, lb, a, b, c)``; the
probabilities of a 1 are, with ``r' = 2r-1`` and ``g' = 2g-1``::

    P(r) = σ(lr)    P(g) = σ(lg + a·r')    P(b) = σ(lb + b·r' + c·g')

Contract of what goes to the entropy coder (:func:`quantise_probs7`)
--------------------------------------------------------------------
The decoder recomputes these numbers from what it has decoded; one rounding
difference from the encoder corrupts the rest of the stream. So:

1. Each probability of a 1 is an integer ``q`` in **1..255**, meaning
   ``q/256``: never 0 or 256, so both values of every bit stay codable
   (no symbol has probability 0 or 1, ``P(0) = (256-q)/256 >= 1/256``).
2. ``q = clamp(round(256·P), 1, 255)`` with ``P`` computed in float32 and
   ``round`` = round half to even (``torch.round``); ``256·P`` is exact.
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

import numpy as np
import torch
from torch import Tensor

P_MIN = 1e-6
P_MAX = 1.0 - 1e-6
#: ±inf logits are replaced by this before the conditional sums.
INF_LOGIT = 1e30
#: (r', g') sign pairs of the 7 coder probabilities (0 = not used).
_SEVEN_SIGNS: tuple[tuple[int, int], ...] = (
    (0, 0), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1),
)


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
    drops padding positions from the sum.

    Returns:
        (B,) float.
    """
    p = coupled_probs(logits, bits).clamp(P_MIN, P_MAX)
    p_bit = torch.where(bits.bool(), p, 1 - p)
    cost = -torch.log2(p_bit)
    if valid is not None:
        cost = cost * valid.to(cost.dtype)
    return cost.sum(dim=(1, 2, 3))


def quantise_probs7(logits: Tensor) -> Tensor:
    """The 7 quantised probabilities per pixel that the coder consumes.

    Follows the contract in the module docstring.

    Args:
        logits: (B, 6, h, w) of one lattice step (any float dtype; computed
            in float32).

    Returns:
        (B, h*w, 7) contiguous uint8, every value in 1..255.

    Raises:
        ValueError: the logits hold a NaN.
    """
    _check_logits(logits)
    z = logits.to(torch.float32)
    if bool(torch.isnan(z).any()):
        raise ValueError("logits contain NaN; refusing to build coder probabilities")
    z = torch.nan_to_num(z, posinf=INF_LOGIT, neginf=-INF_LOGIT)
    columns = []
    for i, (rs, gs) in enumerate(_SEVEN_SIGNS):
        lr, lg, lb = _channel_logits(z, float(rs), float(gs))
        columns.append(lr if i == 0 else lg if i < 3 else lb)
    p = torch.sigmoid(torch.stack(columns, dim=-1))  # (B, h, w, 7)
    q = torch.round(p * 256).clamp_(1, 255).to(torch.uint8)
    return q.reshape(q.shape[0], -1, 7).contiguous()


def select_probs7(probs7: np.ndarray | Tensor, bits: np.ndarray | Tensor) -> np.ndarray:
    """The q of each coded bit: what the coder picks out of the 7 columns.

    Args:
        probs7: (B, h*w, 7) uint8 from :func:`quantise_probs7`.
        bits: (B, 3, h, w) 0/1 bits of the step.

    Returns:
        (B, 3, h*w) int64 q values (R, G, B).
    """
    q = np.asarray(probs7.cpu() if isinstance(probs7, Tensor) else probs7).astype(np.int64)
    bt = np.asarray(bits.cpu() if isinstance(bits, Tensor) else bits).astype(np.int64)
    bt = bt.reshape(bt.shape[0], 3, -1)
    r, g = bt[:, 0], bt[:, 1]
    q_r = q[..., 0]
    q_g = np.take_along_axis(q, (1 + r)[..., None], axis=-1)[..., 0]
    q_b = np.take_along_axis(q, (3 + 2 * r + g)[..., None], axis=-1)[..., 0]
    return np.stack((q_r, q_g, q_b), axis=1)


def quantised_bits_cost(
    probs7: np.ndarray | Tensor, bits: np.ndarray | Tensor, valid: np.ndarray | Tensor | None = None
) -> np.ndarray:
    """Exact information content (bits) of ``bits`` under the quantised probabilities.

    The ideal cost of an entropy coder that uses ``q/256`` for a 1 and
    ``(256-q)/256`` for a 0.

    Returns:
        (B,) float64.
    """
    q = select_probs7(probs7, bits)
    bt = np.asarray(bits.cpu() if isinstance(bits, Tensor) else bits).astype(np.int64)
    bt = bt.reshape(bt.shape[0], 3, -1)
    mass = np.where(bt == 1, q, 256 - q).astype(np.float64)
    cost = 8.0 - np.log2(mass)
    if valid is not None:
        v = np.asarray(valid.cpu() if isinstance(valid, Tensor) else valid).reshape(bt.shape[0], 1, -1)
        cost = cost * v
    return cost.sum(axis=(1, 2))
