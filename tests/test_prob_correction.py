"""Adaptive probability corrections: the arithmetic, what they learn, and the codec round trip."""
from __future__ import annotations

import numpy as np
import pytest

from aribbps.arib import AribCodec
from aribbps.codec import PlaneCodec, PlaneNets
from aribbps.config import get_config
from aribbps.lane_seal import LaneSealError
from aribbps import api
from aribbps.container import decode_archive
from aribbps.imageio import LoadedImage
from aribbps.prob_correction import BAND_SHIFT, COLUMNS, PRIOR_COUNT, ProbCorrection, _nearest_bytes
from aribbps.zoo import load
from aribbps.probability import probability_masses, quantised_bits_cost
from tests.conftest import edited_output_nets, perturbed_nets, smooth_images


def corrected_ref(correction: ProbCorrection, k: int, probs7: np.ndarray, prob_code: str) -> np.ndarray:
    """Value by value, as docs/format.md states it: the nearest byte, the lower one on a tie."""
    bits, one = probability_masses(prob_code)
    one = one.astype(np.int64) << (16 - bits)  # masses in 1/2^16 whatever the code
    out = np.empty_like(probs7)
    for j, pos, col in np.ndindex(*probs7.shape):
        q = int(probs7[j, pos, col])
        cell = ((k - 1) * COLUMNS + col) * (256 >> BAND_SHIFT) + (q >> BAND_SHIFT)
        n, e = int(correction.count[j, cell]), int(correction.error[j, cell])
        p = min(max(int(one[q]) + e // (n + PRIOR_COUNT), int(one[1])), int(one[255]))
        distances = [abs(int(one[b]) - p) for b in range(1, 256)]
        out[j, pos, col] = 1 + int(np.argmin(distances))
    return out


@pytest.mark.parametrize("prob_code", ["logit", "linear"])
def test_before_any_bit_the_bytes_pass_unchanged(prob_code: str) -> None:
    probs7 = np.arange(1, 256, dtype=np.uint8)[:252].reshape(2, 18, 7)
    for k in (1, 8):
        np.testing.assert_array_equal(ProbCorrection(2, prob_code).corrected(k, probs7), probs7)
    mass, nearest = _nearest_bytes(prob_code)  # a zero correction maps every byte to itself
    np.testing.assert_array_equal(nearest[mass[1:]], np.arange(1, 256))
    assert nearest[0] == 1 and nearest[-1] == 255


@pytest.mark.parametrize("prob_code", ["logit", "linear"])
def test_corrected_bytes_follow_the_stated_formula(prob_code: str) -> None:
    rng = np.random.default_rng(1)
    correction = ProbCorrection(2, prob_code)
    probs7 = rng.integers(1, 256, (2, 40, 7), dtype=np.uint8)
    for k in (2, 3):
        bits = (rng.random((2, 3, 40)) < 0.8).astype(np.uint8)  # more ones than the bytes say, on average
        correction.learn(k, probs7, bits, rng.random((2, 40)) < 0.9, np.array([True, False]))
    for k in (1, 2, 3):
        np.testing.assert_array_equal(correction.corrected(k, probs7), corrected_ref(correction, k, probs7, prob_code))
    assert (correction.corrected(2, probs7) != probs7).any()


def test_learn_counts_the_coded_bits_in_their_cells() -> None:
    """Cells by plane, the column the bit was coded with and the band; R only for greyscale items."""
    correction = ProbCorrection(2, "logit")
    _, one = probability_masses("logit")  # 16-bit already
    probs7 = np.full((2, 2, 7), 128, np.uint8)
    probs7[:, :, 2] = 200  # g given r = 1
    bits = np.array([[[1, 0], [1, 1], [0, 0]], [[1, 1], [1, 1], [1, 1]]], np.uint8)  # (n, 3, Q)
    coded = np.array([[True, True], [True, False]])
    correction.learn(5, probs7, bits, coded, np.array([True, False]))
    base = 4 * COLUMNS * 16

    def cell(col: int, q: int) -> int:
        return base + col * 16 + (q >> BAND_SHIFT)

    count = correction.count
    assert count[0].sum() == 6 and count[1].sum() == 1
    assert count[0, cell(0, 128)] == 2  # both R bits
    assert count[0, cell(2, 200)] == 1 and count[0, cell(1, 128)] == 1  # G after r = 1, after r = 0
    assert count[0, cell(6, 128)] == 1 and count[0, cell(4, 128)] == 1  # B after rg = 11, after 01
    assert count[1, cell(0, 128)] == 1
    assert correction.error[0, cell(2, 200)] == (1 << 16) - one[200]
    assert correction.error[1, cell(0, 128)] == (1 << 16) - one[128]


def test_corrections_learn_a_bias_that_temperatures_cannot() -> None:
    """A source with more ones than its bytes say: the next stage costs less after one stage learnt."""
    rng = np.random.default_rng(2)
    probs7 = rng.integers(100, 156, (1, 4000, 7), dtype=np.uint8)
    _, one = probability_masses("logit")
    bits = (rng.random((1, 3, 4000)) < np.minimum(one[probs7[..., 0]] / 65536 + 0.2, 1)[:, None]).astype(np.uint8)
    correction = ProbCorrection(1, "logit")
    correction.learn(4, probs7, bits, np.ones((1, 4000), bool), np.array([True]))
    after = correction.corrected(4, probs7)
    assert quantised_bits_cost(after, bits)[0] < 0.97 * quantised_bits_cost(probs7, bits)[0]
    np.testing.assert_array_equal(correction.corrected(5, probs7), probs7)  # other planes untouched


def test_bad_arguments_are_refused() -> None:
    correction = ProbCorrection(2, "logit")
    probs7 = np.full((2, 3, 7), 128, np.uint8)
    with pytest.raises(ValueError, match="plane"):
        correction.corrected(0, probs7)
    with pytest.raises(ValueError, match="2 items"):
        correction.corrected(1, probs7[:1])
    with pytest.raises(ValueError, match="prob_code"):
        ProbCorrection(1, "cubic")


def _biased_nets(bias: float) -> tuple[PlaneNets, int]:
    """tiny-context nets with random weights whose every logit is shifted by ``bias``."""
    sig, ins = edited_output_nets(lambda name, p: p.add_(bias) if name.endswith("bias") else None)
    return PlaneNets(sig, ins), get_config("tiny-context").pad_multiple


def _items() -> list[np.ndarray]:
    x = smooth_images(4, 24, seed=3).numpy()
    return [x[0], x[1, :, :17, :19], x[2, :1], x[3, :, :9]]


def test_corrections_cut_the_bits_of_a_biased_model_and_round_trip() -> None:
    nets, multiple = _biased_nets(2.0)
    items = _items()
    plain, plain_stats = PlaneCodec(nets, multiple, 2, corrections=False).encode(items)
    corrected, stats = PlaneCodec(nets, multiple, 2).encode(items)
    assert sum(map(len, corrected)) < 0.97 * sum(map(len, plain))
    np.testing.assert_allclose(stats.theoretical_bits, plain_stats.theoretical_bits)  # the model's own cost
    assert stats.quantised_bits.sum() < plain_stats.quantised_bits.sum()
    decoded = PlaneCodec(nets, multiple, 2).decode([i.shape for i in items], corrected)
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)
    with pytest.raises((LaneSealError, ValueError, RuntimeError)):
        PlaneCodec(nets, multiple, 2, corrections=False).decode([i.shape for i in items], corrected)


@pytest.mark.parametrize("mode", ["single", "dataset"])
def test_arib_modes_round_trip_with_corrections(mode: str) -> None:
    """Separate corrections for the SIG and the INS planes, as the decoder meets them."""
    sig, ins = perturbed_nets("tiny", seed=4)
    nets = PlaneNets(sig.eval(), ins.eval())
    multiple = get_config("tiny").pad_multiple
    items = [i.numpy() for i in smooth_images(3, 16, seed=6)]
    codec = AribCodec(nets, multiple, 2, mode, threads=1)
    streams, stats = codec.encode(items)
    plain, _ = AribCodec(nets, multiple, 2, mode, threads=1, corrections=False).encode(items)
    assert streams != plain
    decoded = AribCodec(nets, multiple, 2, mode, threads=1).decode(
        [i.shape for i in items], streams, stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)


def test_the_writer_stores_the_corrections_and_both_settings_decode(model_file) -> None:
    model = load(model_file)
    pixels = smooth_images(2, 20, seed=8).numpy().transpose(0, 2, 3, 1)
    images = [LoadedImage(f"im{i}.png", "PNG", "RGB", np.ascontiguousarray(p)) for i, p in enumerate(pixels)]
    for corrections in (True, False):
        kwargs = {} if corrections else {"corrections": False}
        archive = decode_archive(api.encode_images(images, model, **kwargs).data)
        assert archive.corrections is corrections
        for got, image in zip(api.decode_archive_images(archive, model), images):
            np.testing.assert_array_equal(got.pixels, image.pixels)
