"""Deepening a trained model keeps its function exactly (aribbps.models.deepen)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from aribbps.config import CONFIGS
from aribbps.models import build_nets
from aribbps.models.deepen import deepen, deepening_problem

TINY = CONFIGS["tiny"]
DEEP = dataclasses.replace(TINY, name="tiny-deep", sig_plane_depth=3, ins_plane_depth=2,
                           entropy_depth=2, ins_entropy_depth=3)


def _trained_tiny() -> tuple:
    torch.manual_seed(0)
    nets = build_nets(TINY)
    with torch.no_grad():  # no zero-initialised layer left: a "trained" model
        for net in nets:
            for p in net.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return nets


def test_deepened_nets_compute_the_same_costs() -> None:
    sig, ins = _trained_tiny()
    deep_sig, deep_ins = deepen(TINY, (sig, ins), DEEP)
    assert sum(p.numel() for p in deep_ins.parameters()) > sum(p.numel() for p in ins.parameters())
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    latent = torch.randn(2, TINY.latent_feature_channels, 16, 16)
    for old, new, lat in ((sig, deep_sig, latent), (ins, deep_ins, None)):
        old.eval()
        new.eval()
        with torch.no_grad():
            assert torch.equal(old(x, latent=lat), new(x, latent=lat))


def test_new_blocks_get_gradients() -> None:
    """The added blocks start as identities but train: their zeroed output convolutions get gradients."""
    _, deep_ins = deepen(TINY, _trained_tiny(), DEEP)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    deep_ins(x).sum().backward()
    new_outputs = {name: p.grad for name, p in deep_ins.named_parameters()
                   if ("context.blocks.1." in name or "entropy.blocks.2." in name) and "conv2.weight" in name}
    assert len(new_outputs) == 1 + 4  # plane context; one shared head per INS plane
    assert all(g is not None and g.abs().sum() > 0 for g in new_outputs.values())


@pytest.mark.parametrize("change, message", [
    ({"sig_plane_width": 16}, "sig_plane_width"),
    ({"entropy_depth": 0}, "may only grow"),
])
def test_only_growing_depths_is_a_deepening(change: dict, message: str) -> None:
    target = dataclasses.replace(TINY, **change)
    assert message in (deepening_problem(TINY, target) or "")
    with pytest.raises(ValueError, match=message):
        deepen(TINY, build_nets(TINY), target)


def test_same_config_is_a_trivial_deepening() -> None:
    assert deepening_problem(TINY, DEEP) is None
    assert deepening_problem(TINY, TINY) is None
