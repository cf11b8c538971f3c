"""Reading and writing image files, and the pixel checksum (Pillow + numpy).

The codec sees only 8-bit pixels as a uint8 array ``(H, W, C)`` with one of
four modes:

======  ==  ===============================
mode    C   meaning
======  ==  ===============================
L       1   greyscale
LA      2   greyscale + alpha
RGB     3   colour
RGBA    4   colour + alpha
======  ==  ===============================

:func:`load_image` maps every other Pillow mode it can code without loss onto
these ("1" -> L, palette -> RGB/RGBA) and refuses the rest with an
:class:`~aribbps.errors.ImageFormatError` that says what to do. Lossless
means the *pixels* round trip: metadata (EXIF, ICC profile, text chunks) and
the original file's compression settings are not kept, and a lossy original
(JPEG) comes back as PNG.
"""
from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

from .atomic import StrPath, atomic_write_bytes
from .errors import ImageFormatError

#: Channels of each supported mode.
MODE_CHANNELS: dict[str, int] = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_CHANNEL_MODES: dict[int, str] = {c: m for m, c in MODE_CHANNELS.items()}

#: Colour spaces that Pillow would have to transform to get RGB: the transform
#: does not round trip, so coding it "losslessly" would still change the file.
_COLOUR_TRANSFORM_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S"})
_PREMULTIPLIED_MODES = frozenset({"La", "RGBa"})
#: Raw modes of more than 8 bits per channel that Pillow silently reduces to an
#: 8-bit mode ("RGB;16B" of a 48-bit PNG). "BGR;16" (5-6-5 BMP) is not one.
_HIGH_DEPTH_RAWMODE = re.compile(r"(;16[BLN]|;32|^I;16|^F;)")

#: Formats written back as themselves, with the modes whose pixels survive a
#: Pillow save/load round trip bit for bit (checked by the tests). Anything
#: else (JPEG, GIF, ...) is written as PNG.
_LOSSLESS_WRITERS: dict[str, frozenset[str]] = {
    "PNG": frozenset({"L", "LA", "RGB", "RGBA"}),
    "TIFF": frozenset({"L", "LA", "RGB", "RGBA"}),
    "TGA": frozenset({"L", "LA", "RGB", "RGBA"}),
    "BMP": frozenset({"L", "RGB"}),
    "PPM": frozenset({"L", "RGB"}),
    "WEBP": frozenset({"RGB", "RGBA"}),
}
_WEBP_MAX_SIDE = 16383


@dataclass
class LoadedImage:
    """An image as the codec sees it.

    Attributes:
        name: the file name, without directory.
        fmt: the file format as Pillow reports it ("PNG", "JPEG", ...).
        mode: "L", "LA", "RGB" or "RGBA", after normalisation.
        pixels: uint8 array ``(H, W, C)``, C = ``MODE_CHANNELS[mode]``.
    """

    name: str
    fmt: str
    mode: str
    pixels: np.ndarray


def mode_of(pixels: np.ndarray) -> str:
    """The mode of an ``(H, W, C)`` array from its channel count."""
    if pixels.ndim != 3 or pixels.shape[2] not in _CHANNEL_MODES:
        raise ValueError(f"expected an (H, W, C) array with C in 1..4, got shape {pixels.shape}")
    return _CHANNEL_MODES[pixels.shape[2]]


def _rawmodes(im: Image.Image) -> list[str]:
    """The raw (file) modes Pillow will decode from, read off the tile list."""
    out = []
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            out.append(args[0])
        elif isinstance(args, str):
            out.append(args)
    return out


def _more_than_8_bits(im: Image.Image) -> bool:
    """Whether the file stores more than 8 bits per sample, whatever mode Pillow shows.

    Pillow reads 48/64-bit PNG, 16-bit PPM and some 16-bit TIFF into 8-bit
    modes by dropping the low byte; coding that would silently lose data.
    """
    if im.mode in _HIGH_DEPTH_MODES:
        return True
    if any(_HIGH_DEPTH_RAWMODE.search(r) for r in _rawmodes(im)):
        return True
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        if tile[0] in ("ppm", "ppm_plain") and isinstance(args, tuple) and len(args) > 1:
            if isinstance(args[1], int) and args[1] > 255:  # PNM maxval
                return True
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)  # TIFF BitsPerSample
        bits = bits if isinstance(bits, tuple) else (bits,)
        if any(isinstance(b, int) and b > 8 for b in bits):
            return True
    return False


def _refuse_mode(path: Path, im: Image.Image) -> None:
    mode = im.mode
    if _more_than_8_bits(im):
        raise ImageFormatError(
            f"{path}: 16-bit images are not supported: the file stores more than "
            "8 bits per sample; aribbps codes 8 bits per channel, so convert it "
            "to 8 bits first"
        )
    if mode in _COLOUR_TRANSFORM_MODES:
        raise ImageFormatError(
            f"{path}: colour mode {mode} is not supported; convert the image to RGB "
            "first (coding a colour transform losslessly would still not give back "
            "the same file)"
        )
    if mode in _PREMULTIPLIED_MODES:
        raise ImageFormatError(
            f"{path}: premultiplied alpha (mode {mode}) is not supported; "
            "convert the image to RGBA first"
        )


def _normalise(path: Path, im: Image.Image) -> Image.Image:
    """Map ``im`` onto L/LA/RGB/RGBA without changing any pixel value."""
    mode = im.mode
    if mode in MODE_CHANNELS:
        return im
    if mode == "1":
        return im.convert("L")  # 0/255
    if mode == "P":
        return im.convert("RGBA" if im.has_transparency_data else "RGB")
    if mode == "PA":
        return im.convert("RGBA")
    if mode == "RGBX":
        return im.convert("RGB")  # X is padding, not data
    raise ImageFormatError(
        f"{path}: image mode {mode!r} is not supported; convert it to L, LA, RGB or RGBA"
    )


def load_image(path: StrPath) -> LoadedImage:
    """Read any still 8-bit image Pillow can read.

    Raises:
        ImageFormatError: the file is missing, unreadable, corrupt, empty,
            animated or multi-page, 16-bit, or in a colour space other than
            L/LA/RGB/RGBA/palette/bilevel. The message names the file.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            fmt = im.format or "PNG"
            frames = getattr(im, "n_frames", 1)
            if fmt == "MPO":
                fmt = "JPEG"  # camera JPEG with extra pictures: frame 0 is the photo
            elif frames > 1:
                raise ImageFormatError(
                    f"{p}: has {frames} frames; animated or multi-page images are "
                    "not supported (extract the frames first)"
                )
            if im.width <= 0 or im.height <= 0:
                raise ImageFormatError(f"{p}: image has zero size ({im.width}x{im.height})")
            _refuse_mode(p, im)
            im.load()
            norm = _normalise(p, im)
            norm.load()
            mode = norm.mode
            raw = norm.tobytes()
            size = norm.size
    except ImageFormatError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageFormatError(f"{p}: image too large: {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ImageFormatError(f"{p}: cannot read image: {reason or type(e).__name__}") from e
    width, height = size
    pixels = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, MODE_CHANNELS[mode])
    return LoadedImage(name=p.name, fmt=fmt, mode=mode, pixels=pixels.copy())


def _writer_format(fmt: str, mode: str, shape: tuple[int, ...] | None = None) -> str:
    """The format :func:`save_image` writes for an original of format ``fmt``."""
    f = fmt.upper()
    if f == "WEBP" and not features.check("webp"):
        return "PNG"
    if f == "WEBP" and shape is not None and max(shape[:2]) > _WEBP_MAX_SIDE:
        return "PNG"
    if mode in _LOSSLESS_WRITERS.get(f, frozenset()):
        return f
    return "PNG"


def output_name(original_name: str, fmt: str, mode: str = "RGB") -> str:
    """The file name decompression writes for an image called ``original_name``.

    The name is kept when the original format can be written losslessly in
    ``mode`` (PNG, TIFF, TGA, BMP, PPM, WebP); otherwise (JPEG, GIF, ...) the
    extension becomes ``.png``: ``photo.jpg`` -> ``photo.png``.
    """
    if _writer_format(fmt, mode) == fmt.upper():
        return original_name
    return _png_name(original_name)


def _png_name(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ext:  # "a.jpg" -> "a.png"; ".hidden", "a." have no extension
        return f"{stem}.png"
    return f"{name}.png"


def _save_options(fmt: str) -> dict[str, object]:
    if fmt == "WEBP":
        # exact: keep the RGB of fully transparent pixels (the default may not).
        return {"lossless": True, "exact": True, "quality": 100, "method": 4}
    if fmt == "TIFF" and features.check("libtiff"):
        return {"compression": "tiff_lzw"}
    return {}


def _encode(pixels: np.ndarray, mode: str, fmt: str) -> bytes:
    h, w, _ = pixels.shape
    im = Image.frombytes(mode, (w, h), np.ascontiguousarray(pixels).tobytes())
    buf = io.BytesIO()
    im.save(buf, format=fmt, **_save_options(fmt))
    return buf.getvalue()


def _decodes_to(data: bytes, pixels: np.ndarray, mode: str) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode != mode or im.size != (pixels.shape[1], pixels.shape[0]):
            return False
        return im.tobytes() == np.ascontiguousarray(pixels).tobytes()


def save_image(path: StrPath, pixels: np.ndarray, mode: str, fmt: str = "PNG") -> Path:
    """Write ``pixels`` losslessly and atomically; return the path written.

    Args:
        path: where the original would go; the extension may change to
            ``.png`` (see :func:`output_name`).
        pixels: uint8 ``(H, W, C)``.
        mode: "L", "LA", "RGB" or "RGBA", matching C.
        fmt: the original file's format; it is kept if Pillow writes it
            losslessly in ``mode``, else PNG is written.

    The encoded file is decoded again before it is written; should a Pillow
    writer ever not round trip, the image is written as PNG instead.
    """
    if pixels.dtype != np.uint8 or mode_of(pixels) != mode:
        raise ValueError(
            f"pixels must be uint8 (H, W, {MODE_CHANNELS.get(mode, '?')}) for mode "
            f"{mode!r}, got {pixels.dtype} {pixels.shape}"
        )
    target = Path(path)
    out_fmt = _writer_format(fmt, mode, pixels.shape)
    data = _encode(pixels, mode, out_fmt)
    if out_fmt != "PNG" and not _decodes_to(data, pixels, mode):
        out_fmt, data = "PNG", _encode(pixels, mode, "PNG")
    if out_fmt == "PNG" and not _decodes_to(data, pixels, mode):
        raise RuntimeError(f"Pillow's PNG writer does not round trip mode {mode}")
    final = target if out_fmt == fmt.upper() else target.with_name(_png_name(target.name))
    return atomic_write_bytes(final, data)


def pixel_checksum(pixels: np.ndarray) -> bytes:
    """8-byte BLAKE2b of the shape (little-endian u32 each) and the raw bytes."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixel_checksum expects uint8 pixels, got {pixels.dtype}")
    h = hashlib.blake2b(digest_size=8)
    h.update(struct.pack(f"<{pixels.ndim}I", *pixels.shape))
    h.update(np.ascontiguousarray(pixels).data)
    return h.digest()


def split_alpha(
    loaded: LoadedImage | np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Split off the alpha channel: ``(colour, alpha, alpha_opaque)``.

    ``colour`` is ``(H, W, 1 or 3)``. ``alpha`` is ``(H, W, 1)``, or None if
    the image has no alpha or its alpha is 255 everywhere; ``alpha_opaque``
    is True only in the latter case, so that :func:`join_alpha` can rebuild
    the channel without it being coded.
    """
    pixels = loaded.pixels if isinstance(loaded, LoadedImage) else loaded
    mode = mode_of(pixels)
    if mode in ("L", "RGB"):
        return pixels, None, False
    colour = np.ascontiguousarray(pixels[..., :-1])
    alpha = np.ascontiguousarray(pixels[..., -1:])
    if bool((alpha == 255).all()):
        return colour, None, True
    return colour, alpha, False


#: Rows compared at a time by :func:`split_grey`, which bounds its scratch memory.
_GREY_CHECK_ROWS = 256


def split_grey(colour: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(colour, grey)``: an RGB colour part whose three channels are equal
    everywhere as its one channel and True (coded as greyscale, which saves
    the bits of the two copies); any other part unchanged and False."""
    if colour.ndim != 3 or colour.shape[2] != 3:
        return colour, False
    for top in range(0, colour.shape[0], _GREY_CHECK_ROWS):  # in bands: a colour image stops at its first
        band = colour[top:top + _GREY_CHECK_ROWS]
        if not bool((band == band[..., :1]).all()):
            return colour, False
    return np.ascontiguousarray(colour[..., :1]), True


def join_grey(colour: np.ndarray, grey: bool) -> np.ndarray:
    """Inverse of :func:`split_grey`: the one channel repeated three times where ``grey``."""
    if not grey:
        return colour
    if colour.ndim != 3 or colour.shape[2] != 1:
        raise ValueError(f"a grey colour part has one channel, got shape {colour.shape}")
    return np.repeat(colour, 3, axis=2)


def join_alpha(
    colour: np.ndarray, alpha: np.ndarray | None, alpha_opaque: bool
) -> np.ndarray:
    """Inverse of :func:`split_alpha`: the ``(H, W, C)`` pixels."""
    if colour.ndim != 3 or colour.shape[2] not in (1, 3) or colour.dtype != np.uint8:
        raise ValueError(f"colour must be uint8 (H, W, 1 or 3), got {colour.dtype} {colour.shape}")
    if alpha is not None:
        if alpha_opaque:
            raise ValueError("alpha_opaque is set but an alpha plane was given")
        if alpha.shape != colour.shape[:2] + (1,) or alpha.dtype != np.uint8:
            raise ValueError(
                f"alpha must be uint8 {colour.shape[:2] + (1,)}, got {alpha.dtype} {alpha.shape}"
            )
        return np.concatenate([colour, alpha], axis=2)
    if alpha_opaque:
        opaque = np.full(colour.shape[:2] + (1,), 255, dtype=np.uint8)
        return np.concatenate([colour, opaque], axis=2)
    return colour
