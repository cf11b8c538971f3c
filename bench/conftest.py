"""Benchmarks under pytest: every contender computes as the codec does (CUDA, or a CPU's portable path)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import dispatch  # noqa: E402


@pytest.fixture(autouse=True)
def _coding_numerics():
    """No TF32, deterministic cuDNN on CUDA; on a CPU oneDNN and NNPACK off, as CPU files are coded
    (kernels/dispatch.coding_numerics)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with dispatch.coding_numerics(device, dispatch.writes_native_conv(device)):
        yield
