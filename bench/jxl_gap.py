"""Where the model loses to JPEG-XL: per image, and split by how smooth the image is.

    python bench/jxl_gap.py DIR [--model PATH] [--limit N] [--step K] [--tile PX] [--buckets 1.5 2.5]

For each image (every K-th of the first N): the model's theoretical bpd
(one latent sample, unquantised probabilities, as ``aribbps eval --mode
inference``), JPEG-XL lossless (effort 7) on the same image, their ratio,
and the share of the model's plane bits spent on the first lattice step
(the pixels that see no bit of their own plane). Then the same figures per
JPEG-XL bpd bucket, which shows whether the gap sits in smooth or in
textured images. Theoretical, not actual: this is a diagnostic of the
model, not of the container or the coder.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aribbps import api, zoo
from aribbps.baselines import available_codecs, measure
from aribbps.evaluate import theoretical_bits

JPEG_XL = "JPEG-XL-lossless"


@dataclass
class ImageGap:
    name: str
    subpixels: int
    model_bits: float
    jxl_bits: float
    step1_bits: float
    plane_bits: float

    @property
    def ratio(self) -> float:
        return self.model_bits / self.jxl_bits


def measure_gaps(directory: Path, model: zoo.LoadedModel, limit: int, step: int,
                 tile: int = api.DEFAULT_TILE) -> list[ImageGap]:
    codecs = {c.name: c for c in available_codecs()}
    if JPEG_XL not in codecs:
        raise SystemExit("this imagecodecs build has no JPEG-XL encoder")
    gaps = []
    for path in api.batch_inputs(directory)[: limit or None][::step]:
        image = api.load_images([path])[0]
        bits = theoretical_bits([image], model, tile)
        jxl = measure(codecs[JPEG_XL], [image.pixels])
        gaps.append(ImageGap(path.name, jxl.subpixels, bits.total, jxl.bytes * 8.0,
                             float(bits.step_bits[:, 0].sum()), bits.planes))
    return gaps


def summary_rows(gaps: list[ImageGap], edges: list[float]) -> list[tuple[str, int, float, float, float, float]]:
    """(bucket, images, model bpd, JPEG-XL bpd, ratio, step-1 share) per JPEG-XL bpd bucket, then all."""
    bounds = [-np.inf, *edges, np.inf]
    groups = [(f"JPEG-XL {lo:g}..{hi:g} bpd", [g for g in gaps if lo <= g.jxl_bits / g.subpixels < hi])
              for lo, hi in zip(bounds[:-1], bounds[1:])]
    rows = []
    for label, group in [*groups, ("all", gaps)]:
        if not group:
            continue
        sub = sum(g.subpixels for g in group)
        model_bits, jxl_bits = sum(g.model_bits for g in group), sum(g.jxl_bits for g in group)
        share = sum(g.step1_bits for g in group) / sum(g.plane_bits for g in group)
        rows.append((label, len(group), model_bits / sub, jxl_bits / sub, model_bits / jxl_bits, share))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--limit", type=int, default=0, help="first N images (0 = all)")
    parser.add_argument("--step", type=int, default=1, help="every K-th image")
    parser.add_argument("--tile", type=int, default=api.DEFAULT_TILE,
                        help=f"tile side as the codec would cut the images (0 = whole; default {api.DEFAULT_TILE})")
    parser.add_argument("--buckets", type=float, nargs="*", default=[1.5, 2.5],
                        help="JPEG-XL bpd bucket edges for the summary")
    args = parser.parse_args(argv)
    gaps = measure_gaps(args.dir, zoo.load(args.model, "cpu"), args.limit, max(1, args.step), args.tile)
    print("| image | model bpd | JPEG-XL bpd | ratio | step-1 share of plane bits |")
    print("|---|---|---|---|---|")
    for g in sorted(gaps, key=lambda g: g.ratio, reverse=True):
        print(f"| {g.name} | {g.model_bits / g.subpixels:.3f} | {g.jxl_bits / g.subpixels:.3f} | "
              f"{g.ratio:.2f} | {g.step1_bits / g.plane_bits:.2f} |")
    print()
    print("| images | n | model bpd | JPEG-XL bpd | ratio | step-1 share |")
    print("|---|---|---|---|---|---|")
    for label, n, m, j, r, s in summary_rows(gaps, sorted(args.buckets)):
        print(f"| {label} | {n} | {m:.3f} | {j:.3f} | {r:.2f} | {s:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
