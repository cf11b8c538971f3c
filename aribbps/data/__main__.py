"""``python -m aribbps.data``: build training and evaluation corpora from photos.

Examples::

    python -m aribbps.data build-corpus /work/corpus_src --size 32 --out corpus/p32 \\
        --per-photo 3000 --holdout Aqua Storm Kite Path
    python -m aribbps.data build-corpus /work/corpus_src --crops 256 --out corpus/crops256 \\
        --per-photo 10 --holdout Aqua Storm Kite Path --splits valid
    python -m aribbps.data extract-rcc gcompris/rcc/erase.rcc gcompris/rcc/details.rcc \\
        --out photos_gc --prefix gc_

Exit codes: 0 ok, 1 bad input (CorpusError), 2 usage, 3 I/O error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

from aribbps.data.corpus import PATCH_SIZES, SPLITS, CorpusConfig, build_corpus, plan_photos, planned_crops
from aribbps.errors import AribError

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_OS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _holdout(values: list[str]) -> tuple[str, ...] | float:
    """One number in [0, 1) is a fraction; anything else is a list of photo names."""
    if len(values) == 1:
        try:
            return float(values[0])
        except ValueError:
            pass
    return tuple(values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aribbps.data", description="Build training and evaluation corpora from photos.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("build-corpus", help="cut photos into box-downsampled patches (ImageNet32/64 style)",
                       description="Cut photos into box-downsampled square patches, whole photos held out "
                                   "for validation; writes OUT/train, OUT/valid and OUT/manifest.json.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="photo files or folders (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (absent or empty)")
    p.add_argument("--size", type=int, choices=PATCH_SIZES, default=32, help="patch side (default 32)")
    p.add_argument("--crops", type=int, default=None, metavar="SIZE",
                   help="instead of patches, SIZE x SIZE crops downsampled by 2 from non-overlapping cells")
    p.add_argument("--per-photo", type=int, default=3000, metavar="N", help="crops per photo (default 3000)")
    p.add_argument("--valid-per-photo", type=int, default=None, metavar="N",
                   help="crops per held-out photo (default: --per-photo)")
    p.add_argument("--holdout", nargs="+", default=[], metavar="NAME_OR_FRACTION",
                   help="photo names (file stems) to hold out, or one fraction in [0, 1)")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to write (default both)")
    p.add_argument("--seed", type=int, default=0, help="seed of all random draws (default 0)")
    p.add_argument("--min-scale", type=float, default=0.125, help="smallest crop side / shorter side (default 1/8)")
    p.add_argument("--max-scale", type=float, default=0.5, help="largest crop side / shorter side (default 1/2)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier corpus in DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    r = sub.add_parser("extract-rcc", help="copy the photos out of Qt resource bundles (.rcc)",
                       description="Write the RGB photos inside Qt .rcc bundles (e.g. gcompris-qt-data's) "
                                   "into OUT, flat, named PREFIX<bundle>_<folder>_<name>.")
    r.add_argument("bundles", nargs="+", metavar="RCC", help=".rcc files")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--min-side", type=int, default=256, metavar="PX",
                   help="leave out images whose shorter side is below PX (default 256)")
    r.add_argument("--prefix", default="", help="prepended to every file name (e.g. gc_)")
    r.add_argument("--notices", metavar="DIR", default=None,
                   help="also write the bundles' README files (image authors and licences) into DIR")
    r.add_argument("-q", "--quiet", action="store_true", help="no summary")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def build_corpus_command(args: argparse.Namespace) -> int:
    """Run ``build-corpus``; returns the exit code."""
    from tqdm import tqdm

    size = args.crops if args.crops is not None else args.size
    config = CorpusConfig(size=size, per_photo=args.per_photo, valid_per_photo=args.valid_per_photo,
                          holdout=_holdout(args.holdout), seed=args.seed, min_scale=args.min_scale,
                          max_scale=args.max_scale, crop_size=args.crops, splits=tuple(args.splits))
    config.validate()
    total = planned_crops(plan_photos(args.sources, config), config)
    start = time.perf_counter()
    with tqdm(total=total, unit="crop", disable=args.quiet or not sys.stderr.isatty()) as bar:
        manifest = build_corpus(args.sources, args.out, config, overwrite=args.overwrite, advance=bar.update)
    if not args.quiet:
        counts = manifest["counts"]
        print(f"{args.out}: {counts['train']} train + {counts['valid']} valid {config.mode} "
              f"of {size}x{size} from {len(manifest['photos'])} photos "
              f"(held out: {', '.join(manifest['holdout']) or 'none'}) in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def extract_rcc_command(args: argparse.Namespace) -> int:
    """Run ``extract-rcc``; returns the exit code."""
    from aribbps.data.qt_resources import extract_photos

    written = extract_photos(args.bundles, args.out, min_side=args.min_side, prefix=args.prefix,
                             notices_dir=args.notices)
    if not args.quiet:
        print(f"{args.out}: {len(written)} photos from {len(args.bundles)} bundles")
    return EXIT_OK


COMMANDS = {"build-corpus": build_corpus_command, "extract-rcc": extract_rcc_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (argparse exits with 2 on bad options)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return COMMANDS[args.command](args)
        except AribError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_OS
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
