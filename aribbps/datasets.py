"""Image data sets for training and evaluation, and the train/validation split.

Three layouts, the paper code's (``--dataset_type``):

==============  ===============================================================
kind            layout under ``root``
==============  ===============================================================
``cifar10``     the CIFAR-10 "python version" batches ``data_batch_1..5`` and
                ``test_batch`` (pickles with ``b"data"`` uint8 (N, 3072) and
                ``b"labels"``), in ``root`` or in ``root/cifar-10-batches-py``.
                Nothing is downloaded.
``imagefolder`` images in subfolders of ``root`` (any depth; files directly
                in ``root`` are ignored), as torchvision's ImageFolder.
``filedataset`` images directly in ``root`` (subfolders are ignored).
==============  ===============================================================

Every item is ``(image, name)``: ``image`` a uint8 tensor (3, H, W), RGB
(greyscale is repeated, alpha dropped: training and the theoretical rate see
colour pixels only), ``name`` a stable identifier (the path relative to
``root`` with ``/`` separators, or ``data_batch_1/00042`` for CIFAR-10).
Items are in sorted name order, so an index means the same image on every
machine.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from aribbps.errors import AribError
from aribbps.imageio import load_image

#: Data set kinds accepted by :func:`open_dataset`.
DATASET_KINDS = ("cifar10", "imagefolder", "filedataset")
#: File extensions taken for images (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".tga", ".gif"}
)
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCHES = ("test_batch",)
CIFAR_SPLITS = ("train", "test", "all")
CIFAR_SUBDIR = "cifar-10-batches-py"

Item = tuple[Tensor, str]


class DatasetError(AribError, ValueError):
    """A data set is missing, empty or malformed."""


def to_rgb_chw(pixels: np.ndarray) -> Tensor:
    """(H, W, C) uint8 with C in 1..4 -> (3, H, W) uint8 RGB tensor."""
    if pixels.shape[2] in (2, 4):  # drop alpha
        pixels = pixels[..., :-1]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class Cifar10Dataset(Dataset[Item]):
    """CIFAR-10 from its local python batches (no download).

    Args:
        root: the folder holding the batches, or its parent holding
            ``cifar-10-batches-py``.
        split: ``train`` (data_batch_1..5, 50000 images), ``test``
            (test_batch, 10000) or ``all`` (train then test).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        if split not in CIFAR_SPLITS:
            raise DatasetError(f"unknown CIFAR-10 split {split!r}; choose one of {', '.join(CIFAR_SPLITS)}")
        batches = {"train": CIFAR_TRAIN_BATCHES, "test": CIFAR_TEST_BATCHES}.get(
            split, CIFAR_TRAIN_BATCHES + CIFAR_TEST_BATCHES
        )
        folder = _cifar_folder(Path(root), batches)
        arrays: list[np.ndarray] = []
        self.names: list[str] = []
        for batch in batches:
            data = _read_cifar_batch(folder / batch)
            arrays.append(data)
            self.names.extend(f"{batch}/{i:05d}" for i in range(len(data)))
        self.images = np.concatenate(arrays).reshape(-1, 3, 32, 32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        return torch.from_numpy(self.images[index].copy()), self.names[index]

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index`` without reading its pixels."""
        return tuple(self.images.shape[2:])  # type: ignore[return-value]


def _cifar_folder(root: Path, batches: Sequence[str]) -> Path:
    for folder in (root, root / CIFAR_SUBDIR):
        if all((folder / b).is_file() for b in batches):
            return folder
    missing = [b for b in batches if not (root / b).is_file()]
    raise DatasetError(
        f"CIFAR-10 batches not found in {str(root)!r} (missing {', '.join(missing)}); "
        "download and extract the 'CIFAR-10 python version' from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and pass its cifar-10-batches-py "
        "folder as --data_dir (aribbps does not download)"
    )


def _read_cifar_batch(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"cannot read CIFAR-10 batch {str(path)!r}: {exc}") from None
    data = entry.get(b"data") if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{str(path)!r} is not a CIFAR-10 batch (no uint8 b'data' of shape (N, 3072))")
    return data


class ImageFileDataset(Dataset[Item]):
    """Image files under a root, read with :func:`aribbps.imageio.load_image`.

    Args:
        root: the data set folder.
        files: paths relative to ``root`` (``/`` separators), in item order.
    """

    def __init__(self, root: str | os.PathLike[str], files: Sequence[str]) -> None:
        self.root = Path(root)
        self.names = list(files)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Item:
        name = self.names[index]
        return to_rgb_chw(load_image(self.root / name).pixels), name

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index`` from its file's header (the pixels are not decoded)."""
        path = self.root / self.names[index]
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read the size of {str(path)!r}: {exc}") from None
        return height, width


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(root: str | os.PathLike[str], recursive_subfolders: bool) -> list[str]:
    """Sorted image paths relative to ``root``.

    ``recursive_subfolders``: the files of every subfolder (any depth), not
    those of ``root`` itself (imagefolder); else the files of ``root`` only
    (filedataset). Hidden files and folders are skipped.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"data set folder {str(base)!r} does not exist or is not a folder")
    if not recursive_subfolders:
        return sorted(e.name for e in os.scandir(base) if e.is_file() and _is_image(e.name))
    found: list[str] = []
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(dirpath).relative_to(base)
        if rel == Path("."):
            continue
        found.extend((rel / f).as_posix() for f in files if _is_image(f))
    return sorted(found)


def open_dataset(kind: str, root: str | os.PathLike[str], split: str = "train") -> Dataset[Item]:
    """Open a data set of (uint8 (3, H, W) tensor, name) items.

    Args:
        kind: ``cifar10``, ``imagefolder`` or ``filedataset`` (module docstring).
        root: its folder.
        split: CIFAR-10 only: ``train``, ``test`` or ``all``.

    Raises:
        DatasetError: unknown kind, missing folder or batches, no images.
    """
    if kind == "cifar10":
        return Cifar10Dataset(root, split)
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown data set type {kind!r}; choose one of {', '.join(DATASET_KINDS)}")
    files = list_images(root, recursive_subfolders=kind == "imagefolder")
    if not files:
        where = "in subfolders of" if kind == "imagefolder" else "directly in"
        hint = " (images directly in the folder: use filedataset)" if kind == "imagefolder" else (
            " (images in subfolders: use imagefolder)"
        )
        raise DatasetError(f"no images found {where} {str(root)!r}{hint}")
    return ImageFileDataset(root, files)


def dataset_names(dataset: Dataset[Item]) -> list[str]:
    """The item names of a data set of this module, or of a Subset of one."""
    if isinstance(dataset, Subset):
        names = dataset_names(dataset.dataset)
        return [names[i] for i in dataset.indices]
    return list(dataset.names)  # type: ignore[attr-defined]


def image_sizes(dataset: Dataset[Item]) -> list[tuple[int, int]]:
    """(H, W) of every item of a data set of this module, or of a Subset of one, read cheaply."""
    if isinstance(dataset, Subset):
        inner = dataset.dataset
        if isinstance(inner, Subset):
            sizes = image_sizes(inner)
            return [sizes[i] for i in dataset.indices]
        return [inner.image_size(i) for i in dataset.indices]  # type: ignore[attr-defined]
    return [dataset.image_size(i) for i in range(len(dataset))]  # type: ignore[attr-defined,arg-type]


def _name_key(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8")).digest()


def split_indices(names: Sequence[str], valid_num: int, select: str = "last") -> tuple[list[int], list[int]]:
    """Split item indices into (train, validation).

    Args:
        names: item names in data set order.
        valid_num: size of the validation set (0 = none).
        select: ``last`` = the last ``valid_num`` items (the CIFAR-10
            default: data_batch_5 for 10000); ``hash`` = the ``valid_num``
            names with the smallest sha256, a held-out set that does not
            depend on the order of the files and changes little when images
            are added.

    Both lists are increasing.
    """
    n = len(names)
    if not 0 <= valid_num < n:
        raise DatasetError(
            f"validation size {valid_num} must be at least 0 and below the data set size {n}"
        )
    if select == "last":
        valid = set(range(n - valid_num, n))
    elif select == "hash":
        order = sorted(range(n), key=lambda i: (_name_key(names[i]), i))
        valid = set(order[:valid_num])
    else:
        raise DatasetError(f"unknown validation selection {select!r}; choose 'last' or 'hash'")
    return [i for i in range(n) if i not in valid], sorted(valid)


def train_valid_split(
    dataset: Dataset[Item], valid_num: int, select: str = "last"
) -> tuple[Subset[Item], Subset[Item]]:
    """:func:`split_indices` applied to a data set: ``(train, valid)`` subsets."""
    train, valid = split_indices(dataset_names(dataset), valid_num, select)
    return Subset(dataset, train), Subset(dataset, valid)


def crop_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Drop the last rows and columns so H and W are multiples of ``multiple``."""
    h, w = image.shape[-2:]
    hh, ww = h - h % multiple, w - w % multiple
    if hh == 0 or ww == 0:
        raise DatasetError(f"image of {h}x{w} pixels is smaller than the model's multiple {multiple}")
    return image[..., :hh, :ww]


class TrainingView(Dataset[Item]):
    """A data set as the trainer sees it: cropped to what the model accepts.

    Without ``crop``: each image is cut to multiples of ``multiple`` by
    dropping its last rows/columns. With ``crop``: a random ``crop`` x
    ``crop`` window (``random=True``) or the centre window (``random=False``,
    validation). ``hflip``: mirror with probability 1/2.

    The random choices of item ``i`` are a function of ``(seed, epoch, i)``
    only, so they do not depend on workers, ranks or where a run resumed.
    Call :meth:`set_epoch` before each epoch (before iterating a DataLoader).
    """

    def __init__(
        self, base: Dataset[Item], multiple: int, crop: int = 0, random: bool = True,
        hflip: bool = False, seed: int = 0,
    ) -> None:
        if crop and crop % multiple:
            raise DatasetError(f"crop size {crop} must be a multiple of the model's pad multiple {multiple}")
        self.base = base
        self.multiple = multiple
        self.crop = crop
        self.random = random
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def item_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the image this view makes of a base image of ``size`` (H, W)."""
        if self.crop:
            return self.crop, self.crop
        h, w = size
        return h - h % self.multiple, w - w % self.multiple

    def _generator(self, index: int) -> torch.Generator:
        key = hashlib.sha256(f"{self.seed}:{self.epoch}:{index}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(key[:8], "little"))

    def __getitem__(self, index: int) -> Item:
        image, name = self.base[index]
        g = self._generator(index) if (self.random and self.crop) or self.hflip else None
        if self.crop:
            image = self._crop(image, name, g)
        else:
            image = crop_to_multiple(image, self.multiple)
        if self.hflip and g is not None and bool(torch.randint(0, 2, (), generator=g)):
            image = image.flip(-1)
        return image.contiguous(), name

    def _crop(self, image: Tensor, name: str, g: torch.Generator | None) -> Tensor:
        h, w = image.shape[-2:]
        c = self.crop
        if h < c or w < c:
            raise DatasetError(f"image {name!r} is {w}x{h}, smaller than the crop size {c}")
        if self.random and g is not None:
            top = int(torch.randint(0, h - c + 1, (), generator=g))
            left = int(torch.randint(0, w - c + 1, (), generator=g))
        else:
            top, left = (h - c) // 2, (w - c) // 2
        return image[..., top:top + c, left:left + c]


def stack_batch(items: Sequence[Item]) -> tuple[Tensor, list[str]]:
    """DataLoader collate: stack same-size images, or say how to make them so."""
    shapes = {tuple(image.shape) for image, _ in items}
    if len(shapes) > 1:
        sizes = ", ".join(f"{s[2]}x{s[1]}" for s in sorted(shapes))
        raise DatasetError(
            f"a training batch holds images of different sizes ({sizes}); "
            "pass --random-crop SIZE to train on equal crops"
        )
    return torch.stack([image for image, _ in items]), [name for _, name in items]


def list_batch(items: Sequence[Item]) -> tuple[list[Tensor], list[str]]:
    """DataLoader collate for evaluation: images of any sizes, as a list."""
    return [image for image, _ in items], [name for _, name in items]

