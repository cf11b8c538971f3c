"""Training batches of images of one size each, for data sets of mixed sizes.

The trainer stacks a batch into one tensor, so its images must share a
size. :class:`SizeGroupedBatches` walks a shuffled order of the whole data
set and fills one open batch per size; a batch of images of H x W pixels
holds ``max(1, pixels // (H * W))`` images, so every batch costs about the
same whatever its size, and each size gets batches in proportion to its
share of the data set's pixels.

Like :class:`aribbps.train.trainer.ResumableSampler`, the batches of epoch
``e`` are a function of ``(seed, e)`` only: every rank builds the same list
and takes every ``world_size``-th batch (the tail that would leave ranks
with unequal counts is dropped, as are the batches that never filled), and
:attr:`start` skips the batches a resumed run already used.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def images_per_batch(size: tuple[int, int], pixels: int) -> int:
    """How many images of ``size`` (H, W) a batch of ``pixels`` pixels holds (at least 1)."""
    h, w = size
    return max(1, pixels // (h * w))


class SizeGroupedBatches(Sampler[list[int]]):
    """Batches of item indices, each of one image size (module docstring).

    Args:
        sizes: (H, W) of every item, as the trainer will see it.
        pixels: pixels per batch; a batch holds :func:`images_per_batch` images.
        rank, world_size: this process's shard of the batches.
        seed: with the epoch, fixes the order.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], pixels: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if pixels < 1:
            raise ValueError(f"pixels per batch must be positive, not {pixels}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.sizes = [tuple(s) for s in sizes]
        self.pixels = pixels
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.start = 0  # batches of this rank's epoch to skip
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self) -> list[list[int]]:
        """All ranks' batches of the current epoch, in order."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.sizes), generator=g).tolist()
        open_batches: dict[tuple[int, int], list[int]] = {}
        batches: list[list[int]] = []
        for index in order:
            size = self.sizes[index]
            batch = open_batches.setdefault(size, [])
            batch.append(index)
            if len(batch) == images_per_batch(size, self.pixels):
                batches.append(batch)
                open_batches[size] = []
        self._cache = (self.epoch, batches)
        return batches

    def rank_batches(self) -> list[list[int]]:
        """This rank's whole share of the epoch (equal counts on every rank)."""
        batches = self.epoch_batches()
        per_rank = len(batches) // self.world_size
        return batches[self.rank::self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.rank_batches()[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.rank_batches()) - self.start)
