"""Adaptive correction of the coder's probabilities, learnt from the bits already coded.

The model is calibrated on its training photos; on an image it has never
seen its probabilities are off in ways that repeat across the image (a plane
holding more ones than the model expects, a band of confidence that is too
sure). Per-plane temperatures (:mod:`aribbps.temperature`) only rescale the
logits; this corrects what they cannot, at no side cost: both ends learn the
same correction from the bits coded so far.

Per item, every coded bit falls into a *cell*: its plane, which of the seven
probability columns coded it (``aribbps.probability``: ``r``, ``g|r``,
``b|rg``) and the band of its probability byte ``q`` (``q >> BAND_SHIFT``,
16 bands of 1 in the logit each with the logit code). A cell keeps the count
``n`` of its bits and the sum ``e`` of ``bit * 2^16 - P(q)``, with ``P(q)``
the code's mass of a 1 in units of 1/2^16 (``one[q] << (16 - bits)``). A bit is
then coded with the byte whose ``P`` is nearest to
``P(q) + floor(e / (n + PRIOR_COUNT))`` clamped to ``[P(1), P(255)]``: the
cell's mean error, shrunk towards 0 while the cell has seen few bits.

A correction covers the planes of one network call on one round (the SIG
planes or the INS planes, :mod:`aribbps.arib`; all 8 planes in context mode)
and starts from zero for each; within it, the cells learn stage by stage:
a stage is coded with what the stages before it taught. So the encoder, which
knows every bit, and the decoder, which learns them stage by stage, compute
the same bytes. Integer arithmetic only: the same on every machine.

Measured on held-out photos with the shipped model: 0.2-0.3% fewer bits on
32x32 patches, 0.3-0.4% on 64x64 and 0.6% on 256x256 crops
(``bench/feature_gain.py --feature corrections``, docs/default_model.md).
"""
from __future__ import annotations

import functools

import numpy as np

from aribbps.probability import coded_columns, probability_masses

#: q >> BAND_SHIFT is a bit's band: 16 bands of the bytes 1..255.
BAND_SHIFT = 4
BANDS = 256 >> BAND_SHIFT
#: Probability columns per pixel (aribbps.probability, "Contract").
COLUMNS = 7
PLANES = 8
#: Pseudo-counts of zero error every cell starts with.
PRIOR_COUNT = 128
#: Masses are compared in units of 1/2^MASS_BITS, whatever the code's precision.
MASS_BITS = 16


@functools.lru_cache(maxsize=None)
def _nearest_bytes(prob_code: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mass, nearest)``: the code's masses of a 1 in 1/2^16 as int64, and for every mass
    0..2^16 - 1 the byte whose mass is nearest (the lower one on a tie), which clamps to bytes
    1..255 as well (read-only)."""
    bits, one = probability_masses(prob_code)
    one = one.astype(np.int64) << (MASS_BITS - bits)
    midpoints = (one[1:255] + one[2:256]) // 2
    nearest = (1 + np.searchsorted(midpoints, np.arange(1 << MASS_BITS))).astype(np.uint8)
    one.flags.writeable = nearest.flags.writeable = False
    return one, nearest


class ProbCorrection:
    """The cells of ``items`` items (one round's lanes) for one network call.

    Args:
        items: items in the round.
        prob_code: the file's probability code (what the bytes mean).
    """

    def __init__(self, items: int, prob_code: str) -> None:
        self._one, self._nearest = _nearest_bytes(prob_code)
        self._full = 1 << MASS_BITS
        self.count = np.zeros((items, PLANES * COLUMNS * BANDS), np.int64)
        self.error = np.zeros((items, PLANES * COLUMNS * BANDS), np.int64)

    def _cells(self, k: int, columns: np.ndarray, q: np.ndarray) -> np.ndarray:
        return ((k - 1) * COLUMNS + columns) * BANDS + (q >> BAND_SHIFT)

    def corrected(self, k: int, probs7: np.ndarray) -> np.ndarray:
        """Plane ``k``'s probabilities of the next stage, ``(n, Q, 7)`` uint8, corrected (same shape)."""
        if not 1 <= k <= PLANES:
            raise ValueError(f"plane must lie in 1..{PLANES}, got {k}")
        n = len(probs7)
        if n != len(self.count):
            raise ValueError(f"expected probabilities of {len(self.count)} items, got {n}")
        # Every (item, column, byte) once: a (n, 7, 256) table of corrected bytes, then one lookup.
        start = (k - 1) * COLUMNS * BANDS
        cells = slice(start, start + COLUMNS * BANDS)
        error = self.error[:, cells]
        if not error.any():  # nothing learnt for this plane yet
            return probs7
        shift = (error // (self.count[:, cells] + PRIOR_COUNT)).reshape(n, COLUMNS, BANDS)
        p = self._one[None, None, :] + np.repeat(shift, 1 << BAND_SHIFT, axis=2)
        table = self._nearest[np.clip(p, 0, self._full - 1)]
        index = probs7.astype(np.intp) + (np.arange(n * COLUMNS) * 256).reshape(n, 1, COLUMNS)
        return table.reshape(-1)[index]

    def learn(self, k: int, probs7: np.ndarray, bits: np.ndarray, coded: np.ndarray, rgb: np.ndarray) -> None:
        """Adds one stage's coded bits of plane ``k`` to the cells.

        Args:
            probs7: the stage's uncorrected probabilities, (n, Q, 7) uint8.
            bits: its bits, (n, 3, Q) or (n, 3, h, w) with h*w = Q, 0/1.
            coded: (n, Q) bool, the positions the stage coded.
            rgb: (n,) bool: False for items of which only R is coded.
        """
        n, positions, _ = probs7.shape
        b = bits.reshape(n, 3, positions).astype(np.int64)
        columns = coded_columns(b)  # (n, 3, Q)
        q = np.take_along_axis(probs7.astype(np.int64).transpose(0, 2, 1), columns, axis=1)
        weight = coded[:, None, :] & np.where(np.asarray(rgb)[:, None], True, np.arange(3) == 0)[:, :, None]
        size = self.count.shape[1]
        flat = (self._cells(k, columns, q) + size * np.arange(n)[:, None, None])[weight]
        error = (b * self._full - self._one[q])[weight]
        # Float sums of integers below 2^53 are exact: a stage adds at most 2^16 per bit.
        self.count += np.bincount(flat, minlength=n * size).reshape(n, size)
        self.error += np.bincount(flat, weights=error, minlength=n * size).astype(np.int64).reshape(n, size)
