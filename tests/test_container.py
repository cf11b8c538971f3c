"""Tests of the .arib container: round trips, hostile input, the documented example."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aribbps import container as C
from aribbps.container import (
    Archive,
    ImageRecord,
    check_model,
    decode_archive,
    encode_archive,
    fixed_overhead_bytes,
    read_archive,
    write_archive,
)
from aribbps.errors import ArchiveError, AribError, ModelMismatchError
from aribbps.imageio import pixel_checksum
from aribbps.packed import pack_dict

DOCS = Path(__file__).resolve().parent.parent / "docs" / "format.md"
HASH_A = hashlib.sha256(b"weights A").digest()
HASH_B = hashlib.sha256(b"weights B").digest()


def small_archive(n_images: int = 2, lanes: int = 2) -> Archive:
    images = [
        ImageRecord(f"img_{i:03d}.png", "PNG", C.IMAGE_MODES[i % 4], 5 + i, 3 + i, None,
                    {"qp": 3 + i % 8} if i % 2 else {})
        for i in range(n_images)
    ]
    streams = [bytes([17 * k + j for j in range(3 + k)]) for k in range(lanes)]
    return Archive("tiny", HASH_A[:C.MODEL_ID_SIZE], "single", lanes, 0, "cpu", "torch", images, streams,
                   {"sig_num": 4})


EXAMPLE_PIXELS = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)


def example_archive() -> Archive:
    """The archive whose hex dump docs/format.md shows."""
    return Archive(
        "tiny", hashlib.sha256(b"example weights").digest(), "single", 1, 0, "cpu", "torch",
        [ImageRecord("a.png", "PNG", "RGB", 2, 2, None, {"qp": 3})],
        [bytes.fromhex("deadbeef")], {},
    )


def old_example_archive() -> Archive:
    """The same example as versions 1 and 2 stored it: with a pixel checksum, lanes unsealed."""
    a = example_archive()
    a.images[0].checksum = pixel_checksum(EXAMPLE_PIXELS)
    a.sealed_lanes = False
    return a


def forge(*, version: int = 4, flags: int = 0, features: int = 0, n_images: int = 0, n_lanes: int = 1,
          meta: bytes = b"", meta_codec: int = 0, meta_size: int | None = None,
          lanes: list[tuple[int, int]] | None = None, checksums: bytes = b"",
          header_size: int | None = None, tail: bytes = b"") -> bytes:
    """A file with any header content and *valid* CRCs, to reach deep checks.

    ``lanes``: (stream length, stream CRC) per lane; versions 2-3 have no
    lane CRC. ``tail``: the stream bytes. ``flags``: version 1's u16, or
    version 3-4's flags byte (``meta_codec`` is then its bit 4). ``features``:
    version 4's features byte.
    ``checksums``: versions 1-2 only.
    """
    lanes = [(0, 0)] * n_lanes if lanes is None else lanes
    msize = len(meta) if meta_size is None else meta_size
    if version == 1:
        header = (struct.pack("<32sIIIB", HASH_A, n_images, n_lanes, msize, meta_codec)
                  + b"".join(struct.pack("<QI", n, c) for n, c in lanes) + checksums + meta)
        size = len(header) if header_size is None else header_size
        start = struct.pack("<4sHHI", b"ARIB", version, flags, size)
        return start + struct.pack("<I", zlib.crc32(header, zlib.crc32(start))) + header + tail
    if version == 2:
        header = (HASH_A[:C.MODEL_ID_SIZE] + C._varint(n_images) + C._varint(n_lanes) + bytes([meta_codec])
                  + C._varint(msize) + b"".join(C._varint(n) for n, _ in lanes) + checksums + meta)
    else:
        header = (HASH_A[:C.MODEL_ID_SIZE] + bytes([flags | meta_codec << 4])
                  + (bytes([features]) if version >= 4 else b"") + C._varint(n_images)
                  + C._varint(n_lanes) + C._varint(msize) + b"".join(C._varint(n) for n, _ in lanes) + meta)
    size = len(header) if header_size is None else header_size
    body = struct.pack("<4sH", b"ARIB", version) + C._varint(size) + header + tail
    return body + struct.pack("<I", zlib.crc32(body))


def meta_bytes(names: list[str], *, extra: bytes = b"\x00", widths: bytes | None = None,
               image_extra: bytes | None = None, mode_codes: bytes | None = None) -> bytes:
    """Version-2 metadata table for ``names`` (RGB, 1x1 images), pieces overridable."""
    n = len(names)
    out = b"\x00" + b"\x01\x00\x00" + b"\x04tiny" + extra
    out += b"".join(bytes([len(s.encode())]) + s.encode() for s in names)
    out += b"\x03PNG" * n
    out += (b"\x02" * n) if mode_codes is None else mode_codes
    out += (b"\x01" * n) if widths is None else widths
    out += b"\x01" * n
    out += (b"\x00" * n) if image_extra is None else image_extra
    return out


def meta_v3(names: list[str], *, extra: bytes = b"\x00", fmts: bytes | None = None,
            image_extra: bytes | None = None, model: bytes = b"\x01") -> bytes:
    """Version-3 metadata table for ``names`` (stored whole, RGB, 1x1), pieces overridable."""
    n = len(names)
    out = b"\x00" + model + extra
    out += b"".join(C._varint(len(s.encode()) << 1) + s.encode() for s in names)
    out += (b"\x01" * n) if fmts is None else fmts
    out += b"\x02" * n + b"\x01" * n + b"\x01" * n
    out += (b"\x00" * n) if image_extra is None else image_extra
    return out


def expect_archive_error(data: bytes, match: str | None = None) -> ArchiveError:
    with pytest.raises(ArchiveError, match=match) as info:
        decode_archive(data)
    return info.value


# --------------------------------------------------------------------------
# round trips

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"),
                min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), st.text(max_size=6),
                         st.floats(allow_nan=False, allow_infinity=False))
extras = st.dictionaries(st.text(max_size=5).filter(lambda key: key != C.GREY_KEY),  # grey: its own test
                         st.one_of(json_scalars, st.lists(json_scalars, max_size=3)), max_size=3)
records = st.builds(
    ImageRecord, names, st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "WEBP"]),
    st.sampled_from(C.IMAGE_MODES), st.integers(1, 5000), st.integers(1, 5000), st.none(), extras)


@st.composite
def archives(draw: Any) -> Archive:
    lanes = draw(st.integers(1, 4))
    return Archive(
        draw(st.sampled_from(["tiny", "small", "cifar10", "ä-model"])),
        draw(st.binary(min_size=C.MODEL_ID_SIZE, max_size=C.MODEL_ID_SIZE)),
        draw(st.sampled_from(C.CODING_MODES)), lanes, draw(st.integers(0, 4096)),
        draw(st.sampled_from(C.DEVICE_KINDS)), draw(st.sampled_from(C.KERNEL_PATHS)),
        draw(st.lists(records, max_size=6)),
        draw(st.lists(st.binary(max_size=40), min_size=lanes, max_size=lanes)),
        draw(extras),
    )


@settings(max_examples=150, deadline=None)
@given(archives())
def test_round_trip(a: Archive) -> None:
    data = encode_archive(a)
    assert decode_archive(data) == a
    assert encode_archive(decode_archive(data)) == data
    assert fixed_overhead_bytes(a) == len(data) - sum(len(s) for s in a.lane_streams)


def test_round_trip_many_images_uses_zlib_and_stays_small() -> None:
    a = small_archive(n_images=300, lanes=3)
    data = encode_archive(a)
    assert decode_archive(data) == a
    flags = data[6 + 2 + C.MODEL_ID_SIZE]  # after a 2-byte header size and the model id
    assert flags >> 4 == 1  # zlib metadata
    # A few bytes per image for names, sizes and extras (no checksum: the lane seals check the pixels).
    per_image = (fixed_overhead_bytes(a) - fixed_overhead_bytes(small_archive(0, 3))) / 300
    assert per_image < 4, per_image


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode_archive(small_archive())
    assert decode_archive(bytearray(data)) == decode_archive(memoryview(data))


# --------------------------------------------------------------------------
# damaged files

def test_every_byte_and_bit_flip_is_detected() -> None:
    a = small_archive()
    data = encode_archive(a)
    for i in range(len(data)):
        for mask in (0xFF, 0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= mask
            try:
                got = decode_archive(bytes(bad))
            except ArchiveError:
                continue
            assert got == a, f"byte {i} mask {mask:#x} decoded to a different archive"


def test_every_truncation_is_an_archive_error() -> None:
    data = encode_archive(small_archive())
    for n in range(len(data)):
        with pytest.raises(ArchiveError):
            decode_archive(data[:n])


def test_error_messages() -> None:
    data = encode_archive(small_archive(lanes=4))
    expect_archive_error(b"PNG\x00" + data[4:], r"not an \.arib file \(bad magic\)")
    expect_archive_error(b"", "bad magic")
    e = expect_archive_error(data[:-1], r"^truncated: header says \d+ bytes, file has \d+$")
    assert f"says {len(data)} bytes, file has {len(data) - 1}" in str(e)
    expect_archive_error(data[:40], "truncated: header says")
    expect_archive_error(data + b"\x00", "unexpected bytes after the last lane stream")
    for i in (10, len(data) - 5, len(data) - 1):  # model id, last byte of lane 3, the CRC
        bad = bytearray(data)
        bad[i] ^= 1
        expect_archive_error(bytes(bad), "^corrupted: checksum mismatch$")
    bad = bytearray(data)
    bad[4:6] = struct.pack("<H", 7)
    expect_archive_error(bytes(bad),
                         r"^unsupported format version 7 \(this aribbps reads versions 1, 2, 3, 4\)$")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_garbage(data: bytes) -> None:
    for prefix in (b"", b"ARIB", b"ARIB\x01\x00\x00\x00", b"ARIB\x02\x00", b"ARIB\x03\x00"):
        with pytest.raises(ArchiveError):
            decode_archive(prefix + data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_metadata_with_valid_crc(data: st.DataObject) -> None:
    """Behind a correct CRC (a crafted file), damaged metadata is still refused cleanly."""
    a = small_archive(n_images=3, lanes=1)
    meta = bytearray(C._encode_meta(a))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(meta) - 1))
        meta[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(meta)))
    meta = meta[:cut] + data.draw(st.binary(max_size=3))
    raw = forge(n_images=3, meta=bytes(meta))
    try:
        got = decode_archive(raw)
    except ArchiveError:
        return
    assert len(got.images) == 3


#: Header declarations far beyond the file's bytes (keyword arguments of :func:`forge`).
HUGE_DECLARATIONS: list[dict[str, Any]] = [
    {"n_images": 0xFFFFFFFF},  # more checksums than there are bytes
    {"n_images": 0xFFFFFFFF, "header_size": 0xFFFFFFFF},
    {"n_lanes": 0xFFFFFFFF, "lanes": []},
    {"meta_size": 0xFFFFFFFF},
    {"lanes": [(2**64 - 1, 0)]},
    {"n_lanes": 2, "lanes": [(2**63, 0), (2**63, 0)]},
    {"meta": b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"},  # tile size 2^63
]
HUGE_BY_VERSION: dict[int, list[dict[str, Any]]] = {
    1: [{"n_images": 1, "checksums": b"\0" * 8,
         "meta": b"\x00\x01\x00\x00\x04tiny\x00" + b"\xff\xff\xff\xff\x0f"}],  # name of 4 GiB
    3: [{"n_images": 1, "meta": b"\x00\x01\x00" + b"\xff\xff\xff\xff\x1f"},  # name of 4 GiB
        {"meta": b"\x00\x01" + b"\xff\xff\xff\xff\x0f"},  # extra of 2^32 entries
        {"meta": b"\x00\x01\x01\x01\x03" + b"\xff\xff\xff\xff\x0f"},  # list of 2^32 values
        {"meta": b"\x00\x01\x01\x00" + b"\xff\xff\xff\xff\x0f"}],  # key of 4 GiB
}
HUGE_BY_VERSION[2] = HUGE_BY_VERSION[1]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_huge_declared_sizes_do_not_allocate(version: int) -> None:
    cases = [forge(version=version, **kw) for kw in HUGE_DECLARATIONS + HUGE_BY_VERSION[version]]
    tracemalloc.start()
    try:
        for raw in cases:
            with pytest.raises(ArchiveError):
                decode_archive(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_zip_bomb_metadata_is_bounded() -> None:
    bomb = zlib.compress(b"\x00" * (40 << 20), 9)  # 40 MiB of zeros in ~40 KiB
    raw = forge(meta=bomb, meta_codec=1)
    tracemalloc.start()
    try:
        expect_archive_error(raw, "decompresses to more than")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("n, meta, match", [
    (1, meta_bytes(["../etc/passwd"]), "not a plain file name"),
    (1, meta_bytes(["a/b.png"]), "not a plain file name"),
    (1, meta_bytes([".."]), "not a plain file name"),
    (1, meta_bytes(["a.png"], mode_codes=b"\x09"), "unknown image 0 mode code 9"),
    (1, meta_bytes(["a.png"], widths=b"\x00"), "impossible size 0x1"),
    (1, meta_bytes(["a.png"], widths=b"\x80\x80\x80\x80\x01"), "impossible size"),
    (1, meta_bytes(["a.png"], widths=b"\x81\x00"), "overlong integer"),
    (1, meta_bytes(["a.png"], extra=b"\x02[]"), "not a JSON object"),
    (1, meta_bytes(["a.png"], extra=b"\x03NaN"), "not valid JSON"),
    (1, meta_bytes(["a.png"], image_extra=b"\x02{x"), "not valid JSON"),
    (1, meta_bytes(["a.png"]) + b"\x00", "unexpected bytes after metadata"),
    (1, meta_bytes(["a.png"])[:-2], "ends early"),
    (0, b"\x00\x01\x00\x00\x00" + b"\x00", "empty model name"),
    (0, b"\x00\x07\x00\x00", "unknown coding mode code 7"),
    (0, b"\x00\x00\x02\x00", "unknown device kind code 2"),
])
def test_bad_version_2_metadata_behind_valid_crc(n: int, meta: bytes, match: str) -> None:
    expect_archive_error(forge(version=2, n_images=n, checksums=b"\0" * 8 * n, meta=meta), match)


@pytest.mark.parametrize("n, meta, match", [
    (1, meta_v3(["../etc/passwd"]), "not a plain file name"),
    (1, meta_v3([".."]), "not a plain file name"),
    (1, meta_v3(["a"], fmts=b"\x00\x01x").replace(b"\x02a", b"\x03a"),
     "implies an extension, but format 'x' has none"),
    (1, meta_v3(["a"], fmts=b"\x0e"), "unknown image 0 format code 14"),
    (1, meta_v3(["a"], fmts=b"\x00\x00"), "empty image 0 format"),
    (0, meta_v3([], model=b"\x00\x00"), "empty model name"),
    (0, meta_v3([], model=b"\x40"), "unknown model name code 64"),
    (0, meta_v3([], extra=b"\x01\x0b\x00\x00"), "unknown key code 11"),
    (0, meta_v3([], extra=b"\x01\x01\x0c"), "unknown value tag 12"),
    (0, meta_v3([], extra=b"\x02\x01\x00\x00\x01\x00\x00"), "repeats the key 'qp'"),
    (0, meta_v3([], extra=b"\x01\x01\x08" + struct.pack("<d", float("inf"))), "not finite"),
    (0, meta_v3([], extra=b"\x01\x01\x02\x02\xff\xfe"), "not valid UTF-8"),
    (0, meta_v3([], extra=b"\x01\x01\x03\x05\x00"), "claims 5 entries in 1 bytes"),
    (0, meta_v3([], extra=b"\x01\x01\x08\x00\x00"), "ends early"),
    (0, meta_v3([]) + b"\x00", "unexpected bytes after metadata"),
])
def test_bad_version_3_metadata_behind_valid_crc(n: int, meta: bytes, match: str) -> None:
    expect_archive_error(forge(n_images=n, meta=meta), match)


def test_version_3_flags_are_checked() -> None:
    meta = meta_v3([])
    assert decode_archive(forge(flags=0x0D, meta=meta)).mode == "single"  # single, cuda, triton
    expect_archive_error(forge(flags=0x03, meta=meta), "unknown coding mode code 3")
    assert decode_archive(forge(flags=0x01, meta=meta)).prob_code == "linear"
    assert decode_archive(forge(flags=0x41, meta=meta)).prob_code == "logit"
    assert not decode_archive(forge(flags=0x41, meta=meta)).temperatures
    assert decode_archive(forge(flags=0xC1, meta=meta)).temperatures


def test_temperatures_round_trip_in_flag_bit_7() -> None:
    """Older files (versions 1-2, or 3 without the bit) hold no temperature symbols."""
    a = small_archive(1, 1)
    plain = encode_archive(a)
    a.temperatures = True
    data = encode_archive(a)
    assert data[15] == plain[15] | 0x80 and len(data) == len(plain)
    assert decode_archive(data) == a
    assert not decode_archive(_docs_hex_dump("<!-- example-hexdump-v2 -->")).temperatures


def test_corrections_round_trip_in_features_bit_0() -> None:
    """Version 4's features byte follows the flags; older files code without corrections."""
    a = small_archive(1, 1)
    plain = encode_archive(a)
    a.corrections = True
    data = encode_archive(a)
    assert plain[16] == 0 and data[16] == 0x01 and len(data) == len(plain)
    assert decode_archive(data) == a
    a.native_conv = True
    data = encode_archive(a)
    assert data[16] == 0x03 and decode_archive(data) == a
    for marker in ("<!-- example-hexdump-v3 -->", "<!-- example-hexdump-v2 -->"):
        assert not decode_archive(_docs_hex_dump(marker)).corrections


def test_an_unknown_features_bit_is_refused() -> None:
    meta = meta_v3([])
    assert decode_archive(forge(flags=0x01, features=0x01, meta=meta)).corrections
    both = decode_archive(forge(flags=0x01, features=0x03, meta=meta))
    assert both.corrections and both.native_conv
    expect_archive_error(forge(flags=0x05, features=0x02, meta=meta), "features bit 1 .* on a file coded on cuda")
    assert not decode_archive(forge(flags=0x01, features=0x01, meta=meta)).native_conv
    for bit in range(3, 8):
        expect_archive_error(forge(flags=0x01, features=1 << bit, meta=meta),
                             "coding features this aribbps does not know")
    assert not decode_archive(forge(version=3, flags=0x01, meta=meta)).corrections
    damaged = bytearray(encode_archive(small_archive(1, 1)))
    damaged[16] ^= 0x80  # the features byte of a real file: the CRC speaks first
    expect_archive_error(bytes(damaged), "^corrupted: checksum mismatch$")


def test_grey_records_set_features_bit_2() -> None:
    """An RGB(A) record coded as grey sets bit 2, so that a reader from before refuses the file;
    the bit and the records must agree, and only RGB and RGBA images can be grey."""
    a = small_archive(4, 1)
    plain = encode_archive(a)
    a.images[2].extra[C.GREY_KEY] = True  # RGB
    a.images[3].extra[C.GREY_KEY] = True  # RGBA
    data = encode_archive(a)
    assert plain[16] == 0 and data[16] == 0x04
    assert decode_archive(data) == a
    a.images[0].extra[C.GREY_KEY] = True  # L
    with pytest.raises(ValueError, match="'grey' is True on a L image"):
        encode_archive(a)
    grey, plain_meta = meta_v3(["a"], image_extra=pack_dict({C.GREY_KEY: True}, "test")), meta_v3(["a"])
    assert decode_archive(forge(flags=0x01, features=0x04, n_images=1, meta=grey)).images[0].extra == {"grey": True}
    expect_archive_error(forge(flags=0x01, features=0x00, n_images=1, meta=grey),
                         "features bit 2 .* is 0 but some image record says grey")
    expect_archive_error(forge(flags=0x01, features=0x04, n_images=1, meta=plain_meta),
                         "features bit 2 .* is 1 but no image record says grey")
    expect_archive_error(forge(flags=0x01, features=0x04, n_images=1,
                               meta=meta_v3(["a"], image_extra=pack_dict({C.GREY_KEY: 1}, "test"))),
                         "corrupted: image 0: 'grey' is 1 on a RGB image")
    as_l = bytearray(grey)
    assert as_l[6] == 2  # the mode code of meta_v3's one image: RGB
    as_l[6] = 0
    expect_archive_error(forge(flags=0x01, features=0x04, n_images=1, meta=bytes(as_l)),
                         "'grey' is True on a L image")


def _read_old_example(version: int, expected: Archive) -> bytes:
    """The docs' example in an older version: it reads as ``expected`` (model id only), and every
    truncation of it is an ArchiveError. Returns its bytes."""
    old = _docs_hex_dump(f"<!-- example-hexdump-v{version} -->")
    assert old[4:6] == bytes([version, 0])
    expected.model_hash = expected.model_hash[:C.MODEL_ID_SIZE]
    assert decode_archive(old) == expected
    for n in range(len(old)):
        with pytest.raises(ArchiveError):
            decode_archive(old[:n])
    return old


def test_version_3_files_are_still_read() -> None:
    """The version-3 example of docs/format.md: the version-4 example without the features byte."""
    _read_old_example(3, example_archive())


def test_the_probability_code_round_trips_in_flag_bit_6() -> None:
    """Older files (versions 1-2, or 3 without the bit) read as linear; the tables agree with the kernels'."""
    from aribbps import coder
    from kernels import entropy_tail

    assert C.PROB_CODES == entropy_tail.PROB_CODES == coder.PROB_CODES
    a = small_archive(1, 1)
    linear = encode_archive(a)
    a.prob_code = "logit"
    data = encode_archive(a)
    assert data[15] == linear[15] | 0x40 and len(data) == len(linear)
    assert decode_archive(data) == a
    assert decode_archive(_docs_hex_dump("<!-- example-hexdump-v2 -->")).prob_code == "linear"
    a.prob_code = "cubic"
    with pytest.raises(ValueError, match="prob_code must be one of"):
        encode_archive(a)


def _nameless_meta(n: int, fmts: bytes | None = None) -> bytes:
    """Version-3 metadata of ``n`` RGB 1x1 images without the name column."""
    return b"\x00\x01\x00" + ((b"\x01" * n) if fmts is None else fmts) + b"\x02" * n \
        + b"\x01" * n + b"\x01" * n + b"\x00" * n


def test_one_image_can_take_its_name_from_the_file(tmp_path: Path) -> None:
    a = small_archive(1, 1)
    named = encode_archive(a)
    a.name_from_file = True
    data = encode_archive(a)
    assert len(data) == len(named) - len("img_000") - 1  # the name and its length are not stored
    assert decode_archive(data, "img_000.arib") == a
    assert decode_archive(data, "holiday.arib").images[0].name == "holiday.png"
    assert decode_archive(data).images[0].name == C.UNNAMED_STEM + ".png"
    assert read_archive(write_archive(tmp_path / "x.y.arib", a)).images[0].name == "x.y.png"
    assert C.name_from_file("a.arib", "JPEG") == "a.jpg" and C.name_from_file("a.arib", "XYZ") is None
    assert decode_archive(forge(flags=0x20, n_images=1, meta=_nameless_meta(1))).images[0].name == "image.png"
    expect_archive_error(forge(flags=0x20, n_images=2, meta=_nameless_meta(2)), "only one can")
    expect_archive_error(forge(flags=0x20, n_images=1, meta=_nameless_meta(1, b"\x00\x01x")),
                         "format 'x' has no usual extension")
    for bad in (small_archive(2, 1), Archive(**{**vars(small_archive(1, 1))})):
        bad.name_from_file = True
        if len(bad.images) == 1:
            bad.images[0].fmt = "XYZ"
        with pytest.raises(ValueError, match="name_from_file needs exactly one image"):
            encode_archive(bad)


def test_deeply_nested_extras_are_refused() -> None:
    deep = b"[" * 100_000
    meta = b"\x00\x01\x00\x00\x04tiny" + C._varint(len(deep)) + deep
    expect_archive_error(forge(version=2, meta=zlib.compress(meta), meta_codec=1), "not valid JSON")
    nested = b"\x01\x00\x01k" + b"\x03\x01" * 100 + b"\x07"  # {"k": [[[...null...]]]}
    expect_archive_error(forge(meta=meta_v3([], extra=nested)), "nests deeper than 16 levels")
    with pytest.raises(ValueError, match="nests deeper"):
        deep_list: Any = 1
        for _ in range(17):
            deep_list = [deep_list]
        encode_archive(Archive("tiny", HASH_A, "single", 1, 0, "cpu", "torch", [], [b""], {"k": deep_list}))


def test_invalid_utf8_name_and_bad_codec_and_flags() -> None:
    meta = meta_bytes(["ab"]).replace(b"\x02ab", b"\x02\xff\xfe")
    expect_archive_error(forge(version=2, n_images=1, checksums=b"\0" * 8, meta=meta), "not valid UTF-8")
    meta = meta_v3(["ab"]).replace(b"\x04ab", b"\x04\xff\xfe")
    expect_archive_error(forge(n_images=1, meta=meta), "not valid UTF-8")
    expect_archive_error(forge(version=2, meta_codec=5), "unknown metadata codec 5")
    expect_archive_error(forge(meta=b"\x00\x00\x00", meta_codec=1), "does not decompress")
    expect_archive_error(forge(meta=zlib.compress(b"abc")[:-2], meta_codec=1), "incomplete")
    expect_archive_error(forge(n_lanes=0), r"lane count 0 outside")
    expect_archive_error(forge(version=1, flags=4), "unsupported flags 0x0004")


# --------------------------------------------------------------------------
# writer validation

@pytest.mark.parametrize("change, match", [
    ({"model_hash": b"short"}, "model_hash must be 32"),
    ({"mode": "fast"}, "mode must be one of"),
    ({"device_kind": "tpu"}, "device_kind must be one of"),
    ({"kernel_path": "cupy"}, "kernel_path must be one of"),
    ({"lanes": 3}, "lanes is 3 but there are 2 lane streams"),
    ({"lanes": 0, "lane_streams": []}, "lanes must be an int"),
    ({"tile_size": -1}, "tile_size must be"),
    ({"model_name": ""}, "model_name must be"),
    ({"extra": {"t": (1, 2)}}, "cannot store a tuple"),
    ({"extra": {1: 2}}, "keys must be str"),
    ({"extra": {"x": float("nan")}}, "not a finite number"),
    ({"extra": {"x": object()}}, "cannot store a object"),
    ({"extra": {"x": 2**64}}, "outside -2"),
    ({"sealed_lanes": False}, "sealed lane streams only"),
    ({"lane_streams": ["ab", b""]}, "lane stream 0 must be bytes"),
])
def test_encode_refuses_invalid_archives(change: dict[str, Any], match: str) -> None:
    a = small_archive()
    for k, v in change.items():
        setattr(a, k, v)
    with pytest.raises(ValueError, match=match):
        encode_archive(a)


@pytest.mark.parametrize("change, match", [
    ({"name": "../x.png"}, "not a plain file name"),
    ({"name": "dir\\x.png"}, "not a plain file name"),
    ({"name": ""}, "is empty"),
    ({"name": "\udcff.png"}, "not valid Unicode"),
    ({"width": 0}, "width must be"),
    ({"height": C.MAX_SIDE + 1}, "height must be"),
    ({"checksum": b"12345678"}, "stores no per-image checksum"),
    ({"mode": "P"}, "mode must be one of"),
    ({"extra": [1]}, "must be a dict"),
])
def test_encode_refuses_invalid_records(change: dict[str, Any], match: str) -> None:
    a = small_archive()
    for k, v in change.items():
        setattr(a.images[0], k, v)
    with pytest.raises(ValueError, match=match):
        encode_archive(a)


# --------------------------------------------------------------------------
# model check, files

def test_check_model() -> None:
    a = small_archive()
    check_model(a, "tiny", HASH_A)
    for name, h in (("tiny", HASH_B), ("small", HASH_A)):
        with pytest.raises(ModelMismatchError) as info:
            check_model(a, name, h)
        msg = str(info.value)
        assert "'tiny'" in msg and HASH_A.hex()[:12] in msg
        assert f"'{name}'" in msg and h.hex()[:12] in msg and "--model" in msg
        assert isinstance(info.value, AribError)


def test_write_and_read_archive(tmp_path: Path) -> None:
    a = small_archive()
    path = tmp_path / "x.arib"
    assert write_archive(path, a) == path
    assert read_archive(path) == a
    assert os.listdir(tmp_path) == ["x.arib"]
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ArchiveError, match=re.escape(str(path)) + ": truncated"):
        read_archive(path)
    with pytest.raises(ArchiveError, match="cannot read"):
        read_archive(tmp_path / "missing.arib")


def test_write_archive_failure_leaves_old_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.arib"
    path.write_bytes(b"old content")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as info:
        write_archive(path, small_archive())
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["x.arib"]


# --------------------------------------------------------------------------
# the example in docs/format.md

def _docs_hex_dump(marker: str = "<!-- example-hexdump -->") -> bytes:
    text = DOCS.read_text(encoding="utf-8")
    block = text.split(marker, 2)[1]
    out = bytearray()
    for line in block.splitlines():
        m = re.match(r"^([0-9a-f]{8})  ([0-9a-f ]+?)\s*(\|.*\|)?$", line.strip())
        if m:
            assert int(m.group(1), 16) == len(out)
            out += bytes.fromhex(m.group(2))
    return bytes(out)


def test_docs_example_matches_the_encoder() -> None:
    data = encode_archive(example_archive())
    assert _docs_hex_dump() == data
    expected = example_archive()
    expected.model_hash = expected.model_hash[:C.MODEL_ID_SIZE]
    assert decode_archive(data) == expected
    stated = re.search(r"fixed overhead of (\d+) bytes", DOCS.read_text(encoding="utf-8"))
    assert stated and int(stated.group(1)) == fixed_overhead_bytes(example_archive())


def test_version_2_files_are_still_read() -> None:
    """The version-2 example of docs/format.md: checksum in the record, lanes unsealed."""
    old = _read_old_example(2, old_example_archive())
    check_model(decode_archive(old), "tiny", example_archive().model_hash)
    with pytest.raises(ValueError, match="sealed lane streams only"):
        encode_archive(decode_archive(old))  # the writer does not pass unsealed streams off as version 3


def test_version_1_files_are_still_read() -> None:
    """The version-1 example of docs/format.md decodes to the same archive, full hash and all."""
    old = _docs_hex_dump("<!-- example-hexdump-v1 -->")
    assert old[4:6] == b"\x01\x00"
    assert decode_archive(old) == old_example_archive()
    check_model(decode_archive(old), "tiny", example_archive().model_hash)
    bad = bytearray(old)
    bad[-1] ^= 1
    expect_archive_error(bytes(bad), "^corrupted: lane 0 checksum mismatch$")
    bad[30] ^= 1
    expect_archive_error(bytes(bad), "^corrupted: header checksum mismatch$")
    for n in range(len(old)):
        with pytest.raises(ArchiveError):
            decode_archive(old[:n])


def test_the_writer_stores_the_model_id() -> None:
    a = example_archive()  # full 32-byte hash
    got = decode_archive(encode_archive(a))
    assert got.model_hash == a.model_hash[:C.MODEL_ID_SIZE]
    check_model(got, "tiny", a.model_hash)
    with pytest.raises(ModelMismatchError):
        check_model(got, "tiny", HASH_B)


def test_every_model_config_has_a_one_byte_name_code() -> None:
    """A config missing from MODEL_NAMES would cost each of its files the name in full."""
    from aribbps.config import CONFIGS

    assert set(CONFIGS) <= set(C.MODEL_NAMES)
    assert len(set(C.MODEL_NAMES)) == len(C.MODEL_NAMES)
    a = example_archive()
    a.model_name = "medium-split2"
    meta = encode_archive(a)[7 + 8 + 6:]
    assert meta[1] == C.MODEL_NAMES.index("medium-split2") + 1
    assert decode_archive(encode_archive(a)).model_name == "medium-split2"


def test_a_model_name_spelled_out_still_reads() -> None:
    """Files written before a config got its code store the name as a string."""
    spelled = forge(n_images=0, meta=b"\x00" + b"\x00\x0dmedium-split2" + b"\x00")
    assert decode_archive(spelled).model_name == "medium-split2"


def test_docs_state_the_limits() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for value in (C.MAX_LANES, C.MAX_IMAGES, C.MAX_SIDE, C.MAX_PIXELS, C.MAX_NAME_BYTES):
        assert str(value) in text, value
    for table in (C.CODING_MODES, C.DEVICE_KINDS, C.KERNEL_PATHS, C.IMAGE_MODES):
        for code, name in enumerate(table):
            assert f"| {code} | `{name}` |" in text, name


def test_docs_overhead_table_matches_the_writer() -> None:
    """The "Overhead" table of docs/format.md: names img_00042.png, PNG, 32x32 RGB, one lane, model small."""
    rows = re.findall(r"^\| (\d+) +\| (\d+)(?: bytes)?[^|]*\| (\d+)", DOCS.read_text(encoding="utf-8"), re.M)
    assert [int(n) for n, _, _ in rows] == [1, 10, 200, 2000]
    for n, plain, with_qp in rows:
        sizes = []
        for qp in (False, True):
            images = [ImageRecord(f"img_{i:05d}.png", "PNG", "RGB", 32, 32, None, {"qp": 3 + i % 8} if qp else {})
                      for i in range(int(n))]
            sizes.append(fixed_overhead_bytes(Archive("small", HASH_A, "dataset", 1, 0, "cpu", "torch", images, [b""])))
        assert sizes == [int(plain), int(with_qp)], n


def test_varints_are_limited_to_64_bits() -> None:
    largest = C._varint(2**64 - 1)
    assert C._Reader(memoryview(largest), "x").varint() == 2**64 - 1
    for too_big in (largest[:-1] + b"\x02", largest[:-1] + b"\x7f", largest[:-1] + b"\x81\x00"):
        with pytest.raises(ArchiveError, match="more than 64 bits"):
            C._Reader(memoryview(too_big), "x").varint()
