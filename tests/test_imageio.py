"""Tests of image reading/writing, the pixel checksum, alpha handling and atomic output."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from aribbps import atomic
from aribbps.atomic import atomic_directory, atomic_write_bytes
from aribbps.errors import AribError, ImageFormatError
from aribbps.imageio import (
    MODE_CHANNELS,
    LoadedImage,
    _normalise,
    join_alpha,
    join_grey,
    load_image,
    output_name,
    pixel_checksum,
    save_image,
    split_alpha,
    split_grey,
)


def pixels_for(mode: str, h: int = 7, w: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, MODE_CHANNELS[mode]), dtype=np.uint8)


def pillow_image(pixels: np.ndarray, mode: str) -> Image.Image:
    h, w, _ = pixels.shape
    return Image.frombytes(mode, (w, h), pixels.tobytes())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: Pillow cannot write 48/64-bit colour PNGs."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------
# lossless round trips

WRITABLE = [
    ("PNG", "x.png", m) for m in ("L", "LA", "RGB", "RGBA")
] + [
    ("TIFF", "x.tif", m) for m in ("L", "LA", "RGB", "RGBA")
] + [
    ("TGA", "x.tga", m) for m in ("L", "LA", "RGB", "RGBA")
] + [
    ("BMP", "x.bmp", m) for m in ("L", "RGB")
] + [
    ("PPM", "x.ppm", m) for m in ("L", "RGB")
] + [
    ("WEBP", "x.webp", m) for m in ("RGB", "RGBA")
]


@pytest.mark.parametrize("fmt, name, mode", WRITABLE)
def test_lossless_formats_round_trip_in_their_own_format(tmp_path: Path, fmt: str, name: str,
                                                         mode: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    pixels = pixels_for(mode)
    if mode.endswith("A"):
        pixels[0, 0, -1] = 0  # a fully transparent pixel whose colour must survive
    written = save_image(tmp_path / name, pixels, mode, fmt)
    assert written == tmp_path / name == tmp_path / output_name(name, fmt, mode)
    loaded = load_image(written)
    assert (loaded.name, loaded.fmt, loaded.mode) == (name, fmt, mode)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == pixels.shape
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("fmt, name, mode, expected", [
    ("JPEG", "photo.jpg", "RGB", "photo.png"),
    ("GIF", "anim.gif", "RGBA", "anim.png"),
    ("BMP", "a.bmp", "LA", "a.png"),
    ("PPM", "a.ppm", "RGBA", "a.png"),
    ("WEBP", "a.webp", "L", "a.png"),
    ("JPEG", "noext", "L", "noext.png"),
    ("JPEG", ".hidden", "L", ".hidden.png"),
    ("JPEG", "a.b.jpeg", "RGB", "a.b.png"),
])
def test_other_originals_are_written_as_png(tmp_path: Path, fmt: str, name: str, mode: str,
                                            expected: str) -> None:
    assert output_name(name, fmt, mode) == expected
    pixels = pixels_for(mode)
    written = save_image(tmp_path / name, pixels, mode, fmt)
    assert written == tmp_path / expected
    loaded = load_image(written)
    assert loaded.fmt == "PNG" and loaded.mode == mode
    np.testing.assert_array_equal(loaded.pixels, pixels)


def test_save_image_checks_its_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "a.png", pixels_for("RGB").astype(np.int32), "RGB", "PNG")
    with pytest.raises(ValueError):
        save_image(tmp_path / "a.png", pixels_for("RGB"), "L", "PNG")
    assert os.listdir(tmp_path) == []


def test_save_image_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"previous")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        save_image(target, pixels_for("RGB"), "RGB", "PNG")
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["a.png"]


# --------------------------------------------------------------------------
# normalisation of modes

def test_bilevel_becomes_l_0_255(tmp_path: Path) -> None:
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    loaded = load_image(tmp_path / "b.png")
    assert loaded.mode == "L"
    np.testing.assert_array_equal(loaded.pixels[..., 0], bits.astype(np.uint8) * 255)


def palette_image() -> Image.Image:
    im = Image.frombytes("P", (4, 2), bytes([0, 1, 2, 3, 3, 2, 1, 0]))
    im.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90, 255, 0, 255])
    return im


def test_palette_becomes_rgb(tmp_path: Path) -> None:
    palette_image().save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.mode == "RGB" and loaded.fmt == "PNG"
    assert tuple(loaded.pixels[0, 1]) == (40, 50, 60)
    assert tuple(loaded.pixels[0, 3]) == (255, 0, 255)


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    palette_image().save(tmp_path / "p.png", transparency=bytes([255, 0, 128, 255]))
    loaded = load_image(tmp_path / "p.png")
    assert loaded.mode == "RGBA"
    assert tuple(loaded.pixels[0, 1]) == (40, 50, 60, 0)
    assert tuple(loaded.pixels[0, 2]) == (70, 80, 90, 128)


def test_gif_palette(tmp_path: Path) -> None:
    palette_image().save(tmp_path / "p.gif")
    loaded = load_image(tmp_path / "p.gif")
    assert loaded.fmt == "GIF" and loaded.mode == "RGB"
    assert output_name(loaded.name, loaded.fmt, loaded.mode) == "p.png"


def test_pa_and_rgbx_normalise() -> None:
    pa = Image.frombytes("PA", (2, 1), bytes([1, 7, 0, 9]))
    pa.putpalette([0, 0, 0, 11, 12, 13])
    assert _normalise(Path("x"), pa).mode == "RGBA"
    assert _normalise(Path("x"), Image.new("RGBX", (2, 2))).mode == "RGB"


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "TIFF")])
def test_colour_transforms_are_refused(tmp_path: Path, mode: str, fmt: str) -> None:
    path = tmp_path / f"c.{fmt.lower()}"
    try:
        Image.new(mode, (4, 4)).save(path, fmt)
    except OSError:
        pytest.skip(f"Pillow cannot write {mode} as {fmt}")
    with Image.open(path) as im:
        stored_mode = im.mode
    if stored_mode != mode:
        pytest.skip(f"Pillow reads {mode} {fmt} as another mode")
    with pytest.raises(ImageFormatError, match=f"{mode}.*convert the image to RGB") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_sixteen_bit_grey_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.frombytes("I;16", (3, 2), bytes(range(12))).save(path)
    with pytest.raises(ImageFormatError, match="16-bit images are not supported") as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (6, 4), (4, 2)])
def test_sixteen_bit_colour_png_is_refused(tmp_path: Path, colour_type: int, channels: int) -> None:
    """Pillow reads these as 8-bit modes, dropping the low byte: must not pass silently."""
    path = tmp_path / "deep.png"
    rows = b"".join(b"\x00" + bytes(range(2 * 2 * channels)) for _ in range(2))
    path.write_bytes(raw_png(2, 2, 16, colour_type, rows))
    with pytest.raises(ImageFormatError, match="16-bit images are not supported"):
        load_image(path)


def raw_tiff_48bit(width: int, height: int) -> bytes:
    """An uncompressed 16-bit-per-sample RGB TIFF, written by hand."""
    data = bytes(range(width * height * 6))
    n_entries, ifd_offset = 9, 8
    bps_offset = ifd_offset + 2 + 12 * n_entries + 4
    data_offset = bps_offset + 6

    def entry(tag: int, kind: int, value: int) -> bytes:
        if kind == 3:  # SHORT, left-justified in the value field
            return struct.pack("<HHIHH", tag, 3, 1, value, 0)
        return struct.pack("<HHII", tag, kind, 1, value)

    entries = [entry(256, 3, width), entry(257, 3, height),
               struct.pack("<HHII", 258, 3, 3, bps_offset), entry(259, 3, 1), entry(262, 3, 2),
               entry(273, 4, data_offset), entry(277, 3, 3), entry(278, 3, height),
               entry(279, 4, len(data))]
    return (b"II*\x00" + struct.pack("<IH", ifd_offset, n_entries) + b"".join(entries)
            + b"\x00" * 4 + struct.pack("<3H", 16, 16, 16) + data)


@pytest.mark.parametrize("name, content", [
    ("deep.ppm", b"P6\n2 2\n65535\n" + bytes(24)),
    ("deep.pgm", b"P5\n2 2\n65535\n" + bytes(8)),
    ("deep.tif", raw_tiff_48bit(2, 1)),
])
def test_other_sixteen_bit_files_are_refused(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageFormatError, match="16-bit images are not supported"):
        load_image(path)


def test_low_maxval_ppm_is_read_as_pillow_scales_it(tmp_path: Path) -> None:
    path = tmp_path / "low.ppm"
    path.write_bytes(b"P6\n2 1\n15\n" + bytes([0, 5, 15, 15, 15, 15]))
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.pixels.ravel().tolist() == [0, 85, 255, 255, 255, 255]


def test_float_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.new("F", (3, 2)).save(path)
    with pytest.raises(ImageFormatError, match="16-bit"):
        load_image(path)


def test_animated_gif_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("L", (4, 4), v) for v in (0, 255)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageFormatError, match="2 frames"):
        load_image(path)


@pytest.mark.parametrize("content", [
    b"",
    b"not an image at all",
    b"\x89PNG\r\n\x1a\n\x00\x00",
    raw_png(0, 0, 8, 2, b""),
])
def test_unreadable_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageFormatError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    pillow_image(pixels_for("RGB", 64, 64), "RGB").save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageFormatError, match="cut.png"):
        load_image(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match="nothing.png") as info:
        load_image(tmp_path / "nothing.png")
    assert isinstance(info.value, AribError)


# --------------------------------------------------------------------------
# checksum and alpha

def test_pixel_checksum_definition() -> None:
    pixels = pixels_for("RGB", 3, 2)
    expected = hashlib.blake2b(struct.pack("<3I", 3, 2, 3) + pixels.tobytes(),
                               digest_size=8).digest()
    assert pixel_checksum(pixels) == expected
    assert len(expected) == 8
    # Same bytes, other shape: another checksum.
    assert pixel_checksum(pixels.reshape(2, 3, 3)) != expected
    # Non-contiguous views hash their values, not their memory layout.
    assert pixel_checksum(np.asfortranarray(pixels)) == expected
    with pytest.raises(ValueError):
        pixel_checksum(pixels.astype(np.uint16))


def test_split_join_grey() -> None:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (5, 4, 1), dtype=np.uint8)
    colour, is_grey = split_grey(np.repeat(grey, 3, axis=2))
    assert is_grey and colour.shape == (5, 4, 1) and colour.flags.c_contiguous
    np.testing.assert_array_equal(colour, grey)
    np.testing.assert_array_equal(join_grey(colour, True), np.repeat(grey, 3, axis=2))
    almost = np.repeat(grey, 3, axis=2)
    almost[4, 3, 1] ^= 0x80
    for pixels in (almost, grey, rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)):
        same, is_grey = split_grey(pixels)
        assert not is_grey and same is pixels and join_grey(same, False) is same
    with pytest.raises(ValueError, match="one channel"):
        join_grey(almost, True)
    tall = np.repeat(rng.integers(0, 256, (600, 2, 1), dtype=np.uint8), 3, axis=2)  # checked in bands of rows
    assert split_grey(tall)[1]
    tall[599, 1, 0] ^= 1
    assert not split_grey(tall)[1]


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_split_join_alpha(mode: str) -> None:
    pixels = pixels_for(mode)
    loaded = LoadedImage("a.png", "PNG", mode, pixels)
    colour, alpha, opaque = split_alpha(loaded)
    assert colour.shape[2] in (1, 3) and colour.shape[2] == (1 if mode[0] == "L" else 3)
    assert opaque is False
    assert (alpha is not None) == mode.endswith("A")
    if alpha is not None:
        assert alpha.shape == pixels.shape[:2] + (1,)
    np.testing.assert_array_equal(join_alpha(colour, alpha, opaque), pixels)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_opaque_alpha_is_dropped(mode: str) -> None:
    pixels = pixels_for(mode)
    pixels[..., -1] = 255
    colour, alpha, opaque = split_alpha(pixels)
    assert alpha is None and opaque is True
    np.testing.assert_array_equal(join_alpha(colour, None, True), pixels)
    with pytest.raises(ValueError):
        join_alpha(colour, pixels[..., -1:], True)


# --------------------------------------------------------------------------
# atomic output

def test_atomic_write_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    assert atomic_write_bytes(path, b"one") == path
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_bytes_failure_in_write(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.f = real_fdopen(fd, "wb")

        def write(self, data: object) -> int:
            self.f.write(b"half")  # something reached the disk before it filled up
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.f.close()

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: FullDisk(fd))
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "f.bin", b"data")
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_atomic_directory_new(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        assert tmp.parent == tmp_path and not final.exists()
        (tmp / "a.png").write_bytes(b"a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.png").write_bytes(b"b")
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert (final / "a.png").read_bytes() == b"a" and (final / "sub" / "b.png").read_bytes() == b"b"


def test_atomic_directory_merges_into_existing(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_bytes(b"keep")
    (final / "a.png").write_bytes(b"old")
    with atomic_directory(final) as tmp:
        (tmp / "a.png").write_bytes(b"new")
        (tmp / "b.png").write_bytes(b"b")
        assert (final / "a.png").read_bytes() == b"old"  # nothing moves before the end
        assert not (final / "b.png").exists()
    assert sorted(os.listdir(final)) == ["a.png", "b.png", "keep.txt"]
    assert (final / "a.png").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_directory_failure_leaves_nothing(tmp_path: Path, existing: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "out"
    if existing:
        final.mkdir()
        (final / "a.png").write_bytes(b"old")
    real_save = Image.Image.save
    calls = []

    def save_then_fail(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls.append(fp)
        if len(calls) == 2:  # the second image: disk full half-way
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(OSError):
        with atomic_directory(final) as tmp:
            save_image(tmp / "a.png", pixels_for("RGB"), "RGB", "PNG")
            save_image(tmp / "b.png", pixels_for("RGB"), "RGB", "PNG")
    assert os.listdir(tmp_path) == (["out"] if existing else [])
    if existing:
        assert os.listdir(final) == ["a.png"] and (final / "a.png").read_bytes() == b"old"


def test_atomic_directory_failure_removes_created_parents(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "a" / "b" / "out") as tmp:
            (tmp / "x.png").write_bytes(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_directory_failed_merge_removes_new_files(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_bytes(b"keep")
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)).name == "b.png":
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError):
        with atomic_directory(final) as tmp:
            (tmp / "a.png").write_bytes(b"a")
            (tmp / "b.png").write_bytes(b"b")
    assert os.listdir(final) == ["keep.txt"]
    assert os.listdir(tmp_path) == ["out"]
