"""Lane seals: the check every lane's rANS stream ends in, at no cost in bytes.

An empty rANS stack starts from constant states whose low 32 bits reach the
file holding nothing (:meth:`aribbps.coder.LaneCoder.seal`). The encoder
starts each lane from a 64-bit hash of the items it codes on that lane
instead; a decoder that pops the stream to its end is back in those starting
states and compares them with the same hash of the items it decoded. A
damaged stream or a decoder whose probabilities differ from the encoder's
fails the comparison (a wrong decode passes with probability 2^-64), so the
container needs no per-image checksum (format version 3, DESIGN.md 2.3).
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from aribbps.coder import LaneCoder


class LaneSealError(ValueError):
    """Some lanes did not decode to the items that were encoded.

    Attributes:
        items: indices of the items coded on those lanes (all suspect: one
            wrong bit derails the rest of a lane).
    """

    def __init__(self, items: list[int]) -> None:
        super().__init__(f"{len(items)} items did not decode to what was encoded (lane check failed)")
        self.items = items


def lane_seals(items: Sequence[np.ndarray], lane_items: Sequence[Sequence[int]],
               ids: Sequence[int] | None = None) -> np.ndarray:
    """Per lane, the first 8 bytes (little-endian) of BLAKE2b over the lane's
    items in decoding order, each as its id (u64), its shape (three u32) and
    its bytes. ``ids`` (default: the item indices) name the items for the
    caller, e.g. their index in the archive: a decoder that puts the right
    pixels under the wrong item fails the check too."""
    seals = np.zeros(len(lane_items), np.uint64)
    for lane, indices in enumerate(lane_items):
        h = hashlib.blake2b(digest_size=8)
        for i in indices:
            item = np.ascontiguousarray(items[i], dtype=np.uint8)
            h.update(struct.pack("<Q3I", i if ids is None else ids[i], *item.shape))
            h.update(item.data)  # contiguous: hashed in place, no copy
        seals[lane] = int.from_bytes(h.digest(), "little")
    return seals


def check_lane_seals(coder: LaneCoder, items: Sequence[np.ndarray], lane_items: Sequence[Sequence[int]],
                     ids: Sequence[int] | None = None) -> None:
    """Raises :class:`LaneSealError` naming the items of every lane whose stream
    is not decoded to its end or whose seal differs from the decoded items' hash."""
    values, ok = coder.seal_values()
    expected = lane_seals(items, lane_items, ids)
    failed = [i for lane, indices in enumerate(lane_items)
              if not ok[lane] or values[lane] != expected[lane] for i in indices]
    if failed:
        raise LaneSealError(sorted(failed))
