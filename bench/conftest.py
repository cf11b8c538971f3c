"""Benchmarks under pytest: every contender computes as the codec does on CUDA."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import dispatch  # noqa: E402


@pytest.fixture(autouse=True)
def _coding_numerics():
    """No TF32, deterministic cuDNN (kernels/dispatch.coding_numerics), as the scripts' ``main`` runs."""
    with dispatch.coding_numerics("cuda" if torch.cuda.is_available() else "cpu"):
        yield
