"""Byte-level pieces of the ``.arib`` container: varints, a bounds-checked
reader, and the compact binary form of the codec's ``extra`` dicts.

The packed form (format version 3, ``docs/format.md``, "Packed values")
replaces the JSON of version 2: ``{"qp": 9}`` is 4 bytes instead of 9, which
matters when a whole file is a 32x32 image of ~1 kB. It stores the same
values JSON can (None, bools, integers below 2^64 in magnitude, finite
floats, strings, lists and dicts with string keys); keys the codec uses
often are one-byte codes.
"""
from __future__ import annotations

import math
import struct
from typing import Any

from .errors import ArchiveError

#: Dict keys stored as a one-byte code (k + 1); append only, never reorder.
KNOWN_KEYS: tuple[str, ...] = ("qp", "pad", "alpha", "lane_groups", "cpu_threads", "cpu_isa", "numerics_probe",
                               "aten_cpu", "mkl_cbwr", "grey")
#: Deepest nesting of lists and dicts a writer writes and a reader accepts.
MAX_DEPTH = 16

_INT, _NEG_INT, _STR, _LIST, _DICT, _FALSE, _TRUE, _NULL, _FLOAT = range(9)
_F64 = struct.Struct("<d")


def recorded_int(extra: dict[str, Any], key: str, low: int, high: int, what: str) -> int | None:
    """``extra[key]`` as an int in ``low..high`` (None: absent).

    Raises:
        ArchiveError: any other value, named as "the archive's ``what``".
    """
    value = extra.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ArchiveError(f"corrupted: the archive's {what} is {value!r} ({low}..{high})")
    return value


def varint(value: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def str_field(text: str) -> bytes:
    """A varint byte length, then the UTF-8 bytes."""
    raw = text.encode("utf-8")
    return varint(len(raw)) + raw


class Reader:
    """Bounds-checked cursor over a memoryview; runs out with an ArchiveError."""

    def __init__(self, buf: memoryview, what: str) -> None:
        self.buf, self.pos, self.what = buf, 0, what

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining():
            raise ArchiveError(f"corrupted: {self.what} ends early "
                               f"(needs {n} more bytes, has {self.remaining()})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 64, 7):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise ArchiveError(f"corrupted: {self.what} has an overlong integer")
                if value >> 64:
                    break
                return value
        raise ArchiveError(f"corrupted: {self.what} has an integer of more than 64 bits")

    def count(self, what: str) -> int:
        """A varint element count, each element at least one byte: no more than the bytes left."""
        n = self.varint()
        if n > self.remaining():
            raise ArchiveError(f"corrupted: {what} claims {n} entries in {self.remaining()} bytes")
        return n

    def string(self, max_bytes: int, what: str) -> str:
        n = self.varint()
        if n > max_bytes:
            raise ArchiveError(f"corrupted: {what} is {n} bytes long (at most {max_bytes})")
        return self.utf8(n, what)

    def utf8(self, n: int, what: str) -> str:
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"corrupted: {what} is not valid UTF-8") from None

    def finish(self) -> None:
        if self.remaining():
            raise ArchiveError(f"corrupted: {self.remaining()} unexpected bytes after {self.what}")


# --------------------------------------------------------------------------
# packed values

def pack_dict(value: Any, what: str) -> bytes:
    """``value`` (a dict) in packed form. Raises ValueError naming ``what`` if
    it holds anything the packed form cannot store exactly."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict, got {type(value).__name__}")
    out = bytearray()
    _pack_entries(value, out, what, 1)
    return bytes(out)


def _pack_key(key: Any, out: bytearray, what: str) -> None:
    if not isinstance(key, str):
        raise ValueError(f"{what}: keys must be str, got {key!r}")
    if key in KNOWN_KEYS:
        out += varint(KNOWN_KEYS.index(key) + 1)
    else:
        out += b"\x00" + str_field(key)


def _pack_entries(d: dict, out: bytearray, what: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"{what} nests deeper than {MAX_DEPTH} levels")
    out += varint(len(d))
    for key, item in d.items():
        _pack_key(key, out, what)
        _pack_value(item, out, what, depth)


def _pack_value(v: Any, out: bytearray, what: str, depth: int) -> None:
    if v is None:
        out.append(_NULL)
    elif isinstance(v, bool):
        out.append(_TRUE if v else _FALSE)
    elif isinstance(v, int):
        if not -(1 << 64) <= v < 1 << 64:
            raise ValueError(f"{what}: integer {v} is outside -2^64..2^64-1")
        out += bytes([_INT]) + varint(v) if v >= 0 else bytes([_NEG_INT]) + varint(-v - 1)
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{what}: {v} is not a finite number")
        out += bytes([_FLOAT]) + _F64.pack(v)
    elif isinstance(v, str):
        out += bytes([_STR]) + str_field(v)
    elif isinstance(v, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"{what} nests deeper than {MAX_DEPTH} levels")
        out += bytes([_LIST]) + varint(len(v))
        for item in v:
            _pack_value(item, out, what, depth + 1)
    elif isinstance(v, dict):
        out.append(_DICT)
        _pack_entries(v, out, what, depth + 1)
    else:
        raise ValueError(f"{what}: cannot store a {type(v).__name__} ({v!r}); "
                         "use None, bool, int, float, str, list or dict")


def read_dict(r: Reader, what: str) -> dict[str, Any]:
    """The packed dict at the reader's position (see :func:`pack_dict`)."""
    return _read_entries(r, what, 1)


def _read_key(r: Reader, what: str) -> str:
    code = r.varint()
    if code == 0:
        return r.string(r.remaining(), f"{what} key")
    if code > len(KNOWN_KEYS):
        raise ArchiveError(f"corrupted: {what} has unknown key code {code}")
    return KNOWN_KEYS[code - 1]


def _read_entries(r: Reader, what: str, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise ArchiveError(f"corrupted: {what} nests deeper than {MAX_DEPTH} levels")
    out: dict[str, Any] = {}
    for _ in range(r.count(what)):
        key = _read_key(r, what)
        if key in out:
            raise ArchiveError(f"corrupted: {what} repeats the key {key!r}")
        out[key] = _read_value(r, what, depth)
    return out


def _read_value(r: Reader, what: str, depth: int) -> Any:
    tag = r.u8()
    if tag == _INT:
        return r.varint()
    if tag == _NEG_INT:
        return -r.varint() - 1
    if tag == _STR:
        return r.string(r.remaining(), f"{what} string")
    if tag == _LIST:
        if depth >= MAX_DEPTH:
            raise ArchiveError(f"corrupted: {what} nests deeper than {MAX_DEPTH} levels")
        return [_read_value(r, what, depth + 1) for _ in range(r.count(what))]
    if tag == _DICT:
        return _read_entries(r, what, depth + 1)
    if tag in (_FALSE, _TRUE):
        return tag == _TRUE
    if tag == _NULL:
        return None
    if tag == _FLOAT:
        (value,) = _F64.unpack(r.take(_F64.size))
        if not math.isfinite(value):
            raise ArchiveError(f"corrupted: {what} holds a number that is not finite")
        return value
    raise ArchiveError(f"corrupted: {what} has unknown value tag {tag}")
