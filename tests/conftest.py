"""Shared fixtures: a small model file with fixed random weights."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from collections.abc import Callable
from types import ModuleType

import pytest
import torch

from aribbps.config import get_config
from aribbps.models.bitplane_net import build_nets
from aribbps.weights import save_model


def load_script(name: str, path: Path) -> ModuleType:
    """Imports a file that is not in a package (registered, so its dataclasses work)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ins_predicts_zero_low_bits(ins: torch.nn.Module, logit: float) -> None:
    """Makes an INS net predict 0 for every low bit, with P(1) = sigmoid(logit), whatever its input.

    Then an image's initial bits (what its INS planes put on the stack)
    follow the share of ones in its low bits, which the qp tests rely on.
    """
    with torch.no_grad():
        for name, p in ins.named_parameters():
            if name.endswith("entropy.conv_out.weight"):
                p.zero_()
            elif name.endswith("entropy.conv_out.bias"):
                p.copy_(torch.tensor([logit] * 3 + [0.0] * 3))


def perturbed_nets(config: str, seed: int = 0, scale: float = 0.3) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A config's SIG and INS nets with every weight perturbed by N(0, scale^2) noise, so that
    the heads leave their zero init and the probabilities differ per position."""
    torch.manual_seed(seed)
    sig, ins = build_nets(get_config(config))
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn_like(p) * scale)
    return sig, ins


def edited_output_nets(edit: Callable[[str, torch.nn.Parameter], None], seed: int = 5,
                       config: str = "tiny-context") -> tuple[torch.nn.Module, torch.nn.Module]:
    """:func:`perturbed_nets` (eval mode) with ``edit(name, param)`` applied to every parameter of the
    output convolutions: a model miscalibrated on purpose."""
    sig, ins = perturbed_nets(config, seed=seed)
    with torch.no_grad():
        for net in (sig, ins):
            for name, p in net.named_parameters():
                if "conv_out" in name:
                    edit(name, p)
    return sig.eval(), ins.eval()


def make_model_file(path: Path, seed: int = 0, config: str = "tiny-context") -> Path:
    """Saves a model whose heads are perturbed away from their zero init."""
    sig, ins = perturbed_nets(config, seed)
    save_model(path, get_config(config), sig, ins)
    return path


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def other_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("model2") / "other.safetensors", seed=1)


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Image-like uint8 batches: blurred random fields plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, size // 4, size // 4), generator=g) * 255
    field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.randn(field.shape, generator=g) * 4
    return (field + noise).clamp(0, 255).to(torch.uint8)


def train_briefly(path: Path, config: str = "tiny", steps: int = 80, size: int = 16, seed: int = 0) -> Path:
    """Trains SIG (with its latent model) and INS jointly for a few Adam steps and saves the model."""
    from aribbps.train.objectives import build_objective

    torch.manual_seed(seed)
    cfg = get_config(config)
    sig, ins = build_nets(cfg)
    objectives = [build_objective(mode, cfg, sig, ins) for mode in ("sig", "ins")]
    for net in (sig, ins):
        net.requires_grad_(True).train()
    params = list(sig.parameters()) + list(ins.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            x = smooth_images(8, size, seed * 100_000 + step)
            loss = sum(objective.loss(x)[0] for objective in objectives)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    save_model(path, cfg, sig.eval(), ins.eval())
    return path


@pytest.fixture(scope="session")
def trained_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_briefly(tmp_path_factory.mktemp("trained") / "tiny-trained.safetensors")
