"""How long loading a model takes (the shipped default, or a file).

    python bench/bench_load.py [--model PATH]
    pytest bench/bench_load.py --benchmark-only
"""
from __future__ import annotations

import argparse

from timing import time_ms

from aribbps import zoo


def test_load_default_model(benchmark) -> None:
    if not zoo.DEFAULT_MODEL.is_file():
        import pytest

        pytest.skip("no default model shipped")
    benchmark(lambda: zoo.load(None, "cpu"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    args = parser.parse_args(argv)
    zoo.load(args.model, "cpu")  # one-time imports
    p20, p50, p80 = time_ms(lambda: zoo.load(args.model, "cpu"), 10)
    print(f"load {args.model or zoo.DEFAULT_MODEL}: p20 {p20:.1f} ms, p50 {p50:.1f} ms, p80 {p80:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
