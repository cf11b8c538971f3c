"""Classical lossless codecs behind one interface, for comparison tables.

Each :class:`BaselineCodec` encodes an ``(H, W, C)`` uint8 image to bytes and
decodes it back; :func:`measure` verifies the round trip, so a table never
reports a size for a codec that was not lossless. Codecs come from
imagecodecs (optional dependency: ``pip install aribbps[bench]``); missing
ones are reported as unavailable, never as a crash.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BaselineCodec:
    name: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]


def available_codecs() -> list[BaselineCodec]:
    """PNG, WebP lossless, JPEG-XL lossless (effort 7), JPEG-LS, JPEG 2000 (reversible)."""
    try:
        import imagecodecs as ic
    except ImportError:
        return []
    codecs = [
        BaselineCodec("PNG", lambda a: ic.png_encode(a, level=9), ic.png_decode),
        BaselineCodec("WebP-lossless", lambda a: ic.webp_encode(a, lossless=True, level=100, method=6),
                      ic.webp_decode),
        BaselineCodec("JPEG-XL-lossless", lambda a: ic.jpegxl_encode(a, lossless=True, effort=7), ic.jpegxl_decode),
        BaselineCodec("JPEG-LS", lambda a: ic.jpegls_encode(a, level=0), ic.jpegls_decode),
        BaselineCodec("JPEG-2000", lambda a: ic.jpeg2k_encode(a, level=0, reversible=True), ic.jpeg2k_decode),
    ]
    return [c for c in codecs if _works(c)]


def _works(codec: BaselineCodec) -> bool:
    probe = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    try:
        return bool(np.array_equal(np.asarray(codec.decode(codec.encode(probe))).reshape(probe.shape), probe))
    except Exception:  # a codec missing from this imagecodecs build
        return False


@dataclass
class BaselineResult:
    name: str
    bytes: int
    subpixels: int
    seconds: float

    @property
    def bpd(self) -> float:
        return self.bytes * 8 / self.subpixels


def measure(codec: BaselineCodec, images: Sequence[np.ndarray]) -> BaselineResult:
    """Codes each image on its own; raises if any round trip is not exact."""
    total, subpixels, start = 0, 0, time.perf_counter()
    for image in images:
        data = codec.encode(image)
        back = np.asarray(codec.decode(data)).reshape(image.shape)
        if not np.array_equal(back, image):
            raise RuntimeError(f"{codec.name} did not round-trip an image of shape {image.shape}")
        total += len(data)
        subpixels += image.size
    return BaselineResult(codec.name, total, subpixels, time.perf_counter() - start)
