"""ArIB bits-back coding: exact round trips in both modes, padding, accounting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aribbps import arib
from aribbps.arib import AribCodec
from aribbps.codec import PlaneNets
from aribbps.config import get_config
from aribbps.models.bitplane_net import build_nets
from tests.conftest import ins_predicts_zero_low_bits


def arib_nets(seed: int = 0, scale: float = 0.3) -> tuple[PlaneNets, int]:
    torch.manual_seed(seed)
    cfg = get_config("tiny")
    sig, ins = build_nets(cfg)
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn_like(p) * scale)
    return PlaneNets(sig.eval(), ins.eval()), cfg.pad_multiple


def _items(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    items = []
    for i in range(n):
        c = 1 if i % 5 == 4 else 3
        h, w = rng.integers(1, 20, 2)
        base = rng.integers(0, 256, (c, 1, 1))
        noise = rng.integers(-20, 21, (c, h, w))
        items.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return items


@pytest.mark.parametrize("mode,lanes", [("single", 1), ("single", 4), ("dataset", 3), ("dataset", 16)])
def test_round_trip(mode: str, lanes: int) -> None:
    nets, multiple = arib_nets()
    items = _items(np.random.default_rng(lanes), 23)
    codec = AribCodec(nets, multiple, lanes, mode, threads=2)
    streams, stats = codec.encode(items)
    nets2, _ = arib_nets()
    decoded = AribCodec(nets2, multiple, lanes, mode, threads=1).decode(
        [i.shape for i in items], streams, stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)
    if mode == "dataset":  # chains give qp 10; only the first-coded items of short chains may get less
        assert (stats.qp == 10).mean() >= 0.5
    assert ((stats.qp >= arib.QP_MIN) & (stats.qp <= arib.QP_MAX)).all()


@pytest.mark.parametrize("mode", ["single", "dataset"])
def test_tiny_images_round_trip(mode: str) -> None:
    nets, multiple = arib_nets()
    items = [np.full((1, 1, 1), 9, np.uint8), np.full((3, 1, 2), 200, np.uint8), np.full((1, 2, 2), 7, np.uint8)]
    streams, stats = AribCodec(nets, multiple, 1, mode).encode(items)
    assert stats.padding_words[:-1].sum() == 0  # only the first image coded (last decoded) of a chain
    decoded = AribCodec(nets, multiple, 1, mode).decode([i.shape for i in items], streams,
                                                        stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)


def test_padding_provides_initial_bits_when_even_the_lowest_qp_needs_more(monkeypatch) -> None:
    import aribbps.arib as arib

    monkeypatch.setattr(arib, "QP_MIN", 10)  # forbid lowering qp: 1x1 images then need padding
    monkeypatch.setattr(AribCodec, "_initial_qp", lambda self, own, stack, dims: np.full(len(own), 10, np.uint8))
    nets, multiple = arib_nets()
    items = [np.full((1, 1, 1), 9, np.uint8), np.full((3, 1, 2), 200, np.uint8), np.full((1, 2, 2), 7, np.uint8)]
    streams, stats = AribCodec(nets, multiple, 1, "dataset").encode(items)
    assert stats.padding_words[-1] > 0 and (stats.padding_bits == 32 * stats.padding_words).all()
    decoded = AribCodec(nets, multiple, 1, "dataset").decode([i.shape for i in items], streams,
                                                             stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)


def test_a_starved_image_gets_qp_1_before_any_padding() -> None:
    """A flat image's insignificant planes cost almost nothing: qp falls to QP_MIN = 1, then pads.

    Without temperatures: their 16 bits on the stack would be enough for the
    tiny model's few latent bits at qp 1.
    """
    nets, multiple = arib_nets()
    ins_predicts_zero_low_bits(nets.ins, -8.0)
    items = [np.full((3, 16, 16), 128, np.uint8)]  # low 4 bits all 0
    streams, stats = AribCodec(nets, multiple, 1, "single", temperatures=False).encode(items)
    assert arib.QP_MIN == 1 and stats.qp[0] == 1 and stats.padding_words[0] > 0
    # Trimmed: the padding exceeds what the sample took by at most the margin and one word.
    assert 32 * stats.padding_words[0] <= stats.posterior_bits[0] + arib._PAD_MARGIN_BITS + 32
    decoded = AribCodec(nets, multiple, 1, "single", temperatures=False).decode(
        [items[0].shape], streams, stats.qp.tolist(), stats.padding_words.tolist())
    np.testing.assert_array_equal(decoded[0], items[0])


def test_trimmed_padding_keeps_a_margin_and_leaves_unpadded_lanes_alone() -> None:
    pad = np.array([0, 10, 10, 3])
    left = np.array([500, 64 + 32 * 4 + 5, 20, 10_000])
    np.testing.assert_array_equal(arib._trimmed_padding(pad, left), [0, 6, 10, 0])


def test_qp_1_round_trips_and_the_decoder_refuses_qp_outside_the_coder_range(monkeypatch) -> None:
    """Every item at the lowest qp; the coder supports 1..16 and the decoder refuses anything else."""
    monkeypatch.setattr(AribCodec, "_initial_qp", lambda self, own, stack, dims: np.full(len(own), 1, np.uint8))
    nets, multiple = arib_nets()
    items = _items(np.random.default_rng(3), 5)
    streams, stats = AribCodec(nets, multiple, 2, "dataset").encode(items)
    assert (stats.qp == 1).all()
    monkeypatch.undo()
    codec = AribCodec(nets, multiple, 2, "dataset")
    decoded = codec.decode([i.shape for i in items], streams, stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)
    for bad in (0, 17):
        with pytest.raises(ValueError, match=r"qp values must lie in \[1, 16\]"):
            codec.decode([i.shape for i in items], streams, [bad] * len(items), stats.padding_words.tolist())


def test_stream_size_matches_the_bits_back_accounting() -> None:
    nets, multiple = arib_nets(3, scale=0.1)
    rng = np.random.default_rng(7)
    items = [np.clip(rng.integers(60, 200) + rng.integers(-30, 31, (3, 16, 16)), 0, 255).astype(np.uint8)
             for _ in range(6)]
    streams, stats = AribCodec(nets, multiple, 2, "single").encode(items)
    actual = sum(len(s) for s in streams) * 8
    expected = stats.net_bits().sum()
    assert abs(actual - expected) <= 0.01 * expected + 2 * 18 * 8 + 64


@pytest.mark.parametrize("prob_code", ["linear", "logit"])
def test_both_probability_codes_round_trip_and_the_wrong_one_fails_loudly(prob_code: str) -> None:
    """Files of either code decode with it (the container records which); the other code never
    decodes them silently."""
    nets, multiple = arib_nets(3, scale=0.1)
    items = _items(np.random.default_rng(4), 7)
    streams, stats = AribCodec(nets, multiple, 2, "dataset", prob_code=prob_code).encode(items)
    shapes, qp, pad = [i.shape for i in items], stats.qp.tolist(), stats.padding_words.tolist()
    decoded = AribCodec(nets, multiple, 2, "dataset", prob_code=prob_code).decode(shapes, streams, qp, pad)
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)
    assert abs(sum(len(s) for s in streams) * 8 - stats.net_bits().sum()) <= 0.01 * stats.net_bits().sum() + 400
    other = "logit" if prob_code == "linear" else "linear"
    with pytest.raises(ValueError):
        AribCodec(nets, multiple, 2, "dataset", prob_code=other).decode(shapes, streams, qp, pad)


def test_corrupted_stream_fails_loudly() -> None:
    nets, multiple = arib_nets()
    items = _items(np.random.default_rng(0), 6)
    codec = AribCodec(nets, multiple, 2, "dataset")
    streams, stats = codec.encode(items)
    bad = bytearray(streams[0])
    bad[-5] ^= 0x10
    with pytest.raises(ValueError):
        decoded = codec.decode([i.shape for i in items], [bytes(bad), streams[1]], stats.qp.tolist(),
                               stats.padding_words.tolist())
        assert all(np.array_equal(a, b) for a, b in zip(decoded, items))


def test_cli_round_trip_in_both_arib_modes(tmp_path) -> None:
    from PIL import Image

    from aribbps.cli import EXIT_OK, main
    from aribbps.container import read_archive
    from tests.conftest import make_model_file

    model = make_model_file(tmp_path / "tiny.safetensors", config="tiny")
    rng = np.random.default_rng(9)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(7):
        h, w = rng.integers(1, 14, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (5, 9), dtype=np.uint8)).save(src / "grey.png")
    for mode in ("single", "dataset"):
        arib = tmp_path / f"{mode}.arib"
        assert main(["compress", "--batch", str(src), "-o", str(arib), "--mode", mode, "--lanes", "3",
                     "--model", str(model), "-q"]) == EXIT_OK
        assert read_archive(arib).mode == mode
        out = tmp_path / f"out-{mode}"
        assert main(["decompress", str(arib), "-o", str(out), "--model", str(model), "-q"]) == EXIT_OK
        for path in src.iterdir():
            with Image.open(path) as a, Image.open(out / path.name) as b:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mode,lanes", [("dataset", 1), ("dataset", 16), ("single", 7)])
def test_two_hundred_mixed_images(mode: str, lanes: int) -> None:
    """Mixed sizes (1x1 up to 24x24, greyscale among them), so several rounds need padding."""
    nets, multiple = arib_nets(4)
    rng = np.random.default_rng(lanes)
    items = _items(rng, 200 if lanes > 1 else 60)
    codec = AribCodec(nets, multiple, lanes, mode, threads=2)
    streams, stats = codec.encode(items)
    decoded = codec.decode([i.shape for i in items], streams, stats.qp.tolist(), stats.padding_words.tolist())
    assert all(np.array_equal(a, b) for a, b in zip(decoded, items))


def test_bits_back_accounting_and_dataset_mode_on_a_trained_model(trained_model_file) -> None:
    """Actual stream bits = planes + qp|z| - posterior (+ padding), and chaining beats single images."""
    from aribbps import zoo
    from tests.conftest import smooth_images

    model = zoo.load(trained_model_file)
    images = smooth_images(64, 16, seed=999).numpy()
    single_bits, single_expected = 0, 0.0
    for image in images[:16]:
        codec = AribCodec(model.nets, model.cfg.pad_multiple, 1, "single")
        streams, stats = codec.encode([image])
        bits = len(streams[0]) * 8
        expected = float(stats.net_bits().sum())
        assert abs(bits - expected) <= 0.01 * expected + 160, (bits, expected)
        single_bits += bits
        single_expected += expected
    codec = AribCodec(model.nets, model.cfg.pad_multiple, 4, "dataset")
    streams, stats = codec.encode(list(images))
    dataset_bits = sum(len(s) for s in streams) * 8
    assert abs(dataset_bits - stats.net_bits().sum()) <= 0.01 * stats.net_bits().sum() + 4 * 160
    # The same 16 images coded on their own cost more per image than the 64 chained ones.
    assert dataset_bits / 64 < single_bits / 16


def test_files_record_the_logit_code_and_a_forged_code_fails_loudly(trained_model_file) -> None:
    from aribbps import api, zoo
    from aribbps.container import decode_archive, encode_archive
    from aribbps.errors import ArchiveError, ChecksumError
    from aribbps.imageio import LoadedImage
    from tests.conftest import smooth_images

    model = zoo.load(trained_model_file)
    pixels = smooth_images(3, 16, seed=5).numpy().transpose(0, 2, 3, 1)
    images = [LoadedImage(f"p{i}.png", "PNG", "RGB", np.ascontiguousarray(p)) for i, p in enumerate(pixels)]
    archive = decode_archive(api.encode_images(images, model, lanes=2, mode="dataset").data)
    assert archive.prob_code == "logit"
    decoded = api.decode_archive_images(archive, model)
    assert all(np.array_equal(d.pixels, im.pixels) for d, im in zip(decoded, images))
    archive.prob_code = "linear"  # a forged flag: the streams were coded with the other meaning
    with pytest.raises((ArchiveError, ChecksumError)):
        api.decode_archive_images(decode_archive(encode_archive(archive)), model)
