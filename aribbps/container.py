"""The ``.arib`` container: header, image records and lane streams, as bytes.

This module knows bytes and plain Python values only: no tensors, no codec.
The byte layout is specified in ``docs/format.md``. Version 4, which this
module writes, in short (integers little-endian, ``varint`` = LEB128)::

    +----------+--------------------------------------------------------+
    | prologue | "ARIB", u16 version, varint header size H              |
    +----------+--------------------------------------------------------+
    | header   | model id (first 8 bytes of the weights' sha256),       |
    | H bytes  | u8 flags (coding mode, device, kernels, metadata codec)|
    |          | u8 features (probability corrections, CPU convolutions)|
    |          | varint images N, varint lanes L, varint metadata size, |
    |          | L x varint stream length, metadata (M bytes)           |
    +----------+--------------------------------------------------------+
    | streams  | lane 0 | lane 1 | ... | lane L-1                       |
    +----------+--------------------------------------------------------+
    | u32 CRC32 of every byte before it                                 |
    +-------------------------------------------------------------------+

Version 3 (still read) was version 4 without the features byte. Version 2
(also read) stored an 8-byte pixel checksum per image, the
metadata codec in its own byte, the coding mode, device and kernels in three
metadata bytes, and the codec's ``extra`` dicts as JSON. Version 3 checks the
decoded pixels with lane seals instead (:mod:`aribbps.lane_seal`: 64 bits per
lane that cost no bytes), packs those codes into the flags byte, stores
``extra`` in a compact binary form (:mod:`aribbps.packed`), common model
names and formats as one-byte codes and a name's usual extension not at all
(``a.png`` with format PNG is stored as ``a``). Version 1 (also read) had
fixed-size fields and a CRC per part.

The metadata (names, formats, sizes, ``extra`` dicts) is a compact binary
table, zlib-compressed when that is smaller. :func:`decode_archive`
treats its input as hostile: every length is checked against the bytes that
are left before anything is sliced or allocated, decompression is bounded,
all checksums are verified, and every failure is an :class:`ArchiveError`
whose message says what is wrong.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import StrPath, atomic_write_bytes
from .coder import PROB_CODES
from .errors import ArchiveError, ModelMismatchError
from .packed import Reader as _Reader
from .packed import pack_dict, read_dict, str_field as _str_field, varint as _varint

MAGIC = b"ARIB"
#: The version this module writes.
FORMAT_VERSION = 4
#: The versions this module reads.
READABLE_VERSIONS: tuple[int, ...] = (1, 2, 3, 4)

#: Enumerations stored as one byte: the code is the index in the tuple.
CODING_MODES: tuple[str, ...] = ("context", "single", "dataset")
DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda")
KERNEL_PATHS: tuple[str, ...] = ("torch", "triton")
IMAGE_MODES: tuple[str, ...] = ("L", "LA", "RGB", "RGBA")
#: Version 3 stores these strings as a one-byte code (index + 1; 0 = the
#: string follows). Append only: a code, once written, keeps its meaning.
#: Every config in :data:`aribbps.config.CONFIGS` gets its code when it is
#: added (the full name costs a one-image file 10-15 bytes).
MODEL_NAMES: tuple[str, ...] = ("tiny", "small", "medium", "deep-ins", "cifar10", "imagenet32", "imagenet64",
                                "imagenet64_small", "tiny-context", "small-context", "medium-split",
                                "medium-split2", "medium-split3", "medium-split3-s2",
                                "medium-split4-s2", "medium-split3-s234")
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM", "GIF", "TGA", "JPEG2000")
#: The file-name extension a version-3 name leaves implied, per format.
FORMAT_EXTENSIONS: dict[str, str] = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp",
                                     "PPM": "ppm", "GIF": "gif", "TGA": "tga", "JPEG2000": "jp2"}

HASH_SIZE = 32
#: Version 2 identifies the weights by the first bytes of their sha256: an
#: accidental match between two models is a 2^-64 event.
MODEL_ID_SIZE = 8
CHECKSUM_SIZE = 8

# Sanity limits: a reader refuses anything above them, a writer never writes it.
MAX_LANES = 1 << 16
MAX_IMAGES = 1 << 24
MAX_SIDE = 1 << 20
MAX_PIXELS = 1 << 31
MAX_NAME_BYTES = 1024
MAX_SHORT_STR_BYTES = 255
_META_LIMIT_BASE = 1 << 20
_META_LIMIT_PER_IMAGE = 1 << 10
_META_LIMIT_MAX = 1 << 28

_START = struct.Struct("<4sH")  # magic, version: the same in every version
_CRC = struct.Struct("<I")
_META_STORED, _META_ZLIB = 0, 1
#: Version 3's flags byte: bits 0-1 coding mode, 2 device kind, 3 kernel path,
#: 4 metadata codec, 5 name from the file's (:attr:`Archive.name_from_file`),
#: 6 probability code (:attr:`Archive.prob_code`), 7 temperature symbols in the
#: lanes (:attr:`Archive.temperatures`). The byte is full: version 4 adds a
#: features byte after it, bit 0 :attr:`Archive.corrections`, bit 1
#: :attr:`Archive.native_conv`, bit 2 records with :data:`GREY_KEY`; a reader
#: refuses a file with a features bit it does not know.
_V3_NAME_FROM_FILE = 1 << 5
_V3_PROB_CODE_SHIFT = 6
_V3_TEMPERATURES = 1 << 7
_V4_CORRECTIONS = 1 << 0
_V4_NATIVE_CONV = 1 << 1
_V4_GREY = 1 << 2
_V4_KNOWN_FEATURES = _V4_CORRECTIONS | _V4_NATIVE_CONV | _V4_GREY
#: Image-record ``extra`` key, value True: the RGB(A) image's three colour channels are
#: equal everywhere and were coded as one (:func:`aribbps.imageio.split_grey`). Files
#: holding such a record set features bit 2, so that a reader from before refuses them.
GREY_KEY = "grey"
# Flag bit 6 is the coder's probability code (aribbps.coder.PROB_CODES, index 0 or 1);
# version 1-2 files and version-3 files without the bit are "linear".
#: What a name taken from the file's own name is called when there is none.
UNNAMED_STEM = "image"
#: Smallest version-2/3 file: prologue with a 1-byte header size, model id,
#: four 1-byte fields (flags and counts) and the CRC.
_V2_MIN_SIZE = _START.size + 1 + MODEL_ID_SIZE + 4 + _CRC.size
# Version 1 only.
_V1_PROLOGUE = struct.Struct("<4sHHII")  # magic, version, flags, header size, header crc
_V1_HEADER_FIXED = struct.Struct("<32sIIIB")  # hash, images, lanes, meta size, meta codec
_V1_LANE_ENTRY = struct.Struct("<QI")  # stream length, stream crc32
_V1_KNOWN_FLAGS = 0  # version 1 defines no flag


@dataclass
class ImageRecord:
    """What the container stores about one image (besides its coded bits).

    Attributes:
        name: original file name, no directory part.
        fmt: original file format as Pillow names it ("PNG", "JPEG", ...).
        mode: "L", "LA", "RGB" or "RGBA".
        width, height: original size in pixels (before any padding).
        checksum: versions 1-2: the 8-byte :func:`aribbps.imageio.pixel_checksum`
            of the pixels. None in version 3, where the lane seals check the
            decoded pixels instead (:mod:`aribbps.lane_seal`).
        extra: codec-specific values (e.g. ``qp``): None, bool, int, float,
            str, lists and dicts of them (:mod:`aribbps.packed`).
    """

    name: str
    fmt: str
    mode: str
    width: int
    height: int
    checksum: bytes | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Archive:
    """A whole ``.arib`` file, decoded.

    Attributes:
        model_name: name of the model config the encoder used.
        model_hash: sha256 of the model weights, 32 raw bytes, or its first
            :data:`MODEL_ID_SIZE` bytes (all that version 2 stores, so what a
            read version-2 file holds). The writer stores the first 8.
        mode: coding mode, one of :data:`CODING_MODES`.
        lanes: number of lanes (= ``len(lane_streams)``).
        tile_size: tile side used by the encoder, 0 for no tiling.
        device_kind: "cpu" or "cuda", where the encoder ran the networks.
        kernel_path: "torch" or "triton", which kernels computed them.
        images: one record per image, in the codec's order.
        lane_streams: the coder's output, one byte string per lane.
        extra: codec-specific values for the whole file (as for a record).
        sealed_lanes: the lane streams end in lane seals (version 3, always
            written so); False for a version 1-2 file, whose streams end empty
            and whose records carry pixel checksums.
        name_from_file: the file holds one image and not its name: a reader
            names it after the ``.arib`` file (:func:`name_from_file`), as
            ``compress img.png`` writes ``img.arib``. Saves the name's bytes.
        prob_code: what the lane streams' probability bytes mean, one of
            :data:`PROB_CODES` (the codec writes "logit").
        temperatures: the lanes hold a temperature symbol per item and plane
            (:mod:`aribbps.temperature`; the codec writes them). False for
            every file written before them.
        corrections: the coder's probabilities were corrected by the bits
            coded before them (:mod:`aribbps.prob_correction`; the codec
            writes them). False for every file before version 4.
        native_conv: a CPU file whose networks ran without oneDNN, the
            convolutions in torch's own code with MKL in its reproducible
            mode (:func:`kernels.dispatch.coding_numerics`,
            :mod:`aribbps.cpu_isa`; the codec writes CPU files so). False
            for every file before, and for CUDA files.
    """

    model_name: str
    model_hash: bytes
    mode: str
    lanes: int
    tile_size: int
    device_kind: str
    kernel_path: str
    images: list[ImageRecord]
    lane_streams: list[bytes]
    extra: dict[str, Any] = field(default_factory=dict)
    sealed_lanes: bool = True
    name_from_file: bool = False
    prob_code: str = "linear"
    temperatures: bool = False
    corrections: bool = False
    native_conv: bool = False


def name_from_file(file_name: str | None, fmt: str) -> str | None:
    """The image name a one-image file without a stored name gives: the file's
    stem (:data:`UNNAMED_STEM` without a file name) plus the format's usual
    extension; None for a format without one."""
    if fmt not in FORMAT_EXTENSIONS:
        return None
    stem = Path(file_name).stem if file_name else ""
    if not stem or _name_problem(f"{stem}.{FORMAT_EXTENSIONS[fmt]}"):
        stem = UNNAMED_STEM
    return f"{stem}.{FORMAT_EXTENSIONS[fmt]}"


# --------------------------------------------------------------------------
# validation shared by reader and writer

def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an output file name, or None if it can."""
    if not name:
        return "is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (rename the file to a UTF-8 name)"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        return "is not a plain file name (it contains a path separator or is . or ..)"
    return None


def _meta_limit(n_images: int) -> int:
    """Largest metadata (uncompressed) accepted for ``n_images`` images."""
    return min(_META_LIMIT_MAX, _META_LIMIT_BASE + _META_LIMIT_PER_IMAGE * n_images)


# --------------------------------------------------------------------------
# writing

def _code(value: str, table: tuple[str, ...], what: str) -> int:
    if value not in table:
        raise ValueError(f"{what} must be one of {list(table)}, got {value!r}")
    return table.index(value)


def _check_short_str(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > MAX_SHORT_STR_BYTES:
        raise ValueError(f"{what} must be a non-empty str of at most "
                         f"{MAX_SHORT_STR_BYTES} bytes, got {value!r}")


def _check_record(i: int, r: ImageRecord) -> None:
    problem = _name_problem(r.name) if isinstance(r.name, str) else "is not a str"
    if problem:
        raise ValueError(f"image {i}: name {r.name!r} {problem}")
    _check_short_str(r.fmt, f"image {i}: fmt")
    for what, v in (("width", r.width), ("height", r.height)):
        if not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
            raise ValueError(f"image {i}: {what} must be an int in 1..{MAX_SIDE}, got {v!r}")
    if r.width * r.height > MAX_PIXELS:
        raise ValueError(f"image {i}: {r.width}x{r.height} has more than {MAX_PIXELS} pixels")
    if r.checksum is not None:
        raise ValueError(f"image {i}: version {FORMAT_VERSION} stores no per-image checksum "
                         f"(the lane seals check the pixels); got {r.checksum!r}")
    _check_grey(r, ValueError, f"image {i}")


def _check_grey(r: ImageRecord, error: type[Exception], what: str) -> None:
    """:data:`GREY_KEY` is absent, or True on an RGB or RGBA image."""
    if not isinstance(r.extra, dict):
        return  # refused where the dict is packed
    grey = r.extra.get(GREY_KEY)
    if GREY_KEY in r.extra and (grey is not True or r.mode not in ("RGB", "RGBA")):
        raise error(f"{what}: {GREY_KEY!r} is {grey!r} on a {r.mode} image (True on RGB or RGBA only)")


def _coded_str(value: str, table: tuple[str, ...]) -> bytes:
    """A one-byte code (index + 1) for a string of ``table``, else 0 and the string."""
    return bytes([table.index(value) + 1]) if value in table else b"\x00" + _str_field(value)


def _name_field(r: ImageRecord) -> bytes:
    """varint (byte length << 1 | implied extension), then the name, less its
    extension where that is the format's usual one (``a.png`` with PNG: ``a``)."""
    suffix = "." + FORMAT_EXTENSIONS[r.fmt] if r.fmt in FORMAT_EXTENSIONS else ""
    implied = bool(suffix) and r.name.endswith(suffix) and len(r.name) > len(suffix)
    raw = (r.name[:-len(suffix)] if implied else r.name).encode("utf-8")
    return _varint(len(raw) << 1 | implied) + raw


def _encode_meta(a: Archive) -> bytes:
    """The version-3 metadata table, uncompressed (docs/format.md, "Metadata")."""
    parts = [
        _varint(a.tile_size),
        _coded_str(a.model_name, MODEL_NAMES),
        pack_dict(a.extra, "archive extra"),
    ]
    # Column by column: like values sit together, which zlib rewards.
    if not a.name_from_file:
        parts += [_name_field(r) for r in a.images]
    parts += [_coded_str(r.fmt, IMAGE_FORMATS) for r in a.images]
    parts.append(bytes(_code(r.mode, IMAGE_MODES, f"image {i}: mode")
                       for i, r in enumerate(a.images)))
    parts += [_varint(r.width) for r in a.images]
    parts += [_varint(r.height) for r in a.images]
    parts += [pack_dict(r.extra, f"image {i}: extra") for i, r in enumerate(a.images)]
    return b"".join(parts)


def _flags(a: Archive, meta_codec: int) -> int:
    """The version-3 flags byte: coding mode, device kind, kernel path, metadata codec, name, probability
    code, temperatures."""
    return (_code(a.mode, CODING_MODES, "mode") | _code(a.device_kind, DEVICE_KINDS, "device_kind") << 2
            | _code(a.kernel_path, KERNEL_PATHS, "kernel_path") << 3 | meta_codec << 4
            | (_V3_NAME_FROM_FILE if a.name_from_file else 0)
            | _code(a.prob_code, PROB_CODES, "prob_code") << _V3_PROB_CODE_SHIFT
            | (_V3_TEMPERATURES if a.temperatures else 0))


def _has_grey(images: list[ImageRecord]) -> bool:
    return any(GREY_KEY in r.extra for r in images)


def _features(a: Archive) -> int:
    """The version-4 features byte: probability corrections, CPU convolutions without oneDNN,
    grey RGB images."""
    return ((_V4_CORRECTIONS if a.corrections else 0) | (_V4_NATIVE_CONV if a.native_conv else 0)
            | (_V4_GREY if _has_grey(a.images) else 0))


def _check_archive(a: Archive) -> None:
    _check_short_str(a.model_name, "model_name")
    if not isinstance(a.model_hash, (bytes, bytearray)) or len(a.model_hash) not in (HASH_SIZE, MODEL_ID_SIZE):
        raise ValueError(f"model_hash must be {HASH_SIZE} raw bytes (sha256) or their first "
                         f"{MODEL_ID_SIZE}, got {a.model_hash!r}")
    if not isinstance(a.tile_size, int) or not 0 <= a.tile_size <= MAX_SIDE:
        raise ValueError(f"tile_size must be an int in 0..{MAX_SIDE}, got {a.tile_size!r}")
    if not isinstance(a.lanes, int) or not 1 <= a.lanes <= MAX_LANES:
        raise ValueError(f"lanes must be an int in 1..{MAX_LANES}, got {a.lanes!r}")
    for flag in ("temperatures", "corrections", "native_conv", "name_from_file"):
        if not isinstance(getattr(a, flag), bool):
            raise ValueError(f"{flag} must be a bool, got {getattr(a, flag)!r}")
    if a.native_conv and a.device_kind != "cpu":
        raise ValueError("native_conv describes CPU files only")
    if a.sealed_lanes is not True:
        raise ValueError(f"version {FORMAT_VERSION} holds sealed lane streams only (aribbps.lane_seal); "
                         "this archive's streams are unsealed")
    if len(a.lane_streams) != a.lanes:
        raise ValueError(f"lanes is {a.lanes} but there are {len(a.lane_streams)} lane streams")
    if len(a.images) > MAX_IMAGES:
        raise ValueError(f"at most {MAX_IMAGES} images per archive, got {len(a.images)}")
    for i, r in enumerate(a.images):
        _check_record(i, r)
    if a.name_from_file and (len(a.images) != 1 or a.images[0].fmt not in FORMAT_EXTENSIONS):
        raise ValueError("name_from_file needs exactly one image, of a format with a usual extension "
                         f"({', '.join(FORMAT_EXTENSIONS)})")


def _packed_meta(a: Archive) -> tuple[int, bytes]:
    """(metadata codec, metadata as stored): zlib where that is smaller."""
    meta = _encode_meta(a)
    if len(meta) > _meta_limit(len(a.images)):
        raise ValueError(f"metadata is {len(meta)} bytes, more than the "
                         f"{_meta_limit(len(a.images))} a reader accepts; shrink the extra dicts")
    packed = zlib.compress(meta, 9)
    return (_META_ZLIB, packed) if len(packed) < len(meta) else (_META_STORED, meta)


def _encode_head(a: Archive, streams: list[bytes]) -> bytes:
    """Prologue + header: everything in front of the lane streams."""
    _check_archive(a)
    codec, meta_bytes = _packed_meta(a)
    header = b"".join([
        bytes(a.model_hash[:MODEL_ID_SIZE]), bytes([_flags(a, codec), _features(a)]),
        _varint(len(a.images)), _varint(a.lanes), _varint(len(meta_bytes)),
        *(_varint(len(s)) for s in streams),
        meta_bytes,
    ])
    return _START.pack(MAGIC, FORMAT_VERSION) + _varint(len(header)) + header


def _streams(a: Archive) -> list[bytes]:
    out = []
    for i, s in enumerate(a.lane_streams):
        if not isinstance(s, (bytes, bytearray, memoryview)):
            raise ValueError(f"lane stream {i} must be bytes, got {type(s).__name__}")
        out.append(bytes(s))
    return out


def encode_archive(a: Archive) -> bytes:
    """Serialise ``a``. Raises ValueError (quoting the value) if a field is invalid."""
    streams = _streams(a)
    body = _encode_head(a, streams) + b"".join(streams)
    return body + _CRC.pack(zlib.crc32(body))


def fixed_overhead_bytes(a: Archive) -> int:
    """Size of ``a``'s container minus its lane streams: what the format costs."""
    return len(_encode_head(a, _streams(a))) + _CRC.size


def write_archive(path: StrPath, a: Archive) -> Path:
    """Encode ``a`` and write it atomically to ``path``."""
    return atomic_write_bytes(path, encode_archive(a))


# --------------------------------------------------------------------------
# reading

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _read_json(r: _Reader, what: str, max_bytes: int) -> dict[str, Any]:
    text = r.string(max_bytes, what)
    if not text:
        return {}
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:
        raise ArchiveError(f"corrupted: {what} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ArchiveError(f"corrupted: {what} is not a JSON object")
    return value


def _read_code(r: _Reader, table: tuple[str, ...], what: str) -> str:
    code = r.u8()
    if code >= len(table):
        raise ArchiveError(f"corrupted: unknown {what} code {code} (known: {list(table)})")
    return table[code]


def _inflate(blob: memoryview, limit: int) -> bytes:
    """zlib-decompress ``blob`` to at most ``limit`` bytes (no zip bombs)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(blob, limit + 1)
    except zlib.error as e:
        raise ArchiveError(f"corrupted: metadata does not decompress ({e})") from None
    if len(out) > limit:
        raise ArchiveError(f"corrupted: metadata decompresses to more than {limit} bytes")
    if not d.eof or d.unused_data:
        raise ArchiveError("corrupted: metadata stream is incomplete or has trailing bytes")
    return out


def _read_coded_str(r: _Reader, table: tuple[str, ...], what: str) -> str:
    """Version 3: a one-byte code into ``table``, or 0 and the string."""
    code = r.u8()
    if code == 0:
        value = r.string(MAX_SHORT_STR_BYTES, what)
        if not value:
            raise ArchiveError(f"corrupted: empty {what}")
        return value
    if code > len(table):
        raise ArchiveError(f"corrupted: unknown {what} code {code}")
    return table[code - 1]


def _read_name_part(r: _Reader, i: int) -> tuple[str, bool]:
    """Version 3: (stored name, whether the format's extension is implied)."""
    head = r.varint()
    if head >> 1 > MAX_NAME_BYTES:
        raise ArchiveError(f"corrupted: image {i} name is {head >> 1} bytes long (at most {MAX_NAME_BYTES})")
    return r.utf8(head >> 1, f"image {i} name"), bool(head & 1)


def _full_name(stored: str, implied: bool, fmt: str, i: int) -> str:
    if not implied:
        return stored
    if fmt not in FORMAT_EXTENSIONS:
        raise ArchiveError(f"corrupted: image {i} name implies an extension, but format {fmt!r} has none")
    return f"{stored}.{FORMAT_EXTENSIONS[fmt]}"


def _flag_fields(flags: int) -> dict[str, Any]:
    """Version 3: coding mode, device kind, kernel path, probability code and temperatures from the flags
    byte (every bit is defined: an older reader refuses bit 7 as unknown)."""
    if flags & 3 >= len(CODING_MODES):
        raise ArchiveError(f"corrupted: unknown coding mode code {flags & 3} (known: {list(CODING_MODES)})")
    return {"mode": CODING_MODES[flags & 3], "device_kind": DEVICE_KINDS[flags >> 2 & 1],
            "kernel_path": KERNEL_PATHS[flags >> 3 & 1], "prob_code": PROB_CODES[flags >> _V3_PROB_CODE_SHIFT & 1],
            "temperatures": bool(flags & _V3_TEMPERATURES)}


def _decode_meta(meta: bytes, n_images: int, checksums: memoryview | None, flags: int | None,
                 file_name: str | None = None) -> dict[str, Any]:
    """The metadata table: version 3's when ``flags`` (its header's flags byte) is given, else version 1/2's."""
    r = _Reader(memoryview(meta), "metadata")
    tile_size = r.varint()
    if tile_size > MAX_SIDE:
        raise ArchiveError(f"corrupted: tile size {tile_size} is above {MAX_SIDE}")
    fields: dict[str, Any] = {"tile_size": tile_size}
    if flags is None:
        fields["mode"] = _read_code(r, CODING_MODES, "coding mode")
        fields["device_kind"] = _read_code(r, DEVICE_KINDS, "device kind")
        fields["kernel_path"] = _read_code(r, KERNEL_PATHS, "kernel path")
        fields["model_name"] = r.string(MAX_SHORT_STR_BYTES, "model name")
        fields["extra"] = _read_json(r, "archive extra", len(meta))
        names = [r.string(MAX_NAME_BYTES, f"image {i} name") for i in range(n_images)]
        fmts = [r.string(MAX_SHORT_STR_BYTES, f"image {i} format") for i in range(n_images)]
    else:
        fields.update(_flag_fields(flags))
        fields["model_name"] = _read_coded_str(r, MODEL_NAMES, "model name")
        fields["extra"] = read_dict(r, "archive extra")
        named = not flags & _V3_NAME_FROM_FILE
        if not named and n_images != 1:
            raise ArchiveError(f"corrupted: {n_images} images take their name from the file's (only one can)")
        name_parts = [_read_name_part(r, i) for i in range(n_images)] if named else []
        fmts = [_read_coded_str(r, IMAGE_FORMATS, f"image {i} format") for i in range(n_images)]
        if named:
            names = [_full_name(stored, implied, fmt, i)
                     for i, ((stored, implied), fmt) in enumerate(zip(name_parts, fmts))]
        else:
            names = [name_from_file(file_name, fmts[0])]
            if names[0] is None:
                raise ArchiveError(f"corrupted: the image takes its name from the file's, but format "
                                   f"{fmts[0]!r} has no usual extension")
            fields["name_from_file"] = True
    modes = [_read_code(r, IMAGE_MODES, f"image {i} mode") for i in range(n_images)]
    widths = [r.varint() for _ in range(n_images)]
    heights = [r.varint() for _ in range(n_images)]
    if flags is None:
        extras = [_read_json(r, f"image {i} extra", len(meta)) for i in range(n_images)]
    else:
        extras = [read_dict(r, f"image {i} extra") for i in range(n_images)]
    r.finish()
    images = []
    for i in range(n_images):
        problem = _name_problem(names[i])
        if problem:
            raise ArchiveError(f"corrupted: image {i} name {names[i]!r} {problem}")
        if not fmts[i]:
            raise ArchiveError(f"corrupted: image {i} has an empty format")
        w, h = widths[i], heights[i]
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE and w * h <= MAX_PIXELS):
            raise ArchiveError(f"corrupted: image {i} has an impossible size {w}x{h}")
        checksum = None if checksums is None else bytes(checksums[i * CHECKSUM_SIZE:(i + 1) * CHECKSUM_SIZE])
        images.append(ImageRecord(names[i], fmts[i], modes[i], w, h, checksum, extras[i]))
    if not fields["model_name"]:
        raise ArchiveError("corrupted: empty model name")
    fields["images"] = images
    return fields


def _truncated(expected: int, actual: int) -> ArchiveError:
    return ArchiveError(f"truncated: header says {expected} bytes, file has {actual}")


def _check_total(total: int, size: int) -> None:
    """The file must end exactly where the header says."""
    if total > size:
        raise _truncated(total, size)
    if total < size:
        raise ArchiveError(f"corrupted: {size - total} unexpected bytes after the last "
                           f"lane stream (header says {total} bytes, file has {size})")


def _check_counts(n_images: int, n_lanes: int, meta_codec: int) -> None:
    """Bounds on the header's counts, before any table is read."""
    if not 1 <= n_lanes <= MAX_LANES:
        raise ArchiveError(f"corrupted: lane count {n_lanes} outside 1..{MAX_LANES}")
    if n_images > MAX_IMAGES:
        raise ArchiveError(f"corrupted: image count {n_images} above {MAX_IMAGES}")
    if meta_codec not in (_META_STORED, _META_ZLIB):
        raise ArchiveError(f"corrupted: unknown metadata codec {meta_codec}")


def _metadata(meta_blob: memoryview, meta_codec: int, n_images: int, checksums: memoryview | None,
              flags: int | None, file_name: str | None = None) -> dict[str, Any]:
    """The decoded metadata table: decompressed within its bound, then parsed."""
    limit = _meta_limit(n_images)
    if meta_codec == _META_ZLIB:
        meta = _inflate(meta_blob, limit)
    elif len(meta_blob) > limit:
        raise ArchiveError(f"corrupted: metadata of {len(meta_blob)} bytes is above {limit}")
    else:
        meta = bytes(meta_blob)
    return _decode_meta(meta, n_images, checksums, flags, file_name)


def _split_streams(view: memoryview, offset: int, lengths: list[int]) -> list[bytes]:
    streams = []
    for length in lengths:
        streams.append(bytes(view[offset:offset + length]))
        offset += length
    return streams


def decode_archive(data: bytes | bytearray | memoryview, file_name: str | None = None) -> Archive:
    """Parse and verify an ``.arib`` file (version 1 to 4) held in memory.

    ``file_name``: the file's name, which names the image of a file written
    with :attr:`Archive.name_from_file` (default :data:`UNNAMED_STEM`).

    Raises:
        ArchiveError: not an ``.arib`` file, an unsupported version or flag,
            truncated, corrupted (any checksum), or inconsistent. Never any
            other exception for any input bytes.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    head = bytes(view[:len(MAGIC)])
    if head != MAGIC[:len(head)] or size == 0:
        raise ArchiveError("not an .arib file (bad magic)")
    if size < _START.size:
        raise ArchiveError(f"truncated: file has {size} bytes, an .arib file has at least {_V2_MIN_SIZE}")
    _, version = _START.unpack(view[:_START.size])
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise ArchiveError(f"unsupported format version {version} "
                           f"(this aribbps reads versions {readable})")
    return _decode_v1(view) if version == 1 else _decode_varint_header(view, version, file_name)


def _decode_varint_header(view: memoryview, version: int, file_name: str | None) -> Archive:
    """Versions 2-4: the header is parsed (bounds-checked) to learn the file's
    size, then the whole-file CRC is verified before the metadata is decoded.
    Version 3 has a flags byte where version 2 has its metadata codec byte;
    version 4 a features byte after it."""
    size = len(view)
    if size < _V2_MIN_SIZE:
        raise ArchiveError(f"truncated: file has {size} bytes, an .arib file has at least {_V2_MIN_SIZE}")
    r = _Reader(view[_START.size:], "header")
    header_size = r.varint()
    header_start = _START.size + r.pos
    header_end = header_start + header_size
    if header_end + _CRC.size > size:
        raise _truncated(header_end + _CRC.size, size)
    r = _Reader(view[header_start:header_end], "header")
    model_id = bytes(r.take(MODEL_ID_SIZE))
    flags = r.u8() if version >= 3 else None
    features = r.u8() if version >= 4 else 0
    n_images, n_lanes = r.varint(), r.varint()
    meta_codec = r.u8() if flags is None else flags >> 4 & 1
    meta_size = r.varint()
    _check_counts(n_images, n_lanes, meta_codec)
    lengths = [r.varint() for _ in range(n_lanes)]
    checksums = r.take(n_images * CHECKSUM_SIZE) if flags is None else None
    meta_blob = r.take(meta_size)
    r.finish()
    _check_total(header_end + sum(lengths) + _CRC.size, size)
    (crc,) = _CRC.unpack(view[size - _CRC.size:])
    if zlib.crc32(view[:size - _CRC.size]) != crc:
        raise ArchiveError("corrupted: checksum mismatch")
    if features & ~_V4_KNOWN_FEATURES:  # after the CRC: a damaged byte is damage, not a newer writer
        raise ArchiveError(f"this file uses coding features this aribbps does not know (features byte "
                           f"{features:#04x}): a newer aribbps wrote it")
    fields = _metadata(meta_blob, meta_codec, n_images, checksums, flags, file_name)
    if features & _V4_NATIVE_CONV and fields["device_kind"] != "cpu":
        raise ArchiveError("corrupted: features bit 1 (CPU convolutions) on a file coded on "
                           f"{fields['device_kind']}")
    for i, record in enumerate(fields["images"]):
        _check_grey(record, ArchiveError, f"corrupted: image {i}")
    if bool(features & _V4_GREY) != _has_grey(fields["images"]):
        raise ArchiveError(f"corrupted: features bit 2 (grey RGB images) is {int(bool(features & _V4_GREY))} "
                           f"but {'some' if _has_grey(fields['images']) else 'no'} image record says grey")
    return Archive(model_hash=model_id, lanes=n_lanes, sealed_lanes=flags is not None,
                   lane_streams=_split_streams(view, header_end, lengths),
                   corrections=bool(features & _V4_CORRECTIONS), native_conv=bool(features & _V4_NATIVE_CONV),
                   **fields)


def _decode_v1(view: memoryview) -> Archive:
    """Version 1: a header CRC in the prologue, fixed-size counts, a CRC per lane."""
    size = len(view)
    if size < _V1_PROLOGUE.size:
        raise ArchiveError(f"truncated: file has {size} bytes, "
                           f"a version 1 .arib file has at least {_V1_PROLOGUE.size}")
    _, version, flags, header_size, header_crc = _V1_PROLOGUE.unpack(view[:_V1_PROLOGUE.size])
    header_end = _V1_PROLOGUE.size + header_size
    if header_end > size:
        raise _truncated(header_end, size)
    header = view[_V1_PROLOGUE.size:header_end]
    if zlib.crc32(header, zlib.crc32(view[:12])) != header_crc:
        raise ArchiveError("corrupted: header checksum mismatch")
    if flags & ~_V1_KNOWN_FLAGS:
        raise ArchiveError(f"unsupported flags 0x{flags:04x}: the file uses features "
                           f"this aribbps does not know (format version {version})")

    r = _Reader(header, "header")
    model_hash, n_images, n_lanes, meta_size, meta_codec = _V1_HEADER_FIXED.unpack(
        r.take(_V1_HEADER_FIXED.size))
    _check_counts(n_images, n_lanes, meta_codec)
    expected = (_V1_HEADER_FIXED.size + n_lanes * _V1_LANE_ENTRY.size
                + n_images * CHECKSUM_SIZE + meta_size)
    if expected != header_size:
        raise ArchiveError(f"corrupted: header is {header_size} bytes but its counts "
                           f"({n_images} images, {n_lanes} lanes) need {expected}")
    lane_table = [_V1_LANE_ENTRY.unpack(r.take(_V1_LANE_ENTRY.size)) for _ in range(n_lanes)]
    _check_total(header_end + sum(length for length, _ in lane_table), size)
    checksums = r.take(n_images * CHECKSUM_SIZE)
    meta_blob = r.take(meta_size)
    r.finish()
    fields = _metadata(meta_blob, meta_codec, n_images, checksums, None)
    streams = _split_streams(view, header_end, [length for length, _ in lane_table])
    for i, (stream, (_, crc)) in enumerate(zip(streams, lane_table)):
        if zlib.crc32(stream) != crc:
            raise ArchiveError(f"corrupted: lane {i} checksum mismatch")
    return Archive(model_hash=bytes(model_hash), lanes=n_lanes, lane_streams=streams, sealed_lanes=False, **fields)


def read_archive(path: StrPath) -> Archive:
    """Read and verify the ``.arib`` file at ``path``; errors name the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ArchiveError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return decode_archive(data, Path(path).name)
    except ArchiveError as e:
        raise ArchiveError(f"{path}: {e}") from None


def short_hash(model_hash: bytes) -> str:
    """First 12 hex digits of a weights hash, as shown in messages."""
    return bytes(model_hash).hex()[:12]


def check_model(a: Archive, model_name: str, model_hash: bytes) -> None:
    """Refuse to decode ``a`` with a model other than the one that encoded it.

    ``model_hash`` is the loaded weights' full sha256; the archive may hold
    only its first :data:`MODEL_ID_SIZE` bytes (version 2).

    Raises:
        ModelMismatchError: naming both models (config name + short hash).
    """
    stored = bytes(a.model_hash)
    if a.model_name == model_name and len(stored) >= MODEL_ID_SIZE and bytes(model_hash)[:len(stored)] == stored:
        return
    raise ModelMismatchError(
        f"this archive was encoded with model '{a.model_name}' (weights "
        f"{short_hash(a.model_hash)}), but the loaded model is '{model_name}' "
        f"(weights {short_hash(model_hash)}); pass --model with the weights "
        "used for encoding"
    )
