"""Speed of the fused entropy head: Triton kernels vs PyTorch references vs torch.compile, one run.

    pytest bench/bench_entropy_tail.py --benchmark-only        # pytest-benchmark tables, one group per op
    python bench/bench_entropy_tail.py [--batch 16]            # p20/p50/p80 ms and ratios, JSON row

Workload: the imagenet64 SIG head (DESIGN 1.8: plane context 160, latent 192,
space context 128 -> entropy width 192, depth 2) at one lattice step of 16
lanes of 64x64 images (quarter grid 32x32). Groups:

``entropy_proj`` (kernel A)
    concat-free ECA-gated 1x1 projection, reading the plane-context and
    latent step views in place, vs ``entropy_proj_ref`` (``torch.cat`` + gate
    + ``conv2d``) and its ``torch.compile``.
``entropy_tail`` (kernel B)
    SiLU + 3x3 conv to 6 logits + coupling + σ + quantisation into the uint8
    (B, h*w, 7) buffer, vs ``entropy_tail_ref`` (ATen ops + ``quantise_probs7``)
    and its ``torch.compile``.
``entropy_step``
    a whole (plane, step): :func:`kernels.dispatch.step_probs7` on the
    Triton path vs the torch path (``net.step_logits`` + quantisation).

On CPU only the torch references of the first two groups run (batch 2; the
others skip with the reason). GPU figures: docs/gpu.md (H200, 2026-12-04,
torch with TF32: kernel A 0.51x torch, kernel B 2.14x, the whole step
0.90x; the script now runs under the codec's numerics, TF32 off). Every
contender's output is checked against the reference before it is timed.
"""
from __future__ import annotations

import argparse
import dataclasses
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

from aribbps.bitplanes import known_before, plane_bits  # noqa: E402
from aribbps.config import get_config  # noqa: E402
from aribbps.models.bitplane_net import BitPlaneNet  # noqa: E402
from kernels import HAS_TRITON, dispatch  # noqa: E402
from kernels.entropy_tail import entropy_proj, entropy_proj_ref, entropy_tail, entropy_tail_ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BATCH = 16 if CUDA else 2
NO_CUDA = "no CUDA device: the Triton kernels and torch.compile are compared on CUDA only"
CHANNELS = {"plane": 160, "latent": 192, "space": 128, "width": 192}


def make_proj_inputs(batch: int = BATCH, size: int = 64, seed: int = 0):
    """Step views of full-resolution plane context and latent, a quarter-grid space context."""
    g = torch.Generator().manual_seed(seed)
    half = size // 2
    ctx = torch.randn((batch, CHANNELS["plane"], size, size), generator=g).to(DEVICE)
    lat = torch.randn((batch, CHANNELS["latent"], size, size), generator=g).to(DEVICE)
    space = torch.randn((batch, CHANNELS["space"], half, half), generator=g).to(DEVICE)
    parts = [ctx[:, :, 1::2, 0::2], lat[:, :, 1::2, 0::2], space]
    c_in = sum(p.shape[1] for p in parts)
    gate = torch.rand((batch, c_in), generator=g).to(DEVICE)
    weight = (torch.randn((CHANNELS["width"], c_in, 1, 1), generator=g) * c_in ** -0.5).to(DEVICE)
    bias = torch.randn((CHANNELS["width"],), generator=g).to(DEVICE)
    return parts, gate, weight, bias


def make_tail_inputs(batch: int = BATCH, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn((batch, CHANNELS["width"], size // 2, size // 2), generator=g).to(DEVICE)
    weight = (torch.randn((6, CHANNELS["width"], 3, 3), generator=g) * 0.05).to(DEVICE)
    bias = torch.randn((6,), generator=g).to(DEVICE)
    return h, weight, bias


def proj_contenders() -> dict[str, Callable | None]:
    compiled = torch.compile(entropy_proj_ref, dynamic=False) if CUDA else None
    return {"triton": entropy_proj if CUDA and HAS_TRITON else None, "torch_ref": entropy_proj_ref,
            "torch_compile": compiled}


def tail_contenders() -> dict[str, Callable | None]:
    compiled = torch.compile(entropy_tail_ref, dynamic=False) if CUDA else None
    return {"triton": entropy_tail if CUDA and HAS_TRITON else None, "torch_ref": entropy_tail_ref,
            "torch_compile": compiled}


def make_step(batch: int = BATCH, size: int = 64, seed: int = 0):
    """An imagenet64 SIG net with random weights and one round's inputs, for plane 2, step 4."""
    cfg = dataclasses.replace(get_config("imagenet64").sig_net(), share=False)
    torch.manual_seed(seed)
    net = BitPlaneNet(cfg).to(DEVICE).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        x = torch.randint(0, 256, (batch, 3, size, size), device=DEVICE, dtype=torch.uint8)
        valid = torch.ones((batch, 1, size, size), dtype=torch.bool, device=DEVICE)
        latent = torch.randn((batch, cfg.latent_channels, size, size), device=DEVICE)
        context = net.plane_context(known_before(x, 2), 2, valid)
    return net, (2, 4, context, plane_bits(x, 2), valid, latent)


def _check_probs(name: str, q: torch.Tensor, q_ref: torch.Tensor) -> None:
    """Quantised probabilities: at most one step apart, and on well under 0.1% of values."""
    diff = (q.int() - q_ref.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3, f"{name}: probabilities differ"


def _device_name() -> str:
    return torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu"


def _pedantic(benchmark, run: Callable[[], object]) -> None:
    benchmark.extra_info["device"] = _device_name()
    benchmark.pedantic(run, warmup_rounds=3, rounds=30 if CUDA else 5, iterations=1)


def _bench_proj(benchmark, name: str) -> None:
    args = make_proj_inputs()
    fn = proj_contenders()[name]
    torch.testing.assert_close(fn(*args), entropy_proj_ref(*args), rtol=1e-4, atol=1e-4)
    _pedantic(benchmark, synced(fn, *args))


def _bench_tail(benchmark, name: str) -> None:
    args = make_tail_inputs()
    fn = tail_contenders()[name]
    _check_probs(name, fn(*args), entropy_tail_ref(*args))
    _pedantic(benchmark, synced(fn, *args))


def _bench_step(benchmark, path: str) -> None:
    net, args = make_step()
    with torch.no_grad():
        _check_probs(path, dispatch.step_probs7(net, *args, path=path), dispatch.step_probs7(net, *args, path="torch"))
    _pedantic(benchmark, synced(lambda: dispatch.step_probs7(net, *args, path=path)))


needs_cuda = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason=NO_CUDA)
#: The kernels' contenders: the reference runs anywhere, the others need CUDA.
KERNEL_CONTENDERS = ["torch_ref", pytest.param("triton", marks=needs_cuda),
                     pytest.param("torch_compile", marks=needs_cuda)]


@pytest.mark.benchmark(group="entropy_proj")
@pytest.mark.parametrize("name", KERNEL_CONTENDERS)
def test_entropy_proj(benchmark, name: str):
    _bench_proj(benchmark, name)


@pytest.mark.benchmark(group="entropy_tail")
@pytest.mark.parametrize("name", KERNEL_CONTENDERS)
def test_entropy_tail(benchmark, name: str):
    _bench_tail(benchmark, name)


@needs_cuda
@pytest.mark.benchmark(group="entropy_step")
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_entropy_step(benchmark, path: str):
    _bench_step(benchmark, path)


# ---------------------------------------------------------------- script mode
def main(argv: list[str] | None = None) -> int:
    with codec_numerics():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=50 if CUDA else 5)
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile (its compile is slow)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "kernels.jsonl")
    args = parser.parse_args(argv)
    groups: dict[str, tuple[dict[str, Callable | None], tuple]] = {
        "entropy_proj": (proj_contenders(), make_proj_inputs(args.batch)),
        "entropy_tail": (tail_contenders(), make_tail_inputs(args.batch)),
    }
    if CUDA and HAS_TRITON:
        net, step_args = make_step(args.batch)
        groups["entropy_step"] = ({p: (lambda *a, p=p: dispatch.step_probs7(net, *a, path=p))
                                   for p in ("triton", "torch")}, step_args)
    results = {}
    for group, (fns, inputs) in groups.items():
        rows = {}
        for name, fn in fns.items():
            if name == "torch_compile" and args.no_compile:
                continue
            if fn is None:
                print(f"{group}/{name}: skipped ({NO_CUDA})")
                continue
            rows[name] = time_ms(synced(fn, *inputs), args.repeats)
        base = rows.get("torch_ref", rows.get("torch"))[1]
        for name, (p20, p50, p80) in rows.items():
            print(f"{group:>13}/{name:<14} p50 {p50:9.3f} ms  (p20 {p20:.3f}, p80 {p80:.3f})  "
                  f"x{base / p50:.2f} vs torch")
        results[group] = rows
    record = {"bench": "entropy_tail", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
              "device": _device_name(), "batch": args.batch, "p20_p50_p80_ms": results}
    append_result(args.results, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
