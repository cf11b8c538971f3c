"""Tests of tiling, padding and reassembly."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aribbps.tiling import (
    Tile,
    assemble,
    cut_tiles,
    pad_to_multiple,
    padded_size,
    tile_grid,
    to_chw,
    to_hwc,
    valid_mask,
)


def random_image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def round_trip(image: np.ndarray, tile: int, multiple: int) -> np.ndarray:
    h, w, c = image.shape
    tiles = tile_grid(h, w, tile)
    items = [pad_to_multiple(item, multiple) for item in cut_tiles(image, tiles)]
    return assemble(tiles, items, h, w, c)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 5), (33, 17), (64, 64)])
@pytest.mark.parametrize("tile", [0, -1, 1, 2, 8, 16, 100])
def test_cut_assemble_round_trip_fixed(h: int, w: int, tile: int) -> None:
    image = random_image(h, w, 3)
    for multiple in (1, 2, 8):
        np.testing.assert_array_equal(round_trip(image, tile, multiple), image)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 2, 3, 4]),
       st.integers(-2, 45), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_cut_assemble_round_trip(h: int, w: int, c: int, tile: int, multiple: int,
                                 seed: int) -> None:
    image = random_image(h, w, c, seed)
    np.testing.assert_array_equal(round_trip(image, tile, multiple), image)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.integers(-3, 70))
def test_grid_covers_once_in_row_major_order(h: int, w: int, tile: int) -> None:
    tiles = tile_grid(h, w, tile)
    count = np.zeros((h, w), dtype=int)
    for t in tiles:
        assert t.h >= 1 and t.w >= 1
        if tile > 0:
            assert t.h <= tile and t.w <= tile
        count[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] += 1
    assert (count == 1).all()
    assert [(t.y0, t.x0) for t in tiles] == sorted((t.y0, t.x0) for t in tiles)
    if tile <= 0:
        assert tiles == [Tile(0, 0, h, w)]
    else:
        assert len(tiles) == -(-h // tile) * -(-w // tile)


def test_grid_edges() -> None:
    assert tile_grid(3, 5, 2) == [
        Tile(0, 0, 2, 2), Tile(0, 2, 2, 2), Tile(0, 4, 2, 1),
        Tile(2, 0, 1, 2), Tile(2, 2, 1, 2), Tile(2, 4, 1, 1),
    ]
    with pytest.raises(ValueError, match="at least 1x1"):
        tile_grid(0, 5, 2)


def test_pad_replicates_edges_and_mask_marks_original() -> None:
    chw = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    padded = pad_to_multiple(chw, 4)
    assert padded.shape == (2, 4, 8)
    np.testing.assert_array_equal(padded[:, :3, :5], chw)
    np.testing.assert_array_equal(padded[:, 3, :5], chw[:, 2, :])  # last row repeated
    np.testing.assert_array_equal(padded[:, :3, 7], chw[:, :, 4])  # last column repeated
    assert padded[1, 3, 7] == chw[1, 2, 4]
    assert pad_to_multiple(chw, 1) is chw
    assert padded_size(3, 5, 4) == (4, 8)
    mask = valid_mask(3, 5, 4, 8)
    assert mask.dtype == bool and mask.shape == (4, 8)
    assert mask.sum() == 15 and mask[:3, :5].all()
    with pytest.raises(ValueError):
        valid_mask(5, 5, 4, 8)
    with pytest.raises(ValueError):
        pad_to_multiple(chw, 0)


def test_layout_conversions() -> None:
    hwc = random_image(3, 5, 2)
    chw = to_chw(hwc)
    assert chw.shape == (2, 3, 5) and chw.flags.c_contiguous
    np.testing.assert_array_equal(to_hwc(chw), hwc)
    items = cut_tiles(hwc, tile_grid(3, 5, 2))
    assert all(item.flags.c_contiguous and item.shape[0] == 2 for item in items)


def test_assemble_refuses_bad_input() -> None:
    image = random_image(4, 4, 1)
    tiles = tile_grid(4, 4, 2)
    items = cut_tiles(image, tiles)
    with pytest.raises(ValueError, match="overlaps"):
        assemble([tiles[0], tiles[0]], items[:2], 4, 4, 1)
    with pytest.raises(ValueError, match="do not cover"):
        assemble(tiles[:3], items[:3], 4, 4, 1)
    with pytest.raises(ValueError, match="does not hold"):
        assemble(tiles, [i[:, :1] for i in items], 4, 4, 1)
    with pytest.raises(ValueError, match="does not lie inside"):
        assemble([Tile(3, 3, 2, 2)], items[:1], 4, 4, 1)
    with pytest.raises(ValueError, match="4 tiles but 3 arrays"):
        assemble(tiles, items[:3], 4, 4, 1)
    with pytest.raises(ValueError, match="does not lie inside"):
        cut_tiles(image, [Tile(0, 0, 5, 1)])
