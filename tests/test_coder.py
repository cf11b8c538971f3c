"""The lane coder: exact round trips, bits-back, sizes, hostile streams."""
from __future__ import annotations

import math
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aribbps.coder import (LATENT_PRECISION_BITS, LaneCoder, NotEnoughBitsError, StreamError,
                           binary_code_ones, latent_freqs)
from kernels.entropy_tail import LOGIT_STEPS, PROB_CODES

KINDS = ("binary", "rgb", "uniform", "latent", "padding")


def _random_op(rng: np.random.Generator, kind: str, lanes: int) -> dict:
    counts = rng.integers(0, 40, lanes)
    if kind == "binary":
        probs = [rng.integers(1, 256, c, dtype=np.uint8) for c in counts]
        return {"kind": kind, "probs": probs, "data": [(rng.integers(0, 256, c) < p).astype(np.uint8)
                                                        for c, p in zip(counts, probs)]}
    if kind == "rgb":
        return {"kind": kind, "probs": [rng.integers(1, 256, (c, 7), dtype=np.uint8) for c in counts],
                "data": [rng.integers(0, 2, (c, 3), dtype=np.uint8) for c in counts]}
    if kind == "uniform":
        k = int(rng.integers(1, 17))
        return {"kind": kind, "k": k, "data": [rng.integers(0, 2**k, c, dtype=np.uint32) for c in counts]}
    if kind == "latent":
        qp = rng.integers(1, 17, lanes)
        return {"kind": kind, "qp": qp, "d": [rng.integers(-3000, 3000, c).astype(np.int32) for c in counts],
                "data": [rng.integers(0, 2**int(q), c, dtype=np.uint32) for c, q in zip(counts, qp)]}
    return {"kind": kind, "words": rng.integers(0, 5, lanes), "seeds": rng.integers(0, 2**63, lanes)}


def _push(coder: LaneCoder, op: dict) -> None:
    kind = op["kind"]
    if kind == "binary":
        coder.push_binary(op["data"], op["probs"])
    elif kind == "rgb":
        coder.push_rgb(op["data"], op["probs"])
    elif kind == "uniform":
        coder.push_uniform(op["data"], op["k"])
    elif kind == "latent":
        coder.push_latent(op["data"], op["d"], op["qp"])
    else:
        coder.push_padding(op["words"], op["seeds"])


def _pop_and_check(coder: LaneCoder, op: dict) -> None:
    kind = op["kind"]
    if kind == "padding":
        assert coder.pop_padding(op["words"], op["seeds"]).all()
        return
    if kind == "binary":
        out = coder.pop_binary(op["probs"])
    elif kind == "rgb":
        out = coder.pop_rgb(op["probs"])
    elif kind == "uniform":
        out = coder.pop_uniform([len(a) for a in op["data"]], op["k"])
    else:
        out = coder.pop_latent(op["d"], op["qp"])
    for got, want in zip(out, op["data"]):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lanes=st.integers(1, 9), n_ops=st.integers(0, 12),
       threads=st.integers(1, 3))
def test_random_mixtures_round_trip_through_bytes(seed: int, lanes: int, n_ops: int, threads: int) -> None:
    rng = np.random.default_rng(seed)
    ops = [_random_op(rng, KINDS[int(rng.integers(len(KINDS)))], lanes) for _ in range(n_ops)]
    prob_code = PROB_CODES[seed % 2]
    encoder = LaneCoder(lanes, threads, prob_code)
    for op in ops:
        _push(encoder, op)
    decoder = LaneCoder.from_bytes(encoder.to_bytes(), threads=threads, prob_code=prob_code)
    for op in reversed(ops):
        _pop_and_check(decoder, op)
    assert decoder.is_empty().all()
    assert (decoder.num_bits() == 0).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), qp=st.integers(1, 16), lanes=st.integers(1, 6))
def test_latent_pop_then_push_restores_the_stack(seed: int, qp: int, lanes: int) -> None:
    rng = np.random.default_rng(seed)
    coder = LaneCoder(lanes, 2)
    coder.push_padding(64, rng.integers(0, 2**63, lanes))
    coder.push_binary(rng.integers(0, 2, (lanes, 300), dtype=np.uint8), rng.integers(1, 256, (lanes, 300)))
    before = coder.to_bytes()
    d = rng.integers(-2432, 2433, (lanes, 50)).astype(np.int32)
    bins = coder.pop_latent(d, qp)
    assert bins.shape == (lanes, 50) and (bins < 2**qp).all()
    coder.push_latent(bins, d, qp)
    assert coder.to_bytes() == before


def test_pop_below_the_bottom_raises_and_changes_nothing() -> None:
    coder = LaneCoder(3, 2)
    coder.push_padding([10, 0, 10], [1, 2, 3])
    before = coder.to_bytes()
    with pytest.raises(NotEnoughBitsError, match="lane 1"):
        coder.pop_latent(np.zeros((3, 20), np.int32), 10)
    assert coder.to_bytes() == before
    with pytest.raises(NotEnoughBitsError):
        LaneCoder(1).pop_uniform([1], 16)


def test_partial_latent_pop_flags_short_lanes_only() -> None:
    coder = LaneCoder(3, 2)
    coder.push_padding([40, 0, 40], [1, 2, 3])
    before = coder.to_bytes()
    d = np.zeros((3, 30), np.int32)
    bins, ok = coder.pop_latent_partial(d, 10)
    assert ok.tolist() == [True, False, True]
    after = coder.to_bytes()
    assert after[1] == before[1] and after[0] != before[0]
    coder.push_latent([bins[0], np.zeros(0), bins[2]], [d[0], np.zeros(0), d[2]], 10)
    assert coder.to_bytes() == before


def test_num_bits_tracks_information() -> None:
    coder = LaneCoder(2)
    assert list(coder.num_bits()) == [0, 0]
    coder.push_uniform([np.arange(100) % 2**12, np.zeros(0)], 12)
    bits = coder.num_bits()
    assert 1195 <= bits[0] <= 1200 and bits[1] == 0


def test_bad_arguments_raise_value_error() -> None:
    coder = LaneCoder(2)
    with pytest.raises(ValueError, match="q=0"):
        coder.push_binary(np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="not 0 or 1"):
        coder.push_binary(np.full((2, 3), 2, np.uint8), np.full((2, 3), 9, np.uint8))
    with pytest.raises(ValueError, match="qp=17"):
        coder.pop_latent(np.zeros((2, 3), np.int32), 17)
    with pytest.raises(ValueError, match="does not fit"):
        coder.push_uniform(np.full((2, 1), 8), 3)
    with pytest.raises(ValueError, match="2 lanes|expected 2"):
        coder.push_binary(np.zeros((3, 3), np.uint8), np.ones((3, 3), np.uint8))
    with pytest.raises(ValueError):
        LaneCoder(0)
    assert (coder.is_empty()).all()


@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_coded_size_is_close_to_the_information_content(prob_code: str) -> None:
    rng = np.random.default_rng(5)
    lanes, n = 4, 200_000
    probs = rng.integers(1, 256, (lanes, n), dtype=np.uint8)
    precision, one = binary_code_ones(PROB_CODES.index(prob_code))
    p1 = one[probs] / 2.0**precision
    bits = (rng.random((lanes, n)) < p1).astype(np.uint8)
    ideal = -(np.where(bits == 1, np.log2(p1), np.log2(1 - p1))).sum(axis=1)
    coder = LaneCoder(lanes, prob_code=prob_code)
    coder.push_binary(bits, probs)
    sizes = np.array([len(s) * 8 for s in coder.to_bytes()])
    assert (sizes <= ideal * 1.001 + 8 * 32).all(), (sizes, ideal)
    assert (sizes >= ideal * 0.99).all(), (sizes, ideal)  # the bytes do mean these probabilities


def test_the_probability_codes() -> None:
    """linear: q / 256; logit: round(2^16 σ((q - 128) / 16)) / 2^16, as documented."""
    bits, one = binary_code_ones(PROB_CODES.index("linear"))
    assert bits == 8 and one[1:].tolist() == list(range(1, 256))
    bits, one = binary_code_ones(PROB_CODES.index("logit"))
    expected = [round(2**16 / (1 + math.exp(-(q - 128) / LOGIT_STEPS))) for q in range(1, 256)]
    assert bits == 16 and one[1:].tolist() == expected
    assert one[128] == 2**15 and one[1] == 23 and one[255] == 2**16 - 23
    with pytest.raises(ValueError, match="unknown probability code 2"):
        binary_code_ones(2)
    with pytest.raises(ValueError, match="prob_code must be one of"):
        LaneCoder(1, prob_code="cubic")


def test_latent_freqs_contract() -> None:
    for qp in (1, 2, 3, 10, 16):
        bins = np.arange(2**qp, dtype=np.uint32)
        for d in (-5000, -2432, -1, 0, 700, 2432):
            freqs = latent_freqs(bins, np.full(bins.shape, d, np.int32), qp)
            assert freqs.min() >= 1
            assert int(freqs.sum()) == 2**LATENT_PRECISION_BITS
    uniform = latent_freqs(np.arange(8, dtype=np.uint32), np.zeros(8, np.int32), 3)
    assert uniform.max() - uniform.min() <= 1


def test_pinned_bitstream() -> None:
    """The byte format is part of the .arib format: it must never change silently."""
    bits, probs = [np.array([1, 0, 1, 1], np.uint8)], [np.array([200, 3, 128, 255], np.uint8)]
    for prob_code, pinned in (("linear", PINNED_STREAM), ("logit", PINNED_STREAM_LOGIT)):
        coder = LaneCoder(1, prob_code=prob_code)
        coder.push_binary(bits, probs)
        coder.push_uniform([np.array([5, 6], np.uint32)], 3)
        coder.push_latent([np.array([700], np.uint32)], [np.array([-300], np.int32)], 10)
        (stream,) = coder.to_bytes()
        assert stream.hex() == pinned
        decoder = LaneCoder.from_bytes([stream], prob_code=prob_code)
        assert decoder.pop_latent([np.array([-300], np.int32)], 10)[0].tolist() == [700]
        assert decoder.pop_uniform([2], 3)[0].tolist() == [5, 6]
        assert decoder.pop_binary(probs)[0].tolist() == bits[0].tolist()
    for old_or_new in (PINNED_STREAM_LAYOUT_1, PINNED_STREAM):  # layout 1 is still read
        decoder = LaneCoder.from_bytes([bytes.fromhex(old_or_new)], prob_code="linear")
        assert decoder.to_bytes() == [bytes.fromhex(PINNED_STREAM)]
        assert decoder.pop_latent([np.array([-300], np.int32)], 10)[0].tolist() == [700]


# Layout 2: head 0x94 (turn 1, state0 in 6 bytes, state1 in 5), the states, no words.
PINNED_STREAM = "9442f0dfbf2840854de17a14"  # linear probabilities
PINNED_STREAM_LOGIT = "9411fadf34353f850e842d10"
PINNED_STREAM_LAYOUT_1 = "010142f0dfbf28400000854de17a14000000"


def test_stack_layout_2_is_canonical() -> None:
    """Each state in the fewest bytes: a padded state or a reserved head bit is refused."""
    good = bytes.fromhex(PINNED_STREAM)
    padded = bytes([good[0] + 1]) + good[1:] + b"\x00"  # state1 (last, no words) in 6 bytes, top byte 0
    for bad in (padded, bytes([good[0] | 0x20]) + good[1:], bytes([good[0] | 0x40]) + good[1:], good[:-1],
                good + b"\x00", b""):
        with pytest.raises(StreamError):
            LaneCoder.from_bytes([bad])


@pytest.mark.parametrize("value", [0, 1, 0xFFFFFFFF, 1 << 32, 2**64 - 1, 0x0123456789ABCDEF])
def test_a_sealed_lane_decodes_back_to_its_seal(value: int) -> None:
    rng = np.random.default_rng(value % 1000)
    bits = rng.integers(0, 2, 500).astype(np.uint8)
    probs = rng.integers(1, 256, 500).astype(np.uint8)
    coder = LaneCoder(2)
    coder.seal(np.array([value, 5], np.uint64))
    values, ok = coder.seal_values()
    assert ok.all() and values.tolist() == [value, 5]
    coder.push_binary([bits, bits[:7]], [probs, probs[:7]])
    decoder = LaneCoder.from_bytes(coder.to_bytes())
    assert not decoder.seal_values()[1].any()  # words left: not decoded to the end
    out = decoder.pop_binary([probs, probs[:7]])
    assert np.array_equal(out[0], bits) and np.array_equal(out[1], bits[:7])
    values, ok = decoder.seal_values()
    assert ok.all() and values.tolist() == [value, 5]
    assert decoder.is_empty().tolist() == [value == 0, False]


def test_seal_needs_empty_lanes() -> None:
    coder = LaneCoder(1)
    coder.push_uniform([np.array([3], np.uint32)], 2)
    with pytest.raises(ValueError, match="empty"):
        coder.seal(np.array([1], np.uint64))
    with pytest.raises(ValueError, match="values has 2 elements"):
        LaneCoder(1).seal(np.array([1, 2], np.uint64))


def _mutations(rng: np.random.Generator, valid: bytes) -> bytes:
    data = bytearray(valid)
    choice = rng.integers(4)
    if choice == 0 and data:
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    elif choice == 1:
        data = data[: int(rng.integers(len(data) + 1))]
    elif choice == 2:
        data += bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
    else:
        data = bytearray(rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8))
    return bytes(data)


def test_ten_thousand_hostile_streams_fail_cleanly() -> None:
    rng = np.random.default_rng(11)
    encoder = LaneCoder(1)
    probs = rng.integers(1, 256, (1, 64, 7), dtype=np.uint8)
    encoder.push_rgb(rng.integers(0, 2, (1, 64, 3), dtype=np.uint8), probs)
    valid = encoder.to_bytes()[0]
    outcomes = {"decoded": 0, "stream": 0, "bits": 0}
    for _ in range(10_000):
        data = _mutations(rng, valid)
        try:
            decoder = LaneCoder.from_bytes([data], threads=1)
            decoder.pop_rgb(probs)
            outcomes["decoded"] += 1
        except StreamError:
            outcomes["stream"] += 1
        except NotEnoughBitsError:
            outcomes["bits"] += 1
    assert sum(outcomes.values()) == 10_000
    assert outcomes["stream"] > 1000 and outcomes["bits"] > 100
