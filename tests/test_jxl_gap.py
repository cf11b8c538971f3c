"""bench/jxl_gap.py: per-image model vs JPEG-XL figures and their buckets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aribbps import zoo
from aribbps.baselines import available_codecs
from aribbps.evaluate import theoretical_bits
from aribbps.api import load_images
from tests.conftest import load_script, make_model_file

ROOT = Path(__file__).resolve().parents[1]
jxl_gap = load_script("jxl_gap", ROOT / "bench" / "jxl_gap.py")


def _gap(name: str, subpixels: int, model_bpd: float, jxl_bpd: float, step1: float) -> object:
    return jxl_gap.ImageGap(name, subpixels, model_bpd * subpixels, jxl_bpd * subpixels, step1, 1.0)


def test_buckets_split_by_jpeg_xl_bpd_and_weight_by_size():
    gaps = [_gap("a", 100, 2.0, 1.0, 0.5), _gap("b", 300, 1.0, 0.5, 0.1), _gap("c", 100, 4.0, 3.0, 0.2)]
    rows = jxl_gap.summary_rows(gaps, [1.5])
    assert [r[:2] for r in rows] == [("JPEG-XL -inf..1.5 bpd", 2), ("JPEG-XL 1.5..inf bpd", 1), ("all", 3)]
    _, _, model, jxl, ratio, share = rows[0]
    assert model == pytest.approx((200 + 300) / 400) and jxl == pytest.approx((100 + 150) / 400)
    assert ratio == pytest.approx(500 / 250) and share == pytest.approx(0.6 / 2)
    assert rows[2][2] == pytest.approx((200 + 300 + 400) / 500)


def test_empty_buckets_are_left_out():
    rows = jxl_gap.summary_rows([_gap("a", 10, 2.0, 1.0, 0.5)], [0.5, 5.0])
    assert [r[0] for r in rows] == ["JPEG-XL 0.5..5 bpd", "all"]


@pytest.mark.skipif(not any(c.name == jxl_gap.JPEG_XL for c in available_codecs()),
                    reason="imagecodecs without JPEG-XL")
def test_measure_gaps_matches_theoretical_bits_and_jpeg_xl(tmp_path: Path):
    model = zoo.load(make_model_file(tmp_path / "m.safetensors", config="tiny"))
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    gaps = jxl_gap.measure_gaps(images, model, limit=0, step=2)
    assert [g.name for g in gaps] == ["0.png", "2.png"]
    expected = theoretical_bits(load_images([images / "2.png"]), model)
    assert gaps[1].model_bits == pytest.approx(expected.total)
    assert gaps[1].subpixels == 16 * 16 * 3 and gaps[1].jxl_bits > 0
    assert 0 < gaps[1].step1_bits < gaps[1].plane_bits
