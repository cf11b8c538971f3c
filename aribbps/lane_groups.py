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
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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


class Cancelled(Exception):
    """Raised inside a group's thread at its next progress report once the run is being stopped."""


Report = Callable[[int], None]


def coder_threads(threads: int, groups: Sequence[LaneGroup]) -> int:
    """Coder threads per group: ``threads`` (0 = one per CPU) shared out, so that
    concurrent groups do not each start one thread per CPU."""
    if len(groups) == 1:
        return threads
    total = threads or os.cpu_count() or 1
    return max(1, total // len(groups))


def run_groups(work: Callable[[int, LaneGroup, Report | None], R], groups: Sequence[LaneGroup],
               device: torch.device, progress: Report | None = None) -> list[R]:
    """``work(index, group, report)`` for every group, concurrently when there are several.

    ``work`` must pass ``report`` to its codec as the progress callback (the
    codecs call it after every round): it forwards to ``progress`` under a
    lock and is where a group stops when the run is being stopped. That
    happens when another group fails or the caller is interrupted (Ctrl-C);
    the caller's exception is raised once every group has stopped, so an
    interrupt takes at most one round, not the whole run.

    On CUDA each group runs on its own stream, which first waits for the
    work already queued on the caller's stream, and is synchronised before
    its result is returned (the results are host data).
    """
    if len(groups) == 1:
        return [work(0, groups[0], progress)]
    caller = torch.cuda.current_stream(device) if device.type == "cuda" else None
    stop = threading.Event()
    lock = threading.Lock()

    def report(n: int) -> None:
        if stop.is_set():
            raise Cancelled("stopped")
        if progress is not None:
            with lock:
                progress(n)

    def run(index: int, group: LaneGroup) -> R:
        if caller is None:
            return work(index, group, report)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            result = work(index, group, report)
        stream.synchronize()
        return result

    pool = ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="aribbps-lane-group")
    futures = [pool.submit(run, i, g) for i, g in enumerate(groups)]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:  # an error in one group, or an interrupt here: stop the others at their next round
        if not all(f.done() and f.exception() is None for f in futures):
            stop.set()
        pool.shutdown(wait=True)
    errors = [f.exception() for f in futures if not isinstance(f.exception(), Cancelled)]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
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


def recorded_groups(extra: dict, lanes: int, n_items: int) -> int:
    """The group count an archive records, checked against its lanes and items.

    Raises:
        ValueError: not an integer the encoder could have written.
    """
    value = extra.get(EXTRA_KEY, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > max(1, min(lanes, n_items)):
        raise ValueError(f"corrupted: lane group count {value!r} does not fit {lanes} lanes and {n_items} items")
    return value

