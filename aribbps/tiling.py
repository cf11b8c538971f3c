"""Cutting images into tiles, padding them for the model, and putting them back.

Two layouts meet here:

* images as loaded and saved: uint8 ``(H, W, C)`` (see :mod:`aribbps.imageio`);
* codec items: uint8 ``(C, H, W)``, channels first like the networks' input.

A large image is cut into a row-major grid of tiles (:func:`tile_grid`,
:func:`cut_tiles`); each tile is padded by edge replication to the multiple
the model needs (:func:`pad_to_multiple`); only the original ``h x w`` part
(:func:`valid_mask`) belongs to the image, and :func:`assemble` crops every
item back to its tile and pastes the tiles together. Edge replication keeps
the padding cheap to code and is rebuilt by the decoder from the decoded
valid pixels, so the padding never has to be stored.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """The rectangle ``[y0, y0 + h) x [x0, x0 + w)`` of an image."""

    y0: int
    x0: int
    h: int
    w: int


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got {height}x{width}")


def tile_grid(height: int, width: int, tile: int) -> list[Tile]:
    """Tiles of side ``tile`` covering a ``height x width`` image, row-major.

    Tiles on the bottom and right edges are smaller when the size is not a
    multiple of ``tile``. ``tile <= 0`` means no tiling: one tile, the image.
    """
    _check_size(height, width)
    if tile <= 0:
        return [Tile(0, 0, height, width)]
    return [
        Tile(y0, x0, min(tile, height - y0), min(tile, width - x0))
        for y0 in range(0, height, tile)
        for x0 in range(0, width, tile)
    ]


def to_chw(hwc: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` -> contiguous ``(C, H, W)``."""
    if hwc.ndim != 3:
        raise ValueError(f"expected an (H, W, C) array, got shape {hwc.shape}")
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def to_hwc(chw: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> contiguous ``(H, W, C)``."""
    if chw.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {chw.shape}")
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def cut_tiles(image: np.ndarray, tiles: Sequence[Tile]) -> list[np.ndarray]:
    """Cut an ``(H, W, C)`` image into one contiguous ``(C, h, w)`` item per tile."""
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    height, width = image.shape[:2]
    for t in tiles:
        if t.h < 1 or t.w < 1 or t.y0 < 0 or t.x0 < 0 or t.y0 + t.h > height or t.x0 + t.w > width:
            raise ValueError(f"{t} does not lie inside a {height}x{width} image")
    return [to_chw(image[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w]) for t in tiles]


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``multiple``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def pad_to_multiple(chw: np.ndarray, multiple: int) -> np.ndarray:
    """Pad a ``(C, h, w)`` item on the bottom and right by edge replication.

    The result is ``(C, H, W)`` with H and W the smallest multiples of
    ``multiple`` not below h and w; ``chw`` itself is returned if no padding
    is needed.
    """
    if chw.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {chw.shape}")
    _, h, w = chw.shape
    _check_size(h, w)
    big_h, big_w = padded_size(h, w, multiple)
    if (big_h, big_w) == (h, w):
        return chw
    return np.pad(chw, ((0, 0), (0, big_h - h), (0, big_w - w)), mode="edge")


def valid_mask(h: int, w: int, big_h: int, big_w: int) -> np.ndarray:
    """Bool ``(big_h, big_w)``: True on the top-left ``h x w`` original pixels."""
    if not (0 <= h <= big_h and 0 <= w <= big_w):
        raise ValueError(f"valid size {h}x{w} does not fit in {big_h}x{big_w}")
    mask = np.zeros((big_h, big_w), dtype=bool)
    mask[:h, :w] = True
    return mask


def assemble(
    tiles: Sequence[Tile],
    arrays: Sequence[np.ndarray],
    height: int,
    width: int,
    channels: int,
) -> np.ndarray:
    """Inverse of :func:`cut_tiles`: paste ``(C, >=h, >=w)`` items into ``(H, W, C)``.

    Each item is cropped to its tile's ``h x w`` (dropping any padding). The
    tiles must cover the image exactly once.
    """
    _check_size(height, width)
    if len(tiles) != len(arrays):
        raise ValueError(f"{len(tiles)} tiles but {len(arrays)} arrays")
    out = np.empty((height, width, channels), dtype=np.uint8)
    covered = np.zeros((height, width), dtype=bool)
    for t, a in zip(tiles, arrays, strict=True):
        if t.h < 1 or t.w < 1 or t.y0 < 0 or t.x0 < 0 or t.y0 + t.h > height or t.x0 + t.w > width:
            raise ValueError(f"{t} does not lie inside a {height}x{width} image")
        if a.ndim != 3 or a.shape[0] != channels or a.shape[1] < t.h or a.shape[2] < t.w:
            raise ValueError(f"item of shape {a.shape} does not hold {t} with {channels} channels")
        region = covered[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w]
        if region.any():
            raise ValueError(f"{t} overlaps an earlier tile")
        region[...] = True
        out[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] = a[:, :t.h, :t.w].transpose(1, 2, 0)
    if not covered.all():
        raise ValueError("the tiles do not cover the whole image")
    return out
