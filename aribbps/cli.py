"""The command line: ``python -m aribbps`` (also installed as ``aribbps``).

Exit codes (stable, for scripts):
  0  success
  1  bad input: unreadable or unsupported image, damaged or truncated .arib,
     wrong model, checksum mismatch (an AribError)
  2  usage error (bad options)
  3  the operating system refused a read or write (missing file, disk full)
  130 interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from aribbps import api
from aribbps.errors import AribError

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_OS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _progress(total: int | None, label: str, quiet: bool):
    """A tqdm bar advancing by items, silent when quiet or stderr is not a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="item", disable=quiet or not sys.stderr.isatty(), leave=False)
    return bar


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH", default=None,
                   help="weights: a .safetensors model file, or a folder with sig.pth/ins.pth "
                        "(default: the model shipped with aribbps)")
    p.add_argument("--config", metavar="NAME_OR_JSON", default=None,
                   help="model config, needed only for a sig.pth/ins.pth folder without config.json")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or auto (default: cpu for compress/eval; for decompress the device kind "
                        "the file was encoded on, which decoding must match)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="entropy-coder threads (default 0 = one per CPU core)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def _add_layout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int, default=None, metavar="L",
                   help=f"independent coder stacks coded in parallel; the network runs on L images at once "
                        f"(default: up to {api.AUTO_LANES} on CPU, {api.CUDA_AUTO_LANES} on CUDA, fewer for large "
                        f"images so that L images hold at most {api.CPU_ROUND_PIXELS} pixels on CPU, "
                        f"{api.CUDA_ROUND_PIXELS} on CUDA, and at least {api.MIN_ITEMS_PER_LANE} items per lane)")
    p.add_argument("--tile", type=int, default=api.DEFAULT_TILE, metavar="PX",
                   help=f"cut images into tiles of PX x PX pixels, coded independently, so memory stays bounded "
                        f"(0 = never tile; default {api.DEFAULT_TILE})")
    p.add_argument("--lane-groups", type=int, default=None, metavar="G",
                   help="split the lanes into G codecs run concurrently, so that the GPU computes for one while "
                        "the coder works for another (default: 2 on CUDA, 1 on CPU); the file records G")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aribbps", description="Learned lossless image compression by bit-plane slicing (ArIB-BPS).",
        epilog="Exit codes: 0 ok, 1 bad input or damaged file, 2 usage, 3 I/O error, 130 interrupted.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compress", help="compress images into one .arib file",
                       description="Compress image files (PNG, JPEG, BMP, TIFF, WebP, ...; 8-bit greyscale, "
                                   "RGB, RGBA or palette) into one .arib file. The output is written atomically.")
    c.add_argument("files", nargs="*", metavar="FILE", help="images to compress")
    c.add_argument("--batch", metavar="DIR", help="compress every file directly inside DIR (sorted by name)")
    c.add_argument("-o", "--output", metavar="OUT.arib",
                   help="output file (default: the input name or the --batch folder name + .arib)")
    c.add_argument("--mode", choices=("context", "single", "dataset"), default=None,
                   help="coding mode: 'single' (ArIB, each image's latents paid by its own low planes), "
                        "'dataset' (ArIB, images chained per lane: cheapest for many images), 'context' (models "
                        "without latent model). Default: single for one image of one tile, dataset for several "
                        "images or tiles (the tiles of one image then chain), context when the model has no "
                        "latent model")
    _add_layout_options(c)
    _add_model_options(c)

    d = sub.add_parser("decompress", help="restore the images of an .arib file",
                       description="Decode an .arib file into a folder with the original file names; lossless "
                                   "formats are kept, lossy originals (JPEG) are written as PNG. Every image is "
                                   "verified (lane seals; per-image checksums in version 1-2 files); nothing "
                                   "is written unless all verify.")
    d.add_argument("input", metavar="IN.arib")
    d.add_argument("-o", "--output", metavar="DIR", required=True, help="output folder (created if needed)")
    _add_model_options(d)

    i = sub.add_parser("info", help="describe an .arib file without decoding it")
    i.add_argument("input", metavar="IN.arib")
    i.add_argument("--json", action="store_true", help="print JSON")

    e = sub.add_parser("eval", help="measure compression of a folder of images",
                       description="The paper code's test modes over the images directly inside DIR: "
                                   "inference = theoretical bpd (no coding); single = each image in its own "
                                   "file, as compress codes one image: actual bpd, times, decode failures; "
                                   "dataset = all images in one file "
                                   "over lanes; speed = images per second (dataset layout).")
    e.add_argument("data_dir", metavar="DIR")
    e.add_argument("--mode", choices=("inference", "single", "dataset", "speed"), default="dataset",
                   help="what to measure (default dataset)")
    e.add_argument("--limit", type=int, default=0, metavar="N", help="use only the first N images (0 = all)")
    e.add_argument("--json", action="store_true", help="print JSON")
    _add_layout_options(e)
    _add_model_options(e)
    return parser


def _load_model(args: argparse.Namespace, default_device: str | None):
    from aribbps import zoo

    return zoo.load(args.model, args.device or default_device, args.config)


def _cmd_compress(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if bool(args.files) == bool(args.batch):
        parser.error("compress needs FILE... or --batch DIR (not both)")
    inputs = api.batch_inputs(args.batch) if args.batch else [Path(f) for f in args.files]
    output = Path(args.output) if args.output else (
        Path(str(Path(args.batch).resolve()) + ".arib") if args.batch else inputs[0].with_suffix(".arib"))
    model = _load_model(args, "cpu")
    bar = _progress(None, "compress", args.quiet)
    try:
        result = api.compress(inputs, output, model, args.lanes, args.tile, threads=args.threads,
                              progress=lambda n: bar.update(n), mode=args.mode, lane_groups=args.lane_groups)
    finally:
        bar.close()
    if not args.quiet:
        aux = result.auxiliary_bits / result.subpixels
        print(f"{output}: {len(result.archive.images)} images, mode {result.archive.mode}, {len(result.data)} bytes, "
              f"actual {result.actual_bpd:.4f} bpd (model {result.net_bits / result.subpixels:.4f}, "
              f"auxiliary {aux:.4f}), {result.seconds:.2f} s")
    return EXIT_OK


def _cmd_decompress(args: argparse.Namespace) -> int:
    from aribbps.container import read_archive

    archive = read_archive(args.input)
    model = _load_model(args, archive.device_kind)
    bar = _progress(None, "decompress", args.quiet)
    try:
        written = api.decompress(args.input, args.output, model, threads=args.threads,
                                 progress=lambda n: bar.update(n))
    finally:
        bar.close()
    if not args.quiet:
        print(f"{args.output}: {len(written)} images restored and verified")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    summary = api.info(args.input)
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    for key in ("file", "bytes", "model", "weights", "mode", "lanes", "lane_groups", "tile", "device", "kernels",
                "probabilities", "temperatures", "corrections", "native_conv",
                "numerics_probe", "images"):
        print(f"{key:14s} {summary[key]}")
    print(f"{'bpd':14s} {summary['bpd']:.4f}")
    for r in summary["records"][:20]:
        grey = " (coded as grey: its three channels are equal)" if r["grey"] else ""
        print(f"  {r['name']}  {r['width']}x{r['height']} {r['mode']} {r['format']}{grey}")
    if len(summary["records"]) > 20:
        print(f"  ... and {len(summary['records']) - 20} more")
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from aribbps.evaluate import evaluate

    paths = api.batch_inputs(args.data_dir)
    if args.limit > 0:
        paths = paths[: args.limit]
    images = api.load_images(paths)
    model = _load_model(args, "cpu")
    report = evaluate(images, model, args.mode, args.lanes, args.tile, args.threads, args.lane_groups)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return EXIT_OK
    for key, value in report.as_dict().items():
        if value is not None and key != "plane_step_bits":
            print(f"{key:20s} {value:.4f}" if isinstance(value, float) else f"{key:20s} {value}")
    if report.plane_step_bits is not None:
        print("bits per coded bit   step 1  step 2  step 3  step 4")
        for k, row in enumerate(report.plane_step_bits, start=1):
            print(f"  plane {k}          " + "".join(f"{v:8.3f}" for v in row))
    return EXIT_OK if not report.decode_failures else EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "compress":
            return _cmd_compress(args, parser)
        if args.command == "decompress":
            return _cmd_decompress(args)
        if args.command == "info":
            return _cmd_info(args)
        return _cmd_eval(args)
    except AribError as exc:
        print(f"aribbps: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"aribbps: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_OS
    except KeyboardInterrupt:
        print("aribbps: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
