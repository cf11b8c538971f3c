"""Per-plane temperatures: exact taus, candidate costs, the encoder's choice, round trips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aribbps.codec import PlaneCodec, PlaneNets, theoretical_cost
from aribbps.config import get_config
from aribbps.lane_seal import LaneSealError
from aribbps.temperature import (
    NEUTRAL_SYMBOL, SYMBOLS, TEMPERATURE_BITS, candidate_costs, choose_symbols, scaled_probs7, temperatures,
)
from kernels import dispatch
from tests.conftest import edited_output_nets, smooth_images


def test_symbols_map_to_exact_taus_and_neutral_is_one() -> None:
    tau = temperatures(SYMBOLS, "cpu")
    assert len(SYMBOLS) == 1 << TEMPERATURE_BITS and tau.dtype == torch.float32
    assert tau[NEUTRAL_SYMBOL].item() == 1.0
    np.testing.assert_array_equal((tau.numpy().astype(np.float64) * 16 - 6), SYMBOLS)  # k/16: exact in float32
    with pytest.raises(ValueError, match="temperature symbols"):
        temperatures(np.array([16]), "cpu")


def test_candidate_costs_at_the_neutral_symbol_are_the_theoretical_cost() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((3, 6, 5, 4), generator=g) * 3
    bits = (torch.rand((3, 3, 5, 4), generator=g) < 0.3).to(torch.uint8)
    valid = torch.rand((3, 1, 5, 4), generator=g) < 0.8
    rgb = torch.tensor([True, False, True])
    weight = torch.ones((3, 3, 1, 1))
    weight[~rgb, 1:] = 0
    costs = candidate_costs(logits, bits, weight * valid)
    assert costs.shape == (3, len(SYMBOLS)) and costs.dtype == torch.float64
    # Within float32 rounding: candidate_costs takes -log2 sigmoid of the true bit's logit, theoretical_cost 1 - p.
    torch.testing.assert_close(costs[:, NEUTRAL_SYMBOL], theoretical_cost(logits, bits, valid, rgb).double(),
                               rtol=1e-5, atol=1e-3)
    # Each column is the cost of the scaled logits.
    tau = temperatures(np.full(3, 3), "cpu")
    torch.testing.assert_close(costs[:, 3], theoretical_cost(logits * tau.view(-1, 1, 1, 1), bits, valid, rgb)
                               .double(), rtol=1e-5, atol=1e-3)


def test_choose_symbols_takes_the_cheapest_and_prefers_neutral_on_ties() -> None:
    costs = torch.full((3, len(SYMBOLS)), 10.0, dtype=torch.float64)
    costs[0, 4] = 1.0
    costs[1, NEUTRAL_SYMBOL - 1] = costs[1, NEUTRAL_SYMBOL + 1] = 2.0  # tie: the one nearer tau = 1 (below first)
    np.testing.assert_array_equal(choose_symbols(costs), [4, NEUTRAL_SYMBOL - 1, NEUTRAL_SYMBOL])


def test_scaled_probs7_at_neutral_is_the_plain_quantisation() -> None:
    logits = torch.randn((2, 6, 3, 3), generator=torch.Generator().manual_seed(1)) * 4
    tau = temperatures(np.array([NEUTRAL_SYMBOL, NEUTRAL_SYMBOL]), "cpu")
    for code in ("linear", "logit"):
        torch.testing.assert_close(scaled_probs7(logits, tau, code), dispatch.quantise_probs7(logits, code))


def _overconfident_nets(factor: float) -> tuple[PlaneNets, int]:
    """tiny-context nets with random weights whose every logit is scaled by ``factor``."""
    sig, ins = edited_output_nets(lambda _, p: p.mul_(factor))
    return PlaneNets(sig, ins), get_config("tiny-context").pad_multiple


def _items() -> list[np.ndarray]:
    x = smooth_images(4, 12, seed=3).numpy()
    return [x[0], x[1, :, :7, :9], x[2, :1], x[3, :, :5]]


def test_temperatures_cut_the_bits_of_an_overconfident_model_and_round_trip() -> None:
    nets, multiple = _overconfident_nets(4.0)
    items = _items()
    # Corrections off: they would learn much of the same (tests/test_prob_correction.py).
    plain, plain_stats = PlaneCodec(nets, multiple, 2, temperatures=False, corrections=False).encode(items)
    hot, stats = PlaneCodec(nets, multiple, 2, corrections=False).encode(items)
    assert sum(map(len, hot)) < 0.97 * sum(map(len, plain))
    # The model's own cost is reported either way; the coder's cost includes 4 bits per item and plane.
    # (to float32 rounding: without temperatures the cost of a 0 bit is taken as -log2(1 - p))
    np.testing.assert_allclose(stats.theoretical_bits, plain_stats.theoretical_bits, rtol=2e-3)
    assert (stats.quantised_bits < plain_stats.quantised_bits).all()
    decoded = PlaneCodec(nets, multiple, 2, corrections=False).decode([i.shape for i in items], hot)
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)


def test_a_decoder_that_ignores_the_symbols_fails_loudly() -> None:
    nets, multiple = _overconfident_nets(4.0)
    items = _items()
    streams, _ = PlaneCodec(nets, multiple, 2).encode(items)
    with pytest.raises((LaneSealError, ValueError, RuntimeError)):
        PlaneCodec(nets, multiple, 2, temperatures=False).decode([i.shape for i in items], streams)
