"""Data sets: CIFAR-10 batches, image folders, the validation split, training crops."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aribbps.datasets import (
    CIFAR_SUBDIR,
    DatasetError,
    TrainingView,
    crop_to_multiple,
    dataset_names,
    list_batch,
    open_dataset,
    split_indices,
    stack_batch,
    train_valid_split,
)
from aribbps.errors import ImageFormatError


def _write_cifar(folder: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """Fake CIFAR-10 python batches: data_batch_1..5 and test_batch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0] * per_batch, b"batch_label": name.encode()}, f)
        batches[name] = data
    return batches


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _rgb(seed: int, h: int = 6, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- CIFAR-10 --------------------------------------------------------------------

def test_cifar10_reads_local_batches(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path / CIFAR_SUBDIR)
    train = open_dataset("cifar10", tmp_path)  # the parent folder works too
    assert len(train) == 15
    image, name = train[4]
    assert name == "data_batch_2/00001"
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image, torch.from_numpy(batches["data_batch_2"][1].reshape(3, 32, 32)))
    test = open_dataset("cifar10", tmp_path / CIFAR_SUBDIR, split="test")
    assert dataset_names(test) == [f"test_batch/{i:05d}" for i in range(3)]
    assert len(open_dataset("cifar10", tmp_path, split="all")) == 18


def test_cifar10_missing_or_malformed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data_batch_1.*does not download"):
        open_dataset("cifar10", tmp_path)
    _write_cifar(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8)}, f)
    with pytest.raises(DatasetError, match="data_batch_3.*not a CIFAR-10 batch"):
        open_dataset("cifar10", tmp_path / "c")
    (tmp_path / "c" / "data_batch_4").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read|not a CIFAR"):
        open_dataset("cifar10", tmp_path / "c")


# --- folders ---------------------------------------------------------------------

def test_imagefolder_takes_subfolders_sorted_and_converts_to_rgb(tmp_path: Path) -> None:
    rgb = _rgb(0)
    _save(tmp_path / "b" / "x.png", rgb)
    _save(tmp_path / "a" / "deep" / "z.png", _rgb(1)[..., 0])  # greyscale
    rgba = np.concatenate([_rgb(2), np.full((6, 10, 1), 7, np.uint8)], axis=2)
    _save(tmp_path / "a" / "y.png", rgba)
    _save(tmp_path / "root.png", _rgb(3))  # not in a subfolder: ignored
    _save(tmp_path / ".hidden" / "h.png", _rgb(4))
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    ds = open_dataset("imagefolder", tmp_path)
    assert dataset_names(ds) == ["a/deep/z.png", "a/y.png", "b/x.png"]
    grey, _ = ds[0]
    assert grey.shape == (3, 6, 10) and torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    assert torch.equal(ds[1][0], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    assert torch.equal(ds[2][0], torch.from_numpy(rgb).permute(2, 0, 1))


def test_filedataset_takes_root_files_only(tmp_path: Path) -> None:
    for name in ("b.png", "a.bmp", "c.PNG"):
        _save(tmp_path / name, _rgb(len(name)))
    _save(tmp_path / "sub" / "d.png", _rgb(9))
    ds = open_dataset("filedataset", tmp_path)
    assert dataset_names(ds) == ["a.bmp", "b.png", "c.PNG"]
    image, name = ds[1]
    assert name == "b.png" and image.shape == (3, 6, 10)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset("filedataset", tmp_path / "missing")
    _save(tmp_path / "sub" / "a.png", _rgb(0))
    with pytest.raises(DatasetError, match="use imagefolder"):
        open_dataset("filedataset", tmp_path)
    _save(tmp_path / "b.png", _rgb(0))
    with pytest.raises(DatasetError, match="unknown data set type 'coco'"):
        open_dataset("coco", tmp_path)
    (tmp_path / "sub" / "bad.png").write_bytes(b"not a png")
    ds = open_dataset("imagefolder", tmp_path)
    with pytest.raises(ImageFormatError, match="bad.png"):
        ds[1]


# --- split -----------------------------------------------------------------------

def test_split_last_and_hash() -> None:
    names = [f"img{i:03d}.png" for i in range(20)]
    train, valid = split_indices(names, 5)
    assert valid == [15, 16, 17, 18, 19] and train == list(range(15))
    train, valid = split_indices(names, 5, "hash")
    assert len(valid) == 5 and sorted(train + valid) == list(range(20))
    held_out = {names[i] for i in valid}
    # The held-out set depends on the names, not on their order.
    shuffled = names[::-1]
    _, valid2 = split_indices(shuffled, 5, "hash")
    assert {shuffled[i] for i in valid2} == held_out
    assert split_indices(names, 0) == (list(range(20)), [])
    for bad in (-1, 20):
        with pytest.raises(DatasetError, match="validation size"):
            split_indices(names, bad)
    with pytest.raises(DatasetError, match="'random'"):
        split_indices(names, 2, "random")


def test_train_valid_split_subsets(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    train, valid = train_valid_split(open_dataset("cifar10", tmp_path), 4)
    assert len(train) == 11 and dataset_names(valid)[0] == "data_batch_4/00002"


# --- training view ---------------------------------------------------------------

class _Fixed(torch.utils.data.Dataset):
    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        self.names = [f"i{k}" for k in range(len(shapes))]
        self.images = [
            torch.arange(3 * h * w, dtype=torch.int32).reshape(3, h, w).to(torch.uint8) for h, w in shapes
        ]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.names[i]


def test_crop_to_multiple_drops_last_rows_and_columns() -> None:
    image = torch.arange(3 * 7 * 11).reshape(3, 7, 11)
    assert torch.equal(crop_to_multiple(image, 4), image[:, :4, :8])
    with pytest.raises(DatasetError, match="smaller"):
        crop_to_multiple(image[:, :3], 4)
    view = TrainingView(_Fixed([(7, 11)]), multiple=2)
    assert view[0][0].shape == (3, 6, 10)


def test_random_crops_are_a_function_of_seed_epoch_index() -> None:
    base = _Fixed([(12, 12)] * 4)
    a = TrainingView(base, 2, crop=4, hflip=True, seed=1)
    b = TrainingView(base, 2, crop=4, hflip=True, seed=1)
    crops = [a[i][0] for i in range(4)]
    assert all(c.shape == (3, 4, 4) for c in crops)
    assert all(torch.equal(c, b[i][0]) for i, c in enumerate(crops))
    seen = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        seen.add(a[0][0].numpy().tobytes())
    assert len(seen) > 1
    centre = TrainingView(base, 2, crop=4, random=False)[0][0]
    assert torch.equal(centre, base.images[0][:, 4:8, 4:8])
    with pytest.raises(DatasetError, match="multiple"):
        TrainingView(base, 4, crop=6)
    with pytest.raises(DatasetError, match="'i0' is 12x12, smaller than the crop size 16"):
        TrainingView(base, 2, crop=16)[0]


def test_hflip_mirrors_about_half_the_time() -> None:
    base = _Fixed([(2, 4)] * 64)
    view = TrainingView(base, 2, hflip=True, seed=3)
    flipped = sum(not torch.equal(view[i][0], base.images[i]) for i in range(64))
    assert 16 < flipped < 48
    assert all(torch.equal(TrainingView(base, 2)[i][0], base.images[i]) for i in range(4))


def test_collate_functions() -> None:
    base = _Fixed([(4, 4), (4, 4), (4, 6)])
    x, names = stack_batch([base[0], base[1]])
    assert x.shape == (2, 3, 4, 4) and names == ["i0", "i1"]
    with pytest.raises(DatasetError, match="--random-crop"):
        stack_batch([base[0], base[2]])
    images, names = list_batch([base[0], base[2]])
    assert [tuple(i.shape) for i in images] == [(3, 4, 4), (3, 4, 6)]
