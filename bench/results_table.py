"""The README's results table: aribbps against classical lossless codecs.

    python bench/results_table.py DIR [DIR ...] [--model PATH] [--limit N] [--lanes L] [--json OUT]

For each folder of images: aribbps actual bpd in single-image mode (each
image its own .arib file) and dataset mode (all images in one file), the
model's theoretical bpd, encode/decode seconds per image, and the bpd of
PNG, WebP lossless, JPEG-XL lossless (effort 7), JPEG-LS and JPEG 2000, each
image coded on its own. Every round trip is verified.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from aribbps import api, zoo
from aribbps.baselines import available_codecs, measure
from aribbps.evaluate import evaluate


def table_rows(directory: Path, model: zoo.LoadedModel, limit: int, lanes: int | None) -> dict:
    paths = api.batch_inputs(directory)[: limit or None]
    images = api.load_images(paths)
    row: dict = {"set": directory.name, "images": len(images),
                 "size": f"{images[0].pixels.shape[1]}x{images[0].pixels.shape[0]}"}
    for mode in ("single", "dataset"):
        report = evaluate(images, model, mode, lanes=lanes)
        if report.decode_failures:
            raise RuntimeError(f"{report.decode_failures} decode failures in {mode} mode on {directory}")
        row[f"aribbps_{mode}"] = report.actual_bpd
        row[f"aribbps_{mode}_encode_s_per_image"] = report.encode_seconds / len(images)
        row[f"aribbps_{mode}_decode_s_per_image"] = report.decode_seconds / len(images)
        row["aribbps_theoretical"] = report.theoretical_bpd
        if report.lanes is not None:
            row["dataset_lanes"] = report.lanes
    for codec in available_codecs():
        row[codec.name] = measure(codec, [i.pixels for i in images]).bpd
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--limit", type=int, default=0, help="first N images of each folder (0 = all)")
    parser.add_argument("--lanes", type=int, default=None,
                        help="dataset-mode lanes (default: automatic, aribbps.api.default_lanes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    model = zoo.load(args.model, "cpu")
    rows = [table_rows(d, model, args.limit, args.lanes) for d in args.dirs]
    codecs = [c.name for c in available_codecs()]
    head = ["set", "images", "size", "aribbps_single", "aribbps_dataset", "aribbps_theoretical", *codecs]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in head) + " |")
    print()
    for row in rows:
        print(f"{row['set']}: encode {row['aribbps_dataset_encode_s_per_image']:.3f} s/image, decode "
              f"{row['aribbps_dataset_decode_s_per_image']:.3f} s/image (dataset mode, "
              f"{row['dataset_lanes']} lane{'s' if row['dataset_lanes'] > 1 else ''}, CPU); single mode "
              f"{row['aribbps_single_encode_s_per_image']:.3f} / {row['aribbps_single_decode_s_per_image']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
