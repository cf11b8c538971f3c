"""Read the files inside a Qt binary resource bundle (``.rcc``).

Some corpus photos ship only inside ``.rcc`` files (``gcompris-qt-data``, see
``docs/corpus.md``). The format: a 20- or 24-byte header (``qres``, format
version, then the offsets of the tree, the data and the names sections), a
tree of fixed-size nodes (14 bytes, 22 from version 2: a last-modified time
is appended), names as a 16-bit length, a 32-bit hash and UTF-16BE
characters, and data as a 32-bit length followed by the bytes. Flag 1 marks
zlib data (``qCompress``: a 32-bit uncompressed length, then a zlib
stream), flag 2 a directory, flag 4 zstd data (not read here: no such entries
in the bundles we use). All integers are big-endian.

Every read is bounds-checked: a damaged bundle raises :class:`RccError`.
"""
from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from aribbps.atomic import atomic_write_bytes
from aribbps.errors import AribError

MAGIC = b"qres"
FLAG_ZLIB, FLAG_DIRECTORY, FLAG_ZSTD = 1, 2, 4
#: Largest file we inflate (guards against zlib bombs).
MAX_FILE_BYTES = 256 << 20


class RccError(AribError, ValueError):
    """A ``.rcc`` bundle is damaged or uses a feature we do not read."""


class _Reader:
    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.where = where

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.data):
            raise RccError(f"{self.where}: read of {size} bytes at {offset} runs past the end ({len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, offset)

    def slice(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise RccError(f"{self.where}: {size} bytes at {offset} run past the end ({len(self.data)} bytes)")
        return self.data[offset:offset + size]


def read_rcc(data: bytes, where: str = "rcc") -> Iterator[tuple[str, bytes]]:
    """Yield ``(path, contents)`` of every file in the bundle, paths '/'-separated."""
    r = _Reader(data, where)
    if r.slice(0, 4) != MAGIC:
        raise RccError(f"{where}: not a Qt resource bundle (no 'qres' magic)")
    version, tree, payload, names = r.unpack(">IIII", 4)
    if version not in (1, 2, 3):
        raise RccError(f"{where}: unsupported rcc format version {version}")
    node_size = 14 if version == 1 else 22

    def name_of(offset: int) -> str:
        (length,) = r.unpack(">H", names + offset)
        return r.slice(names + offset + 6, 2 * length).decode("utf-16-be", errors="replace")

    visited: set[int] = set()
    stack: list[tuple[int, str]] = [(0, "")]
    while stack:
        node, prefix = stack.pop()
        if node in visited:
            raise RccError(f"{where}: the resource tree has a cycle at node {node}")
        visited.add(node)
        base = tree + node * node_size
        name_offset, flags = r.unpack(">IH", base)
        name = "" if node == 0 else name_of(name_offset)
        path = f"{prefix}/{name}" if prefix else name
        if flags & FLAG_DIRECTORY:
            count, first = r.unpack(">II", base + 6)
            if first + count > len(data) // node_size:
                raise RccError(f"{where}: directory {path!r} lists nodes past the tree")
            stack.extend((first + i, path) for i in reversed(range(count)))
            continue
        (offset,) = r.unpack(">I", base + 10)
        (size,) = r.unpack(">I", payload + offset)
        blob = r.slice(payload + offset + 4, size)
        if flags & FLAG_ZSTD:
            raise RccError(f"{where}: {path!r} is zstd-compressed, which this reader does not support")
        if flags & FLAG_ZLIB:
            blob = _inflate(blob, f"{where}:{path}")
        yield path, blob


def _inflate(blob: bytes, where: str) -> bytes:
    if len(blob) < 4:
        raise RccError(f"{where}: compressed entry shorter than its length prefix")
    (expected,) = struct.unpack_from(">I", blob)
    if expected > MAX_FILE_BYTES:
        raise RccError(f"{where}: claims {expected} bytes uncompressed, more than {MAX_FILE_BYTES}")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(blob[4:], expected + 1)
    except zlib.error as exc:
        raise RccError(f"{where}: bad zlib data: {exc}") from None
    if len(out) != expected:
        raise RccError(f"{where}: inflated to {len(out)} bytes, the header says {expected}")
    return out


def flat_name(bundle: Path, entry: str, prefix: str = "") -> str:
    """``{prefix}{bundle stem}_{entry's folder}_{entry's stem}{suffix}``.

    Every character outside ``A-Za-z0-9._-`` becomes ``_`` (so a name from
    the bundle can hold no path separator or NUL). The corpus builder names
    patches (and seeds their draws) by photo name, so the same bundle always
    gives the same names.
    """
    parts = entry.split("/")
    folder = parts[-2] if len(parts) > 1 else ""
    stem, dot, suffix = parts[-1].rpartition(".")
    if not dot:
        stem, suffix = parts[-1], ""
    name = f"{prefix}{bundle.stem}_{folder}_{stem}" + (f".{suffix}" if dot else "")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def extract_photos(
    bundles: list[str | Path], out_dir: str | Path, min_side: int = 256,
    suffixes: tuple[str, ...] = (".webp", ".jpg", ".jpeg", ".png"), prefix: str = "",
    notices_dir: str | Path | None = None,
) -> list[Path]:
    """Write the RGB photos (shorter side >= ``min_side``) of ``bundles`` into ``out_dir``, flat.

    Entries that are not images, have an alpha channel or another mode, or
    are smaller are left out; unreadable images too. Each file is written
    atomically, named by :func:`flat_name`; two entries with one name raise.
    With ``notices_dir``, the ``README`` entries (where the bundles keep
    each image's author, source and licence) are written there too.
    """
    from PIL import Image, UnidentifiedImageError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[str] = set()
    for bundle in map(Path, bundles):
        for entry, blob in read_rcc(bundle.read_bytes(), str(bundle)):
            if notices_dir is not None and entry.rsplit("/", 1)[-1].upper().startswith("README"):
                Path(notices_dir).mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(Path(notices_dir) / flat_name(bundle, entry, prefix), blob)
                continue
            if not entry.lower().endswith(suffixes):
                continue
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    keep = im.mode == "RGB" and min(im.size) >= min_side
            except (UnidentifiedImageError, OSError, ValueError):
                continue
            if not keep:
                continue
            name = flat_name(bundle, entry, prefix)
            if name in seen:
                raise RccError(f"{bundle}: two photos would both be named {name!r}")
            seen.add(name)
            written.append(atomic_write_bytes(out / name, blob))
    return written
