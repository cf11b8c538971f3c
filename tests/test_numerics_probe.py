"""The numerics probe: recorded by every encoder, consulted when decoding fails, never needed to decode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aribbps import api, numerics_probe, zoo
from aribbps.container import decode_archive, encode_archive
from aribbps.errors import ArchiveError, ChecksumError, NumericsMismatchError
from aribbps.imageio import LoadedImage

from .conftest import smooth_images


def _image() -> LoadedImage:
    pixels = smooth_images(1, 32, seed=3)[0].permute(1, 2, 0).numpy()
    return LoadedImage("probe-test.png", "PNG", "RGB", np.ascontiguousarray(pixels))


def _damaged(data: bytes) -> bytes:
    archive = decode_archive(data)
    stream = bytearray(archive.lane_streams[0])
    stream[len(stream) // 2] ^= 0x10
    archive.lane_streams[0] = bytes(stream)
    return encode_archive(archive)


@pytest.fixture(scope="module")
def model(model_file: Path) -> zoo.LoadedModel:
    return zoo.load(model_file)


def test_the_probe_image_is_fixed_and_varied() -> None:
    image = numerics_probe.probe_image()
    assert image.shape == (3, numerics_probe.SIZE, numerics_probe.SIZE) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, numerics_probe.probe_image())
    assert len(np.unique(image)) > 128
    assert all(0 < ((image >> k) & 1).mean() < 1 for k in range(8))  # every bit plane has both values


def test_the_fingerprint_hashes_every_part_and_is_cached_by_key() -> None:
    calls: list[int] = []

    def encode(parts: list[bytes]) -> numerics_probe.ProbeEncoder:
        def run(image: np.ndarray) -> list[bytes]:
            calls.append(1)
            return parts
        return run

    a = numerics_probe.fingerprint(encode([b"ab", b"c"]), ("test", 1))
    assert numerics_probe.fingerprint(encode([b"zz"]), ("test", 1)) == a and len(calls) == 1
    b = numerics_probe.fingerprint(encode([b"a", b"bc"]), ("test", 2))  # same bytes, other split
    assert 0 <= a <= 0x3FFF and a != b


def test_every_file_records_the_probe_and_decodes_without_it(model: zoo.LoadedModel,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    result = api.encode_images([_image()], model, lanes=1)
    probe = result.archive.extra[numerics_probe.EXTRA_KEY]
    monkeypatch.setattr(numerics_probe, "_cache", {})  # computed again, as another process would
    assert probe == api.numerics_probe_for(result.archive, model)
    archive = decode_archive(result.data)
    assert numerics_probe.recorded(archive.extra) == probe
    archive.extra[numerics_probe.EXTRA_KEY] = probe ^ 1  # a wrong probe does not stop an intact file
    (decoded,) = api.decode_archive_images(archive, model)
    np.testing.assert_array_equal(decoded.pixels, _image().pixels)


def test_a_damaged_file_is_called_damaged_where_the_probe_matches(model: zoo.LoadedModel,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = _damaged(api.encode_images([_image()], model, lanes=1).data)
    monkeypatch.setattr(numerics_probe, "_cache", {})  # the decoder computes its own
    with pytest.raises((ArchiveError, ChecksumError), match="numerics probe matches") as caught:
        api.decode_archive_images(decode_archive(data), model)
    assert not isinstance(caught.value, NumericsMismatchError)


def test_a_machine_that_computes_differently_is_named_as_the_cause(model_file: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder whose networks round differently (here: weights nudged by 1e-3 of their size,
    as another CPU's kernels would nudge the sums) fails, and names that as the likely cause."""
    data = api.encode_images([_image()], zoo.load(model_file), lanes=1).data
    monkeypatch.setattr(numerics_probe, "_cache", {})  # the decoder is another process
    other = zoo.load(model_file)
    with torch.no_grad():
        for net in (other.nets.sig, other.nets.ins):
            for p in net.parameters():
                p.mul_(1 + 1e-3)
    with pytest.raises(NumericsMismatchError, match="computes the networks differently .* likely cause") as caught:
        api.decode_archive_images(decode_archive(data), other)
    assert isinstance(caught.value, ChecksumError) and isinstance(caught.value, ArchiveError)


def test_a_malformed_probe_is_reported_not_trusted(model: zoo.LoadedModel) -> None:
    for bad in (-1, 0x4000, "ab", True, 1.5):
        with pytest.raises(ArchiveError, match="numerics probe"):
            numerics_probe.recorded({numerics_probe.EXTRA_KEY: bad})
    archive = decode_archive(_damaged(api.encode_images([_image()], model, lanes=1).data))
    archive.extra[numerics_probe.EXTRA_KEY] = "ab"
    with pytest.raises((ArchiveError, ChecksumError), match="numerics probe not run"):
        api.decode_archive_images(archive, model)
    assert numerics_probe.differs({}, lambda: 0) is None


def test_info_shows_the_probe(model: zoo.LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "one.arib"
    result = api.encode_images([_image()], model, lanes=1)
    path.write_bytes(result.data)
    assert api.info(path)["numerics_probe"] == f"{result.archive.extra[numerics_probe.EXTRA_KEY]:04x}"
    result.archive.extra[numerics_probe.EXTRA_KEY] = 0x4000
    path.write_bytes(encode_archive(result.archive))
    assert api.info(path)["numerics_probe"] == repr(0x4000)
