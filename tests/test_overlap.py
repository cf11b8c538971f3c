"""Encoder overlap: same bytes with and without the prefetch thread; the helper's contract."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from aribbps.arib import AribCodec
from aribbps.codec import PlaneCodec, PlaneNets
from aribbps.config import get_config
from aribbps.models.bitplane_net import build_nets
from aribbps.overlap import default_overlap, prefetched
from tests.test_arib import _items, arib_nets


def test_prefetched_keeps_order_and_runs_one_ahead_in_a_worker() -> None:
    main = threading.get_ident()
    started = [threading.Event() for _ in range(5)]
    order = []

    def fn(i: int) -> tuple[int, int, bool]:
        started[i].set()
        return i * i, threading.get_ident(), torch.is_grad_enabled()

    for item, (square, thread, grad) in prefetched(fn, range(5), torch.device("cpu"), True):
        order.append(item)
        assert square == item * item and thread != main and not grad
        if item < 4:  # the next item is computed while the caller still holds this one
            assert started[item + 1].wait(timeout=30)
    assert order == list(range(5))
    assert list(prefetched(lambda i: -i, [3, 4], torch.device("cpu"), False)) == [(3, -3), (4, -4)]
    assert list(prefetched(lambda i: i, [], torch.device("cpu"), True)) == []


def test_prefetched_raises_the_workers_error_at_its_item() -> None:
    def fn(i: int) -> int:
        if i == 2:
            raise ValueError("bad item 2")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 2"):
        for item, _ in prefetched(fn, range(4), torch.device("cpu"), True):
            got.append(item)
    assert got == [0, 1]


def test_overlap_is_on_for_cuda_only() -> None:
    assert not default_overlap(torch.device("cpu"))
    assert default_overlap(torch.device("cuda", 0))


@pytest.mark.parametrize("mode,lanes", [("single", 3), ("dataset", 4)])
def test_arib_encoder_writes_the_same_bytes_with_overlap(mode: str, lanes: int) -> None:
    nets, multiple = arib_nets()
    items = _items(np.random.default_rng(7), 13)
    plain, plain_stats = AribCodec(nets, multiple, lanes, mode, overlap=False).encode(items)
    overlapped, stats = AribCodec(nets, multiple, lanes, mode, overlap=True).encode(items)
    assert overlapped == plain
    np.testing.assert_array_equal(stats.theoretical_bits, plain_stats.theoretical_bits)
    np.testing.assert_array_equal(stats.qp, plain_stats.qp)
    decoded = AribCodec(nets, multiple, lanes, mode).decode(
        [i.shape for i in items], overlapped, stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)


def test_context_encoder_writes_the_same_bytes_with_overlap() -> None:
    torch.manual_seed(0)
    cfg = get_config("tiny-context")
    sig, ins = build_nets(cfg)
    nets = PlaneNets(sig.eval(), ins.eval())
    items = _items(np.random.default_rng(8), 11)
    plain, _ = PlaneCodec(nets, cfg.pad_multiple, 4, overlap=False).encode(items)
    overlapped, _ = PlaneCodec(nets, cfg.pad_multiple, 4, overlap=True).encode(items)
    assert overlapped == plain
    decoded = PlaneCodec(nets, cfg.pad_multiple, 4).decode([i.shape for i in items], overlapped)
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)
