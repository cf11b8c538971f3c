"""Python face of the C++ lane coder (``aribbps._coder``).

A :class:`LaneCoder` holds L independent rANS stacks ("lanes"). Every method
takes, per lane, an array of items: either one array shaped ``(L, n, ...)``
(all lanes equally long) or a list of L arrays of different lengths. Pops
return the same structure they were given probabilities in.

Order convention: ``push_*`` pushes items last-first so that a later
``pop_*`` returns them in array order; ``pop_*`` followed by ``push_*`` of
the result restores the stack bit for bit (bits-back). A pop that would read
below the bottom of a stack raises :class:`NotEnoughBitsError` and leaves
every lane as it was.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from aribbps import _coder
from aribbps._coder import NotEnoughBitsError, StreamError

__all__ = ["LaneCoder", "NotEnoughBitsError", "PROB_CODES", "StreamError", "binary_code_ones", "latent_freqs",
           "LATENT_PRECISION_BITS", "LATENT_D_FRAC_BITS", "LATENT_D_MAX"]

LATENT_PRECISION_BITS: int = _coder.LATENT_PRECISION_BITS
LATENT_D_FRAC_BITS: int = _coder.LATENT_D_FRAC_BITS
LATENT_D_MAX: int = _coder.LATENT_D_MAX
#: What the binary calls' probability bytes can mean, by the coder's code
#: (``kernels.entropy_tail.PROB_CODES`` names the same; the container's flag bit 6 is the index).
PROB_CODES: tuple[str, ...] = tuple(_coder.PROB_CODES)

PerLane = Union[np.ndarray, Sequence[np.ndarray]]


def _flatten(items: PerLane, lanes: int, item_shape: tuple[int, ...], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates per-lane arrays into one flat array plus L + 1 offsets."""
    if isinstance(items, np.ndarray):
        if items.shape[0] != lanes:
            raise ValueError(f"expected {lanes} lanes on axis 0, got shape {items.shape}")
        per_lane = items.shape[1] if items.ndim > 1 else 0
        if items.shape[2:] != item_shape:
            raise ValueError(f"expected items of shape {item_shape}, got array of shape {items.shape}")
        flat = np.ascontiguousarray(items, dtype=dtype).reshape(-1, *item_shape)
        offsets = np.arange(lanes + 1, dtype=np.int64) * per_lane
        return flat, offsets
    if len(items) != lanes:
        raise ValueError(f"expected {lanes} per-lane arrays, got {len(items)}")
    arrays = [np.asarray(a, dtype=dtype).reshape(-1, *item_shape) for a in items]
    offsets = np.zeros(lanes + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros((0, *item_shape), dtype=dtype)
    return np.ascontiguousarray(flat), offsets


def _unflatten(flat: np.ndarray, offsets: np.ndarray, like: PerLane) -> PerLane:
    if isinstance(like, np.ndarray):
        return flat.reshape(like.shape[0], -1, *flat.shape[1:])
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _per_lane_param(value: Union[int, Sequence[int], np.ndarray], lanes: int, dtype: type) -> np.ndarray:
    array = np.asarray(value, dtype=dtype)
    if array.ndim == 0:
        return np.full(lanes, array, dtype=dtype)
    if array.shape != (lanes,):
        raise ValueError(f"expected one value per lane ({lanes}), got shape {array.shape}")
    return np.ascontiguousarray(array)


def binary_code_ones(code: int) -> tuple[int, np.ndarray]:
    """``(bits, one)`` of the coder's probability code ``code`` (index in
    :data:`PROB_CODES`): a byte q means P(1) = one[q] / 2^bits."""
    bits, one = _coder.binary_code_ones(code)
    return int(bits), np.asarray(one)


def _prob_code_index(prob_code: str) -> int:
    if prob_code not in PROB_CODES:
        raise ValueError(f"prob_code must be one of {PROB_CODES}, got {prob_code!r}")
    return PROB_CODES.index(prob_code)


class LaneCoder:
    """L parallel rANS stacks; see the module docstring for the conventions.

    Args:
        lanes: number of independent stacks.
        threads: worker threads (0 = one per CPU, never more than ``lanes``).
        prob_code: what the binary calls' probability bytes mean (:data:`PROB_CODES`).
    """

    def __init__(self, lanes: int, threads: int = 0, prob_code: str = "logit", *,
                 _core: _coder.LaneCoder | None = None) -> None:
        self._core = _core if _core is not None else _coder.LaneCoder(lanes, threads, _prob_code_index(prob_code))

    @classmethod
    def from_bytes(cls, streams: Sequence[bytes], threads: int = 0, prob_code: str = "logit") -> "LaneCoder":
        """Rebuilds lanes from :meth:`to_bytes` output; bad bytes raise StreamError."""
        if len(streams) == 0:
            raise StreamError("no lane streams")
        core = _coder.LaneCoder.from_bytes(list(streams), threads, _prob_code_index(prob_code))
        return cls(len(streams), threads, _core=core)

    @property
    def lanes(self) -> int:
        return self._core.lanes

    @property
    def threads(self) -> int:
        return self._core.threads

    # -- binary symbols: probs in [1, 255], meaning set by prob_code ---------
    def push_binary(self, bits: PerLane, probs: PerLane) -> None:
        b, offsets = _flatten(bits, self.lanes, (), np.uint8)
        p, offsets_p = _flatten(probs, self.lanes, (), np.uint8)
        self._check_same(offsets, offsets_p)
        self._core.push_binary(b, p, offsets)

    def pop_binary(self, probs: PerLane) -> PerLane:
        p, offsets = _flatten(probs, self.lanes, (), np.uint8)
        return _unflatten(self._core.pop_binary(p, offsets), offsets, probs)

    # -- RGB-coupled pixels: bits (..., 3), probs (..., 7) (DESIGN 1.3) ------
    def push_rgb(self, bits: PerLane, probs: PerLane) -> None:
        b, offsets = _flatten(bits, self.lanes, (3,), np.uint8)
        p, offsets_p = _flatten(probs, self.lanes, (7,), np.uint8)
        self._check_same(offsets, offsets_p)
        self._core.push_rgb(b, p, offsets)

    def pop_rgb(self, probs: PerLane) -> PerLane:
        p, offsets = _flatten(probs, self.lanes, (7,), np.uint8)
        return _unflatten(self._core.pop_rgb(p, offsets), offsets, probs)

    # -- uniform k-bit values ------------------------------------------------
    def push_uniform(self, values: PerLane, k: int) -> None:
        v, offsets = _flatten(values, self.lanes, (), np.uint32)
        self._core.push_uniform(v, k, offsets)

    def pop_uniform(self, counts: Sequence[int], k: int) -> list[np.ndarray]:
        offsets = np.zeros(self.lanes + 1, dtype=np.int64)
        np.cumsum(np.asarray(counts, dtype=np.int64), out=offsets[1:])
        flat = self._core.pop_uniform(k, offsets)
        return [flat[offsets[i]:offsets[i + 1]] for i in range(self.lanes)]

    # -- discretised logistic latent bins (DESIGN 1.5) -----------------------
    def push_latent(self, bins: PerLane, d_fixed: PerLane, qp: Union[int, Sequence[int]]) -> None:
        b, offsets = _flatten(bins, self.lanes, (), np.uint32)
        d, offsets_d = _flatten(d_fixed, self.lanes, (), np.int32)
        self._check_same(offsets, offsets_d)
        self._core.push_latent(b, d, _per_lane_param(qp, self.lanes, np.uint8), offsets)

    def pop_latent(self, d_fixed: PerLane, qp: Union[int, Sequence[int]]) -> PerLane:
        d, offsets = _flatten(d_fixed, self.lanes, (), np.int32)
        flat = self._core.pop_latent(d, _per_lane_param(qp, self.lanes, np.uint8), offsets)
        return _unflatten(flat, offsets, d_fixed)

    def pop_latent_partial(self, d_fixed: PerLane, qp: Union[int, Sequence[int]]) -> tuple[PerLane, np.ndarray]:
        """Like :meth:`pop_latent`, but lanes short of bits are left unchanged and
        flagged False in the returned ``ok`` array instead of raising."""
        d, offsets = _flatten(d_fixed, self.lanes, (), np.int32)
        flat, ok = self._core.pop_latent_partial(d, _per_lane_param(qp, self.lanes, np.uint8), offsets)
        return _unflatten(flat, offsets, d_fixed), ok

    # -- pseudo-random padding (initial bits) --------------------------------
    def push_padding(self, words: Union[int, Sequence[int]], seeds: Union[int, Sequence[int]]) -> None:
        self._core.push_padding(_per_lane_param(words, self.lanes, np.int64),
                                _per_lane_param(seeds, self.lanes, np.uint64))

    def pop_padding(self, words: Union[int, Sequence[int]], seeds: Union[int, Sequence[int]]) -> np.ndarray:
        """Pops padding words; returns per lane whether they matched the seeded stream."""
        return self._core.pop_padding(_per_lane_param(words, self.lanes, np.int64),
                                      _per_lane_param(seeds, self.lanes, np.uint64))

    # -- bookkeeping -----------------------------------------------------------
    def num_bits(self) -> np.ndarray:
        """Information currently held by each lane, in bits (0 when empty)."""
        return self._core.num_bits()

    def is_empty(self) -> np.ndarray:
        return self._core.is_empty()

    def seal(self, values: Sequence[int] | np.ndarray) -> None:
        """Seals every lane (all must be empty) with a 64-bit value: see :meth:`seal_values`."""
        self._core.seal(np.ascontiguousarray(values, dtype=np.uint64))

    def seal_values(self) -> tuple[np.ndarray, np.ndarray]:
        """(values uint64, ok bool) per lane. A lane decoded to its end is back in
        the states :meth:`seal` gave it, so ``ok`` and ``values`` is the seal; a
        stream with bits left over has ok False. Costs no bytes: the seal sits in
        the low bits of the rANS states that would otherwise hold a constant."""
        return self._core.seal_values()

    def to_bytes(self) -> list[bytes]:
        return self._core.to_bytes()

    @staticmethod
    def _check_same(a: np.ndarray, b: np.ndarray) -> None:
        if not np.array_equal(a, b):
            raise ValueError("the two arrays must have the same number of items in every lane")


def latent_freqs(bins: np.ndarray, d_fixed: np.ndarray, qp: int) -> np.ndarray:
    """Frequencies out of ``2**LATENT_PRECISION_BITS`` that the coder gives latent bins."""
    return _coder.latent_freqs(np.ascontiguousarray(bins, dtype=np.uint32).ravel(),
                               np.ascontiguousarray(d_fixed, dtype=np.int32).ravel(), int(qp))
