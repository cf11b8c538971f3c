"""Coder speed, side by side with constriction in one run.

As a script (prints a table and the ratios, appends JSON rows to bench/results/):
    python bench/bench_coder.py [--symbols 10000000]
As pytest-benchmark tests:
    pytest bench/bench_coder.py --benchmark-only

Workloads (DESIGN 1.3/1.5): N binary symbols with random probability bytes
on one thread, under the logit code files are written with and under the
linear code of older files (q / 256), against constriction's AnsCoder with a
per-symbol categorical model of the linear code's probabilities; latent bins
at qp=10; two lanes on two threads against one lane.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from aribbps.coder import LaneCoder
from kernels.entropy_tail import PROB_CODES

try:
    import constriction
except ImportError:  # the ratio needs it; the own figures do not
    constriction = None


def binary_workload(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.integers(1, 256, n, dtype=np.uint8)
    bits = (rng.integers(0, 256, n) < probs).astype(np.uint8)
    return bits, probs


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def aribbps_binary(bits: np.ndarray, probs: np.ndarray, repeats: int,
                   prob_code: str = "logit") -> tuple[float, float]:
    stream: list[bytes] = []

    def encode() -> None:
        coder = LaneCoder(1, 1, prob_code)
        coder.push_binary(bits[None], probs[None])
        stream[:] = coder.to_bytes()

    def decode() -> None:
        out = LaneCoder.from_bytes(stream, 1, prob_code).pop_binary(probs[None])
        assert np.array_equal(out[0], bits)

    return best_of(encode, repeats), best_of(decode, repeats)


def constriction_problem(bits: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, object, np.ndarray]:
    """The binary workload as constriction codes it: symbols, a categorical model
    and its per-symbol table of the linear code's probabilities (q / 256)."""
    p1 = probs.astype(np.float32) / 256
    table = np.stack([1 - p1, p1], axis=1)
    return bits.astype(np.int32), constriction.stream.model.Categorical(perfect=False), table


def constriction_binary(bits: np.ndarray, probs: np.ndarray, repeats: int) -> tuple[float, float]:
    symbols, model, table = constriction_problem(bits, probs)
    words: list[np.ndarray] = []

    def encode() -> None:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, model, table)
        words[:] = [coder.get_compressed()]

    def decode() -> None:
        out = constriction.stream.stack.AnsCoder(words[0]).decode(model, table)
        assert np.array_equal(out, symbols)

    return best_of(encode, repeats), best_of(decode, repeats)


def aribbps_latent(n: int, qp: int, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    d = rng.integers(-1200, 1200, n).astype(np.int32)[None]
    bins = rng.integers(0, 2**qp, n, dtype=np.uint32)[None]
    stream: list[bytes] = []

    def encode() -> None:
        coder = LaneCoder(1, 1)
        coder.push_latent(bins, d, qp)
        stream[:] = coder.to_bytes()

    def decode() -> None:
        out = LaneCoder.from_bytes(stream, 1).pop_latent(d, qp)
        assert np.array_equal(out, bins)

    return best_of(encode, repeats), best_of(decode, repeats)


def aribbps_lanes(bits: np.ndarray, probs: np.ndarray, lanes: int, repeats: int) -> float:
    """Encode time of `lanes` copies of the workload on `lanes` threads."""
    b = np.ascontiguousarray(np.broadcast_to(bits, (lanes, bits.size)))
    p = np.ascontiguousarray(np.broadcast_to(probs, (lanes, probs.size)))

    def encode() -> None:
        LaneCoder(lanes, lanes).push_binary(b, p)

    return best_of(encode, repeats)


def run(n: int, repeats: int) -> dict:
    bits, probs = binary_workload(n)
    ours_enc, ours_dec = aribbps_binary(bits, probs, repeats)
    row: dict = {"symbols": n, "aribbps_encode_Msym_s": n / ours_enc / 1e6, "aribbps_decode_Msym_s": n / ours_dec / 1e6}
    lin_enc, lin_dec = aribbps_binary(bits, probs, repeats, "linear")
    row.update(linear_encode_Msym_s=n / lin_enc / 1e6, linear_decode_Msym_s=n / lin_dec / 1e6,
               logit_vs_linear_encode=lin_enc / ours_enc, logit_vs_linear_decode=lin_dec / ours_dec)
    if constriction is not None:
        ref_enc, ref_dec = constriction_binary(bits, probs, repeats)
        row.update(constriction_encode_Msym_s=n / ref_enc / 1e6, constriction_decode_Msym_s=n / ref_dec / 1e6,
                   encode_ratio=ref_enc / ours_enc, decode_ratio=ref_dec / ours_dec)
    lat_n = n // 10
    lat_enc, lat_dec = aribbps_latent(lat_n, 10, repeats)
    row.update(latent_qp10_encode_Msym_s=lat_n / lat_enc / 1e6, latent_qp10_decode_Msym_s=lat_n / lat_dec / 1e6)
    one = aribbps_lanes(bits[: n // 4], probs[: n // 4], 1, repeats)
    two = aribbps_lanes(bits[: n // 4], probs[: n // 4], 2, repeats)
    row["two_lane_speedup"] = 2 * one / two
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10_000_000, help="binary symbols per run (default 1e7)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs (default 5)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "coder.jsonl",
                        help="JSON-lines file the row is appended to")
    args = parser.parse_args(argv)
    row = run(args.symbols, args.repeats)
    row.update(machine=platform.machine(), cpu_count=os.cpu_count(), python=sys.version.split()[0],
               time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    for key, value in row.items():
        print(f"{key:32s} {value:.2f}" if isinstance(value, float) else f"{key:32s} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


# ---- pytest-benchmark (pytest bench/bench_coder.py --benchmark-only) --------
BENCH_N = 10_000_000


@pytest.fixture(scope="module")
def workload() -> tuple[np.ndarray, np.ndarray]:
    return binary_workload(BENCH_N)


@pytest.mark.benchmark(group="binary-encode-1e7")
@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_encode_aribbps(benchmark, workload, prob_code) -> None:
    bits, probs = workload
    benchmark(lambda: LaneCoder(1, 1, prob_code).push_binary(bits[None], probs[None]))


@pytest.mark.benchmark(group="binary-encode-1e7")
@pytest.mark.skipif(constriction is None, reason="constriction is not installed")
def test_encode_constriction(benchmark, workload) -> None:
    symbols, model, table = constriction_problem(*workload)
    benchmark(lambda: constriction.stream.stack.AnsCoder().encode_reverse(symbols, model, table))


@pytest.mark.benchmark(group="binary-decode-1e7")
@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_decode_aribbps(benchmark, workload, prob_code) -> None:
    bits, probs = workload
    coder = LaneCoder(1, 1, prob_code)
    coder.push_binary(bits[None], probs[None])
    stream = coder.to_bytes()
    out = benchmark(lambda: LaneCoder.from_bytes(stream, 1, prob_code).pop_binary(probs[None]))
    assert np.array_equal(out[0], bits)


@pytest.mark.benchmark(group="binary-decode-1e7")
@pytest.mark.skipif(constriction is None, reason="constriction is not installed")
def test_decode_constriction(benchmark, workload) -> None:
    symbols, model, table = constriction_problem(*workload)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, model, table)
    words = coder.get_compressed()
    out = benchmark(lambda: constriction.stream.stack.AnsCoder(words).decode(model, table))
    assert np.array_equal(out, symbols)


@pytest.mark.benchmark(group="latent-qp10-1e6")
def test_latent_round_trip_aribbps(benchmark) -> None:
    benchmark(lambda: aribbps_latent(1_000_000, 10, 1))


if __name__ == "__main__":
    raise SystemExit(main())
