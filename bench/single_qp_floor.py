"""Single-image files under each lowest qp the encoder may fall to (``aribbps.arib.QP_MIN``), side by side.

    python bench/single_qp_floor.py DIR [--floors 1 2 3] [--limit N] [--step K] [--model PATH]

Each image of DIR (every K-th of the first N) is coded on its own in
single-image mode once per floor; every file is decoded and checked. Prints
the actual bpd and its parts: quantised planes, latent net cost (prior -
posterior), padding (auxiliary bits), and how many images got each qp. The
floor trades coarser latent bins (more plane bits) against padding words
(DESIGN 1.6 uses 3; the codec uses 2, see the module docstring of
``aribbps.arib``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from aribbps import api, arib, zoo
from aribbps.imageio import LoadedImage
from aribbps.container import decode_archive


def measure_floor(images: list[LoadedImage], model: zoo.LoadedModel, floor: int) -> dict:
    saved = arib.QP_MIN
    arib.QP_MIN = floor
    try:
        totals = {"planes": 0.0, "latent": 0.0, "padding": 0.0, "file": 0.0}
        qps: list[int] = []
        subpixels = 0
        for image in images:
            result = api.encode_images([image], model, lanes=1, mode="single")
            (decoded,) = api.decode_archive_images(decode_archive(result.data), model)
            if not np.array_equal(decoded.pixels, image.pixels):
                raise RuntimeError(f"{image.name} did not round-trip")
            totals["planes"] += result.quantised_bits
            totals["latent"] += result.prior_bits - result.posterior_bits
            totals["padding"] += result.auxiliary_bits
            totals["file"] += len(result.data) * 8
            subpixels += result.subpixels
            extras = [result.archive.extra, *(r.extra for r in result.archive.images)]
            qps += [int(e["qp"]) for e in extras if "qp" in e and isinstance(e["qp"], int)]
    finally:
        arib.QP_MIN = saved
    row = {k: v / subpixels for k, v in totals.items()}
    row["qp_counts"] = np.bincount(qps, minlength=arib.QP_MAX + 1)[1:].tolist()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--floors", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--limit", type=int, default=0, help="first N images (0 = all)")
    parser.add_argument("--step", type=int, default=1, help="every K-th image")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    args = parser.parse_args(argv)
    model = zoo.load(args.model, "cpu")
    images = api.load_images(api.batch_inputs(args.dir)[: args.limit or None][:: args.step])
    print(f"{args.dir}: {len(images)} images, single-image mode, bits per sub-pixel")
    print("| lowest qp | file | planes | latent | padding | images at qp 1..10 |")
    print("|---|---|---|---|---|---|")
    for floor in args.floors:
        r = measure_floor(images, model, floor)
        print(f"| {floor} | {r['file']:.4f} | {r['planes']:.4f} | {r['latent']:.4f} | {r['padding']:.4f} | "
              f"{' '.join(map(str, r['qp_counts']))} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
