"""The pinned oneDNN instruction set: set on import, recorded where it differs, checked on decode."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aribbps import cpu_isa
from aribbps.errors import ArchiveError


def _env_in_fresh_process(env: dict[str, str]) -> str:
    code = "import aribbps, os; print(os.environ.get('ONEDNN_MAX_CPU_ISA'))"
    full = {k: v for k, v in os.environ.items() if k != cpu_isa.ENV} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_aribbps_pins_avx2_unless_the_user_chose() -> None:
    assert _env_in_fresh_process({}) == "AVX2"
    assert _env_in_fresh_process({cpu_isa.ENV: "AVX512_CORE"}) == "AVX512_CORE"


def test_only_an_unpinned_cpu_file_records_its_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_isa.ENV, "avx2")
    extra: dict = {}
    cpu_isa.record(extra, "cpu")
    assert extra == {}
    monkeypatch.setenv(cpu_isa.ENV, "AVX512_CORE")
    cpu_isa.record(extra, "cuda")
    assert extra == {}
    cpu_isa.record(extra, "cpu")
    assert extra == {cpu_isa.EXTRA_KEY: "AVX512_CORE"}


def test_the_decoder_refuses_another_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_isa.ENV, "AVX2")
    cpu_isa.check({}, "cpu", pinned_file=True)
    cpu_isa.check({}, "cpu", pinned_file=False)  # older files: whatever runs
    with pytest.raises(ArchiveError, match="ONEDNN_MAX_CPU_ISA=AVX512_CORE"):
        cpu_isa.check({cpu_isa.EXTRA_KEY: "AVX512_CORE"}, "cpu", pinned_file=True)
    cpu_isa.check({cpu_isa.EXTRA_KEY: "AVX512_CORE"}, "cuda", pinned_file=True)
    monkeypatch.delenv(cpu_isa.ENV)
    with pytest.raises(ArchiveError, match="encoded with ONEDNN_MAX_CPU_ISA=AVX2"):
        cpu_isa.check({}, "cpu", pinned_file=True)
    for bad in (7, "", "A" * 40, "AVX2;rm"):
        with pytest.raises(ArchiveError, match="corrupted"):
            cpu_isa.check({cpu_isa.EXTRA_KEY: bad}, "cpu", pinned_file=True)


def test_the_hint_is_for_unpinned_cpu_files_only() -> None:
    assert "ONEDNN_MAX_CPU_ISA=ALL" in cpu_isa.unpinned_hint("cpu", pinned_file=False)
    assert cpu_isa.unpinned_hint("cpu", pinned_file=True) == cpu_isa.unpinned_hint("cuda", pinned_file=False) == ""
