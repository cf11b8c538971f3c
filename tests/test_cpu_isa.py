"""The pinned CPU numerics (oneDNN's and ATen's instruction sets, MKL's reproducible mode, oneDNN
off while coding): set on import, recorded where they differ, checked on decode."""
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
from aribbps.container import decode_archive, read_archive
from aribbps.errors import ArchiveError
from aribbps.imageio import LoadedImage, load_image
from kernels import dispatch


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
    monkeypatch.setenv(cpu_isa.MKL_ENV, "OFF")  # as files without features bit 1 need
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
    monkeypatch.setenv(cpu_isa.MKL_ENV, "OFF")
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


def _cli(args: list[str], aten: str = "avx2", mkl: str = cpu_isa.MKL_PINNED) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (cpu_isa.ATEN_ENV, cpu_isa.MKL_ENV)}
    env |= {cpu_isa.ATEN_ENV: aten, cpu_isa.MKL_ENV: mkl}
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


def _mkl_in_fresh_process(env: dict[str, str]) -> str:
    code = "import aribbps, os; print(os.environ.get('MKL_CBWR'))"
    full = {k: v for k, v in os.environ.items() if k != cpu_isa.MKL_ENV} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True).stdout.strip()


X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not X86, reason="MKL is pinned on x86-64 only")
def test_importing_aribbps_pins_mkl_to_its_compatible_branch_unless_the_user_chose() -> None:
    assert _mkl_in_fresh_process({}) == "COMPATIBLE"
    assert _mkl_in_fresh_process({cpu_isa.MKL_ENV: "OFF"}) == "OFF"


def test_mkls_setting_reads_as_mkl_documents_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("avx2", "AVX2"), ("BRANCH=AVX2", "AVX2"), (" ", "OFF"), ("", "OFF")):
        monkeypatch.setenv(cpu_isa.MKL_ENV, value)
        assert cpu_isa.mkl_active() == expected, value
    monkeypatch.delenv(cpu_isa.MKL_ENV)
    assert cpu_isa.mkl_active() == "OFF"


def test_files_without_onednn_record_and_check_mkls_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_isa, "aten_active", lambda: "AVX2")
    monkeypatch.setenv(cpu_isa.ENV, "AVX512_CORE")  # oneDNN's limit does not matter without oneDNN
    monkeypatch.setenv(cpu_isa.MKL_ENV, cpu_isa.MKL_PINNED)
    extra: dict = {}
    cpu_isa.record(extra, "cpu", native_conv=True)
    assert extra == {}
    cpu_isa.check(extra, "cpu", pinned_file=True, aten_pinned_file=True, native_conv=True)
    with pytest.raises(ArchiveError, match="before aribbps pinned MKL's mode.* set MKL_CBWR=OFF "):
        cpu_isa.check(extra, "cpu", pinned_file=True, aten_pinned_file=True)  # files before ran MKL unpinned
    monkeypatch.setenv(cpu_isa.MKL_ENV, "")
    assert cpu_isa.mkl_active() == "OFF"
    cpu_isa.record(extra, "cpu", native_conv=True)
    assert extra == {cpu_isa.MKL_EXTRA_KEY: "OFF"}
    monkeypatch.setenv(cpu_isa.MKL_ENV, cpu_isa.MKL_PINNED)
    with pytest.raises(ArchiveError, match="MKL's reproducible mode at OFF .* set MKL_CBWR=OFF "):
        cpu_isa.check(extra, "cpu", pinned_file=True, aten_pinned_file=True, native_conv=True)
    cpu_isa.check(extra, "cuda", pinned_file=True, aten_pinned_file=True, native_conv=True)
    with pytest.raises(ArchiveError, match="corrupted"):
        cpu_isa.check({cpu_isa.MKL_EXTRA_KEY: "AVX2 x"}, "cpu", pinned_file=True, native_conv=True)


def _conv_backend(batch: int) -> str:
    """The backend torch picks for a 3x3 convolution of ``batch`` items (a private torch probe)."""
    x, w = torch.zeros(batch, 8, 12, 12), torch.zeros(8, 8, 3, 3)
    return str(torch._C._select_conv_backend(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, None))


def test_coding_numerics_turns_onednn_and_nnpack_off_for_native_files_and_restores_them() -> None:
    before = torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()
    with dispatch.coding_numerics("cpu", native_conv=True):
        assert not torch.backends.mkldnn.enabled and not torch._C._get_nnpack_enabled()
        if hasattr(torch._C, "_select_conv_backend"):  # NNPACK would take batches of 16 and more
            assert {_conv_backend(b).rsplit(".", 1)[-1] for b in (1, 16, 40)} == {"Slow2d"}
        with dispatch.coding_numerics("cpu", native_conv=True):  # overlapping codings share it
            assert not torch.backends.mkldnn.enabled
        assert not torch.backends.mkldnn.enabled
        with pytest.raises(RuntimeError, match="other convolutions"):
            with dispatch.coding_numerics("cpu"):
                pass
    assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()) == before
    with dispatch.coding_numerics("cpu"):
        assert torch.backends.mkldnn.enabled
    with pytest.raises(KeyError):
        with dispatch.coding_numerics("cpu", native_conv=True):
            raise KeyError("restored on errors too")
    assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()) == before


def test_cpu_files_are_coded_without_onednn_and_say_so(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = zoo.load(model_file)
    pixels = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    seen = []
    conv2d = torch.nn.functional.conv2d

    def spy(*args, **kwargs):  # what the networks run under while the codec codes
        seen.append((torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()))
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    archive = decode_archive(api.encode_images([LoadedImage("a.png", "PNG", "RGB", pixels)], model).data)
    assert seen and set(seen) == {(False, False)}
    assert archive.native_conv
    assert archive.extra.get(cpu_isa.MKL_EXTRA_KEY) == (None if cpu_isa.mkl_active() == cpu_isa.MKL_PINNED
                                                        else cpu_isa.mkl_active())
    np.testing.assert_array_equal(api.decode_archive_images(archive, model)[0].pixels, pixels)


@pytest.mark.skipif(not X86, reason="MKL is pinned on x86-64 only")
def test_a_file_from_another_mkl_mode_is_refused_with_the_setting_and_decodes_at_it(
        tmp_path: Path, model_file: Path) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(image)
    arib = tmp_path / "a.arib"
    done = _cli(["compress", str(image), "-o", str(arib), "--model", str(model_file), "-q"], mkl="OFF")
    assert done.returncode == 0, done.stderr
    archive = read_archive(arib)
    assert archive.native_conv and archive.extra[cpu_isa.MKL_EXTRA_KEY] == "OFF"
    with pytest.raises(ArchiveError, match="set MKL_CBWR=OFF "):
        api.decode_archive_images(archive, zoo.load(model_file))
    out = tmp_path / "out"
    done = _cli(["decompress", str(arib), "-o", str(out), "--model", str(model_file), "-q"], mkl="OFF")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(load_image(out / "a.png").pixels, load_image(image).pixels)
