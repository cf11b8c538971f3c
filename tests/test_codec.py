"""PlaneCodec: bit-exact round trips over lanes, and the ideal-cost accounting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aribbps.codec import PlaneCodec, PlaneNets
from aribbps.config import get_config
from aribbps.models.bitplane_net import build_nets


def _nets(seed: int = 0) -> tuple[PlaneNets, int]:
    torch.manual_seed(seed)
    cfg = get_config("tiny-context")
    sig, ins = build_nets(cfg)
    # Heads start at zero output (1 bit per bit); perturb them so the
    # probabilities are far from 1/2 and differ per position.
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn_like(p) * 0.3)
    return PlaneNets(sig.eval(), ins.eval()), cfg.pad_multiple


def _items(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = [(3, 8, 8), (1, 5, 3), (3, 1, 1), (3, 3, 5), (1, 9, 12), (3, 17, 6), (3, 8, 8)]
    items = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    items.append(np.full((3, 6, 6), 77, np.uint8))
    grad = np.add.outer(np.arange(10), np.arange(7)).astype(np.uint8) * 9
    items.append(np.stack([grad, grad // 2, 255 - grad]))
    return items


@pytest.mark.parametrize("lanes", [1, 3, 16])
def test_round_trip_mixed_items(lanes: int) -> None:
    nets, multiple = _nets()
    items = _items(np.random.default_rng(lanes))
    streams, stats = PlaneCodec(nets, multiple, lanes, threads=2).encode(items)
    assert len(streams) == lanes
    # Decode with separately built networks holding the same weights.
    nets2, _ = _nets()
    decoded = PlaneCodec(nets2, multiple, lanes, threads=1).decode([i.shape for i in items], streams)
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)
    assert (stats.quantised_bits > 0).all() and (stats.theoretical_bits > 0).all()


def test_stream_size_matches_quantised_information() -> None:
    nets, multiple = _nets(1)
    rng = np.random.default_rng(3)
    items = [rng.integers(0, 256, (3, 16, 16), dtype=np.uint8) for _ in range(8)]
    streams, stats = PlaneCodec(nets, multiple, 2).encode(items)
    actual = sum(len(s) for s in streams) * 8
    ideal = stats.quantised_bits.sum()
    assert actual <= ideal * 1.01 + 2 * 18 * 8


def test_wrong_streams_fail_loudly() -> None:
    nets, multiple = _nets()
    items = _items(np.random.default_rng(0))
    streams, _ = PlaneCodec(nets, multiple, 2).encode(items)
    other, _ = _nets(seed=5)
    with pytest.raises(ValueError):
        decoded = PlaneCodec(other, multiple, 2).decode([i.shape for i in items], streams)
        assert all(np.array_equal(a, b) for a, b in zip(decoded, items))
