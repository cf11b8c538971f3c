"""Probabilities, training costs and the coder-input contract."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aribbps.probability import (
    PROB_CODES,
    WRITTEN_PROB_CODE,
    bits_cost,
    coupled_probs,
    probability_masses,
    quantise_probs7,
    quantised_bits_cost,
    select_probs7,
)


def _logits(seed: int, b: int = 2, h: int = 3, w: int = 4, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, h, w, generator=g) * scale


def _bits(seed: int, b: int = 2, h: int = 3, w: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, 2, (b, 3, h, w), dtype=torch.uint8, generator=g)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_coupled_probs_formula() -> None:
    logits, bits = _logits(0), _bits(0)
    p = coupled_probs(logits, bits)
    lr, lg, lb, a, b, c = (logits[0, i, 1, 2].item() for i in range(6))
    r, g = (2 * int(bits[0, i, 1, 2]) - 1 for i in range(2))
    assert p[0, 0, 1, 2].item() == pytest.approx(_sigmoid(lr), rel=1e-5)
    assert p[0, 1, 1, 2].item() == pytest.approx(_sigmoid(lg + a * r), rel=1e-5)
    assert p[0, 2, 1, 2].item() == pytest.approx(_sigmoid(lb + b * r + c * g), rel=1e-5)


def test_bits_cost_matches_manual_and_masks() -> None:
    logits, bits = _logits(1), _bits(1)
    p = coupled_probs(logits, bits).double().clamp(1e-6, 1 - 1e-6)
    manual = -torch.where(bits.bool(), p, 1 - p).log2().sum(dim=(1, 2, 3))
    assert torch.allclose(bits_cost(logits, bits).double(), manual, rtol=1e-5)
    valid = torch.zeros(2, 1, 3, 4, dtype=torch.bool)
    valid[0, :, 0, :] = True
    masked = bits_cost(logits, bits, valid)
    assert masked[1].item() == 0.0
    only_row = -torch.where(bits.bool(), p, 1 - p).log2()[0, :, 0, :].sum()
    assert masked[0].item() == pytest.approx(only_row.item(), rel=1e-5)


def test_bits_cost_is_clamped() -> None:
    logits = torch.zeros(1, 6, 1, 1)
    logits[0, 0] = 1000.0  # P(r=1) = 1 -> clamped to 1 - 1e-6
    bits = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    cost = bits_cost(logits, bits).item()
    assert cost == pytest.approx(-math.log2(1e-6) + 2.0, rel=1e-3)


def _scaled(z: torch.Tensor, prob_code: str) -> torch.Tensor:
    """What q rounds: 16·z + 128 (logit) or 256·σ(z) (linear), in float64."""
    return (z.double() * 16).clamp(-128, 128) + 128 if prob_code == "logit" else torch.sigmoid(z.double()) * 256


def _reference_q(logits: torch.Tensor, prob_code: str) -> torch.Tensor:
    """q per the 7-column formula, in float64."""
    lr, lg, lb, a, b, c = logits.double().unbind(dim=1)
    cols = [lr, lg - a, lg + a, lb - b - c, lb - b + c, lb + b - c, lb + b + c]
    return torch.round(_scaled(torch.stack(cols, dim=-1), prob_code)).clamp(1, 255)


def test_files_are_written_with_the_logit_code() -> None:
    assert PROB_CODES == ("linear", "logit") and WRITTEN_PROB_CODE == "logit"
    logits = _logits(9)
    assert torch.equal(quantise_probs7(logits), quantise_probs7(logits, "logit"))


@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_quantise_layout_and_values(prob_code: str) -> None:
    logits = _logits(2, b=2, h=3, w=5)
    q = quantise_probs7(logits, prob_code)
    assert q.dtype == torch.uint8 and q.shape == (2, 15, 7) and q.is_contiguous()
    ref = _reference_q(logits, prob_code).reshape(2, 15, 7)
    # float32 vs float64 may differ by one at a rounding boundary, nowhere else.
    assert (q.double() - ref).abs().max().item() <= 1
    assert (q.double() == ref).float().mean().item() > 0.95
    # Row-major position order: pixel (i, j) is row i * w + j.
    single = quantise_probs7(logits[:, :, 2:3, 4:5], prob_code)
    assert torch.equal(q[:, 2 * 5 + 4], single[:, 0])


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(allow_nan=False, width=32),
            st.sampled_from([0.0, 1e-30, -1e-30, 1e4, -1e4, 3e38, -3e38]),
        ),
        min_size=6, max_size=6,
    )
)
def test_quantise_range_rule(values: list[float]) -> None:
    """Rule 1: every q in 1..255 whatever the (non-NaN) logits, infinities included."""
    logits = torch.tensor(values, dtype=torch.float32).view(1, 6, 1, 1)
    for prob_code in PROB_CODES:
        q = quantise_probs7(logits, prob_code)
        assert int(q.min()) >= 1 and int(q.max()) <= 255


@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_quantise_one_hot_and_extremes(prob_code: str) -> None:
    big = torch.zeros(1, 6, 1, 2)
    big[0, :3, 0, 0] = 1e4   # certain ones
    big[0, :3, 0, 1] = -1e4  # certain zeros
    q = quantise_probs7(big, prob_code)
    assert q[0, 0].tolist() == [255] * 7
    assert q[0, 1].tolist() == [1] * 7
    inf = torch.zeros(1, 6, 1, 1)
    inf[0, 0] = math.inf
    inf[0, 1] = -math.inf
    inf[0, 2] = math.inf
    inf[0, 5] = -math.inf  # lb + b·r' + c·g' = inf - inf for g' = +1
    q = quantise_probs7(inf, prob_code)[0, 0].tolist()
    assert q[0] == 255 and q[1] == 1 and q[2] == 1
    assert q[3] == 255 and q[5] == 255  # g' = -1: inf + inf
    assert q[4] == 128 and q[6] == 128  # g' = +1: inf - inf -> 0 -> 1/2


def test_quantise_nan_raises() -> None:
    logits = torch.zeros(1, 6, 2, 2)
    logits[0, 3, 1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        quantise_probs7(logits)


def test_quantise_half_precision_input() -> None:
    logits = _logits(3)
    q16 = quantise_probs7(logits.half())
    q32 = quantise_probs7(logits.half().float())
    assert torch.equal(q16, q32)


def test_quantise_bad_shape_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        quantise_probs7(torch.zeros(1, 5, 2, 2))


@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_coder_picks_match_training_probabilities(prob_code: str) -> None:
    """The q the coder selects is the quantised teacher-forced probability."""
    logits, bits = _logits(4, h=4, w=4), _bits(4, h=4, w=4)
    picked = select_probs7(quantise_probs7(logits, prob_code), bits)
    r, g = (bits[:, i].double() * 2 - 1 for i in range(2))
    lr, lg, lb, a, b, c = logits.double().unbind(dim=1)
    z = torch.stack((lr, lg + a * r, lb + b * r + c * g), dim=1)  # the coupled logits of the true bits
    expect = torch.round(_scaled(z, prob_code)).clamp(1, 255).to(torch.int64).reshape(2, 3, -1)
    assert (np.abs(picked - expect.numpy()) <= 1).all() and (picked == expect.numpy()).mean() > 0.95


@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_quantised_bits_cost_exact(prob_code: str) -> None:
    logits, bits = _logits(5, scale=0.5), _bits(5)
    q7 = quantise_probs7(logits, prob_code)
    picked = select_probs7(q7, bits)
    precision, one = probability_masses(prob_code)
    b = bits.numpy().reshape(2, 3, -1)
    manual = np.zeros(2)
    for i in range(2):
        for c in range(3):
            for n in range(picked.shape[2]):
                f = int(one[int(picked[i, c, n])])
                manual[i] += -math.log2((f if b[i, c, n] else 2**precision - f) / 2**precision)
    got = quantised_bits_cost(q7, bits, None, prob_code)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, manual, rtol=1e-12)
    np.testing.assert_allclose(quantised_bits_cost(q7.numpy(), bits.numpy(), None, prob_code), manual, rtol=1e-12)
    # Close to the unquantised cost for moderate logits.
    np.testing.assert_allclose(got, bits_cost(logits, bits).double().numpy(), rtol=0.05)
    valid = torch.zeros(2, 1, 3, 4, dtype=torch.bool)
    assert quantised_bits_cost(q7, bits, valid, prob_code).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("prob_code,right,wrong", [("linear", math.log2(256 / 255), 8.0),
                                                   ("logit", math.log2(65536 / 65513), 16 - math.log2(23))])
def test_quantised_cost_of_certain_bits(prob_code: str, right: float, wrong: float) -> None:
    """One-hot predictions cost the code's floor when right and its ceiling when wrong."""
    logits = torch.full((1, 6, 1, 1), 0.0)
    logits[0, :3] = 1e4
    q7 = quantise_probs7(logits, prob_code)
    ones = torch.ones(1, 3, 1, 1, dtype=torch.uint8)
    assert quantised_bits_cost(q7, ones, None, prob_code)[0] == pytest.approx(3 * right)
    assert quantised_bits_cost(q7, 1 - ones, None, prob_code)[0] == pytest.approx(3 * wrong)
