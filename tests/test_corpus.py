"""Corpus building on small generated photos (no Debian packages needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aribbps.data import (
    CorpusConfig,
    CorpusError,
    CorpusWarning,
    PhotoError,
    box_downsample,
    build_corpus,
    choose_holdout,
    load_photo,
)
from aribbps.data.__main__ import main
from aribbps.data.corpus import factor_range, sample_grid_boxes, sample_patch_boxes


def _photo(seed: int, w: int = 200, h: int = 160) -> np.ndarray:
    """A smooth random RGB image with some noise, (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Five RGB photos (PNG and JPEG) in tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(["alpha", "bravo", "charlie", "delta"]):
        Image.fromarray(_photo(i)).save(src / f"{name}.png")
    Image.fromarray(_photo(9, 256, 192)).save(src / "echo.jpg", quality=90)
    return src


def _config(**kw) -> CorpusConfig:
    base = dict(size=32, per_photo=6, valid_per_photo=3, holdout=("bravo",), seed=1)
    base.update(kw)
    return CorpusConfig(**base)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- box downsampling


def test_box_downsample_known_average_rounds_half_up() -> None:
    a = np.array([[0, 1, 10, 10],
                  [0, 0, 10, 11],
                  [255, 255, 3, 4],
                  [255, 254, 4, 4]], dtype=np.uint8)
    # sums 1, 41, 1019, 15 over 4 pixels: 0.25 -> 0, 10.25 -> 10, 254.75 -> 255, 3.75 -> 4
    assert box_downsample(a, 2).tolist() == [[0, 10], [255, 4]]
    half = np.array([[0, 1], [1, 0]], dtype=np.uint8)  # 0.5 rounds up
    assert box_downsample(half, 2).tolist() == [[1]]


def test_box_downsample_constant_stays_constant_per_channel() -> None:
    img = np.empty((96, 64, 3), dtype=np.uint8)
    img[...] = (7, 128, 255)
    for factor in (1, 2, 4, 16, 32):
        out = box_downsample(img, factor)
        assert out.shape == (96 // factor, 64 // factor, 3)
        assert (out == np.array([7, 128, 255], dtype=np.uint8)).all()


def test_box_downsample_matches_float_mean() -> None:
    img = np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    blocks = img.reshape(20, 3, 30, 3, 3).astype(np.float64).mean(axis=(1, 3))
    assert (box_downsample(img, 3) == np.floor(blocks + 0.5)).all()


def test_box_downsample_rejects_ragged_size() -> None:
    with pytest.raises(ValueError, match="multiple"):
        box_downsample(np.zeros((5, 4), np.uint8), 2)


# ----------------------------------------------------------------------------- crop boxes and split


def test_factor_range_keeps_factor_at_least_two() -> None:
    assert factor_range(1024, 32, 0.125, 0.5) == (4, 16)
    assert factor_range(1024, 64, 0.125, 0.5) == (2, 8)
    assert factor_range(200, 64, 0.125, 0.5) == (2, 1)  # nothing fits


def test_patch_boxes_distinct_in_bounds_and_scaled() -> None:
    rng = np.random.default_rng(0)
    boxes = sample_patch_boxes(300, 200, 200, rng, 8, 0.125, 0.5)
    assert len({b for b, _ in boxes}) == 200
    for (x0, y0, x1, y1), f in boxes:
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200
        assert x1 - x0 == y1 - y0 == 8 * f and 25 <= 8 * f <= 100 and f >= 2


def test_grid_boxes_do_not_overlap() -> None:
    boxes = sample_grid_boxes(1100, 520, 10, np.random.default_rng(0), 256)
    assert len(boxes) == 8  # 4 x 2 cells
    cells = {(x0, y0) for x0, y0, _, _ in boxes}
    assert len(cells) == 8 and all((x0 - 38) % 256 == 0 and (y0 - 4) % 256 == 0 for x0, y0 in cells)


def test_choose_holdout_by_name_and_fraction() -> None:
    names = [f"p{i}" for i in range(20)]
    assert choose_holdout(names, ("p3", "p7")) == {"p3", "p7"}
    quarter = choose_holdout(names, 0.25)
    assert len(quarter) == 5 and quarter == choose_holdout(list(reversed(names)), 0.25)
    assert len(choose_holdout(names, 0.01)) == 1 and choose_holdout(names, 0.0) == set()
    with pytest.raises(CorpusError, match="p99"):
        choose_holdout(names, ("p99",))


# ----------------------------------------------------------------------------- building


def test_build_corpus_layout_and_manifest(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "c32"
    manifest = build_corpus([photos], out, _config())
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["holdout"] == ["bravo"] and manifest["mode"] == "patches"
    assert manifest["counts"] == {"train": 4 * 6, "valid": 3}
    assert sorted(p.name for p in (out / "valid").iterdir()) == [f"bravo_{i:05d}.png" for i in range(3)]
    assert len(list((out / "train").iterdir())) == 24
    src = {p["name"]: p for p in manifest["photos"]}
    assert set(src) == {"alpha", "bravo", "charlie", "delta", "echo"}
    assert src["echo"]["width"] == 256 and src["echo"]["height"] == 192 and src["bravo"]["split"] == "valid"
    pixels = {n: load_photo(photos / Path(p["path"]).name) for n, p in src.items()}
    for row in manifest["patches"]:
        assert (row["split"] == "valid") == (row["photo"] == "bravo")  # whole photos held out
        x0, y0, x1, y1 = row["box"]
        assert x1 - x0 == y1 - y0 == 32 * row["factor"] and row["factor"] >= 2
        with Image.open(out / row["file"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
            patch = np.asarray(im)
        expected = box_downsample(np.ascontiguousarray(pixels[row["photo"]][y0:y1, x0:x1]), row["factor"])
        assert (patch == expected).all()


def test_build_corpus_is_deterministic_by_seed(photos: Path, tmp_path: Path) -> None:
    a = build_corpus([photos], tmp_path / "a", _config())
    b = build_corpus([photos], tmp_path / "b", _config())
    c = build_corpus([photos], tmp_path / "c", _config(seed=2))
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a["patches"] == b["patches"] and a["patches"] != c["patches"]
    # A photo's patches do not depend on the other photos.
    alone = build_corpus([photos / "alpha.png"], tmp_path / "d", _config(holdout=()))
    assert alone["patches"] == [r for r in a["patches"] if r["photo"] == "alpha"]


def test_holdout_fraction_and_splits(photos: Path, tmp_path: Path) -> None:
    m = build_corpus([photos], tmp_path / "f", _config(holdout=0.4, splits=("valid",)))
    assert len(m["holdout"]) == 2 and m["counts"]["train"] == 0 and m["counts"]["valid"] == 6
    assert not any((tmp_path / "f" / "train").iterdir())


def test_crops_mode(photos: Path, tmp_path: Path) -> None:
    cfg = CorpusConfig(size=48, crop_size=48, per_photo=5, holdout=("echo",), splits=("valid",))
    m = build_corpus([photos], tmp_path / "crops", cfg)
    assert m["mode"] == "crops" and m["counts"]["valid"] == 4  # 256x192 holds only 2x2 cells of 96x96
    rows = m["patches"]
    assert len(rows) == m["counts"]["valid"] and all(r["factor"] == 2 for r in rows)
    for r in rows:
        with Image.open(tmp_path / "crops" / r["file"]) as im:
            assert im.size == (48, 48)


def test_greyscale_palette_and_opaque_rgba(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rgb = _photo(5)
    Image.fromarray(rgb[..., 0]).save(src / "grey.png")
    Image.fromarray(rgb).quantize(64).save(src / "pal.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(src / "opaque.png")
    m = build_corpus([src], tmp_path / "out", _config(holdout=()))
    modes = {p["name"]: p["mode"] for p in m["photos"]}
    assert modes == {"grey": "L", "pal": "RGB", "opaque": "RGB"}
    for r in m["patches"]:
        with Image.open(tmp_path / "out" / r["file"]) as im:
            assert im.mode == modes[r["photo"]]
    assert (load_photo(src / "opaque.png") == rgb).all()


def test_unusable_files_are_skipped_with_warning(photos: Path, tmp_path: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    rgba = np.dstack([_photo(1), np.full((160, 200), 100, np.uint8)])
    Image.fromarray(rgba).save(photos / "seethrough.png")
    Image.fromarray(np.zeros((160, 200), np.uint16)).save(photos / "deep.png")
    Image.fromarray(_photo(2, 60, 60)).save(photos / "tiny.png")
    with pytest.warns(CorpusWarning) as record:
        m = build_corpus([photos], tmp_path / "out", _config())
    text = " ".join(str(w.message) for w in record)
    for name in ("broken.jpg", "seethrough.png", "deep.png", "tiny.png"):
        assert name in text
    assert {p["name"] for p in m["photos"]} == {"alpha", "bravo", "charlie", "delta", "echo"}
    with pytest.raises(PhotoError, match="unreadable"):
        load_photo(photos / "broken.jpg")


def test_output_must_be_new_unless_overwrite(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_corpus([photos], out, _config())
    with pytest.raises(CorpusError, match="not empty"):
        build_corpus([photos], out, _config())
    m = build_corpus([photos], out, _config(per_photo=2), overwrite=True)
    assert len(list((out / "train").iterdir())) == m["counts"]["train"] == 8
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(CorpusError):
        build_corpus([photos], other, _config(), overwrite=True)  # not a corpus: never deleted
    assert (other / "keep.txt").exists()


def test_clashing_names_and_bad_settings(photos: Path, tmp_path: Path) -> None:
    Image.fromarray(_photo(0)).save(photos / "alpha.jpg")
    with pytest.raises(CorpusError, match="alpha"):
        build_corpus([photos], tmp_path / "x", _config())
    with pytest.raises(CorpusError, match="48"):
        _config(size=48).validate()
    with pytest.raises(CorpusError, match="min_scale"):
        _config(min_scale=0.6).validate()


# ----------------------------------------------------------------------------- command line


def test_cli_builds_corpus(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(["build-corpus", str(photos), "--size", "32", "--out", str(out), "--per-photo", "4",
               "--holdout", "alpha", "echo", "--seed", "3"])
    assert rc == 0
    assert "12 train + 8 valid patches" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["holdout"] == ["alpha", "echo"] and m["config"]["seed"] == 3
    assert main(["build-corpus", str(photos), "--out", str(tmp_path / "x"), "--holdout", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
