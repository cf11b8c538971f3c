"""bench/prob_precision.py: its 8-bit cost is the linear code's, finer precisions and the logit code approach
the exact cost."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aribbps.probability import coupled_probs, quantise_probs7, quantised_bits_cost
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
prob_precision = load_script("prob_precision", ROOT / "bench" / "prob_precision.py")


def test_eight_bits_is_exactly_what_the_coder_is_given():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, 7, generator=g) * 6
    bits = (torch.rand(2, 3, 5, 7, generator=g) < 0.5).to(torch.uint8)
    expected = quantised_bits_cost(quantise_probs7(logits, "linear"), bits, None, "linear").sum()
    got = prob_precision.quantised_cost(coupled_probs(logits, bits), bits, 8)
    assert got == pytest.approx(float(expected), rel=1e-12)


def test_finer_precision_approaches_the_exact_cost():
    # Bits drawn from p: the excess over the exact cost is then a KL divergence, >= 0
    # in expectation, and shrinks with the precision.
    g = torch.Generator().manual_seed(1)
    p = torch.sigmoid(torch.randn(200_000, generator=g) * 4)
    bits = (torch.rand(200_000, generator=g) < p).to(torch.uint8)
    exact = float(-torch.log2(torch.where(bits.bool(), p.double(), 1 - p.double())).sum())
    excess = [prob_precision.quantised_cost(p, bits, b) - exact for b in (8, 10, 16)]
    assert excess[0] > 5 * excess[1] > 0
    assert excess[0] > 5e-4 * exact and abs(excess[2]) < 1e-5 * exact


def test_the_logit_code_costs_almost_nothing():
    """Bits drawn from σ(z): the logit code's excess over the exact cost is far below 8 linear bits'."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, 40, 40, generator=g) * 4
    logits[:, 3:] = 0  # no coupling: the bits can be drawn from σ of the first three logits
    bits = (torch.rand(4, 3, 40, 40, generator=g) < torch.sigmoid(logits[:, :3])).to(torch.uint8)
    exact = float(-torch.log2(torch.where(bits.bool(), coupled_probs(logits, bits).double(),
                                          1 - coupled_probs(logits, bits).double())).sum())
    logit = float(quantised_bits_cost(quantise_probs7(logits, "logit"), bits, None, "logit").sum())
    linear = float(quantised_bits_cost(quantise_probs7(logits, "linear"), bits, None, "linear").sum())
    assert abs(logit - exact) < 1e-3 * exact
    assert linear - exact > 5 * abs(logit - exact)
