"""Configs and networks: masked lattice conv, causality, teacher-forced costs."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from aribbps.bitplanes import (
    known_before,
    plane_bits,
    scatter_step,
    space_prior,
    space_prior_quarter,
    step_view,
)
from aribbps.config import CONFIGS, ModelConfig, NetConfig, get_config
from aribbps.models import BitPlaneNet, SpaceContext, build_nets, lattice_kernel, masked_conv_ref
from aribbps.models.space_context import masked_lattice_conv
from aribbps.probability import bits_cost

TINY = CONFIGS["tiny"]


def _randomize(net: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Random weights everywhere: zero-initialised layers would hide dependencies."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def _net(share: bool, latent: bool, seed: int = 0) -> BitPlaneNet:
    base = TINY.sig_net() if latent else TINY.ins_net()
    net = BitPlaneNet(dataclasses.replace(base, share=share))
    return _randomize(net, seed).eval()  # type: ignore[return-value]


def _image(seed: int, b: int = 2, h: int = 8, w: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def _valid(b: int, h: int, w: int) -> torch.Tensor:
    """Last column and row of the first image are padding."""
    v = torch.ones(b, 1, h, w, dtype=torch.bool)
    v[0, :, :, -1] = False
    v[0, :, -1, :] = False
    return v


# --- configs -----------------------------------------------------------------

def test_paper_configs_follow_design_table() -> None:
    c = CONFIGS["imagenet64"]
    assert (c.share, c.sig_num, c.n_layers) == (False, 4, 3)
    assert (c.sig_plane_width, c.sig_plane_depth, c.ins_plane_width, c.ins_plane_depth) == (160, 3, 192, 5)
    assert (c.latent_width, c.latent_depth, c.latent_channels) == (192, 8, 3)
    assert (c.space_width, c.entropy_width, c.entropy_depth) == (128, 192, 2)
    assert (c.ins_space_width, c.ins_entropy_width, c.ins_entropy_depth) == (160, 192, 2)
    c = CONFIGS["cifar10"]
    assert c.share and (c.ins_space_width, c.ins_entropy_width, c.ins_entropy_depth) == (64, 128, 1)
    assert not any(CONFIGS[n].relative_inputs for n in ("cifar10", "imagenet32", "imagenet64", "imagenet64_small"))
    for cfg in CONFIGS.values():
        assert cfg.pad_multiple == max(2, 2**cfg.n_layers)


def test_net_configs() -> None:
    sig, ins = TINY.sig_net(), TINY.ins_net()
    assert sig.planes == (1, 2, 3, 4) and ins.planes == (5, 6, 7, 8)
    assert sig.latent_channels == TINY.latent_feature_channels > 0 and ins.latent_channels == 0
    assert sig.relative_inputs and ins.relative_inputs


def test_get_config_by_name_and_file(tmp_path) -> None:
    assert get_config("small") is CONFIGS["small"]
    path = tmp_path / "c.json"
    path.write_text(CONFIGS["imagenet32"].to_json())
    assert get_config(str(path)) == CONFIGS["imagenet32"]
    with pytest.raises(ValueError, match="'nope'.*cifar10.*tiny"):
        get_config("nope")
    path.write_text(json.dumps({**CONFIGS["tiny"].to_dict(), "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        get_config(str(path))


def test_config_json_round_trip() -> None:
    for cfg in CONFIGS.values():
        again = ModelConfig.from_dict(json.loads(cfg.to_json()))
        assert again == cfg and again.to_json() == cfg.to_json()


def test_config_validation() -> None:
    d = CONFIGS["tiny"].to_dict()
    with pytest.raises(ValueError, match="pad_multiple"):
        ModelConfig.from_dict({**d, "pad_multiple": 6})
    assert ModelConfig.from_dict({**d, "pad_multiple": 8}).pad_multiple == 8
    with pytest.raises(ValueError, match="share"):
        ModelConfig.from_dict({**d, "share": 1})
    del d["space_width"]
    with pytest.raises(ValueError, match="space_width"):
        ModelConfig.from_dict(d)
    with pytest.raises(ValueError, match="planes"):
        NetConfig(planes=(2, 1), plane_width=4, plane_depth=1, space_width=4,
                  entropy_width=4, entropy_depth=1, share=True)


def test_small_config_size() -> None:
    sig, ins = build_nets(CONFIGS["small"])
    n = sum(p.numel() for net in (sig, ins) for p in net.parameters())
    assert 300_000 <= n <= 1_200_000


def test_medium_is_small_deepened() -> None:
    from aribbps.models.deepen import deepening_problem

    assert deepening_problem(CONFIGS["small"], CONFIGS["medium"]) is None
    assert CONFIGS["medium"] != CONFIGS["small"]


def test_deep_ins_is_medium_with_a_deeper_ins_net() -> None:
    from aribbps.models.deepen import deepening_problem

    assert deepening_problem(CONFIGS["medium"], CONFIGS["deep-ins"]) is None
    sig = CONFIGS["deep-ins"].sig_net()
    assert sig == CONFIGS["medium"].sig_net() and CONFIGS["deep-ins"].ins_net() != CONFIGS["medium"].ins_net()


# --- masked lattice convolution -------------------------------------------------

@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_masked_conv_equals_naive(s: int) -> None:
    g = torch.Generator().manual_seed(s)
    weight = torch.randn(5, 3, 3, 3, generator=g)
    bias = torch.randn(5, generator=g)
    bits = torch.randint(0, 2, (2, 3, 10, 14), dtype=torch.uint8, generator=g)
    valid = _valid(2, 10, 14)
    for v in (None, valid):
        fast = masked_lattice_conv(space_prior_quarter(bits, s, v), weight, bias, s)
        slow = masked_conv_ref(space_prior(bits, s, v), weight, bias, s)
        assert fast.shape == slow.shape == (2, 5, 5, 7)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_lattice_kernel_gradient_matches_naive() -> None:
    g = torch.Generator().manual_seed(7)
    bits = torch.randint(0, 2, (1, 3, 6, 6), dtype=torch.uint8, generator=g)
    for s in (2, 3, 4):
        w1 = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
        w2 = w1.detach().clone().requires_grad_(True)
        up = torch.randn(1, 4, 3, 3, generator=g)
        (masked_lattice_conv(space_prior_quarter(bits, s), w1, None, s) * up).sum().backward()
        (masked_conv_ref(space_prior(bits, s), w2, None, s) * up).sum().backward()
        torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-5)
        assert lattice_kernel(w1, s).shape == (4, 3 * (s - 1), 3, 3)


@pytest.mark.parametrize("share", [True, False])
def test_space_context_module_equals_naive(share: bool) -> None:
    """The whole SpaceContext (conv + residual block) against the naive first layer."""
    net = _net(share, latent=False)
    bits = plane_bits(_image(3), 6)
    valid = _valid(2, 8, 12)
    for s in range(1, 5):
        head = net.head(6, s)
        if head.space is None:
            assert not share and s == 1
            continue
        space: SpaceContext = head.space
        fast = space(space_prior_quarter(bits, s, valid), s)
        slow = space.block(masked_conv_ref(space_prior(bits, s, valid), space.conv.weight, space.conv.bias, s))
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


# --- networks ------------------------------------------------------------------

def _step_logits(net: BitPlaneNet, x: torch.Tensor, k: int, s: int, valid, latent) -> torch.Tensor:
    """What the codec does: context from the known image, then the step."""
    context = net.plane_context(known_before(x, k), k, valid)
    return net.step_logits(k, s, context, plane_bits(x, k), valid, latent)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("latent_on", [True, False])
def test_step_logits_are_causal(share: bool, latent_on: bool) -> None:
    """Logits of (k, s) ignore plane k at steps >= s, lower planes and padding bits."""
    net = _net(share, latent_on, seed=1)
    b, h, w = 2, 8, 12
    x = _image(11, b, h, w)
    valid = _valid(b, h, w)
    latent = torch.randn(b, net.cfg.latent_channels, h, w) if latent_on else None
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for k in net.planes:
            for s in range(1, 5):
                ref = _step_logits(net, x, k, s, valid, latent)
                assert ref.shape == (b, 6, h // 2, w // 2)
                noise = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=g)
                # Keep planes < k everywhere and plane k at valid positions of steps < s.
                keep = torch.zeros(b, 1, h, w, dtype=torch.bool)
                for t in range(1, s):
                    scatter_step(keep, t, step_view(valid, t))
                hi_mask = (0xFF << (9 - k)) & 0xFF
                k_bit = 1 << (8 - k)
                x2 = (x & hi_mask) | (noise & ~hi_mask & 0xFF)
                x2 = torch.where(keep, (x2 & ~k_bit & 0xFF) | (x & k_bit), x2)
                assert torch.equal(_step_logits(net, x2, k, s, valid, latent), ref)
                if s > 1:  # and it does read the earlier steps
                    x3 = x.clone()
                    scatter_step(x3, s - 1, step_view(x, s - 1) ^ k_bit)
                    assert not torch.equal(_step_logits(net, x3, k, s, valid, latent), ref)
            if k > 1:  # and the higher planes
                x4 = x ^ (1 << (9 - k))
                first = _step_logits(net, x, k, 1, valid, latent)
                assert not torch.equal(_step_logits(net, x4, k, 1, valid, latent), first)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("latent_on", [True, False])
def test_forward_equals_sum_of_step_costs(share: bool, latent_on: bool) -> None:
    net = _net(share, latent_on, seed=2)
    b, h, w = 2, 8, 8
    x = _image(21, b, h, w)
    valid = _valid(b, h, w)
    latent = torch.randn(b, net.cfg.latent_channels, h, w) if latent_on else None
    with torch.no_grad():
        total = torch.zeros(b)
        for k in net.planes:
            for s in range(1, 5):
                logits = _step_logits(net, x, k, s, valid, latent)
                total += bits_cost(logits, step_view(plane_bits(x, k), s), step_view(valid, s))
        got = net(x, valid, latent)
    assert got.shape == (b,)
    torch.testing.assert_close(got, total, rtol=1e-5, atol=1e-3)


def test_untrained_net_costs_one_bit_per_bit() -> None:
    sig, ins = build_nets(TINY)
    x = _image(31, 2, 8, 8)
    latent = torch.randn(2, TINY.latent_feature_channels, 8, 8)
    valid = _valid(2, 8, 8)
    n_valid = valid.sum(dim=(1, 2, 3)).float()
    torch.testing.assert_close(sig(x, valid, latent), 3 * 4 * n_valid)
    torch.testing.assert_close(ins(x), torch.full((2,), 3 * 4 * 64.0))


def test_all_parameters_get_gradients() -> None:
    for share in (True, False):
        net = _net(share, latent=True, seed=3).train()
        x = _image(41, 1, 8, 8)
        net(x, latent=torch.randn(1, net.cfg.latent_channels, 8, 8)).sum().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing


def test_dropout_only_in_training() -> None:
    net = _randomize(BitPlaneNet(TINY.ins_net(), dropout=0.5), 4)
    x = _image(51, 1, 8, 8)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_batch_items_are_independent() -> None:
    net = _net(True, latent=False, seed=5)
    x = _image(61, 3, 8, 8)
    with torch.no_grad():
        both = _step_logits(net, x, 6, 3, None, None)
        one = _step_logits(net, x[1:2], 6, 3, None, None)
    # Float rounding differs with the batch size (and the thread count); a leak across
    # items would show as differences of the logits' own size.
    torch.testing.assert_close(both[1:2], one, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise() -> None:
    net = _net(True, latent=True)
    x = _image(71, 1, 8, 8)
    with pytest.raises(ValueError, match="latent"):
        net(x)
    with pytest.raises(ValueError, match="plane 5"):
        net.plane_context(known_before(x, 5), 5)
    with pytest.raises(ValueError, match="even"):
        net(_image(72, 1, 8, 7)[:, :, :, :7], latent=torch.zeros(1, net.cfg.latent_channels, 8, 7))
    with pytest.raises(ValueError, match="uint8"):
        net(x.float())
