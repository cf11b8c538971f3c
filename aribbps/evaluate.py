"""``eval``: the seed's test modes over a folder of images.

* ``inference``: theoretical bpd (cross-entropy with unquantised
  probabilities), no coding;
* ``single``: every image in its own ``.arib`` (in memory), actual bpd,
  encode/decode time, decode failures;
* ``dataset``: all images in one ``.arib`` over lanes;
* ``speed``: images per second for encode and decode (dataset layout).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from aribbps.bitplanes import step_view
from aribbps.codec import teacher_forced_logits, theoretical_cost
from aribbps.api import DEFAULT_LANES, DEFAULT_TILE, CompressResult, decode_archive_images, encode_images
from aribbps.container import decode_archive
from aribbps.errors import AribError
from aribbps.imageio import MODE_CHANNELS, LoadedImage, split_alpha
from aribbps.tiling import cut_tiles, pad_to_multiple, tile_grid, valid_mask
from aribbps.zoo import LoadedModel

EVAL_MODES = ("inference", "single", "dataset", "speed")


@dataclass
class EvalReport:
    mode: str
    images: int
    subpixels: int
    theoretical_bpd: float
    quantised_bpd: float | None = None
    actual_bpd: float | None = None
    encode_seconds: float | None = None
    decode_seconds: float | None = None
    decode_failures: int | None = None

    @property
    def encode_images_per_s(self) -> float | None:
        return self.images / self.encode_seconds if self.encode_seconds else None

    @property
    def decode_images_per_s(self) -> float | None:
        return self.images / self.decode_seconds if self.decode_seconds else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(encode_images_per_s=self.encode_images_per_s, decode_images_per_s=self.decode_images_per_s)
        return d


def _subpixels(images: Sequence[LoadedImage]) -> int:
    return sum(int(np.prod(i.pixels.shape[:2])) * MODE_CHANNELS[i.mode] for i in images)


@torch.no_grad()
def theoretical_bits(images: Sequence[LoadedImage], model: LoadedModel, tile: int = DEFAULT_TILE,
                     batch: int = 64) -> float:
    """Cross-entropy of the images under the model (teacher forced, unquantised)."""
    groups: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, bool]]] = {}
    for image in images:
        colour, alpha, _ = split_alpha(image)
        for part in (colour, alpha):
            if part is None:
                continue
            for item in cut_tiles(part, tile_grid(part.shape[0], part.shape[1], tile)):
                padded = pad_to_multiple(item, model.cfg.pad_multiple)
                mask = valid_mask(item.shape[1], item.shape[2], padded.shape[1], padded.shape[2])
                groups.setdefault(padded.shape[1:], []).append((padded, mask, item.shape[0] == 3))
    total = 0.0
    for entries in groups.values():
        for start in range(0, len(entries), batch):
            chunk = entries[start:start + batch]
            x = torch.from_numpy(np.stack([np.broadcast_to(p, (3, *p.shape[1:])) for p, _, _ in chunk]))
            valid = torch.from_numpy(np.stack([m for _, m, _ in chunk]))[:, None].to(model.device)
            rgb = torch.tensor([c for _, _, c in chunk], device=model.device)
            for _, s, logits, bits in teacher_forced_logits(model.nets, x.to(model.device), valid):
                total += float(theoretical_cost(logits, step_view(bits, s), step_view(valid, s), rgb).sum())
    return total


def _round_trip(images: Sequence[LoadedImage], model: LoadedModel, lanes: int, tile: int,
                threads: int) -> tuple[CompressResult, float, int]:
    result = encode_images(images, model, lanes, tile, threads)
    start = time.perf_counter()
    failures = 0
    try:
        decoded = decode_archive_images(decode_archive(result.data), model, threads)
        for image, d in zip(images, decoded):
            failures += int(not np.array_equal(image.pixels, d.pixels))
    except AribError:
        failures = len(images)
    return result, time.perf_counter() - start, failures


def evaluate(images: Sequence[LoadedImage], model: LoadedModel, mode: str, lanes: int = DEFAULT_LANES,
             tile: int = DEFAULT_TILE, threads: int = 0) -> EvalReport:
    """Runs one of :data:`EVAL_MODES` over the images."""
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}; choose one of {', '.join(EVAL_MODES)}")
    if not images:
        raise AribError("no images to evaluate")
    subpixels = _subpixels(images)
    if mode == "inference":
        return EvalReport(mode, len(images), subpixels, theoretical_bits(images, model, tile) / subpixels)
    if mode == "single":
        nbytes, theo, quant, enc, dec, failures = 0, 0.0, 0.0, 0.0, 0.0, 0
        for image in images:
            result, seconds, failed = _round_trip([image], model, 1, tile, threads)
            nbytes += len(result.data)
            theo += result.theoretical_bits
            quant += result.quantised_bits
            enc += result.seconds
            dec += seconds
            failures += failed
        return EvalReport(mode, len(images), subpixels, theo / subpixels, quant / subpixels,
                          nbytes * 8 / subpixels, enc, dec, failures)
    result, seconds, failures = _round_trip(images, model, lanes, tile, threads)
    return EvalReport(mode, len(images), subpixels, result.theoretical_bpd, result.quantised_bpd,
                      result.actual_bpd, result.seconds, seconds, failures)
