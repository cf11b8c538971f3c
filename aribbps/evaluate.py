"""``eval``: the seed's test modes over a folder of images.

* ``inference``: theoretical bpd (cross-entropy with unquantised
  probabilities), no coding;
* ``single``: every image in its own ``.arib`` (in memory), coded as
  ``compress`` codes one image: single mode, or dataset mode over its tiles
  when it is cut into several; actual bpd, encode/decode time, decode failures;
* ``dataset``: all images in one ``.arib`` over lanes;
* ``speed``: images per second for encode and decode (dataset layout).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from aribbps.bitplanes import NUM_STEPS, step_view
from aribbps.codec import teacher_forced_steps, theoretical_cost
from aribbps import api
from aribbps.api import CONTEXT_MODE, DEFAULT_TILE, CompressResult, coded_parts, decode_archive_images, encode_images
from aribbps.container import decode_archive
from aribbps.errors import AribError
from aribbps.models.latent import logistic_log2_density
from aribbps.imageio import MODE_CHANNELS, LoadedImage
from aribbps.tiling import cut_tiles, pad_to_multiple, tile_grid, valid_mask
from aribbps.zoo import LoadedModel

EVAL_MODES = ("inference", "single", "dataset", "speed")


@dataclass
class EvalReport:
    """Figures of one eval run; bpd = bits per sub-pixel.

    ``theoretical_bpd`` is the model's cross-entropy with unquantised
    probabilities (inference: the negative ELBO = plane + latent prior -
    latent posterior); ``actual_bpd`` counts the bytes of the ``.arib`` data.
    """

    mode: str
    coding_mode: str
    images: int
    subpixels: int
    theoretical_bpd: float
    plane_bpd: float | None = None
    latent_prior_bpd: float | None = None
    latent_posterior_bpd: float | None = None
    quantised_bpd: float | None = None
    actual_bpd: float | None = None
    auxiliary_bpd: float | None = None
    encode_seconds: float | None = None
    decode_seconds: float | None = None
    decode_failures: int | None = None
    #: the archive's lane count (dataset and speed modes; single mode: None, one file per image)
    lanes: int | None = None
    #: inference only: [plane 1..8][step 1..4] bits per coded bit (1 = no
    #: compression) of the bits at that step's positions.
    plane_step_bits: list[list[float]] | None = None

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


@dataclass
class ElboBits:
    """Negative ELBO of a set of images, in bits: planes + prior - posterior."""

    planes: float = 0.0
    latent_prior: float = 0.0
    latent_posterior: float = 0.0
    #: bits and coded bits (valid sub-pixels) per (plane - 1, step - 1).
    step_bits: np.ndarray = field(default_factory=lambda: np.zeros((8, NUM_STEPS)))
    step_count: np.ndarray = field(default_factory=lambda: np.zeros((8, NUM_STEPS)))

    def bits_per_bit(self) -> list[list[float]]:
        """Bits per coded bit of each (plane, step); NaN where nothing was coded."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.step_bits / self.step_count).tolist()

    @property
    def total(self) -> float:
        return self.planes + self.latent_prior - self.latent_posterior


@torch.no_grad()
def theoretical_bits(images: Sequence[LoadedImage], model: LoadedModel, tile: int = DEFAULT_TILE,
                     batch: int = 64, seed: int = 0) -> ElboBits:
    """Cross-entropy of the images under the model (teacher forced, unquantised).

    With a latent model the latents are one posterior sample (fixed seed), and
    the result is the single-sample negative ELBO split into its parts.
    """
    groups: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, bool]]] = {}
    for image in images:
        for part in coded_parts(image)[0].values():
            for item in cut_tiles(part, tile_grid(part.shape[0], part.shape[1], tile)):
                padded = pad_to_multiple(item, model.cfg.pad_multiple)
                mask = valid_mask(item.shape[1], item.shape[2], padded.shape[1], padded.shape[2])
                groups.setdefault(padded.shape[1:], []).append((padded, mask, item.shape[0] == 3))
    bits = ElboBits()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    latent_model = model.nets.sig.latent
    for entries in groups.values():
        for start in range(0, len(entries), batch):
            chunk = entries[start:start + batch]
            x = torch.from_numpy(np.stack([np.broadcast_to(p, (3, *p.shape[1:])) for p, _, _ in chunk]))
            x = x.to(model.device)
            valid = torch.from_numpy(np.stack([m for _, m, _ in chunk]))[:, None].to(model.device)
            rgb = torch.tensor([c for _, _, c in chunk], device=model.device)
            features = None
            if latent_model is not None:
                out = latent_model.forward_details(x, generator=generator)
                features = out.features
                for z, mu_p, mu_q in zip(out.z, out.mu_p, out.mu_q):
                    bits.latent_prior -= float(logistic_log2_density(z - mu_p).sum())
                    bits.latent_posterior -= float(logistic_log2_density(z - mu_q).sum())
            channels = torch.where(rgb, 3, 1)[:, None, None, None]
            for k, stage, _, logits, plane in teacher_forced_steps(model.nets, x, valid, features):
                s, stage_valid = stage.s, stage.valid(valid)
                cost = float(theoretical_cost(logits, step_view(plane, s), stage_valid, rgb).sum())
                bits.planes += cost
                bits.step_bits[k - 1, s - 1] += cost
                bits.step_count[k - 1, s - 1] += float((stage_valid * channels).sum())
    return bits


def _round_trip(images: Sequence[LoadedImage], model: LoadedModel, lanes: int | None, tile: int, threads: int,
                mode: str | None, lane_groups: int | None = None,
                name_from_file: bool = False) -> tuple[CompressResult, float, int]:
    result = encode_images(images, model, lanes, tile, threads, mode=mode, lane_groups=lane_groups,
                           name_from_file=name_from_file)
    start = time.perf_counter()
    failures = 0
    try:
        decoded = decode_archive_images(decode_archive(result.data), model, threads)
        for image, d in zip(images, decoded):
            failures += int(not np.array_equal(image.pixels, d.pixels))
    except AribError:
        failures = len(images)
    return result, time.perf_counter() - start, failures


def evaluate(images: Sequence[LoadedImage], model: LoadedModel, mode: str, lanes: int | None = None,
             tile: int = DEFAULT_TILE, threads: int = 0, lane_groups: int | None = None) -> EvalReport:
    """Runs one of :data:`EVAL_MODES` over the images (``lane_groups``: see :mod:`aribbps.lane_groups`)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}; choose one of {', '.join(EVAL_MODES)}")
    if not images:
        raise AribError("no images to evaluate")
    subpixels = _subpixels(images)
    has_latent = model.nets.sig.latent is not None
    if mode == "inference":
        elbo = theoretical_bits(images, model, tile)
        return EvalReport(mode, "none", len(images), subpixels, elbo.total / subpixels, elbo.planes / subpixels,
                          elbo.latent_prior / subpixels if has_latent else None,
                          elbo.latent_posterior / subpixels if has_latent else None,
                          plane_step_bits=elbo.bits_per_bit())
    coding = ("single" if mode == "single" else "dataset") if has_latent else CONTEXT_MODE
    results = []
    if mode == "single":  # each image as `compress IMG` codes it alone into IMG's name + .arib
        for image in images:
            implied = api.name_implied_by(Path(image.name).with_suffix(".arib"), image)
            results.append(_round_trip([image], model, None, tile, threads, None if has_latent else coding,
                                       name_from_file=implied))
    else:
        results.append(_round_trip(images, model, lanes, tile, threads, coding, lane_groups))
    plane = sum(r.quantised_bits for r, _, _ in results)
    return EvalReport(
        mode, coding, len(images), subpixels,
        theoretical_bpd=sum(r.theoretical_bits + r.prior_bits - r.posterior_bits for r, _, _ in results) / subpixels,
        plane_bpd=plane / subpixels,
        latent_prior_bpd=sum(r.prior_bits for r, _, _ in results) / subpixels if has_latent else None,
        latent_posterior_bpd=sum(r.posterior_bits for r, _, _ in results) / subpixels if has_latent else None,
        quantised_bpd=sum(r.net_bits for r, _, _ in results) / subpixels,
        actual_bpd=sum(len(r.data) for r, _, _ in results) * 8 / subpixels,
        auxiliary_bpd=sum(r.auxiliary_bits for r, _, _ in results) / subpixels,
        encode_seconds=sum(r.seconds for r, _, _ in results),
        decode_seconds=sum(d for _, d, _ in results),
        decode_failures=sum(f for _, _, f in results),
        lanes=None if mode == "single" else results[0][0].archive.lanes)
