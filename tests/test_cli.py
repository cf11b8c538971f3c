"""End to end through the CLI: bit-exact round trips, bad input, exit codes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aribbps import api, zoo
from aribbps.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_OS, EXIT_USAGE, main
from aribbps.container import decode_archive, encode_archive, fixed_overhead_bytes, read_archive
from aribbps.imageio import LoadedImage


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _save(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(pixels, mode=mode).save(path) if mode else Image.fromarray(pixels).save(path)
    return path


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(im.mode))


def _cases(d: Path) -> dict[str, Path]:
    rng = _rng()
    grad = (np.add.outer(np.arange(40), np.arange(30)) * 3).astype(np.uint8)
    cases = {
        "noise": _save(d / "noise.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)),
        "gradient": _save(d / "gradient.png", np.stack([grad, grad[::-1], grad.T[:, :40].T[:40, :30]], -1)),
        "flat": _save(d / "flat.png", np.full((16, 16, 3), 200, np.uint8)),
        "one": _save(d / "one.png", np.array([[[1, 2, 3]]], np.uint8)),
        "3x5": _save(d / "three_by_five.png", rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)),
        "33x17": _save(d / "odd.bmp", rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)),
        "grey": _save(d / "grey.png", grad),
        "rgba": _save(d / "rgba.png", np.dstack([rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
                                                 rng.integers(0, 256, (9, 7), dtype=np.uint8)])),
        "opaque": _save(d / "opaque.png", np.dstack([rng.integers(0, 256, (6, 6, 3), dtype=np.uint8),
                                                     np.full((6, 6), 255, np.uint8)])),
        "la": _save(d / "la.png", np.dstack([grad[:8, :8], grad[:8, :8] // 3]), "LA"),
        "grey_rgb": _save(d / "grey_rgb.png", np.dstack([grad] * 3)),
        "grey_rgba": _save(d / "grey_rgba.png", np.dstack([grad[:9, :7]] * 3 + [grad[:9, :7] // 5])),
        "grey_opaque": _save(d / "grey_opaque.png", np.dstack([grad[:5, :6]] * 3 + [np.full((5, 6), 255, np.uint8)])),
    }
    palette = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).quantize(16)
    palette.save(d / "palette.png")
    cases["palette"] = d / "palette.png"
    return cases


def _expected(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        return np.asarray(im)


@pytest.mark.parametrize("groups", [1, 2])
def test_cli_round_trip_of_every_kind_of_image(tmp_path: Path, model_file: Path, groups: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cases = _cases(src)
    arib = tmp_path / "all.arib"
    args = ["--model", str(model_file), "-q"]
    assert main(["compress", *map(str, cases.values()), "-o", str(arib), "--lanes", "3",
                 "--lane-groups", str(groups), *args]) == EXIT_OK
    assert api.info(arib)["lane_groups"] == groups
    out = tmp_path / "out"
    assert main(["decompress", str(arib), "-o", str(out), *args]) == EXIT_OK
    for name, path in cases.items():
        restored = out / (path.stem + (".bmp" if path.suffix == ".bmp" else ".png"))
        np.testing.assert_array_equal(_pixels(restored), _expected(path), err_msg=name)


def test_rgb_with_equal_channels_is_coded_as_grey(tmp_path: Path, model_file: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Its lanes are those of the same pixels as an L image (the two copies cost nothing), and it
    comes back as RGB; an RGB image with one sub-pixel off is coded in colour."""
    grad = (np.add.outer(np.arange(40), np.arange(30)) * 3).astype(np.uint8)
    model = zoo.load(model_file)
    rgb = LoadedImage("a.png", "PNG", "RGB", np.dstack([grad] * 3))
    as_grey = api.encode_images([rgb], model, lanes=1)
    as_l = api.encode_images([LoadedImage("a.png", "PNG", "L", grad[..., None])], model, lanes=1)
    assert as_grey.archive.lane_streams == as_l.archive.lane_streams
    assert as_grey.archive.images[0].extra == {"grey": True} and as_grey.archive.images[0].mode == "RGB"
    off = rgb.pixels.copy()
    off[7, 3, 2] ^= 1
    colour = api.encode_images([LoadedImage("a.png", "PNG", "RGB", off)], model, lanes=1)
    assert "grey" not in colour.archive.images[0].extra and len(colour.data) > len(as_grey.data)
    arib = tmp_path / "a.arib"
    arib.write_bytes(as_grey.data)
    decoded = api.decode_archive_images(read_archive(arib), model)
    assert decoded[0].record.mode == "RGB"
    np.testing.assert_array_equal(decoded[0].pixels, rgb.pixels)
    capsys.readouterr()
    assert main(["info", str(arib)]) == EXIT_OK
    assert "a.png  30x40 RGB PNG (coded as grey: its three channels are equal)" in capsys.readouterr().out


def test_tiled_large_image_round_trip(tmp_path: Path, model_file: Path) -> None:
    big = _rng(1).integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    big[:, :500] = np.linspace(0, 255, 500, dtype=np.uint8)[None, :, None]
    path = _save(tmp_path / "big.png", big)
    arib = tmp_path / "big.arib"
    args = ["--model", str(model_file), "-q"]
    assert main(["compress", str(path), "-o", str(arib), "--tile", "256", "--lanes", "4", *args]) == EXIT_OK
    assert read_archive(arib).tile_size == 256
    assert main(["decompress", str(arib), "-o", str(tmp_path / "out"), *args]) == EXIT_OK
    np.testing.assert_array_equal(_pixels(tmp_path / "out" / "big.png"), big)


def test_one_image_of_several_tiles_chains_them(tmp_path: Path, trained_model_file: Path) -> None:
    """Default mode: single for one tile; an image cut into tiles is coded in dataset mode, so that
    its later tiles' latents ride on the bits of the earlier ones (the real model's gain is in
    docs/default_model.md: the tiny test model's latents are too small to show one)."""
    from aribbps import zoo

    model = zoo.load(trained_model_file)
    y, x = np.mgrid[0:32, 0:32]
    smooth = np.clip(np.stack([x * 3 + y, x + y * 2, 200 - x - y], -1) + _rng(2).normal(0, 2, (32, 32, 3)), 0, 255)
    path = _save(tmp_path / "smooth.png", smooth.astype(np.uint8))
    whole = api.compress([path], tmp_path / "whole.arib", model, tile=32)
    chained = api.compress([path], tmp_path / "chained.arib", model, tile=8)
    alone = api.compress([path], tmp_path / "alone.arib", model, tile=8, mode="single")
    assert (whole.archive.mode, chained.archive.mode, alone.archive.mode) == ("single", "dataset", "single")
    assert chained.archive.lanes == 2  # 16 tiles, at least 8 per lane
    for name in ("whole", "chained", "alone"):
        assert main(["decompress", str(tmp_path / f"{name}.arib"), "-o", str(tmp_path / name),
                     "--model", str(trained_model_file), "-q"]) == EXIT_OK
        np.testing.assert_array_equal(_pixels(tmp_path / name / "smooth.png"), smooth.astype(np.uint8))


def test_batch_of_200_files(tmp_path: Path, model_file: Path) -> None:
    src = tmp_path / "batch"
    src.mkdir()
    rng = _rng(2)
    originals = {}
    for i in range(200):
        h, w = rng.integers(1, 13, 2)
        originals[f"img{i:03d}.png"] = _save(src / f"img{i:03d}.png",
                                             rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    arib = tmp_path / "batch.arib"
    args = ["--model", str(model_file), "-q"]
    assert main(["compress", "--batch", str(src), "-o", str(arib), "--lanes", "16", *args]) == EXIT_OK
    assert main(["decompress", str(arib), "-o", str(tmp_path / "out"), *args]) == EXIT_OK
    assert sorted(os.listdir(tmp_path / "out")) == sorted(originals)
    for name, path in originals.items():
        np.testing.assert_array_equal(_pixels(tmp_path / "out" / name), _pixels(path))


def test_eval_single_and_dataset_have_no_failures(tmp_path: Path, model_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _cases(src)
    for mode in ("single", "dataset", "inference", "speed"):
        groups = ["--lane-groups", "2"] if mode == "speed" else []
        code = main(["eval", str(src), "--mode", mode, "--json", "--model", str(model_file), "--lanes", "4", *groups])
        assert code == EXIT_OK
        report = json.loads(capsys.readouterr().out)
        assert report["theoretical_bpd"] > 0
        if mode != "inference":
            assert report["decode_failures"] == 0 and report["actual_bpd"] > 0
        else:
            table = np.array(report["plane_step_bits"])
            assert table.shape == (8, 4) and np.isfinite(table).all() and (table > 0).all()


def test_plane_step_table_splits_the_plane_bits(tmp_path: Path, model_file: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from aribbps import api, zoo
    from aribbps.evaluate import theoretical_bits

    src = tmp_path / "src"
    src.mkdir()
    paths = [_save(src / f"{i}.png", _rng(i).integers(0, 256, (10, 6, 3), dtype=np.uint8)) for i in range(3)]
    paths.append(_save(src / "grey.png", _rng(9).integers(0, 256, (7, 9), dtype=np.uint8)))
    elbo = theoretical_bits(api.load_images(paths), zoo.load(model_file), tile=8)
    assert elbo.step_bits.sum() == pytest.approx(elbo.planes, rel=1e-9)
    # Every plane codes every sub-pixel once, spread over the 4 steps (tiles and padding excluded).
    assert (elbo.step_count.sum(axis=1) == 3 * 10 * 6 * 3 + 7 * 9).all()
    assert main(["eval", str(src), "--mode", "inference", "--model", str(model_file), "--tile", "8"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "bits per coded bit" in out and out.count("plane ") == 8


def test_actual_size_matches_quantised_information(tmp_path: Path, model_file: Path) -> None:
    from aribbps import api, zoo

    src = tmp_path / "src"
    src.mkdir()
    rng = _rng(4)
    files = [_save(src / f"{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(16)]
    result = api.compress(files, tmp_path / "x.arib", zoo.load(model_file), lanes=4)
    overhead = fixed_overhead_bytes(result.archive)
    coded_bits = (len(result.data) - overhead) * 8
    assert coded_bits <= result.quantised_bits * 1.01 + 4 * 18 * 8
    assert coded_bits >= result.quantised_bits * 0.99


def test_no_more_lanes_than_coded_items(tmp_path: Path, model_file: Path) -> None:
    from aribbps import api, zoo

    one = _save(tmp_path / "one.png", _rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    big = _save(tmp_path / "big.png", _rng(6).integers(0, 256, (16, 8, 3), dtype=np.uint8))
    model = zoo.load(model_file)
    assert api.compress([one], tmp_path / "a.arib", model, lanes=8).archive.lanes == 1
    assert api.compress([one, big], tmp_path / "b.arib", model, lanes=8, tile=8).archive.lanes == 3  # 1 + 2 tiles
    assert api.compress([one, big], tmp_path / "c.arib", model, lanes=2, tile=8).archive.lanes == 2
    assert main(["decompress", str(tmp_path / "b.arib"), "-o", str(tmp_path / "out"), "--model", str(model_file),
                 "-q"]) == EXIT_OK
    assert np.array_equal(_pixels(tmp_path / "out" / "big.png"), _pixels(big))


def test_automatic_lanes_keep_a_cpu_round_within_its_pixel_budget(tmp_path: Path, model_file: Path) -> None:
    from types import SimpleNamespace

    from aribbps import zoo

    cpu = SimpleNamespace(device=torch.device("cpu"), cfg=SimpleNamespace(pad_multiple=8))
    many = 1000  # enough items that the items-per-lane rule does not bind
    assert api.default_lanes([(3, 32, 32)] * many, cpu) == api.AUTO_LANES == 16
    assert api.default_lanes([(3, 64, 64)] * many + [(1, 8, 8)], cpu) == 16
    assert api.default_lanes([(3, 32, 32)] * many + [(3, 128, 128)], cpu) == 4  # the largest item decides
    assert api.default_lanes([(3, 256, 256)] * many, cpu) == api.default_lanes([(3, 300, 300)] * many, cpu) == 1
    assert api.default_lanes([(3, 121, 121)] * many, cpu) == 4  # padded to 128x128
    # At least MIN_ITEMS_PER_LANE items per lane, so that most items' latents ride on a chain.
    assert [api.default_lanes([(3, 32, 32)] * n, cpu) for n in (1, 15, 16, 40, 200)] == [1, 1, 2, 5, 16]
    cuda = SimpleNamespace(device=torch.device("cuda"), cfg=cpu.cfg)
    assert api.default_lanes([(3, 32, 32)] * 10 * api.CUDA_AUTO_LANES, cuda) == api.CUDA_AUTO_LANES == 256
    assert api.default_lanes([(3, 32, 32)] * many, cuda) == many // api.MIN_ITEMS_PER_LANE
    assert api.default_lanes([(3, 256, 256)] * many, cuda) == api.CUDA_ROUND_PIXELS // (256 * 256) == 16
    assert api.default_lanes([(3, 256, 256)] * 20, cuda) == 2
    model = zoo.load(model_file)
    files = [_save(tmp_path / f"{i}.png", _rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)) for i in range(20)]
    assert api.compress(files, tmp_path / "auto.arib", model).archive.lanes == 2
    assert api.compress(files, tmp_path / "four.arib", model, lanes=4).archive.lanes == 4


def _compressed(tmp_path: Path, model_file: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    files = [_save(src / f"{i}.png", _rng(i).integers(0, 256, (12, 10, 3), dtype=np.uint8)) for i in range(3)]
    arib = tmp_path / "in.arib"
    assert main(["compress", *map(str, files), "-o", str(arib), "--model", str(model_file), "-q"]) == EXIT_OK
    return arib


def test_corrupted_and_truncated_files_fail_cleanly(tmp_path: Path, model_file: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    arib = _compressed(tmp_path, model_file)
    data = arib.read_bytes()
    rng = _rng(5)
    bad = tmp_path / "bad.arib"
    out = tmp_path / "out"
    variants = [data[:n] for n in (0, 3, 20, len(data) // 2, len(data) - 1)]
    for _ in range(12):
        flipped = bytearray(data)
        flipped[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        variants.append(bytes(flipped))
    for variant in variants:
        if variant == data:
            continue
        bad.write_bytes(variant)
        code = main(["decompress", str(bad), "-o", str(out), "--model", str(model_file), "-q"])
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT, err
        assert err.startswith("aribbps: error:") and "Traceback" not in err
        assert not out.exists()


def test_lane_stream_damage_with_valid_crc_is_caught(tmp_path: Path, model_file: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Damage behind the container's CRCs (re-encoded archive) is caught by the decoder and checksums."""
    archive = read_archive(_compressed(tmp_path, model_file))
    stream = bytearray(archive.lane_streams[0])
    stream[-3] ^= 0x40
    archive.lane_streams[0] = bytes(stream)
    bad = tmp_path / "bad.arib"
    bad.write_bytes(encode_archive(archive))
    out = tmp_path / "out"
    assert main(["decompress", str(bad), "-o", str(out), "--model", str(model_file), "-q"]) == EXIT_BAD_INPUT
    assert "error" in capsys.readouterr().err
    assert not out.exists()


def test_wrong_model_is_refused(tmp_path: Path, model_file: Path, other_model_file: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    arib = _compressed(tmp_path, model_file)
    out = tmp_path / "out"
    assert main(["decompress", str(arib), "-o", str(out), "--model", str(other_model_file)]) == EXIT_BAD_INPUT
    assert "--model" in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_directory_is_never_half_written(tmp_path: Path, model_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    arib = _compressed(tmp_path, model_file)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    import aribbps.api as api_module

    calls = {"n": 0}
    real_save = api_module.save_image

    def failing_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(*a, **k)

    monkeypatch.setattr(api_module, "save_image", failing_save)
    assert main(["decompress", str(arib), "-o", str(out), "--model", str(model_file), "-q"]) == EXIT_OS
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_bad_inputs_give_clear_errors(tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", str(model_file), "-q", "-o", str(tmp_path / "x.arib")]
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert main(["compress", str(tmp_path / "junk.png"), *args]) == EXIT_BAD_INPUT
    assert "junk.png" in capsys.readouterr().err
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
    assert main(["compress", str(tmp_path / "deep.png"), *args]) == EXIT_BAD_INPUT
    assert "16-bit" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "missing.png"), *args]) in (EXIT_BAD_INPUT, EXIT_OS)
    assert not (tmp_path / "x.arib").exists()
    assert main(["decompress", str(tmp_path / "nothing.arib"), "-o", str(tmp_path / "o")]) in (EXIT_BAD_INPUT, EXIT_OS)
    assert main(["compress", "--model", "/nonexistent/model", str(tmp_path / "deep.png")]) == EXIT_BAD_INPUT
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--lanes"])
    assert exc.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_info(tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arib = _compressed(tmp_path, model_file)
    capsys.readouterr()
    assert main(["info", str(arib), "--json"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and summary["model"] == "tiny-context" and summary["mode"] == "context"
    assert summary["probabilities"] == "logit" and summary["temperatures"] is True
    assert summary["corrections"] is True
    assert decode_archive(arib.read_bytes()).lanes == summary["lanes"]
    assert main(["info", str(arib)]) == EXIT_OK
    assert f"numerics_probe {summary['numerics_probe']}" in capsys.readouterr().out


def test_one_image_named_like_its_archive_is_stored_without_its_name(tmp_path: Path, model_file: Path) -> None:
    img = _save(tmp_path / "holiday_photo.png", _rng(8).integers(0, 256, (6, 8, 3), dtype=np.uint8))
    assert main(["compress", str(img), "--model", str(model_file), "-q"]) == EXIT_OK
    implied = tmp_path / "holiday_photo.arib"
    named = tmp_path / "other.arib"
    assert main(["compress", str(img), "-o", str(named), "--model", str(model_file), "-q"]) == EXIT_OK
    assert read_archive(implied).name_from_file and not read_archive(named).name_from_file
    assert implied.stat().st_size < named.stat().st_size
    renamed = tmp_path / "renamed.arib"
    renamed.write_bytes(implied.read_bytes())
    for arib, name in ((implied, "holiday_photo.png"), (renamed, "renamed.png"), (named, "holiday_photo.png")):
        out = tmp_path / f"out_{arib.stem}"
        assert main(["decompress", str(arib), "-o", str(out), "--model", str(model_file), "-q"]) == EXIT_OK
        assert [p.name for p in out.iterdir()] == [name]
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(img)))
