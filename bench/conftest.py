"""Benchmarks under pytest: every contender computes as the codec does (CUDA, or a CPU's portable path)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import codec_numerics  # noqa: E402


@pytest.fixture(autouse=True)
def _codec_numerics():
    with codec_numerics():
        yield
