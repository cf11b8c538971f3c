"""Lane seals (aribbps.lane_seal): the 64-bit check each lane's stream ends in."""
from __future__ import annotations

import numpy as np
import pytest

from aribbps import api, zoo
from aribbps.arib import AribCodec
from aribbps.codec import PlaneCodec
from aribbps.container import decode_archive, encode_archive
from aribbps.errors import ChecksumError
from aribbps.imageio import LoadedImage
from aribbps.lane_seal import LaneSealError, lane_seals


def _items(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (3, 8, 8), dtype=np.uint8) for _ in range(n)]


def test_the_seal_covers_ids_shapes_and_bytes() -> None:
    a, b = _items(2)
    base = lane_seals([a, b], [[0, 1]])
    assert lane_seals([a, b], [[0, 1]]).tolist() == base.tolist()
    changed = a.copy()
    changed[0, 0, 0] ^= 1
    for other in (lane_seals([changed, b], [[0, 1]]),  # one bit of one item
                  lane_seals([a, b], [[1, 0]]),  # order on the lane
                  lane_seals([a, b], [[0, 1]], ids=[0, 2]),  # what the items are called
                  lane_seals([a.reshape(3, 4, 16), b], [[0, 1]])):  # same bytes, other shape
        assert other.tolist() != base.tolist()
    assert len(lane_seals([a, b], [[0], [1], []])) == 3


@pytest.fixture(scope="module")
def tiny_model(trained_model_file):
    return zoo.load(trained_model_file)


@pytest.mark.parametrize("mode", ["single", "dataset"])
def test_a_decoder_that_files_items_under_other_ids_fails(tiny_model, mode: str) -> None:
    """Right pixels under the wrong item (e.g. a forged lane plan) are caught, not returned."""
    items = _items(4, seed=1)
    codec = AribCodec(tiny_model.nets, tiny_model.cfg.pad_multiple, 2, mode)
    streams, stats = codec.encode(items, ids=[10, 11, 12, 13])
    shapes = [i.shape for i in items]
    qp, pad = stats.qp.tolist(), stats.padding_words.tolist()
    decoded = codec.decode(shapes, streams, qp, pad, ids=[10, 11, 12, 13])
    assert all(np.array_equal(d, i) for d, i in zip(decoded, items))
    with pytest.raises(LaneSealError) as info:
        codec.decode(shapes, streams, qp, pad, ids=[10, 11, 13, 12])
    assert info.value.items == [0, 1, 2, 3]  # items 2 and 3 sit on different lanes: both lanes fail


def test_context_mode_lanes_are_sealed_too(model_file) -> None:
    model = zoo.load(model_file)  # tiny-context: no latent model
    codec = PlaneCodec(model.nets, model.cfg.pad_multiple, 2)
    items = _items(3, seed=2)
    streams, _ = codec.encode(items)
    assert all(np.array_equal(d, i) for d, i in zip(codec.decode([i.shape for i in items], streams), items))
    with pytest.raises(LaneSealError):
        codec.decode([i.shape for i in items], streams, ids=[0, 1, 5])


def test_a_re_encoded_archive_with_a_damaged_stream_names_the_images(tiny_model) -> None:
    """Damage behind a valid CRC: the lane check fails and names every image on the lane."""
    rng = np.random.default_rng(3)
    images = [LoadedImage(f"im{i}.png", "PNG", "RGB", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
              for i in range(4)]
    archive = decode_archive(api.encode_images(images, tiny_model, lanes=2, tile=0, mode="dataset").data)
    stream = bytearray(archive.lane_streams[1])
    stream[-1] ^= 0x10  # a bit of the top word: the first thing lane 1's decoder reads
    archive.lane_streams[1] = bytes(stream)
    with pytest.raises(ChecksumError, match=r"images 'im\d.png', 'im\d.png' did not decode"):
        api.decode_archive_images(decode_archive(encode_archive(archive)), tiny_model)
