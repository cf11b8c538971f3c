"""A 14-bit fingerprint of how this machine computes the networks: recorded by the encoder,
compared by a decoder whose decoding failed.

A file decodes only where the networks compute the encoder's floats bit for
bit. aribbps pins what it can (oneDNN's and ATen's instruction sets,
:mod:`aribbps.cpu_isa`; the thread count, :mod:`aribbps.cpu_threads`), but
the kernels still depend on the CPU they run on: of the two version-2 test files written at
AVX2 with 2 threads on the machine of 2026-12-03, one failed its lane check
on the AMD EPYC of 2026-12-06 at every instruction-set setting, and both
on the CI machine of that day; so would a file from another torch version
or GPU. Such a failure used to read as a corrupted
file. The encoder now codes a fixed synthetic image with the file's model,
mode and kernel path and stores a 14-bit hash of what came out: the streams
and the image's float cost in the model's own bits, which moves with any
rounding difference of the networks, not only with one that changes a
quantised probability (those are rare: two machines wrote the same bytes
for one of the version-2 files and not for the other). When decoding fails,
the decoder codes the same image: another hash means this machine computes
differently, the likely cause (the hash is more sensitive than decoding:
it can differ on a machine that decodes most files); the same hash means
the file is damaged (unless the networks differ only at other shapes than the
probe's, or the hashes collide, 1 in 16,384). Decoding itself never
depends on it. 14 bits are a 2-byte varint: with its key, 4 bytes a file
(0.01 bits per sub-pixel on a 32x32 RGB image).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aribbps.packed import recorded_int

#: The archive extra key of the encoder's probe.
EXTRA_KEY = "numerics_probe"
#: Height and width of the synthetic image.
SIZE = 32
_MAX = 0x3FFF

ProbeEncoder = Callable[[np.ndarray], Sequence[bytes]]
_cache: dict[tuple[Any, ...], int] = {}


def probe_image() -> np.ndarray:
    """The (3, SIZE, SIZE) uint8 image every probe codes: gradients with integer-hash texture,
    so every bit plane carries varied probabilities (no RNG, so it never changes)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.int64)
    texture = ((x * 73_856_093) ^ (y * 19_349_663)) % 61
    return np.stack([(x * 5 + y * 3 + texture + 40 * c) % 256 for c in range(3)]).astype(np.uint8)


def fingerprint(encode: ProbeEncoder, key: tuple[Any, ...]) -> int:
    """The hash of what ``encode`` makes of :func:`probe_image` (its streams and float costs, as
    bytes); cached by ``key``, which must name everything that output depends on (model, mode,
    device, kernel path, probability code, threads, instruction set)."""
    if key not in _cache:
        digest = hashlib.blake2b(digest_size=2)
        for part in encode(probe_image()):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        _cache[key] = int.from_bytes(digest.digest(), "little") & _MAX
    return _cache[key]


def recorded(extra: dict[str, Any]) -> int | None:
    """The encoder's probe (None: a file from before the probe).

    Raises:
        ArchiveError: a value that is not an int in 0..0x3FFF.
    """
    return recorded_int(extra, EXTRA_KEY, 0, _MAX, "numerics probe")


def differs(extra: dict[str, Any], here: Callable[[], int]) -> tuple[int, int] | None:
    """(file's probe, this machine's) where both are known and differ, else None."""
    wanted = recorded(extra)
    if wanted is None:
        return None
    got = here()
    return None if got == wanted else (wanted, got)
