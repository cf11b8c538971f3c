"""Size-grouped training batches: one size per batch, deterministic, sharded, resumable."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aribbps.datasets import TrainingView, image_sizes, open_dataset, train_valid_split
from aribbps.train.size_batches import SizeGroupedBatches, images_per_batch

SIZES = [(32, 32)] * 60 + [(64, 64)] * 30 + [(32, 64)] * 9


def test_images_per_batch_keeps_pixels_and_takes_at_least_one() -> None:
    assert images_per_batch((32, 32), 32768) == 32
    assert images_per_batch((64, 64), 32768) == 8
    assert images_per_batch((256, 256), 32768) == 1
    assert images_per_batch((30, 30), 1000) == 1


def test_each_batch_holds_one_size_and_no_index_twice() -> None:
    sampler = SizeGroupedBatches(SIZES, 4096)
    batches = list(sampler)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    for b in batches:
        sizes = {SIZES[i] for i in b}
        assert len(sizes) == 1 and len(b) == images_per_batch(sizes.pop(), 4096)
    # full batches only: 60 / 4, 30 / 1, 9 // 2 = 4 (one (32, 64) image left over)
    assert Counter(SIZES[b[0]] for b in batches) == {(32, 32): 15, (64, 64): 30, (32, 64): 4}
    assert len(sampler) == 49


def test_order_depends_on_seed_and_epoch_only() -> None:
    a, b = SizeGroupedBatches(SIZES, 4096, seed=3), SizeGroupedBatches(SIZES, 4096, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(SizeGroupedBatches(SIZES, 4096, seed=4)) != first
    # the sizes are interleaved, not run one after the other
    kinds = [SIZES[batch[0]] for batch in first]
    assert sum(x != y for x, y in zip(kinds, kinds[1:])) > 10


def test_ranks_get_disjoint_equal_shares_and_start_skips() -> None:
    ranks = [SizeGroupedBatches(SIZES, 4096, rank=r, world_size=2, seed=1) for r in (0, 1)]
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == 24  # 49 batches: the odd one is dropped
    assert not {i for b in shares[0] for i in b} & {i for b in shares[1] for i in b}
    ranks[0].start = 5
    assert list(ranks[0]) == shares[0][5:] and len(ranks[0]) == 19


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        SizeGroupedBatches(SIZES, 0)
    with pytest.raises(ValueError, match="rank"):
        SizeGroupedBatches(SIZES, 64, rank=2, world_size=2)


def test_image_sizes_read_headers_and_the_view_maps_them(tmp_path: Path) -> None:
    for i, (h, w) in enumerate([(8, 8), (20, 12), (8, 8)]):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / f"{i}.png")
    base = open_dataset("filedataset", tmp_path)
    assert image_sizes(base) == [(8, 8), (20, 12), (8, 8)]
    train, _ = train_valid_split(base, 1)
    assert image_sizes(train) == [(8, 8), (20, 12)]
    view = TrainingView(base, 8)
    assert [view.item_size(s) for s in image_sizes(base)] == [(8, 8), (16, 8), (8, 8)]
    assert [tuple(view[i][0].shape[1:]) for i in range(3)] == [(8, 8), (16, 8), (8, 8)]
    assert TrainingView(base, 8, crop=8).item_size((20, 12)) == (8, 8)
