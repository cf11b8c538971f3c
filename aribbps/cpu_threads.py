"""The CPU networks' intra-op thread count: recorded by the encoder, matched by the decoder.

torch's CPU convolutions (oneDNN) round differently with different numbers
of intra-op threads: with the shipped model the plane context differs by
about 1e-5 between 1 and 2 threads (its 1x1 convolutions; the 3x3 ones
agree). One probability quantised differently makes a file undecodable (it
then fails its lane seals, never silently), so a file written on a machine
with another core count would not decode. The encoder records
``torch.get_num_threads()`` in the archive's extra dict, and the decoder runs
its networks with that many threads. Files from before the key decode with
the decoder's own count, as they always did.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from aribbps.packed import recorded_int

#: The archive extra key holding the encoder's intra-op thread count (CPU files only).
EXTRA_KEY = "cpu_threads"
#: The largest count a reader accepts.
MAX_THREADS = 4096


def record(extra: dict[str, Any], device_kind: str) -> None:
    """Stores this process's intra-op thread count in ``extra`` for a CPU file."""
    if device_kind == "cpu":
        extra[EXTRA_KEY] = torch.get_num_threads()


def recorded(extra: dict[str, Any]) -> int | None:
    """The count a file asks for (None: not recorded).

    Raises:
        ArchiveError: a value that is not an int in 1..:data:`MAX_THREADS`.
    """
    return recorded_int(extra, EXTRA_KEY, 1, MAX_THREADS, "CPU thread count")


@contextmanager
def matching(extra: dict[str, Any], device_kind: str) -> Iterator[None]:
    """Runs the block with the intra-op thread count the file was encoded with."""
    wanted = recorded(extra) if device_kind == "cpu" else None
    before = torch.get_num_threads()
    if wanted is None or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)
