"""Bit-plane slicing, lattice steps, space priors and relative features."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aribbps.bitplanes import (
    RELATIVE_CHANNELS,
    known_before,
    known_to_float,
    plane_bits,
    relative_features,
    scatter_step,
    space_prior,
    space_prior_quarter,
    step_positions,
    step_view,
    steps_before_mask,
)


def _image(seed: int, b: int = 2, h: int = 8, w: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_planes_rebuild_image(seed: int) -> None:
    x = _image(seed)
    rebuilt = torch.zeros_like(x, dtype=torch.int32)
    for k in range(1, 9):
        bits = plane_bits(x, k)
        assert bits.dtype == torch.uint8 and int(bits.max()) <= 1
        rebuilt += bits.to(torch.int32) << (8 - k)
    assert torch.equal(rebuilt, x.to(torch.int32))


def test_known_before_is_sum_of_higher_planes() -> None:
    x = _image(1)
    assert not known_before(x, 1).any()
    acc = torch.zeros_like(x)
    for k in range(1, 9):
        assert torch.equal(known_before(x, k), acc)
        assert torch.equal(known_before(x, k), (x >> (9 - k)) << (9 - k))
        acc = acc + (plane_bits(x, k) << (8 - k))
    assert torch.equal(acc, x)


def test_known_to_float_is_exact() -> None:
    v = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    f = known_to_float(v)
    assert f.dtype == torch.float32
    assert torch.equal((f + 1) * 128, v.to(torch.float32))
    assert float(f.min()) == -1.0 and float(f.max()) < 1.0


def test_bad_plane_and_step_raise() -> None:
    x = _image(2)
    for k in (0, 9):
        with pytest.raises(ValueError, match="plane"):
            plane_bits(x, k)
    for s in (0, 5):
        with pytest.raises(ValueError, match="step"):
            step_positions(s)


def test_step_positions_order() -> None:
    assert [step_positions(s) for s in range(1, 5)] == [(0, 0), (1, 1), (0, 1), (1, 0)]


def test_steps_partition_the_image() -> None:
    h, w = 6, 10
    count = torch.zeros(h, w, dtype=torch.int32)
    for s in range(1, 5):
        ones = torch.zeros(1, 1, h, w, dtype=torch.int32)
        scatter_step(ones, s, torch.ones(1, 1, h // 2, w // 2, dtype=torch.int32))
        count += ones[0, 0]
        before = steps_before_mask(s, h, w)
        assert int(before.sum()) == (s - 1) * h * w // 4
        assert not (before & ones[0, 0].bool()).any()
    assert torch.equal(count, torch.ones(h, w, dtype=torch.int32))


def test_step_view_and_scatter_round_trip() -> None:
    x = _image(3)
    y = torch.zeros_like(x)
    for s in range(1, 5):
        v = step_view(x, s)
        assert v.shape == (2, 3, 4, 6)
        scatter_step(y, s, v)
    assert torch.equal(x, y)


def test_space_prior_values_and_mask() -> None:
    x = _image(4)
    bits = plane_bits(x, 3)
    valid = torch.ones(2, 1, 8, 12, dtype=torch.bool)
    valid[:, :, :, 9:] = False
    for s in range(1, 5):
        prior = space_prior(bits, s, valid)
        before = steps_before_mask(s, 8, 12)
        known = before & valid
        expect = torch.where(known, bits.float() * 2 - 1, torch.zeros(()))
        assert torch.equal(prior, expect)
        # Quarter form = the known parity sub-images, in step order.
        quarter = space_prior_quarter(bits, s, valid)
        assert quarter.shape == (2, 3 * (s - 1), 4, 6)
        for t in range(1, s):
            assert torch.equal(quarter[:, 3 * (t - 1):3 * t], step_view(prior, t))


def test_space_prior_reads_only_earlier_steps() -> None:
    x = _image(5)
    bits = plane_bits(x, 6)
    for s in range(1, 5):
        other = bits.clone()
        for t in range(s, 5):
            scatter_step(other, t, 1 - step_view(other, t))
        assert torch.equal(space_prior(bits, s), space_prior(other, s))
        assert torch.equal(space_prior_quarter(bits, s), space_prior_quarter(other, s))


def test_relative_features_values() -> None:
    x = _image(6, b=1, h=8, w=8)
    for k in (1, 3, 8):
        known = known_before(x, k)
        f = relative_features(known, k)
        assert f.shape == (1, RELATIVE_CHANNELS, 8, 8) == (1, 75, 8, 8)
        d = 2 ** (8 - k)
        # Every feature is asinh of an even integer (differences of multiples of 2d, over d).
        ratio = torch.sinh(f.double())
        assert torch.allclose(ratio, ratio.round(), atol=1e-4)
        kn = known.to(torch.int64)
        # First offset is (dy, dx) = (-2, -2) with replicate padding.
        p, n = (5, 4), (3, 2)
        want = math.asinh((int(kn[0, 1, n[0], n[1]]) - int(kn[0, 1, p[0], p[1]])) / d)
        assert f[0, 3 * 0 + 1, p[0], p[1]].item() == pytest.approx(want, abs=1e-6)
        # At the top-left corner the (-2, -2) neighbour is the pixel itself.
        assert f[0, 0:3, 0, 0].abs().max().item() == 0.0
        # Last three channels: cross-channel differences at the pixel.
        want = math.asinh((int(kn[0, 2, 1, 1]) - int(kn[0, 0, 1, 1])) / d)
        assert f[0, 73, 1, 1].item() == pytest.approx(want, abs=1e-6)
    assert not relative_features(known_before(x, 1), 1).any()
