"""bench/feature_gain.py on a tiny model: round trips and the granularity bookkeeping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aribbps import api, zoo
from tests.conftest import load_script, make_model_file, smooth_images

ROOT = Path(__file__).resolve().parents[1]
gain = load_script("feature_gain", ROOT / "bench" / "feature_gain.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[zoo.LoadedModel, list]:
    root = tmp_path_factory.mktemp("gain")
    model = zoo.load(make_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors", config="tiny"))
    pixels = smooth_images(2, 8, seed=2).numpy().transpose(0, 2, 3, 1)
    for i, p in enumerate(pixels):
        Image.fromarray(np.ascontiguousarray(p)).save(root / f"img{i}.png")
    return model, api.load_images(api.batch_inputs(root))


@pytest.mark.parametrize("feature", ["temperatures", "corrections"])
@pytest.mark.parametrize("mode", ["single", "dataset"])
def test_both_settings_round_trip(setup, mode: str, feature: str) -> None:
    model, images = setup
    (off, *t_off), (on, *t_on) = (gain.coded(images, model, mode, feature, t) for t in (False, True))
    assert 0 < on and 0 < off and min(t_on) > 0 and min(t_off) > 0
    with pytest.raises(ValueError, match="feature must be one of"):
        gain.coded(images, model, mode, "dithering", True)


def test_granularity_starts_from_the_models_own_plane_cost(setup) -> None:
    model, images = setup
    g = gain.granularity(images, model)
    plain = api.encode_images(images, model, mode="dataset", lanes=1, temperatures=False)
    # Not exactly: the SIG planes see latents sampled by bits-back, from a stack that holds the symbols.
    assert g["neutral"] == pytest.approx(plain.theoretical_bits / plain.subpixels, rel=0.02)
    side = 4 / plain.subpixels * len(images)  # one symbol per group of each item, all items
    assert g["per group"] - side <= g["neutral"] + 1e-12
