"""The pinned oneDNN instruction set: set on import, recorded where it differs, checked on decode."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aribbps import api, cpu_isa, zoo
from aribbps.container import read_archive
from aribbps.errors import ArchiveError
from aribbps.imageio import load_image


def _env_in_fresh_process(env: dict[str, str]) -> str:
    code = "import aribbps, os; print(os.environ.get('ONEDNN_MAX_CPU_ISA'))"
    full = {k: v for k, v in os.environ.items() if k != cpu_isa.ENV} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_aribbps_pins_avx2_unless_the_user_chose() -> None:
    assert _env_in_fresh_process({}) == "AVX2"
    assert _env_in_fresh_process({cpu_isa.ENV: "AVX512_CORE"}) == "AVX512_CORE"


def _aten_in_fresh_process(env: dict[str, str]) -> str:
    """The variable after importing aribbps, and the level ATen then runs at."""
    code = ("import aribbps, os, torch; torch.ones(2).exp(); "
            "print(os.environ.get('ATEN_CPU_CAPABILITY'), torch.backends.cpu.get_cpu_capability())")
    full = {k: v for k, v in os.environ.items() if k != cpu_isa.ATEN_ENV} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not cpu_isa.runs_aten_avx2(), reason="ATen is pinned only on x86-64 CPUs with AVX2 and FMA")
def test_importing_aribbps_pins_aten_to_avx2_unless_the_user_chose() -> None:
    assert _aten_in_fresh_process({}) == "avx2 AVX2"
    assert _aten_in_fresh_process({cpu_isa.ATEN_ENV: "default"}) == "default DEFAULT"


def test_aten_is_pinned_only_where_the_cpu_lists_avx2_and_fma(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for flags, expected in (("fpu sse2 avx avx2 fma bmi2", True), ("fpu sse2 avx fma", False),
                            ("fpu sse2 avx avx2", False)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert cpu_isa.runs_aten_avx2(cpuinfo) is expected, flags
    for supported in (True, False):  # no /proc/cpuinfo (not Linux): torch's own probe decides
        monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: supported)
        assert cpu_isa.runs_aten_avx2(tmp_path / "missing") is supported
    cpuinfo.write_text("flags\t\t: avx2 fma\n")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert not cpu_isa.runs_aten_avx2(cpuinfo)


def test_only_an_unpinned_cpu_file_records_its_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_isa, "aten_active", lambda: "AVX2")
    monkeypatch.setenv(cpu_isa.ENV, "avx2")
    extra: dict = {}
    cpu_isa.record(extra, "cpu")
    assert extra == {}
    monkeypatch.setenv(cpu_isa.ENV, "AVX512_CORE")
    cpu_isa.record(extra, "cuda")
    assert extra == {}
    cpu_isa.record(extra, "cpu")
    assert extra == {cpu_isa.EXTRA_KEY: "AVX512_CORE"}
    monkeypatch.setattr(cpu_isa, "aten_active", lambda: "AVX512")
    cpu_isa.record(extra, "cpu")
    assert extra == {cpu_isa.EXTRA_KEY: "AVX512_CORE", cpu_isa.ATEN_EXTRA_KEY: "AVX512"}


def test_the_decoder_refuses_another_aten_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_isa.ENV, "AVX2")
    monkeypatch.setattr(cpu_isa, "aten_active", lambda: "AVX512")
    cpu_isa.check({}, "cpu", pinned_file=True)  # written before the ATen pin: whatever runs
    with pytest.raises(ArchiveError, match="ATen's kernels at AVX2 .* runs them at AVX512: set ATEN_CPU_CAPABILITY=avx2 "):
        cpu_isa.check({}, "cpu", pinned_file=True, aten_pinned_file=True)
    cpu_isa.check({cpu_isa.ATEN_EXTRA_KEY: "AVX512"}, "cpu", pinned_file=True, aten_pinned_file=True)
    cpu_isa.check({}, "cuda", pinned_file=True, aten_pinned_file=True)
    with pytest.raises(ArchiveError, match="corrupted"):
        cpu_isa.check({cpu_isa.ATEN_EXTRA_KEY: 3}, "cpu", pinned_file=True, aten_pinned_file=True)


def test_the_decoder_refuses_another_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_isa.ENV, "AVX2")
    cpu_isa.check({}, "cpu", pinned_file=True)
    cpu_isa.check({}, "cpu", pinned_file=False)  # older files: whatever runs
    with pytest.raises(ArchiveError, match="ONEDNN_MAX_CPU_ISA=AVX512_CORE"):
        cpu_isa.check({cpu_isa.EXTRA_KEY: "AVX512_CORE"}, "cpu", pinned_file=True)
    cpu_isa.check({cpu_isa.EXTRA_KEY: "AVX512_CORE"}, "cuda", pinned_file=True)
    monkeypatch.delenv(cpu_isa.ENV)
    with pytest.raises(ArchiveError, match="encoded with oneDNN at AVX2 .* set ONEDNN_MAX_CPU_ISA=AVX2 "):
        cpu_isa.check({}, "cpu", pinned_file=True)
    for bad in (7, "", "A" * 40, "AVX2;rm"):
        with pytest.raises(ArchiveError, match="corrupted"):
            cpu_isa.check({cpu_isa.EXTRA_KEY: bad}, "cpu", pinned_file=True)


def test_the_hint_is_for_unpinned_cpu_files_only() -> None:
    assert "ONEDNN_MAX_CPU_ISA=ALL" in cpu_isa.unpinned_hint("cpu", pinned_file=False)
    assert cpu_isa.unpinned_hint("cpu", pinned_file=True) == cpu_isa.unpinned_hint("cuda", pinned_file=False) == ""


def _cli(args: list[str], aten: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != cpu_isa.ATEN_ENV} | {cpu_isa.ATEN_ENV: aten}
    return subprocess.run([sys.executable, "-m", "aribbps", *args], env=env, capture_output=True, text=True)


@pytest.mark.skipif(not cpu_isa.runs_aten_avx2(), reason="ATen is pinned only on x86-64 CPUs with AVX2 and FMA")
def test_a_file_from_another_aten_level_is_refused_with_the_setting_and_decodes_at_it(
        tmp_path: Path, model_file: Path) -> None:
    """ATen at DEFAULT rounds otherwise than at AVX2 (the numerics probe differs): such a file
    records its level, and decodes in a process set to it."""
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(image)
    arib = tmp_path / "a.arib"
    done = _cli(["compress", str(image), "-o", str(arib), "--model", str(model_file), "-q"], "default")
    assert done.returncode == 0, done.stderr
    archive = read_archive(arib)
    assert archive.extra[cpu_isa.ATEN_EXTRA_KEY] == "DEFAULT"
    with pytest.raises(ArchiveError, match="set ATEN_CPU_CAPABILITY=") as refused:
        api.decode_archive_images(archive, zoo.load(model_file))
    setting = re.search(r"set ATEN_CPU_CAPABILITY=(\S+) ", str(refused.value)).group(1)  # the advice as given
    out = tmp_path / "out"
    done = _cli(["decompress", str(arib), "-o", str(out), "--model", str(model_file), "-q"], setting)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(load_image(out / "a.png").pixels, load_image(image).pixels)
