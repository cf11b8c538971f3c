"""Shared fixtures: a small model file with fixed random weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aribbps.config import get_config
from aribbps.models.bitplane_net import build_nets
from aribbps.weights import save_model


def make_model_file(path: Path, seed: int = 0, config: str = "tiny-context") -> Path:
    """Saves a model whose heads are perturbed away from their zero init."""
    torch.manual_seed(seed)
    cfg = get_config(config)
    sig, ins = build_nets(cfg)
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn_like(p) * 0.3)
    save_model(path, cfg, sig, ins)
    return path


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def other_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("model2") / "other.safetensors", seed=1)
