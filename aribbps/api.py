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
import torch

from aribbps.atomic import atomic_directory, atomic_write_bytes
from aribbps.arib import ARIB_MODES, AribCodec, AribStats
from aribbps.codec import CodingStats, PlaneCodec
from aribbps.coder import NotEnoughBitsError, StreamError
from aribbps import cpu_isa, cpu_threads, numerics_probe
from aribbps.container import (GREY_KEY, Archive, ImageRecord, check_model, encode_archive, name_from_file,
                               read_archive)
from aribbps.errors import ArchiveError, AribError, ChecksumError, ImageFormatError, NumericsMismatchError
from aribbps.imageio import (MODE_CHANNELS, LoadedImage, join_alpha, join_grey, load_image, output_name,
                             pixel_checksum, save_image, split_alpha, split_grey)
from aribbps.lane_groups import EXTRA_KEY as GROUPS_KEY
from aribbps.lane_groups import (LaneGroup, coder_threads, default_groups, group_streams, merge_stats, plan_groups,
                                 recorded_groups, run_groups, scatter)
from aribbps.lane_seal import LaneSealError
from aribbps.probability import WRITTEN_PROB_CODE
from aribbps.tiling import Tile, assemble, cut_tiles, tile_grid
from aribbps.zoo import LoadedModel, load, resolve_device
from kernels import dispatch

#: Lanes chosen when none are asked for (``lanes=None``): at most AUTO_LANES
#: (CPU) or CUDA_AUTO_LANES, and only as many as keep one round's padded
#: pixels within CPU_ROUND_PIXELS or CUDA_ROUND_PIXELS. On the CPU larger
#: batches overflow the caches (2-core CPU, dataset mode: 256x256 crops took
#: 2.3 s per image on 16 lanes, 1.5 s on 4 and 1.2 s on 1; 64x64 patches
#: 0.070 s on 16 lanes and 0.085 s on 64; and fewer lanes also start fewer
#: chains). On a GPU a round costs about the same for few lanes as for many
#: (its kernels are small), so the lanes go up to what memory allows: with 8
#: lanes an H200 decoded the 200 held-out 64x64 patches at 25 images/s,
#: only 3 times the 2-core CPU (2026-12-04; larger counts are not measured
#: on a GPU yet). Automatic lanes also leave at least MIN_ITEMS_PER_LANE items
#: per lane where there are that many: every lane's first item pays for its
#: latents with its own bits (or padding), the later ones with the bits
#: before them.
AUTO_LANES = 16
CPU_ROUND_PIXELS = 1 << 16
CUDA_AUTO_LANES = 256
CUDA_ROUND_PIXELS = 1 << 20
MIN_ITEMS_PER_LANE = 8
#: Tile side when none is asked for. The shipped model codes the held-out
#: 256x256 crops smallest in 128x128 tiles chained on one lane: 0.3%
#: smaller than in tiles of 64 (where the model trained on 32x32 windows
#: did best) and than whole, at less time than either (docs/default_model.md).
DEFAULT_TILE = 128
#: Coding modes: "context" codes every plane from plane and space contexts
#: (models without latent model); "single" and "dataset" are the ArIB modes.
CONTEXT_MODE = "context"
CODING_MODES = (CONTEXT_MODE, *ARIB_MODES)
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
    theoretical_bits: float  # planes: cross-entropy, unquantised probabilities
    quantised_bits: float  # planes: ideal cost of the quantised probabilities
    seconds: float
    per_image_theoretical: list[float] = field(default_factory=list)
    prior_bits: float = 0.0  # ArIB: qp * |z|
    posterior_bits: float = 0.0  # ArIB: -log2 q(z|x) of the sampled latents (bits got back)
    auxiliary_bits: float = 0.0  # ArIB: padding words pushed as initial bits

    @property
    def net_bits(self) -> float:
        """What the streams should cost: quantised planes + prior - posterior + auxiliary."""
        return self.quantised_bits + self.prior_bits - self.posterior_bits + self.auxiliary_bits

    @property
    def actual_bpd(self) -> float:
        return len(self.data) * 8 / self.subpixels

    @property
    def theoretical_bpd(self) -> float:
        """Unquantised plane probabilities, plus the latents' net cost (prior - posterior)."""
        return (self.theoretical_bits + self.prior_bits - self.posterior_bits) / self.subpixels

    @property
    def quantised_bpd(self) -> float:
        """The information the coder is given (quantised planes + latents), without auxiliary bits."""
        return (self.quantised_bits + self.prior_bits - self.posterior_bits) / self.subpixels


# ------------------------------------------------------------------ items
@dataclass(frozen=True)
class _ItemRef:
    image: int
    part: str  # "colour" or "alpha"
    tile: Tile


def _parts(record: ImageRecord) -> list[tuple[str, int]]:
    """(part, channels) of an image record, in coding order."""
    colour = 1 if record.mode in ("L", "LA") or GREY_KEY in record.extra else 3
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


def coded_parts(image: LoadedImage) -> tuple[dict[str, np.ndarray], dict[str, str | bool]]:
    """``(parts, extra)``: the arrays the codec codes for an image (``"colour"``, with one
    channel for greyscale and for RGB whose channels are all equal, and ``"alpha"`` unless
    there is none or it is 255 everywhere) and the record entries that rebuild it."""
    colour, alpha, opaque = split_alpha(image)
    colour, grey = split_grey(colour)
    parts = {"colour": colour}
    extra: dict[str, str | bool] = {GREY_KEY: True} if grey else {}
    if alpha is not None:
        parts["alpha"] = alpha
        extra["alpha"] = "coded"
    elif opaque:
        extra["alpha"] = "opaque"
    return parts, extra


def _subpixels(records: Sequence[ImageRecord]) -> int:
    return sum(r.width * r.height * MODE_CHANNELS[r.mode] for r in records)


# ------------------------------------------------------------------ encode
def default_mode(model: LoadedModel, n_items: int) -> str:
    """ArIB single mode for one item, dataset mode for several (images, or the tiles of one
    image: they then chain, each tile's latents paid by the tiles before it); context
    without latent model."""
    if model.nets.sig.latent is None:
        return CONTEXT_MODE
    return "single" if n_items == 1 else "dataset"


def encode_images(images: Sequence[LoadedImage], model: LoadedModel, lanes: int | None = None,
                  tile: int = DEFAULT_TILE, threads: int = 0, progress: Progress | None = None,
                  mode: str | None = None, lane_groups: int | None = None,
                  name_from_file: bool = False, temperatures: bool = True, corrections: bool = True
                  ) -> CompressResult:
    """Codes images in memory; returns the archive, its bytes and the figures.

    ``name_from_file``: store no name for the one image; a reader names it
    after the ``.arib`` file (:attr:`aribbps.container.Archive.name_from_file`).

    ``mode``: "context", "single" or "dataset" (see :data:`CODING_MODES`);
    None picks :func:`default_mode`. ``lanes``: None picks :func:`default_lanes`.
    ``lane_groups``: codecs run concurrently (:mod:`aribbps.lane_groups`);
    None picks its default for the device. ``temperatures``: per-plane
    temperature symbols (:mod:`aribbps.temperature`) and ``corrections``
    (:mod:`aribbps.prob_correction`): off only to measure them.
    """
    if not images:
        raise AribError("no images to compress")
    if tile < 0 or tile % 2:
        raise AribError(f"tile size must be 0 (no tiling) or a positive even number, got {tile}")
    if lanes is not None and int(lanes) < 1:
        raise AribError(f"lanes must be at least 1, got {lanes}")
    start = time.perf_counter()
    records, parts_of = [], []
    for image in images:
        parts, extra = coded_parts(image)
        height, width = image.pixels.shape[:2]
        records.append(ImageRecord(image.name, image.fmt, image.mode, width, height, None, extra))
        parts_of.append(parts)
    refs = _item_refs(records, tile)
    _check_item_sizes(refs, AribError, "use --tile to cut it into tiles")
    items = [cut_tiles(parts_of[ref.image][ref.part], [ref.tile])[0] for ref, _ in refs]
    lanes = default_lanes([shape for _, shape in refs], model) if lanes is None else int(lanes)
    # A lane without items would still cost its table entry and coder flush (~30 bytes).
    lanes = min(lanes, len(items))
    mode = mode or default_mode(model, len(items))
    native_conv = dispatch.writes_native_conv(model.device)
    with dispatch.coding_numerics(model.device, native_conv):
        streams, stats, kernel_path, n_groups = _encode_items(items, model, mode, lanes, threads, progress,
                                                              lane_groups, temperatures, corrections)
    archive = Archive(model.name, model.weights_hash, mode, lanes, tile, model.device.type, kernel_path,
                      records, streams, name_from_file=name_from_file, prob_code=WRITTEN_PROB_CODE,
                      temperatures=temperatures, corrections=corrections, native_conv=native_conv)
    if n_groups > 1:
        archive.extra[GROUPS_KEY] = n_groups
    cpu_threads.record(archive.extra, model.device.type)
    cpu_isa.record(archive.extra, model.device.type, native_conv)
    archive.extra[numerics_probe.EXTRA_KEY] = numerics_probe_for(archive, model)
    if isinstance(stats, AribStats):
        _record_side_info(archive, refs, stats)
    data = encode_archive(archive)
    result = CompressResult(archive, data, _subpixels(records), float(stats.theoretical_bits.sum()),
                            float(stats.quantised_bits.sum()), time.perf_counter() - start,
                            _per_image(stats, refs, len(records)))
    if isinstance(stats, AribStats):
        result.prior_bits = float(stats.prior_bits.sum())
        result.posterior_bits = float(stats.posterior_bits.sum())
        result.auxiliary_bits = float(stats.padding_bits.sum())
    return result


def default_lanes(shapes: Sequence[tuple[int, int, int]], model: LoadedModel) -> int:
    """The lane count for items of these (C, h, w) shapes when none is asked for (see :data:`AUTO_LANES`)."""
    by_items = max(1, len(shapes) // MIN_ITEMS_PER_LANE)
    m = max(2, model.cfg.pad_multiple)
    largest = max(-(-h // m) * m * (-(-w // m) * m) for _, h, w in shapes)
    if model.device.type != "cpu":
        return max(1, min(CUDA_AUTO_LANES, CUDA_ROUND_PIXELS // largest, by_items))
    return max(1, min(AUTO_LANES, CPU_ROUND_PIXELS // largest, by_items))


def _encode_items(items: Sequence[np.ndarray], model: LoadedModel, mode: str, lanes: int, threads: int,
                  progress: Progress | None, lane_groups: int | None, temperatures: bool = True,
                  corrections: bool = True) -> tuple[list[bytes], CodingStats, str, int]:
    """Codes the items by lane groups: (lane streams, per-item stats, kernel path, group count)."""
    requested = default_groups(model.device) if lane_groups is None else lane_groups
    if requested < 1:
        raise AribError(f"lane groups must be at least 1, got {requested}")
    groups = plan_groups(len(items), lanes, requested)
    codecs = [_codec(model, mode, g.lanes, coder_threads(threads, groups), temperatures=temperatures,
                     corrections=corrections)
              for g in groups]
    parts = run_groups(lambda i, g, report: codecs[i].encode([items[j] for j in g.items], report, ids=g.items),
                       groups, model.device, progress)
    streams = [stream for part_streams, _ in parts for stream in part_streams]
    stats = merge_stats([part_stats for _, part_stats in parts], groups, len(items))
    return streams, stats, codecs[0].kernel_path, len(groups)


def _codec(model: LoadedModel, mode: str, lanes: int, threads: int, kernel_path: str | None = None,
           prob_code: str = WRITTEN_PROB_CODE, temperatures: bool = True, corrections: bool = True) -> PlaneCodec:
    """The codec of ``mode``; the defaults are what the encoder writes, the decoder passes the file's."""
    if mode not in CODING_MODES:
        raise AribError(f"unknown coding mode {mode!r}; choose one of {', '.join(CODING_MODES)}")
    if mode == CONTEXT_MODE:
        if model.nets.sig.latent is not None:
            raise AribError(f"model {model.name!r} has a latent model: use mode 'single' or 'dataset'")
        return PlaneCodec(model.nets, model.cfg.pad_multiple, lanes, model.device, threads, kernel_path,
                          prob_code=prob_code, temperatures=temperatures, corrections=corrections)
    if model.nets.sig.latent is None:
        raise AribError(f"model {model.name!r} has no latent model: only mode 'context' is available")
    return AribCodec(model.nets, model.cfg.pad_multiple, lanes, mode, model.device, threads, kernel_path,
                     prob_code=prob_code, temperatures=temperatures, corrections=corrections)


def numerics_probe_for(archive: Archive, model: LoadedModel) -> int:
    """The probe this process writes for files of this archive's model, mode, kernel path,
    probability code and features (:mod:`aribbps.numerics_probe`), under the file's coding numerics
    (:func:`kernels.dispatch.coding_numerics`); run it with the file's thread count. The model
    is known by its weights file's hash: weights changed in memory need a cleared cache."""
    key = (model.weights_hash, str(model.device), archive.mode, archive.kernel_path, archive.prob_code,
           archive.temperatures, archive.corrections, archive.native_conv, torch.get_num_threads(),
           cpu_isa.active(), cpu_isa.aten_active(), cpu_isa.mkl_active())

    def encode(item: np.ndarray) -> list[bytes]:
        codec = _codec(model, archive.mode, 1, 1, archive.kernel_path, archive.prob_code, archive.temperatures,
                       archive.corrections)
        with dispatch.coding_numerics(model.device, archive.native_conv):
            streams, stats = codec.encode([item])
        return [*streams, *(np.ascontiguousarray(value).tobytes() for value in vars(stats).values())]
    return numerics_probe.fingerprint(encode, key)


def _record_side_info(archive: Archive, refs: Sequence[tuple[_ItemRef, tuple[int, int, int]]],
                      stats: AribStats) -> None:
    """The qp and padding word count of every item: once for the file where all items share
    one qp (dataset mode), else per image in item order; padding only where there is some."""
    records = archive.images
    shared_qp = len(stats.qp) > 0 and bool((stats.qp == stats.qp[0]).all())
    if shared_qp:
        archive.extra["qp"] = int(stats.qp[0])
    items_of: dict[int, list[int]] = {}
    for j, (ref, _) in enumerate(refs):
        items_of.setdefault(ref.image, []).append(j)
    for i, record in enumerate(records):
        own = items_of[i]
        if not shared_qp:
            record.extra["qp"] = [int(stats.qp[j]) for j in own]
        if stats.padding_words[own].any():
            record.extra["pad"] = [int(stats.padding_words[j]) for j in own]


def item_side_info(archive: Archive) -> tuple[list[int], list[int]]:
    """(qp, padding words) of every item of an ArIB archive, in coding order."""
    return _side_info(archive, _item_refs(archive.images, archive.tile_size))


def _side_info(archive: Archive, refs: Sequence[tuple[_ItemRef, tuple[int, int, int]]]) -> tuple[list[int], list[int]]:
    per_image: dict[int, int] = {}
    qps, pads = [], []
    for ref, _ in refs:
        k = per_image.get(ref.image, 0)
        per_image[ref.image] = k + 1
        extra = archive.images[ref.image].extra
        try:
            qps.append(int(archive.extra["qp"]) if "qp" in archive.extra else int(extra["qp"][k]))
            pads.append(int(extra["pad"][k]) if "pad" in extra else 0)
        except (KeyError, IndexError, TypeError, ValueError):
            raise ArchiveError(f"corrupted: image {archive.images[ref.image].name!r} lacks its latent precision "
                               "(qp) or padding counts") from None
    return qps, pads


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
             lanes: int | None = None, tile: int = DEFAULT_TILE, device: str | None = "cpu", threads: int = 0,
             progress: Progress | None = None, mode: str | None = None,
             lane_groups: int | None = None) -> CompressResult:
    """Compresses image files into one ``.arib`` file (written atomically).

    One image whose name the output's name implies (``img.png`` into
    ``img.arib``) is stored without its name (:func:`aribbps.container.name_from_file`).
    """
    loaded = model if isinstance(model, LoadedModel) else load(model, device)
    images = load_images(inputs)
    implied = len(images) == 1 and name_implied_by(output, images[0])
    result = encode_images(images, loaded, lanes, tile, threads, progress, mode, lane_groups, implied)
    atomic_write_bytes(output, result.data)
    return result


def name_implied_by(output: str | Path, image: LoadedImage) -> bool:
    """Whether an ``.arib`` file named ``output`` holding just ``image`` gives
    the image's name back without storing it (``img.png`` in ``img.arib``)."""
    return image.name == name_from_file(Path(output).name, image.fmt)


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
    if archive.device_kind != model.device.type:
        raise ArchiveError(f"this archive was encoded on {archive.device_kind!r} and must be decoded on the same "
                           f"device kind (got {model.device.type!r}); pass --device {archive.device_kind}")
    refs = _item_refs(archive.images, archive.tile_size)
    _check_item_sizes(refs, ArchiveError, "the header is corrupted")
    coded_bits = 8 * sum(c * h * w for _, (c, h, w) in refs)
    if 8 * sum(len(s) for s in archive.lane_streams) < coded_bits * _MIN_BITS_PER_BIT:
        raise ArchiveError("corrupted: the lane streams are too short for the images the header declares")
    try:
        path = dispatch.check_kernel_path(archive.kernel_path, model.device)
    except dispatch.KernelPathError as exc:
        raise ArchiveError(str(exc)) from None
    cpu_isa.check(archive.extra, archive.device_kind, pinned_file=archive.temperatures,
                  aten_pinned_file=numerics_probe.EXTRA_KEY in archive.extra, native_conv=archive.native_conv)
    with (cpu_threads.matching(archive.extra, archive.device_kind),
          dispatch.coding_numerics(model.device, archive.native_conv)):
        items = _decode_items(archive, model, refs, threads, path, progress)
    return _assemble(archive, refs, items)


def _decode_items(archive: Archive, model: LoadedModel, refs: Sequence[tuple[_ItemRef, tuple[int, int, int]]],
                  threads: int, kernel_path: str, progress: Progress | None) -> list[np.ndarray]:
    """Every item of the archive, decoded by its lane groups; damage is an ArchiveError."""
    shapes = [shape for _, shape in refs]
    try:
        groups = plan_groups(len(shapes), archive.lanes, recorded_groups(archive.extra, archive.lanes, len(shapes)))
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None
    try:
        codecs = [_codec(model, archive.mode, g.lanes, coder_threads(threads, groups), kernel_path, archive.prob_code,
                         archive.temperatures, archive.corrections)
                  for g in groups]
    except AribError as exc:
        raise ArchiveError(f"cannot decode this archive: {exc}") from None
    side = _side_info(archive, refs) if isinstance(codecs[0], AribCodec) else None

    def decode_group(index: int, group: LaneGroup, report: Progress | None) -> list[np.ndarray]:
        codec = codecs[index]
        group_shapes = [shapes[i] for i in group.items]
        streams = group_streams(archive.lane_streams, group)
        try:
            if side is None:
                return codec.decode(group_shapes, streams, report, archive.sealed_lanes, ids=group.items)
            assert isinstance(codec, AribCodec)
            qps, pads = ([values[i] for i in group.items] for values in side)
            return codec.decode(group_shapes, streams, qps, pads, report, archive.sealed_lanes, ids=group.items)
        except LaneSealError as exc:  # group-local item indices -> the archive's
            raise LaneSealError([group.items[i] for i in exc.items]) from None

    try:
        return scatter(run_groups(decode_group, groups, model.device, progress), groups, len(shapes))
    except LaneSealError as exc:
        names = sorted({archive.images[refs[i][0].image].name for i in exc.items})
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        what = f"image{'s' if len(names) > 1 else ''} {shown}"
        hint = _failure_hint(archive, model, what)
        raise ChecksumError(f"{what} did not decode to the pixels that were encoded (lane check mismatch): "
                            f"{hint}") from None
    except (StreamError, NotEnoughBitsError) as exc:
        raise ArchiveError(f"corrupted lane stream: {exc}; {_failure_hint(archive, model, 'this file')}") from None
    except ValueError as exc:
        raise ArchiveError(f"{exc}; {_failure_hint(archive, model, 'this file')}") from None


def _failure_hint(archive: Archive, model: LoadedModel, what: str) -> str:
    """Why decoding failed, as far as the numerics probe tells; raises NumericsMismatchError
    where this machine computes the networks differently from the encoder's."""
    unknown = "the file is corrupted or the decoder differs from the encoder"
    try:
        mismatch = numerics_probe.differs(archive.extra, lambda: numerics_probe_for(archive, model))
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never hide the decoding error itself
        return f"{unknown} (numerics probe not run: {exc})"
    if mismatch is not None:
        raise NumericsMismatchError(
            f"cannot decode {what} on this machine: it computes the networks differently from the machine that "
            f"encoded the file (numerics probe {mismatch[1]:04x}, the file's {mismatch[0]:04x}), which is the "
            f"likely cause, not damage to the file; decode it on the kind of machine that wrote it "
            f"({archive.device_kind}: the same CPU or GPU model and torch version)") from None
    if numerics_probe.recorded(archive.extra) is not None:
        return "the file is damaged (this machine computes the networks as the encoder's did: numerics probe matches)"
    return unknown + cpu_isa.unpinned_hint(archive.device_kind, archive.temperatures)


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
        colour = join_grey(parts["colour"], GREY_KEY in record.extra)
        pixels = join_alpha(colour, parts.get("alpha"), alpha_flag == "opaque")
        if record.checksum is not None and pixel_checksum(pixels) != bytes(record.checksum):
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


def _probe_text(extra: dict) -> str | None:
    """The numerics probe as info shows it: 4 hex digits, or the raw value where it is malformed."""
    try:
        value = numerics_probe.recorded(extra)
    except ArchiveError:
        return repr(extra[numerics_probe.EXTRA_KEY])
    return None if value is None else f"{value:04x}"


def info(archive_path: str | Path) -> dict:
    """A summary of an ``.arib`` file, without decoding it."""
    archive = read_archive(archive_path)
    size = Path(archive_path).stat().st_size
    subpixels = _subpixels(archive.images)
    return {
        "file": str(archive_path), "bytes": size, "model": archive.model_name,
        "weights": archive.model_hash.hex()[:12], "mode": archive.mode, "lanes": archive.lanes,
        "lane_groups": archive.extra.get(GROUPS_KEY, 1),
        "tile": archive.tile_size, "device": archive.device_kind, "kernels": archive.kernel_path,
        "probabilities": archive.prob_code, "temperatures": archive.temperatures,
        "corrections": archive.corrections, "native_conv": archive.native_conv,
        "numerics_probe": _probe_text(archive.extra),
        "images": len(archive.images), "subpixels": subpixels,
        "bpd": size * 8 / subpixels if subpixels else 0.0,
        "lane_bytes": [len(s) for s in archive.lane_streams],
        "records": [{"name": r.name, "format": r.fmt, "mode": r.mode, "width": r.width, "height": r.height,
                     "grey": GREY_KEY in r.extra} for r in archive.images],
    }
