"""The model shipped in the package: it loads, codes the shipped samples bit-exactly, and beats PNG on them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aribbps import api, cpu_isa, cpu_threads, zoo
from aribbps.baselines import available_codecs, measure
from aribbps.cli import EXIT_OK, main
from aribbps.container import GREY_KEY, decode_archive
from aribbps.errors import ArchiveError, ChecksumError
from aribbps.imageio import load_image
from aribbps.weights import load_model

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SMALL_SAMPLES = sorted(SAMPLES.glob("*_64.png"))
DATA = Path(__file__).resolve().parent / "data"
#: The intra-op thread count the version-2 files in tests/data were encoded with.
V2_ENCODER_THREADS = 2
#: :func:`aribbps.api.numerics_probe_for` of those files, with that model and thread count, on the
#: machine that wrote them (2026-12-06: an AMD EPYC at AVX2, torch 2.13.0; tests/data/README.md).
V2_WRITER_PROBE = 0x1A86


@pytest.fixture(scope="module")
def default_model() -> zoo.LoadedModel:
    return zoo.load()


@pytest.fixture(scope="module")
def version_2_model() -> zoo.LoadedModel:
    """The default model until 2026-11-25 (weights 64b98bad...), which wrote the version-2 test files."""
    return zoo.load(DATA / "model_64b98bad.safetensors")


def test_the_default_model_is_the_file_in_the_package(default_model: zoo.LoadedModel) -> None:
    assert Path(default_model.source) == zoo.DEFAULT_MODEL and zoo.DEFAULT_MODEL.is_file()
    cfg, _, _, weights_hash = load_model(zoo.DEFAULT_MODEL)
    assert default_model.weights_hash.hex() == weights_hash
    assert default_model.cfg.name == cfg.name
    assert default_model.nets.sig.latent is not None  # it codes in the ArIB modes


@pytest.mark.parametrize("mode", ["single", "dataset"])
def test_the_default_model_round_trips_the_samples_and_beats_png(default_model: zoo.LoadedModel, mode: str) -> None:
    assert len(SMALL_SAMPLES) == 4
    images = api.load_images(SMALL_SAMPLES)
    if mode == "single":
        blobs = [api.encode_images([image], default_model, lanes=1, mode=mode).data for image in images]
    else:
        blobs = [api.encode_images(images, default_model, lanes=2, mode=mode).data]
    decoded = [d for blob in blobs for d in api.decode_archive_images(decode_archive(blob), default_model)]
    assert len(decoded) == len(images)
    for got, image in zip(decoded, images):
        np.testing.assert_array_equal(got.pixels, image.pixels)
    png = next((c for c in available_codecs() if c.name == "PNG"), None)
    if png is not None:  # side by side on the same images, container included
        assert sum(map(len, blobs)) < measure(png, [i.pixels for i in images]).bytes


def test_the_cli_uses_the_default_model_without_model(tmp_path: Path) -> None:
    source = SMALL_SAMPLES[0]
    arib = tmp_path / "one.arib"
    assert main(["compress", str(source), "-o", str(arib), "-q"]) == EXIT_OK
    assert main(["decompress", str(arib), "-o", str(tmp_path / "out"), "-q"]) == EXIT_OK
    (restored,) = (tmp_path / "out").iterdir()
    np.testing.assert_array_equal(load_image(restored).pixels, load_image(source).pixels)


@pytest.mark.parametrize("name, sources", [
    ("v2_single.arib", ["ColdRipple_planks_64.png"]),
    ("v2_dataset.arib", ["FreshFlower_edge_64.png", "Blinds_veins_64.png"]),
])
def test_version_2_files_still_decode(version_2_model: zoo.LoadedModel, name: str, sources: list[str],
                                      request: pytest.FixtureRequest) -> None:
    """Files written by the version-2 codec (unsealed lanes, stack layout 1, per-image checksums)
    with the default model of then, kept in tests/data with that model, decode to the samples;
    a flipped pixel checksum is still caught.

    Version 2 did not record the encoder's thread count (:mod:`aribbps.cpu_threads`): such files
    decode with the decoder's own, so the test runs with the 2 threads these were written with,
    whatever ``OMP_NUM_THREADS`` says.

    They decode only where the networks round as on the machine that wrote them. Where they
    fail and the numerics probe says this machine rounds otherwise than the writer, the test
    skips (CI once ran on such a machine: with the files of 2026-12-03, both failed their lane
    checks there); where they fail and the probe matches, it fails.

    They ran MKL in its default mode, which a process that imported aribbps first no longer
    does (``MKL_CBWR``, :mod:`aribbps.cpu_isa`): the test then runs itself again in a process
    with ``MKL_CBWR=OFF``."""
    if cpu_isa.mkl_active() != "OFF":
        root = Path(__file__).resolve().parents[1]
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                               request.node.nodeid], capture_output=True, text=True, timeout=600, cwd=root,
                              env={**os.environ, cpu_isa.MKL_ENV: "OFF"})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        skipped = re.search(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", done.stdout)
        if skipped:
            pytest.skip(f"with MKL_CBWR=OFF: {skipped.group(1)}")
        assert " passed" in done.stdout, done.stdout[-3000:]
        return
    default_model = version_2_model
    archive = decode_archive((DATA / name).read_bytes())
    assert not archive.sealed_lanes and all(r.checksum is not None for r in archive.images)
    assert all(stream[0] == 1 for stream in archive.lane_streams)  # stack layout 1
    assert cpu_threads.recorded(archive.extra) is None
    with cpu_threads.matching({cpu_threads.EXTRA_KEY: V2_ENCODER_THREADS}, "cpu"):
        try:
            decoded = api.decode_archive_images(archive, default_model)
        except (ArchiveError, ChecksumError):
            probe = api.numerics_probe_for(archive, default_model)
            if probe == V2_WRITER_PROBE:
                raise
            pytest.skip(f"this machine's networks round otherwise than the writer's (numerics probe {probe:04x}, "
                        f"the writer's {V2_WRITER_PROBE:04x}): the file failed loudly, as it must")
        assert [d.record.name for d in decoded] == sources
        for got, source in zip(decoded, sources):
            np.testing.assert_array_equal(got.pixels, load_image(SAMPLES / source).pixels)
        archive.images[0].checksum = bytes(8)
        with pytest.raises(ChecksumError, match="checksum mismatch"):
            api.decode_archive_images(archive, default_model)


def test_a_file_decodes_with_another_intra_op_thread_count(default_model: zoo.LoadedModel) -> None:
    """The encoder's thread count is recorded and matched: oneDNN's CPU convolutions round
    differently with 1 and 2 threads, which used to make such a file undecodable."""
    image = api.load_images([SMALL_SAMPLES[1]])[0]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        archive = decode_archive(api.encode_images([image], default_model, lanes=1).data)
        assert archive.extra[cpu_threads.EXTRA_KEY] == 2
        torch.set_num_threads(1)
        (decoded,) = api.decode_archive_images(archive, default_model)
        assert torch.get_num_threads() == 1  # restored after decoding
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(decoded.pixels, image.pixels)
    for bad in (0, True, "2", cpu_threads.MAX_THREADS + 1):
        archive.extra[cpu_threads.EXTRA_KEY] = bad
        with pytest.raises(ArchiveError, match="CPU thread count"):
            api.decode_archive_images(archive, default_model)


#: The numerics probe of the version-4 files in tests/data on the machine that wrote them
#: (2026-12-07: an Intel Xeon with AVX-512, torch 2.13.0, 2 threads, MKL_CBWR=COMPATIBLE).
V4_WRITER_PROBE = 0x1665


@pytest.mark.skipif(not cpu_isa.runs_aten_avx2() or cpu_isa.mkl_active() != cpu_isa.MKL_PINNED,
                    reason="the portable CPU numerics need AVX2 and FMA, and MKL in the pinned mode")
@pytest.mark.parametrize("name, sources, grey", [
    ("v4_single.arib", ["ColdRipple_planks_64.png"], [True]),  # a grey photo saved as RGB: coded as grey
    ("v4_dataset.arib", ["FreshFlower_edge_64.png", "Blinds_veins_64.png"], [False, False]),
])
def test_cpu_files_decode_on_other_machines(default_model: zoo.LoadedModel, name: str, sources: list[str],
                                            grey: list[bool]) -> None:
    """Files written on another machine by the shipped model, without oneDNN and NNPACK (features
    bit 1), with MKL in its reproducible COMPATIBLE branch and ATen at AVX2 (:mod:`aribbps.cpu_isa`),
    decode bit-exactly on any x86-64 CPU with AVX2 and FMA: the portability these settings are
    for. Failing here means they are not enough on this machine (the probes say how it computes)."""
    archive = decode_archive((DATA / name).read_bytes())
    assert archive.native_conv and archive.corrections and cpu_isa.MKL_EXTRA_KEY not in archive.extra
    assert [GREY_KEY in r.extra for r in archive.images] == grey
    try:
        decoded = api.decode_archive_images(archive, default_model)
    except (ArchiveError, ChecksumError) as exc:
        with cpu_threads.matching(archive.extra, "cpu"):
            probe = api.numerics_probe_for(archive, default_model)
        pytest.fail(f"{exc} (numerics probe here {probe:04x}, the writer's {V4_WRITER_PROBE:04x})")
    assert [d.record.name for d in decoded] == sources
    for got, source in zip(decoded, sources):
        np.testing.assert_array_equal(got.pixels, load_image(SAMPLES / source).pixels)
