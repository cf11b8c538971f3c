"""Timing helpers shared by the benchmark scripts (run from bench/ or by pytest)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def codec_numerics() -> Iterator[None]:
    """Compute as the codec does on this machine's device: no TF32 and deterministic cuDNN on CUDA; on a
    CPU oneDNN and NNPACK off where CPU files are coded so (kernels/dispatch.coding_numerics)."""
    import torch

    from kernels import dispatch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with dispatch.coding_numerics(device, dispatch.writes_native_conv(device)):
        yield


def time_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """p20/p50/p80 milliseconds after a burn-in (CUDA: synchronised around each call)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    p20, p50, p80 = np.percentile(times, [20, 50, 80])
    return float(p20), float(p50), float(p80)


def synced(fn: Callable, *args: object) -> Callable[[], object]:
    """``fn(*args)`` without autograd, waiting for the GPU (if any) before it returns, for timing."""
    import torch

    @torch.no_grad()
    def run() -> object:
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return run


def append_result(path: Path, record: dict) -> None:
    """Appends one JSON line to a results file (long format: old rows are kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
