"""Speed of the masked lattice conv: Triton kernel vs PyTorch reference vs torch.compile, one run.

    pytest bench/bench_lattice_conv.py --benchmark-only          # pytest-benchmark table, one group
    python bench/bench_lattice_conv.py [--batch 16] [--size 64]  # p20/p50/p80 ms and ratios, JSON row

Workload: the space context's first layer of the imagenet64 SIG heads
(``space_width`` 128) at lattice step 4 (8 known taps, the most work), over
16 lanes of 64x64 images: output (16, 128, 32, 32). Four contenders:

* ``triton``: :func:`kernels.lattice_conv.lattice_conv` (reads the uint8 bits);
* ``torch_ref``: :func:`kernels.lattice_conv.lattice_conv_ref` (zero-filled
  full-resolution prior, full conv, subsample: the method's definition);
* ``torch_compile``: ``torch.compile`` of that reference;
* ``model``: what the codec runs today, ``space_prior_quarter`` +
  ``masked_lattice_conv`` (quarter-grid conv over the known sub-images).

On CPU only the torch contenders run (the others skip with the reason): the
Triton interpreter is a correctness tool, not a speed. GPU figures: none
yet (the one H200 run stopped at the check of the TF32 "model" contender,
fixed since; see docs/gpu.md).
Each contender's output is checked against the reference before it is timed.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from timing import append_result, codec_numerics, synced, time_ms
import torch

# As a script (python bench/...), put the checkout first on the path: the repository's
# `kernels` package must win over any installed copy (an editable install made before
# kernels/__init__.py existed maps it as a namespace package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aribbps.bitplanes import space_prior_quarter  # noqa: E402
from aribbps.models.space_context import masked_lattice_conv  # noqa: E402
from kernels import HAS_TRITON  # noqa: E402
from kernels.lattice_conv import lattice_conv, lattice_conv_ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
STEP = 4
GROUP = "lattice_conv"
NO_CUDA = "no CUDA device: the Triton kernel and torch.compile are compared on CUDA only"


def make_inputs(batch: int = 16, size: int = 64, out: int = 128, device: torch.device = DEVICE, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    valid = torch.ones((batch, 1, size, size), dtype=torch.bool)
    weight = torch.randn((out, 3, 3, 3), generator=g)
    bias = torch.randn((out,), generator=g)
    return [t.to(device) for t in (bits, weight, bias, valid)]


def contenders() -> dict[str, Callable]:
    compiled = torch.compile(lattice_conv_ref, dynamic=False) if CUDA else None
    return {
        "triton": lambda bits, w, b, v: lattice_conv(bits, w, b, STEP, v),
        "torch_ref": lambda bits, w, b, v: lattice_conv_ref(bits, w, b, STEP, v),
        "torch_compile": (lambda bits, w, b, v: compiled(bits, w, b, STEP, v)) if compiled else None,
        "model": lambda bits, w, b, v: masked_lattice_conv(space_prior_quarter(bits, STEP, v), w, b, STEP),
    }


def _check(name: str, fn: Callable, args) -> None:
    out = fn(*args)
    ref = lattice_conv_ref(*args[:3], STEP, args[3])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def _bench(benchmark, name: str) -> None:
    args = make_inputs()
    fn = contenders()[name]
    _check(name, fn, args)
    benchmark.extra_info.update({"device": torch.cuda.get_device_name() if CUDA else platform.processor(),
                                 "shape": list(args[0].shape), "out_channels": args[1].shape[0]})
    benchmark.pedantic(synced(fn, *args), warmup_rounds=3, rounds=30 if CUDA else 5, iterations=1)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("name", [
    "torch_ref", "model",
    pytest.param("triton", marks=pytest.mark.skipif(not (CUDA and HAS_TRITON), reason=NO_CUDA)),
    pytest.param("torch_compile", marks=pytest.mark.skipif(not CUDA, reason=NO_CUDA)),
])
def test_lattice_conv(benchmark, name: str):
    _bench(benchmark, name)


# ---------------------------------------------------------------- script mode
def main(argv: list[str] | None = None) -> int:
    with codec_numerics():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile (its compile is slow)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "kernels.jsonl")
    args = parser.parse_args(argv)
    inputs = make_inputs(args.batch, args.size, args.out)
    rows = {}
    for name, fn in contenders().items():
        if name == "torch_compile" and args.no_compile:
            continue
        if fn is None or (name == "triton" and not (CUDA and HAS_TRITON)):
            print(f"{name:>14}: skipped ({NO_CUDA})")
            continue
        _check(name, fn, inputs)
        rows[name] = time_ms(synced(fn, *inputs), args.repeats)
    base = rows["torch_ref"][1]
    for name, (p20, p50, p80) in rows.items():
        print(f"{name:>14}: p50 {p50:8.3f} ms  (p20 {p20:.3f}, p80 {p80:.3f})  x{base / p50:.2f} vs torch_ref")
    record = {"bench": GROUP, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu",
              "batch": args.batch, "size": args.size, "out": args.out, "step": STEP,
              "p20_p50_p80_ms": rows}
    append_result(args.results, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
