"""GPU utilisation and memory of a command or a function, sampled through NVML.

Runs the work while a background thread samples, every ``--interval``
seconds (default 0.05), NVML's ``utilization.gpu`` and the device's used
memory, then prints the mean and p95 utilisation and the peak memory::

    python bench/gpu_profile.py -- python -m aribbps compress --batch DIR -o x.arib --device cuda
    python bench/gpu_profile.py --json prof.json -- python -m pytest -q tests/test_gpu.py
    python bench/gpu_profile.py --func mypkg.mymod:main          # a function taking no arguments

From Python (``bench/`` is not a package: put it on ``sys.path`` or load the file)::

    with GpuSampler(interval=0.05) as sampler:
        work()
    print(sampler.stats.format())

What the numbers mean:

* ``utilization.gpu`` is NVML's "percent of time over the past sample period
  during which one or more kernels was executing on the GPU" (the sample
  period is 1/6 s to 1 s depending on the product). It is the figure
  ``nvidia-smi`` shows as GPU-Util, often called SM utilisation; it says the
  GPU was busy, not how many SMs or how much of each. 50 ms sampling
  oversamples it, which smooths nothing away but costs nothing either.
* memory is the device's used memory (all processes). The baseline before
  the run is printed too: peak minus baseline is what the run added.
* the device is NVML index ``--index``; by default the first entry of
  ``CUDA_VISIBLE_DEVICES`` when it is a number, else 0 (NVML numbers the
  physical devices; CUDA numbers the visible ones).

No GPU, no NVML library or no ``nvidia-ml-py`` is normal: the script says so
plainly on stderr, runs the work anyway, and exits with the work's status
(0 when it succeeded). The choice is deliberate: a profiling wrapper in a
script or CI job must not turn "no GPU here" into a failure.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["GpuSampler", "GpuStats", "main", "nvml_status", "profile_call"]


def _nvml() -> tuple[Any | None, str]:
    """(pynvml module, "") when NVML initialises, else (None, the reason)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML did not initialise ({exc.__class__.__name__}: {exc}); no NVIDIA driver/GPU here?"
    return pynvml, ""


def nvml_status() -> str:
    """"" when NVML works here, else why not (for skip reasons and messages)."""
    nvml, reason = _nvml()
    if nvml is not None:
        nvml.nvmlShutdown()
    return reason


def _default_index() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


@dataclass
class GpuStats:
    """What one sampling run saw."""

    device: str
    index: int
    interval_s: float
    duration_s: float
    samples: int
    util_mean: float  # percent
    util_p95: float  # percent
    util_max: float  # percent
    mem_baseline_bytes: int
    mem_peak_bytes: int
    mem_total_bytes: int
    util_trace: list[int] = field(default_factory=list, repr=False)

    def format(self) -> str:
        mib = 1 << 20
        return (f"GPU {self.index} ({self.device}): {self.samples} samples every {self.interval_s * 1000:.0f} ms "
                f"over {self.duration_s:.2f} s\n"
                f"  utilisation (NVML utilization.gpu): mean {self.util_mean:.1f}%  p95 {self.util_p95:.1f}%  "
                f"max {self.util_max:.0f}%\n"
                f"  memory used: peak {self.mem_peak_bytes / mib:.0f} MiB  "
                f"(baseline {self.mem_baseline_bytes / mib:.0f} MiB, "
                f"+{(self.mem_peak_bytes - self.mem_baseline_bytes) / mib:.0f} MiB during the run; "
                f"total {self.mem_total_bytes / mib:.0f} MiB)")


class GpuSampler:
    """Samples one GPU in a daemon thread between :meth:`start` and :meth:`stop`.

    Args:
        index: NVML device index (default: see the module docstring).
        interval: seconds between samples.

    ``available`` is False (and ``reason`` says why) when NVML cannot be
    used; start/stop then do nothing and ``stats`` stays None.
    """

    def __init__(self, index: int | None = None, interval: float = 0.05) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.index = _default_index() if index is None else index
        self.interval = interval
        self.stats: GpuStats | None = None
        self._nvml, self.reason = _nvml()
        self._handle = None
        if self._nvml is not None:
            try:
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.index)
            except Exception as exc:
                self.reason = f"no NVML device {self.index} ({exc})"
                self._nvml.nvmlShutdown()
                self._nvml = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._util: list[int] = []
        self._mem: list[int] = []
        self._t0 = 0.0

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def _sample(self) -> None:
        nv = self._nvml
        self._util.append(int(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu))
        self._mem.append(int(nv.nvmlDeviceGetMemoryInfo(self._handle).used))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> "GpuSampler":
        if self.available:
            self._util.clear()
            self._mem.clear()
            self._baseline = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            self._stop.clear()
            self._t0 = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> GpuStats | None:
        if not self.available or self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample()  # at least one sample, even for work shorter than the interval
        nv = self._nvml
        name = nv.nvmlDeviceGetName(self._handle)
        util = np.asarray(self._util, dtype=np.float64)
        self.stats = GpuStats(
            device=name.decode() if isinstance(name, bytes) else str(name),
            index=self.index,
            interval_s=self.interval,
            duration_s=time.perf_counter() - self._t0,
            samples=len(self._util),
            util_mean=float(util.mean()),
            util_p95=float(np.percentile(util, 95)),
            util_max=float(util.max()),
            mem_baseline_bytes=self._baseline,
            mem_peak_bytes=max(self._mem),
            mem_total_bytes=int(nv.nvmlDeviceGetMemoryInfo(self._handle).total),
            util_trace=list(self._util),
        )
        return self.stats

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None

    def __enter__(self) -> "GpuSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()


def profile_call(fn: Callable[..., Any], *args: Any, index: int | None = None, interval: float = 0.05,
                 **kwargs: Any) -> tuple[Any, GpuStats | None]:
    """``fn(*args, **kwargs)`` under a :class:`GpuSampler`; returns (result, stats or None)."""
    sampler = GpuSampler(index, interval)
    with sampler:
        result = fn(*args, **kwargs)
    return result, sampler.stats


def _load_function(spec: str) -> Callable[[], Any]:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise SystemExit(f"gpu_profile: --func needs 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpu_profile.py",
        description="Run a command (after --) or a function while sampling GPU utilisation and memory via NVML.")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples (default 0.05)")
    parser.add_argument("--index", type=int, default=None, help="NVML device index (default: from "
                        "CUDA_VISIBLE_DEVICES, else 0)")
    parser.add_argument("--func", default=None, metavar="MODULE:FUNCTION", help="call a function (no arguments) "
                        "instead of running a command")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and its arguments")
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if bool(command) == bool(args.func):
        parser.error("give either a command after -- or --func MODULE:FUNCTION (exactly one)")

    sampler = GpuSampler(args.index, args.interval)
    if not sampler.available:
        print(f"gpu_profile: no GPU sampling ({sampler.reason}); running the work without it", file=sys.stderr)
    with sampler:
        if args.func:
            try:
                _load_function(args.func)()
                status = 0
            except SystemExit as exc:  # a main() that calls sys.exit
                status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            try:
                status = subprocess.call(command)
            except FileNotFoundError:
                print(f"gpu_profile: command not found: {command[0]!r}", file=sys.stderr)
                status = 127
    stats = sampler.stats
    if stats is not None:
        print(stats.format(), file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"status": status, "reason": sampler.reason or None,
                       "stats": asdict(stats) if stats is not None else None}, fh, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
