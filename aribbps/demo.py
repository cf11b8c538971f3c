"""``make demo``: compress the shipped sample photos with the default model,
decompress them, verify every pixel, and compare with classical codecs.

    python -m aribbps.demo [--samples DIR] [--model PATH]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aribbps import api, zoo
from aribbps.baselines import available_codecs, measure
from aribbps.errors import AribError
from aribbps.imageio import load_image

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _row(name: str, nbytes: int, subpixels: int, seconds: float) -> str:
    return f"{name:28s} {nbytes:>10d} {nbytes * 8 / subpixels:>8.3f} {seconds:>9.2f}"


def run(samples: Path, model_path: str | None, lanes: int | None) -> int:
    paths = api.batch_inputs(samples)
    paths = [p for p in paths if p.suffix.lower() in (".png", ".bmp", ".tif", ".tiff", ".ppm", ".webp")]
    if not paths:
        raise AribError(f"no sample images in {samples}")
    model = zoo.load(model_path, "cpu")
    originals = [load_image(p) for p in paths]
    subpixels = sum(i.pixels.size for i in originals)
    print(f"aribbps demo: {len(paths)} images from {samples}, {subpixels} sub-pixels; model {model.name} "
          f"({model.source})")
    lines = [f"{'codec':28s} {'bytes':>10s} {'bpd':>8s} {'seconds':>9s}", "-" * 58]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        arib = Path(tmp) / "samples.arib"
        result = api.compress(paths, arib, model, lanes=lanes)
        restored = api.decompress(arib, Path(tmp) / "restored", model)
        for original, path in zip(originals, restored):
            if not np.array_equal(load_image(path).pixels, original.pixels):
                print(f"demo: {path.name} did not round-trip", file=sys.stderr)
                return 1
    seconds = time.perf_counter() - start
    lines.append(_row(f"aribbps dataset ({result.archive.lanes} lanes)", len(result.data), subpixels, seconds))
    single_bytes, start = 0, time.perf_counter()
    for image in originals:
        single_bytes += len(api.encode_images([image], model, lanes=1).data)
    lines.append(_row("aribbps single (encode only)", single_bytes, subpixels, time.perf_counter() - start))
    lines.append(f"{'  theoretical (model)':28s} {'':>10s} {result.theoretical_bpd:>8.3f}")
    for codec in available_codecs():
        r = measure(codec, [i.pixels for i in originals])
        lines.append(_row(codec.name, r.bytes, r.subpixels, r.seconds))
    print("\n".join(lines))
    print(f"all {len(paths)} images decompressed bit-exactly")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder of sample images")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--lanes", type=int, default=None, help="default: automatic (aribbps.api.default_lanes)")
    args = parser.parse_args(argv)
    try:
        return run(args.samples, args.model, args.lanes)
    except AribError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
