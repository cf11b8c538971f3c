"""Overlap the network work of the next round with the coding of this one.

The encoder's network work for a round that does not depend on the coder
(teacher-forced plane probabilities, the latent model's bottom-up pass) runs
in one worker thread, on its own CUDA stream on a GPU, while the calling
thread codes the previous round: the coder releases the GIL, so the GPU
keeps busy while the CPU codes. The results are the same numbers either way
(the same operations on the same batches), so the files are byte-identical
with and without overlap; ``tests/test_overlap.py`` checks it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
R = TypeVar("R")


def default_overlap(device: torch.device) -> bool:
    """Overlap on CUDA only: on a CPU the network and the coder share the cores anyway."""
    return device.type == "cuda"


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def prefetched(fn: Callable[[T], R], items: Iterable[T], device: torch.device, enabled: bool
               ) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in order, computing ``fn`` of the next item while the caller works.

    With ``enabled`` False this is a plain loop. Otherwise ``fn`` runs in one
    worker thread (under ``torch.no_grad``). On CUDA it runs on a side stream
    that first waits for everything the caller's stream had queued when this
    generator started (the items' device tensors may still be in flight), is
    synchronised before a result is handed over, and whose result tensors are
    marked as used by the caller's stream, so that the allocator does not
    recycle them early. At most one item is computed ahead. An exception in
    ``fn`` is raised in the caller when it reaches that item.
    """
    if not enabled:
        for item in items:
            yield item, fn(item)
        return
    stream = consumer = ready = None
    if device.type == "cuda":
        stream = torch.cuda.Stream(device)
        consumer = torch.cuda.current_stream(device)
        ready = torch.cuda.Event()
        ready.record(consumer)

    def run(item: T) -> R:
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            if stream is not None:
                stream.wait_event(ready)
            out = fn(item)
        if stream is not None:
            stream.synchronize()
        return out

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aribbps-prefetch") as pool:
        iterator = iter(items)
        pending: tuple[T, Future[R]] | None = None
        for item in iterator:
            pending = (item, pool.submit(run, item))
            break
        while pending is not None:
            item, future = pending
            pending = None
            for nxt in iterator:
                pending = (nxt, pool.submit(run, nxt))
                break
            result = future.result()
            if consumer is not None:
                for t in _tensors(result):
                    if t.is_cuda:
                        t.record_stream(consumer)
            yield item, result
