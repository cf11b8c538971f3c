"""The instruction sets of the CPU networks' kernels, oneDNN's and ATen's: pinned, recorded, checked.

torch runs its CPU convolutions with oneDNN, which generates kernels for the
best instruction set of the machine; AVX-512 and AVX2 kernels sum in other
orders, and one probability quantised differently makes a file undecodable.
A file written on an AVX-512 machine failed its lane check on the same
machine with oneDNN limited to AVX2, as on any AVX2-only machine would
(measured 2026-12-03). So importing aribbps limits oneDNN to AVX2, which
every x86-64 server and desktop of the last decade has, through
``ONEDNN_MAX_CPU_ISA`` (read by oneDNN at its first use, so before any
convolution runs; a value set by the user is left alone).

That was not enough: the files written at oneDNN AVX2 on the AVX-512 machine
of 2026-12-03 did not all decode on the AMD EPYC (AVX2 only) of 2026-12-06.
torch's own vectorised kernels (ATen: the elementwise functions,
reductions, softmax) also pick their instruction set by the machine, AVX-512
where there is one, and they round otherwise at another: on one machine the
numerics probe (:mod:`aribbps.numerics_probe`) of the version-2 model on one
thread came out 1473 with ATen at AVX2 and 3b78 at its DEFAULT level. So
importing aribbps also sets ``ATEN_CPU_CAPABILITY=avx2`` (read at torch's
first operation; torch takes only lower-case values; set only on x86-64
CPUs with AVX2 and FMA, since ATen trusts the setting and would fault
without them; a value set by the user is left alone). It holds for all torch
code of the process and its children: elementwise work runs at AVX2 on an
AVX-512 machine. What else differs between CPUs (oneDNN's blocking by cache
size, say) is not pinned: the numerics probe then tells the user that the machine,
not damage to the file, is the likely cause.

Nor was that enough: the files of the AMD EPYC did not decode on the Intel
Xeon (AVX-512, AMX) of 2026-12-07 with both pins (oneDNN and MKL choose
kernels and blocking per CPU below the limit). So files written since code
their CPU networks without oneDNN and NNPACK (container features bit 1,
:func:`kernels.dispatch.coding_numerics`): the convolutions run torch's own
im2col and BLAS products, which torch takes from MKL, and importing aribbps
sets ``MKL_CBWR=COMPATIBLE`` on x86-64 (read by MKL at its first use; a value
set by the user is left alone), MKL's conditional numerical reproducibility
mode on its SSE2 branch: the same results on Intel and other vendors' CPUs
for the same thread count (which the decoder matches,
:mod:`aribbps.cpu_threads`). Its faster branches (``AVX2``, ...) are
reproducible on Intel CPUs only; a user may choose one, and the file then
records it under :data:`MKL_EXTRA_KEY` and the decoder refuses another.

Files with temperature symbols (container flag bit 7, the first written with
the oneDNN pin) ran oneDNN at AVX2 unless their extra dict says otherwise
under :data:`EXTRA_KEY`; files with a numerics probe (the first written with
the ATen pin) ran ATen at AVX2 unless it says otherwise under
:data:`ATEN_EXTRA_KEY`. The decoder refuses a file whose instruction sets
are not its own, since neither library can change them once it has run.
Older files record nothing and decode at whatever the process runs.
"""
from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aribbps.errors import ArchiveError

#: oneDNN's environment variable for the highest instruction set it may use.
ENV = "ONEDNN_MAX_CPU_ISA"
#: What aribbps sets it to (when unset) and what files assume by default.
PINNED = "AVX2"
#: The archive extra key of a CPU file's instruction set, where it is not PINNED.
EXTRA_KEY = "cpu_isa"
#: ATen's environment variable for the instruction set of its vectorised CPU kernels.
ATEN_ENV = "ATEN_CPU_CAPABILITY"
#: What aribbps sets it to (where the CPU has it) and what files with a numerics probe assume.
ATEN_PINNED = "AVX2"
#: The archive extra key of ATen's instruction set, where it is not ATEN_PINNED.
ATEN_EXTRA_KEY = "aten_cpu"
#: MKL's environment variable for its reproducible code branch.
MKL_ENV = "MKL_CBWR"
#: What aribbps sets it to (on x86-64) and what files without oneDNN assume: MKL's
#: SSE2 branch, the one MKL keeps the same on Intel and other vendors' CPUs alike.
MKL_PINNED = "COMPATIBLE"
#: The archive extra key of MKL's mode in files without oneDNN, where it is not MKL_PINNED.
MKL_EXTRA_KEY = "mkl_cbwr"
_MAX_NAME = 32


def pin() -> None:
    """Limits oneDNN to :data:`PINNED`, ATen to :data:`ATEN_PINNED` (where the CPU runs its AVX2
    kernels) and MKL to its reproducible :data:`MKL_PINNED` branch (on x86-64) unless the
    environment already names a setting."""
    os.environ.setdefault(ENV, PINNED)
    if runs_aten_avx2():
        os.environ.setdefault(ATEN_ENV, ATEN_PINNED.lower())
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault(MKL_ENV, MKL_PINNED)


def runs_aten_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this is an x86-64 CPU with AVX2 and FMA, which ATen's AVX2 kernels use: from the
    flags of ``cpuinfo`` on Linux, elsewhere from torch's own probe of the CPU (AVX2 only)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        import torch  # importing torch does not fix ATen's level; its first operation does

        probe = getattr(torch.cpu, "_is_avx2_supported", None)
        return bool(probe()) if callable(probe) else False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx2" in flags and "fma" in flags


def aten_active() -> str:
    """The instruction set ATen's kernels run at in this process (fixed at torch's first operation)."""
    import torch  # not at module import: aribbps pins before torch loads

    return str(torch.backends.cpu.get_cpu_capability()).upper()


def active() -> str:
    """The limit this process runs oneDNN at (``ALL``: the machine's best)."""
    return os.environ.get(ENV, "ALL").strip().upper() or "ALL"


def mkl_active() -> str:
    """MKL's reproducible branch in this process as set in the environment (``OFF``: none, MKL
    picks per machine; ``BRANCH=X`` reads as ``X``). MKL reads it at its first use, so it tells
    the truth only where aribbps was imported before torch computed anything."""
    value = os.environ.get(MKL_ENV, "OFF").strip().upper()
    return value.removeprefix("BRANCH=") or "OFF"


def record(extra: dict[str, Any], device_kind: str, native_conv: bool = False) -> None:
    """Stores the instruction sets in ``extra`` for a CPU file, where they are not the pinned ones
    (``native_conv``: MKL's branch instead of oneDNN's limit)."""
    if device_kind != "cpu":
        return
    if native_conv:
        if mkl_active() != MKL_PINNED:
            extra[MKL_EXTRA_KEY] = mkl_active()
    elif active() != PINNED:
        extra[EXTRA_KEY] = active()
    if aten_active() != ATEN_PINNED:
        extra[ATEN_EXTRA_KEY] = aten_active()


def unpinned_hint(device_kind: str, pinned_file: bool) -> str:
    """What to add to a decoding failure of a CPU file written before the pin, else ''."""
    if device_kind != "cpu" or pinned_file:
        return ""
    return (f"; files written before aribbps pinned oneDNN's instruction set decode only at the encoder's: "
            f"if this one comes from another machine, try {ENV}=ALL or the instruction set of that machine "
            f"(and {ATEN_ENV}, e.g. avx512, where that machine had AVX-512)")


def check(extra: dict[str, Any], device_kind: str, pinned_file: bool, aten_pinned_file: bool = False,
          native_conv: bool = False) -> None:
    """Refuses to decode a CPU file at instruction sets other than the encoder's.

    ``pinned_file``: the file comes from an encoder that pins oneDNN (flag
    bit 7); without a recorded value it ran at :data:`PINNED`.
    ``aten_pinned_file``: from one that also pins ATen (it has a numerics
    probe: both came in on 2026-12-06, the probe one commit earlier, and no
    file of that commit left the repository); without a recorded value it
    ran at :data:`ATEN_PINNED`. ``native_conv``: the file's networks ran
    without oneDNN (features bit 1), MKL in the branch it records, by
    default :data:`MKL_PINNED`; oneDNN's limit does not matter then. Files
    without the bit ran MKL without a reproducible mode, which oneDNN's
    convolutions use too: they need ``MKL_CBWR=OFF`` (any value MKL does
    not know leaves it in its default mode).

    Raises:
        ArchiveError: a malformed value, or one that is not this process's.
    """
    if device_kind != "cpu":
        return
    if native_conv:
        mkl = extra.get(MKL_EXTRA_KEY, MKL_PINNED)
        _check_one(mkl, mkl_active, MKL_ENV, "MKL's reproducible mode", str(mkl))
    else:
        if mkl_active() != "OFF":
            raise ArchiveError(f"this file was coded before aribbps pinned MKL's mode, and decodes only with MKL "
                               f"in its default mode: set {MKL_ENV}=OFF in the environment before starting the "
                               f"decoder (aribbps sets {MKL_ENV}={MKL_PINNED} where it is unset; this process "
                               f"runs {mkl_active()})")
        oned = extra.get(EXTRA_KEY, PINNED if pinned_file else None)
        _check_one(oned, active, ENV, "oneDNN", str(oned))
    aten = extra.get(ATEN_EXTRA_KEY, ATEN_PINNED if aten_pinned_file else None)
    _check_one(aten, aten_active, ATEN_ENV, "ATen's kernels", str(aten).lower())  # torch reads lower case only


def _check_one(wanted: object, here: Callable[[], str], env: str, what: str, setting: str) -> None:
    """Refuses ``wanted`` (a file's instruction set; None: unknown) where ``here()`` differs;
    ``setting`` is the value of ``env`` that selects it."""
    if wanted is None:
        return
    if not isinstance(wanted, str) or not 0 < len(wanted) <= _MAX_NAME or not wanted.replace("_", "").isalnum():
        raise ArchiveError(f"corrupted: the archive's CPU instruction set is {wanted!r}")
    if wanted != here():
        raise ArchiveError(f"this file was encoded with {what} at {wanted} and this process runs them at "
                           f"{here()}: set {env}={setting} in the environment before starting the decoder "
                           "(on a CPU that has that instruction set)")
