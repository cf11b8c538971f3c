"""The package API behind the CLI: compress images to ``.arib`` and back.

Everything the command line does is a call here::

    from aribbps import api
    result = api.compress(["a.png", "b.png"], "out.arib")
    api.decompress("out.arib", "restored/")

An image becomes codec items: its colour part (1 or 3 channels) and, where
alpha is not fully opaque, its alpha plane (1 channel), each cut into tiles of
``tile`` pixels (0 = no tiling). Items of all images are coded on ``lanes``
parallel stacks; the container records what the decoder needs to rebuild the
same items (sizes, modes, tile size, lanes, model identity).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aribbps.atomic import atomic_directory, atomic_write_bytes
from aribbps.codec import CodingStats, PlaneCodec
from aribbps.coder import NotEnoughBitsError, StreamError
from aribbps.container import Archive, ImageRecord, check_model, encode_archive, read_archive
from aribbps.errors import ArchiveError, AribError, ChecksumError, ImageFormatError
from aribbps.imageio import (MODE_CHANNELS, LoadedImage, join_alpha, load_image, output_name, pixel_checksum,
                             save_image, split_alpha)
from aribbps.tiling import Tile, assemble, cut_tiles, tile_grid
from aribbps.zoo import LoadedModel, load, resolve_device

DEFAULT_LANES = 8
DEFAULT_TILE = 256
#: Coding mode of this codec: every plane from plane and space contexts.
CONTEXT_MODE = "context"
#: Largest item (tile, or untiled image) the codec accepts, in pixels: bounds
#: the memory a single network batch needs, for the encoder and for a
#: decoder reading a hostile header.
MAX_ITEM_PIXELS = 1 << 24
#: Fewest bits any coded bit can cost: -log2(255/256).
_MIN_BITS_PER_BIT = 0.00565

Progress = Callable[[int], None]


@dataclass
class CompressResult:
    """What :func:`compress` (or :func:`encode_images`) produced."""

    archive: Archive
    data: bytes
    subpixels: int
    theoretical_bits: float  # cross-entropy, unquantised probabilities
    quantised_bits: float  # ideal cost of the quantised probabilities
    seconds: float
    per_image_theoretical: list[float] = field(default_factory=list)

    @property
    def actual_bpd(self) -> float:
        return len(self.data) * 8 / self.subpixels

    @property
    def theoretical_bpd(self) -> float:
        return self.theoretical_bits / self.subpixels

    @property
    def quantised_bpd(self) -> float:
        return self.quantised_bits / self.subpixels


# ------------------------------------------------------------------ items
@dataclass(frozen=True)
class _ItemRef:
    image: int
    part: str  # "colour" or "alpha"
    tile: Tile


def _parts(record: ImageRecord) -> list[tuple[str, int]]:
    """(part, channels) of an image record, in coding order."""
    colour = 1 if record.mode in ("L", "LA") else 3
    parts = [("colour", colour)]
    if record.extra.get("alpha") == "coded":
        parts.append(("alpha", 1))
    return parts


def _item_refs(records: Sequence[ImageRecord], tile: int) -> list[tuple[_ItemRef, tuple[int, int, int]]]:
    refs = []
    for i, record in enumerate(records):
        tiles = tile_grid(record.height, record.width, tile)
        for part, channels in _parts(record):
            refs.extend((_ItemRef(i, part, t), (channels, t.h, t.w)) for t in tiles)
    return refs


def _split_image(image: LoadedImage) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    colour, alpha, opaque = split_alpha(image)
    parts = {"colour": colour}
    extra: dict[str, str] = {}
    if alpha is not None:
        parts["alpha"] = alpha
        extra["alpha"] = "coded"
    elif opaque:
        extra["alpha"] = "opaque"
    return parts, extra


def _subpixels(records: Sequence[ImageRecord]) -> int:
    return sum(r.width * r.height * MODE_CHANNELS[r.mode] for r in records)


# ------------------------------------------------------------------ encode
def encode_images(images: Sequence[LoadedImage], model: LoadedModel, lanes: int = DEFAULT_LANES,
                  tile: int = DEFAULT_TILE, threads: int = 0, progress: Progress | None = None) -> CompressResult:
    """Codes images in memory; returns the archive, its bytes and the figures."""
    if not images:
        raise AribError("no images to compress")
    if tile < 0 or tile % 2:
        raise AribError(f"tile size must be 0 (no tiling) or a positive even number, got {tile}")
    lanes = int(lanes)
    if lanes < 1:
        raise AribError(f"lanes must be at least 1, got {lanes}")
    start = time.perf_counter()
    records, parts_of = [], []
    for image in images:
        parts, extra = _split_image(image)
        height, width = image.pixels.shape[:2]
        records.append(ImageRecord(image.name, image.fmt, image.mode, width, height,
                                   pixel_checksum(image.pixels), extra))
        parts_of.append(parts)
    refs = _item_refs(records, tile)
    _check_item_sizes(refs, AribError, "use --tile to cut it into tiles")
    items = [cut_tiles(parts_of[ref.image][ref.part], [ref.tile])[0] for ref, _ in refs]
    codec = PlaneCodec(model.nets, model.cfg.pad_multiple, lanes, model.device, threads)
    streams, stats = codec.encode(items, progress)
    archive = Archive(model.name, model.weights_hash, CONTEXT_MODE, lanes, tile, model.device.type, "torch",
                      records, streams)
    data = encode_archive(archive)
    per_image = _per_image(stats, refs, len(records))
    return CompressResult(archive, data, _subpixels(records), float(stats.theoretical_bits.sum()),
                          float(stats.quantised_bits.sum()), time.perf_counter() - start, per_image)


def _per_image(stats: CodingStats, refs: Sequence[tuple[_ItemRef, tuple[int, int, int]]], n: int) -> list[float]:
    totals = [0.0] * n
    for (ref, _), bits in zip(refs, stats.theoretical_bits):
        totals[ref.image] += float(bits)
    return totals


def _check_item_sizes(refs: Sequence[tuple[_ItemRef, tuple[int, int, int]]], error: type[AribError],
                      advice: str) -> None:
    for _, (_, h, w) in refs:
        if h * w > MAX_ITEM_PIXELS:
            raise error(f"an item of {w}x{h} pixels exceeds the limit of {MAX_ITEM_PIXELS} pixels; {advice}")


def load_images(paths: Sequence[str | Path]) -> list[LoadedImage]:
    """Loads every input; refuses duplicate file names (they would collide on decompression)."""
    images = [load_image(p) for p in paths]
    seen: dict[str, str] = {}
    for path, image in zip(paths, images):
        if image.name in seen:
            raise ImageFormatError(f"two inputs have the same file name {image.name!r}: {seen[image.name]} and {path}")
        seen[image.name] = str(path)
    return images


def batch_inputs(directory: str | Path) -> list[Path]:
    """The files directly inside ``directory``, sorted by name (hidden files skipped)."""
    root = Path(directory)
    if not root.is_dir():
        raise AribError(f"--batch needs a directory, got {str(root)!r}")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise AribError(f"no files in {str(root)!r}")
    return files


def compress(inputs: Sequence[str | Path], output: str | Path, model: LoadedModel | str | None = None,
             lanes: int = DEFAULT_LANES, tile: int = DEFAULT_TILE, device: str | None = "cpu", threads: int = 0,
             progress: Progress | None = None) -> CompressResult:
    """Compresses image files into one ``.arib`` file (written atomically)."""
    loaded = model if isinstance(model, LoadedModel) else load(model, device)
    result = encode_images(load_images(inputs), loaded, lanes, tile, threads, progress)
    atomic_write_bytes(output, result.data)
    return result


# ------------------------------------------------------------------ decode
@dataclass
class DecodedImage:
    record: ImageRecord
    pixels: np.ndarray  # (H, W, C) uint8


def decode_archive_images(archive: Archive, model: LoadedModel, threads: int = 0,
                          progress: Progress | None = None) -> list[DecodedImage]:
    """Decodes every image of an archive and checks it against its checksum.

    Raises:
        ModelMismatchError: the archive names another model.
        ArchiveError: the streams are damaged.
        ChecksumError: an image decoded to pixels other than the encoder's.
    """
    check_model(archive, model.name, model.weights_hash)
    if archive.mode != CONTEXT_MODE:
        raise ArchiveError(f"this archive uses coding mode {archive.mode!r}, which this aribbps cannot decode")
    if archive.device_kind != model.device.type:
        raise ArchiveError(f"this archive was encoded on {archive.device_kind!r} and must be decoded on the same "
                           f"device kind (got {model.device.type!r}); pass --device {archive.device_kind}")
    refs = _item_refs(archive.images, archive.tile_size)
    _check_item_sizes(refs, ArchiveError, "the header is corrupted")
    coded_bits = 8 * sum(c * h * w for _, (c, h, w) in refs)
    if 8 * sum(len(s) for s in archive.lane_streams) < coded_bits * _MIN_BITS_PER_BIT:
        raise ArchiveError("corrupted: the lane streams are too short for the images the header declares")
    codec = PlaneCodec(model.nets, model.cfg.pad_multiple, archive.lanes, model.device, threads)
    try:
        items = codec.decode([shape for _, shape in refs], archive.lane_streams, progress)
    except (StreamError, NotEnoughBitsError) as exc:
        raise ArchiveError(f"corrupted lane stream: {exc}") from None
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None
    return _assemble(archive, refs, items)


def _assemble(archive: Archive, refs: Sequence[tuple[_ItemRef, tuple[int, int, int]]],
              items: Sequence[np.ndarray]) -> list[DecodedImage]:
    by_part: dict[tuple[int, str], list[tuple[Tile, np.ndarray]]] = {}
    for (ref, _), item in zip(refs, items):
        by_part.setdefault((ref.image, ref.part), []).append((ref.tile, item))
    decoded = []
    for i, record in enumerate(archive.images):
        parts = {}
        for part, channels in _parts(record):
            tiles_items = by_part[(i, part)]
            parts[part] = assemble([t for t, _ in tiles_items], [a for _, a in tiles_items],
                                   record.height, record.width, channels)
        alpha_flag = record.extra.get("alpha")
        pixels = join_alpha(parts["colour"], parts.get("alpha"), alpha_flag == "opaque")
        if pixel_checksum(pixels) != bytes(record.checksum):
            raise ChecksumError(f"image {record.name!r} did not decode to the pixels that were encoded "
                                "(checksum mismatch): the file is corrupted or the decoder differs from the encoder")
        decoded.append(DecodedImage(record, pixels))
    return decoded


def decompress(archive_path: str | Path, out_dir: str | Path, model: LoadedModel | str | None = None,
               device: str | None = None, threads: int = 0, progress: Progress | None = None) -> list[Path]:
    """Decodes an ``.arib`` file into ``out_dir`` with the original names and formats.

    Nothing is written unless every image decodes and verifies; the files
    appear in ``out_dir`` only at the end (see :func:`aribbps.atomic.atomic_directory`).
    """
    archive = read_archive(archive_path)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load(model, device if device is not None else _archive_device(archive))
    decoded = decode_archive_images(archive, loaded, threads, progress)
    names = _unique_output_names([d.record for d in decoded])
    written = []
    with atomic_directory(out_dir) as tmp:
        for image, name in zip(decoded, names):
            path = save_image(Path(tmp) / name, image.pixels, image.record.mode, image.record.fmt)
            written.append(Path(out_dir) / path.name)
    return written


def _archive_device(archive: Archive) -> str:
    resolve_device(archive.device_kind)  # raises clearly when CUDA is needed but absent
    return archive.device_kind


def _unique_output_names(records: Sequence[ImageRecord]) -> list[str]:
    names, used = [], set()
    for record in records:
        name = output_name(record.name, record.fmt, record.mode)
        stem, dot, ext = name.rpartition(".")
        candidate, n = name, 1
        while candidate in used:
            candidate = f"{stem}-{n}.{ext}" if dot else f"{name}-{n}"
            n += 1
        used.add(candidate)
        names.append(candidate)
    return names


def info(archive_path: str | Path) -> dict:
    """A summary of an ``.arib`` file, without decoding it."""
    archive = read_archive(archive_path)
    size = Path(archive_path).stat().st_size
    subpixels = _subpixels(archive.images)
    return {
        "file": str(archive_path), "bytes": size, "model": archive.model_name,
        "weights": archive.model_hash.hex()[:12], "mode": archive.mode, "lanes": archive.lanes,
        "tile": archive.tile_size, "device": archive.device_kind, "kernels": archive.kernel_path,
        "images": len(archive.images), "subpixels": subpixels, "bpd": size * 8 / subpixels if subpixels else 0.0,
        "lane_bytes": [len(s) for s in archive.lane_streams],
        "records": [{"name": r.name, "format": r.fmt, "mode": r.mode, "width": r.width, "height": r.height}
                    for r in archive.images],
    }
