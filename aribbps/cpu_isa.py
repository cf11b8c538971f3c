"""The instruction set of the CPU networks' oneDNN kernels: pinned, recorded, checked.

torch runs its CPU convolutions with oneDNN, which generates kernels for the
best instruction set of the machine; AVX-512 and AVX2 kernels sum in other
orders, and one probability quantised differently makes a file undecodable.
A file written on an AVX-512 machine failed its lane check on the same
machine with oneDNN limited to AVX2, as on any AVX2-only machine would
(measured 2026-12-03). So importing aribbps limits oneDNN to AVX2, which
every x86-64 server and desktop of the last decade has, through
``ONEDNN_MAX_CPU_ISA`` (read by oneDNN at its first use, so before any
convolution runs; a value set by the user is left alone). The pin is not
enough between all CPUs: at AVX2 oneDNN still chose kernels that round
otherwise on the AMD EPYC of 2026-12-06 than on the machine of 2026-12-03;
:mod:`aribbps.numerics_probe` then tells the user the file is probably
intact.

Files with temperature symbols (container flag bit 7, the first written with
this pin) ran at AVX2 unless their extra dict says otherwise under
:data:`EXTRA_KEY`; the decoder refuses a file whose instruction set is not
its own, since oneDNN cannot change it once it has run. Older files record
nothing and decode at whatever the process runs (AVX2 unless set).
"""
from __future__ import annotations

import os
from typing import Any

from aribbps.errors import ArchiveError

#: oneDNN's environment variable for the highest instruction set it may use.
ENV = "ONEDNN_MAX_CPU_ISA"
#: What aribbps sets it to (when unset) and what files assume by default.
PINNED = "AVX2"
#: The archive extra key of a CPU file's instruction set, where it is not PINNED.
EXTRA_KEY = "cpu_isa"
_MAX_NAME = 32


def pin() -> None:
    """Limits oneDNN to :data:`PINNED` unless the environment already names a limit."""
    os.environ.setdefault(ENV, PINNED)


def active() -> str:
    """The limit this process runs oneDNN at (``ALL``: the machine's best)."""
    return os.environ.get(ENV, "ALL").strip().upper() or "ALL"


def record(extra: dict[str, Any], device_kind: str) -> None:
    """Stores the instruction set in ``extra`` for a CPU file, where it is not the pinned one."""
    if device_kind == "cpu" and active() != PINNED:
        extra[EXTRA_KEY] = active()


def unpinned_hint(device_kind: str, pinned_file: bool) -> str:
    """What to add to a decoding failure of a CPU file written before the pin, else ''."""
    if device_kind != "cpu" or pinned_file:
        return ""
    return (f"; files written before aribbps pinned oneDNN's instruction set decode only at the encoder's: "
            f"if this one comes from another machine, try {ENV}=ALL or the instruction set of that machine")


def check(extra: dict[str, Any], device_kind: str, pinned_file: bool) -> None:
    """Refuses to decode a CPU file at an instruction set other than the encoder's.

    ``pinned_file``: the file comes from an encoder that pins (flag bit 7);
    without a recorded value it ran at :data:`PINNED`.

    Raises:
        ArchiveError: a malformed value, or one that is not this process's.
    """
    if device_kind != "cpu":
        return
    wanted = extra.get(EXTRA_KEY, PINNED if pinned_file else None)
    if wanted is None:
        return
    if not isinstance(wanted, str) or not 0 < len(wanted) <= _MAX_NAME or not wanted.replace("_", "").isalnum():
        raise ArchiveError(f"corrupted: the archive's CPU instruction set is {wanted!r}")
    if wanted != active():
        raise ArchiveError(f"this file was encoded with {ENV}={wanted} and this process runs oneDNN at "
                           f"{active()}: set {ENV}={wanted} in the environment before starting the decoder")
