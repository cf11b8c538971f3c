"""Lane groups: one archive's items and lanes split into codecs that run concurrently.

Inside a lane the decoder is sequential: every lattice step's probabilities
need the bits popped just before. So one codec alternates between the
network (GPU) and the coder (CPU), and each waits for the other. With G lane
groups, item ``i`` belongs to group ``i mod G`` and the lanes are shared out
as evenly as possible; each group is a codec of its own, run in its own
thread (on CUDA on its own stream). While one group's coder works, with the
GIL released, another group's networks run, on both the encoder's and the
decoder's side.

A group's batches are the same on both sides, so the bytes are a function
of the inputs, the lanes and G; the archive records G (``extra["lane_groups"]``,
absent = 1) and the decoder rebuilds the same groups.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from aribbps.codec import CodingStats

R = TypeVar("R")
S = TypeVar("S", bound=CodingStats)

#: The archive-extra key that records the group count.
EXTRA_KEY = "lane_groups"


@dataclass(frozen=True)
class LaneGroup:
    """Items (indices into the archive's item list) and the lanes ``first_lane ..
    first_lane + lanes - 1`` of one group."""

    items: list[int]
    first_lane: int
    lanes: int


def default_groups(device: torch.device) -> int:
    """Two groups on CUDA, so that the GPU and the coder overlap; one on a CPU,
    where the network and the coder share the same cores anyway."""
    return 2 if device.type == "cuda" else 1


def plan_groups(n_items: int, lanes: int, groups: int) -> list[LaneGroup]:
    """The groups of ``n_items`` items on ``lanes`` lanes: never more groups than lanes or items."""
    if groups < 1:
        raise ValueError(f"lane groups must be at least 1, got {groups}")
    count = max(1, min(groups, lanes, n_items))
    out, first = [], 0
    for g in range(count):
        share = lanes // count + (g < lanes % count)
        out.append(LaneGroup(list(range(g, n_items, count)), first, share))
        first += share
    return out


def run_groups(work: Callable[[int, LaneGroup], R], groups: Sequence[LaneGroup], device: torch.device) -> list[R]:
    """``work(index, group)`` for every group, concurrently when there are several.

    On CUDA each group runs on its own stream, which first waits for the
    work already queued on the caller's stream, and is synchronised before
    its result is returned (the results are host data). The first error is
    raised after every group has stopped.
    """
    if len(groups) == 1:
        return [work(0, groups[0])]
    caller = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def run(index: int, group: LaneGroup) -> R:
        if caller is None:
            return work(index, group)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            result = work(index, group)
        stream.synchronize()
        return result

    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="aribbps-lane-group") as pool:
        futures = [pool.submit(run, i, g) for i, g in enumerate(groups)]
    return [f.result() for f in futures]


def merge_stats(parts: Sequence[S], groups: Sequence[LaneGroup], n_items: int) -> S:
    """The per-item arrays of every group's stats, back in archive item order."""
    merged = type(parts[0]).zeros(n_items)
    for part, group in zip(parts, groups):
        for f in dataclasses.fields(merged):
            getattr(merged, f.name)[group.items] = getattr(part, f.name)
    return merged


def group_streams(streams: Sequence[bytes], group: LaneGroup) -> list[bytes]:
    return list(streams[group.first_lane:group.first_lane + group.lanes])


def scatter(parts: Sequence[Sequence[np.ndarray]], groups: Sequence[LaneGroup], n_items: int) -> list[np.ndarray]:
    """Decoded items of every group, back in archive item order."""
    out: list[np.ndarray | None] = [None] * n_items
    for part, group in zip(parts, groups):
        for i, item in zip(group.items, part):
            out[i] = item
    assert all(item is not None for item in out)
    return out  # type: ignore[return-value]


def locked(progress: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """A progress callback that several groups may call from their threads."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    return report


def recorded_groups(extra: dict, lanes: int, n_items: int) -> int:
    """The group count an archive records, checked against its lanes and items.

    Raises:
        ValueError: not an integer the encoder could have written.
    """
    value = extra.get(EXTRA_KEY, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > max(1, min(lanes, n_items)):
        raise ValueError(f"corrupted: lane group count {value!r} does not fit {lanes} lanes and {n_items} items")
    return value

