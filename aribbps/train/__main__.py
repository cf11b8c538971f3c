"""``python -m aribbps.train``: train the SIG or INS net, fine-tune SIG, or combine two runs.

One process (CPU, or one GPU)::

    python -m aribbps.train --mode ins --config small-context \\
        --dataset_type filedataset --data_dir patches/ --valid_num 500 --save_dir runs/ins

One process per GPU (the batch size is per process)::

    torchrun --standalone --nproc_per_node 4 -m aribbps.train --preset imagenet64_small --mode ins ...

Put a SIG run and an INS run together into one model file::

    python -m aribbps.train combine --sig runs/sig/best_sig.safetensors \\
        --ins runs/ins/best_ins.safetensors -o model.safetensors

Fine-tune the SIG net with the discretised latents of single-image coding
(the paper's last stage): write the per-image qp list, then train::

    python -m aribbps.train generate-finetune --model model.safetensors \\
        --dataset_type filedataset --data_dir patches/          # -> patches/qp_list.json
    python -m aribbps.train --mode finetune --init model.safetensors --qp_path qp_list.json \\
        --dataset_type filedataset --data_dir patches/ --save_dir runs/finetune

The paper code's option names (``--data_dir``, ``--batch_size``, ...) work,
and so do hyphenated ones (``--data-dir``). See docs/training.md.

Exit codes: 0 done, 1 training failed (diverged), 2 bad options, data,
config or checkpoint, 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import torch
from torch.multiprocessing.spawn import ProcessException

from aribbps.datasets import DATASET_KINDS
from aribbps.errors import AribError
from aribbps.train.presets import MODES, PRESETS, get_preset, preset_name
from aribbps.train.finetune import generate_finetune
from aribbps.train.trainer import TrainingError, TrainOptions, combine_models, launch

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "python -m aribbps.train"

#: Built-in values of the options a preset can set (used when neither the
#: command line nor a preset gives one).
DEFAULTS: dict[str, Any] = {
    "lr": 2e-4, "batch_size": 16, "num_iters": 100_000, "valid_interval": 1_000,
    "decay_rate": 1.0, "decay_interval": 1_000, "dropout": 0.0, "valid_num": 0,
}


class _Parser(argparse.ArgumentParser):
    """Errors in one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _flag(p: argparse._ActionsContainer, name: str, **kw: Any) -> None:
    """``--name`` with ``--name-with-hyphens`` as an alias, or the reverse."""
    spellings = [f"--{name}"]
    for alt in (name.replace("_", "-"), name.replace("-", "_")):
        if f"--{alt}" not in spellings:
            spellings.append(f"--{alt}")
    p.add_argument(*spellings, dest=name.replace("-", "_"), **kw)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Train the networks of an ArIB-BPS model. Subcommands: 'combine' "
                    f"({PROG} combine --help) puts a SIG run and an INS run into one model file; "
                    f"'generate-finetune' ({PROG} generate-finetune --help) writes the qp list of --mode finetune.",
        epilog="Exit codes: 0 done, 1 training failed, 2 bad options/data/config, 130 interrupted. "
               "Multi-GPU: torchrun --nproc_per_node N -m aribbps.train ... (see docs/training.md).",
    )
    g = p.add_argument_group("what to train")
    _flag(g, "mode", required=True, choices=MODES,
          help="sig: the significant planes' net (with its latent model if the config has one); ins: the "
               "insignificant planes' net; finetune: SIG and its latent model with the discretised latents of "
               "single-image coding (needs --init and --qp_path from generate-finetune)")
    _flag(g, "config", metavar="NAME_OR_JSON",
          help="model config: a name (tiny-context, small-context, cifar10, imagenet32, ...) or a JSON file "
               "(default: the preset's, or the one in --init / --resume)")
    _flag(g, "preset", metavar="NAME",
          help=f"paper training settings: {', '.join(sorted(PRESETS))} (or IN32, IN64, IN64(small)); fills "
               "lr, batch (the table's total batch / processes), iterations, intervals, decay, dropout and "
               "valid_num; explicit options override it")
    _flag(g, "init", metavar="MODEL",
          help="model file to start both nets from (the net not trained is exported as it is); "
               "default: fresh initialisation")
    _flag(g, "dropout", type=float, metavar="P", help="dropout probability (default 0)")
    _flag(g, "train-only", metavar="PART",
          help="train only the parameters whose names contain PART (or one of a comma-separated list), "
               "e.g. 'refine' for the step-1b refinements of a model grown into a split_first_step config, "
               "'refine_step3,refine_step4' for those of steps 3 and 4; the rest stay as --init has them")

    g = p.add_argument_group("data")
    _flag(g, "dataset_type", default="filedataset", choices=DATASET_KINDS,
          help="cifar10: the CIFAR-10 python batches (data_batch_1..5) in --data_dir; imagefolder: images "
               "in subfolders; filedataset: images directly in --data_dir (default)")
    _flag(g, "data_dir", required=True, metavar="DIR", help="the data set folder")
    _flag(g, "valid_num", type=int, metavar="N",
          help="hold out N images for validation (default 0: no validation)")
    _flag(g, "valid-select", default="last", choices=("last", "hash"),
          help="which images are held out: the last N (default) or N chosen by a hash of their names")
    _flag(g, "random-crop", type=int, default=0, metavar="SIZE",
          help="train on random SIZE x SIZE crops (validation: the centre crop); default: whole images, "
               "their last rows/columns dropped to a multiple of the config's pad_multiple")
    _flag(g, "batch-pixels", type=int, default=0, metavar="P",
          help="for data sets of mixed image sizes: each batch holds images of one size, P // (H*W) of "
               "them (at least 1), each size's share of the batches that of its pixels; --batch_size then sets "
               "only the validation batches (default 0: batches of --batch_size images of one size)")
    _flag(g, "hflip", action="store_true", help="mirror training images at random")
    _flag(g, "kl_warmup", type=int, default=0, metavar="N",
          help="raise the latent bits' weight in the loss linearly from 0 to 1 over the first N iterations "
               "(counters posterior collapse; sig/finetune; default 0 = off)")
    _flag(g, "ema", type=float, default=0.0, metavar="DECAY",
          help="validate and export an exponential moving average of the weights with this decay "
               "(e.g. 0.999; default 0 = off)")
    _flag(g, "workers", type=int, default=None, metavar="N",
          help="data loader processes (default 4 on CUDA, 0 on CPU)")
    _flag(g, "qp_path", metavar="PATH",
          help="finetune only: the qp list written by generate-finetune (image name -> qp); a relative path is "
               "relative to --data_dir (e.g. qp_list.json)")

    g = p.add_argument_group("optimisation (Adam, step-decayed learning rate)")
    _flag(g, "lr", type=float, help=f"learning rate (default {DEFAULTS['lr']}; with --resume the "
          "checkpoint's: given, the run goes on at it, e.g. to anneal)")
    _flag(g, "batch_size", type=int, metavar="B",
          help=f"batch size of each process (default {DEFAULTS['batch_size']})")
    _flag(g, "num_iters", type=int, metavar="N", help=f"iterations (default {DEFAULTS['num_iters']})")
    _flag(g, "decay_rate", type=float, metavar="R",
          help="lr *= R every --decay_interval iterations (default 1: constant)")
    _flag(g, "decay_interval", type=int, metavar="N", help=f"default {DEFAULTS['decay_interval']}")
    _flag(g, "seed", type=int, default=0, help="seed of the initialisation and the data order (default 0)")

    g = p.add_argument_group("output")
    _flag(g, "save_dir", required=True, metavar="DIR",
          help="where train.log, checkpoint.pt, best_<mode>.safetensors and final_<mode>.safetensors go")
    _flag(g, "log_interval", type=int, default=100, metavar="N", help="log every N iterations (default 100)")
    _flag(g, "valid_interval", type=int, metavar="N",
          help=f"validate, export the best and write the checkpoint every N iterations "
               f"(default {DEFAULTS['valid_interval']})")
    _flag(g, "resume", metavar="CHECKPOINT", help="continue from a checkpoint file (or a folder with checkpoint.pt)")

    g = p.add_argument_group("devices")
    _flag(g, "device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    _flag(g, "amp", action="store_true",
          help="bfloat16 autocast for the convolutions (CUDA only); probabilities and weights stay float32")
    _flag(g, "num_gpus", type=int, metavar="N",
          help="without torchrun: start N local processes (one per GPU) itself; under torchrun it must "
               "match --nproc_per_node")
    _flag(g, "master_port", type=int, default=29500, metavar="PORT",
          help="rendezvous port for --num_gpus (under torchrun use torchrun's --master_port)")
    _flag(g, "debug-dir", default=None, help=argparse.SUPPRESS)
    return p


def build_combine_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} combine",
                description="Write a model file with the SIG net of one file and the INS net of another "
                            "(both of the same config).")
    p.add_argument("--sig", required=True, metavar="MODEL", help="take the SIG net from this model file")
    p.add_argument("--ins", required=True, metavar="MODEL", help="take the INS net from this model file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the model file to write")
    return p


def build_generate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} generate-finetune",
                description="Write the qp list of --mode finetune: the latent precision qp single-image coding "
                            "gives every image of a data set (from the bits the model's INS net puts on the "
                            "stack for that image), keyed by image name.")
    _flag(p, "data_dir", required=True, metavar="DIR", help="the training set folder")
    _flag(p, "dataset_type", default="filedataset", choices=DATASET_KINDS,
          help="as for training (default filedataset); cifar10: its 50 000 training images")
    _flag(p, "model", metavar="MODEL", required=True,
          help="the trained model file (both nets; the one --mode finetune will start from with --init)")
    _flag(p, "config", metavar="NAME_OR_JSON", help="only for a sig.pth/ins.pth folder without config.json")
    _flag(p, "data_dst", metavar="DIR",
          help="write the list here instead of in --data_dir; for cifar10 the images are also written here as "
               "PNG files (DIR/data_batch_1/00042.png: then train with --dataset_type imagefolder --data_dir DIR)")
    _flag(p, "qp_path", metavar="PATH",
          help="the list's file name; relative to --data_dst (or --data_dir); default qp_list.json")
    _flag(p, "batch_size", type=int, default=16, metavar="B",
          help="images per network batch (default 16; 1 repeats the encoder's batches exactly)")
    _flag(p, "device", default="cpu", choices=("auto", "cpu", "cuda"), help="where the nets run (default cpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    return p


def _generate(argv: Sequence[str]) -> int:
    args = build_generate_parser().parse_args(argv)
    from tqdm import tqdm

    from aribbps.zoo import load

    try:
        model = load(args.model, args.device, args.config)
        with tqdm(unit="img", disable=args.quiet or not sys.stderr.isatty(), leave=False) as bar:
            result = generate_finetune(args.data_dir, args.dataset_type, model, args.data_dst, args.qp_path,
                                       args.batch_size, progress=bar.update)
    except (AribError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        counts = sorted(set(result.qp.values()))
        spread = ", ".join(f"qp {q}: {sum(1 for v in result.qp.values() if v == q)}" for q in counts)
        print(f"wrote {result.path} ({len(result.qp)} images; {spread})")
        print(f"fine-tune with: {PROG} --mode finetune --init {args.model} --qp_path {result.path.resolve()} "
              f"--dataset_type {result.dataset_type} --data_dir {result.data_dir} ...")
    return EXIT_OK


def _world_size(args: argparse.Namespace) -> int:
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return args.num_gpus or 1


def resolve_options(args: argparse.Namespace) -> tuple[TrainOptions, int]:
    """Command line (+ preset, + defaults) -> (options, processes to start here).

    Raises:
        ValueError: an unknown preset, a total batch that does not split over
            the processes, or --num_gpus that contradicts torchrun.
    """
    under_torchrun = "WORLD_SIZE" in os.environ
    world = _world_size(args)
    if args.num_gpus is not None and args.num_gpus < 1:
        raise ValueError(f"--num_gpus must be >= 1, got {args.num_gpus}")
    if under_torchrun and args.num_gpus not in (None, world):
        raise ValueError(
            f"--num_gpus {args.num_gpus} but torchrun started {world} processes; "
            "under torchrun leave --num_gpus out (--nproc_per_node sets it)"
        )
    values = {k: getattr(args, k) for k in DEFAULTS}
    config = args.config
    if args.preset is not None:
        name = preset_name(args.preset)
        row = get_preset(name, args.mode)
        if row.total_batch % world:
            raise ValueError(
                f"preset {name!r} has a total batch of {row.total_batch}, which does not split over "
                f"{world} processes; give --batch_size"
            )
        from_preset = dataclasses.asdict(row)
        from_preset["batch_size"] = row.total_batch // world
        for key, value in from_preset.items():
            if key in values and values[key] is None:
                values[key] = value
        if config is None and args.init is None and args.resume is None:
            config = name
    for key, value in DEFAULTS.items():
        if values[key] is None:
            values[key] = value
    workers = args.workers
    if workers is None:
        cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        workers = min(4, os.cpu_count() or 1) if cuda else 0
    opts = TrainOptions(
        mode=args.mode, data_dir=args.data_dir, save_dir=args.save_dir, config=config,
        dataset_type=args.dataset_type, valid_select=args.valid_select,
        log_interval=args.log_interval, resume=args.resume, init=args.init, qp_path=args.qp_path,
        resume_lr=args.lr if args.resume is not None else None,
        random_crop=args.random_crop, batch_pixels=args.batch_pixels, hflip=args.hflip,
        kl_warmup=args.kl_warmup, ema=args.ema,
        train_only=args.train_only,
        device=args.device, amp=args.amp,
        seed=args.seed, workers=workers, debug_dir=args.debug_dir, **values,
    )
    return opts, 1 if under_torchrun else world


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    rank = os.environ.get("RANK")
    where = f" (rank {rank})" if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    print(f"{PROG}: error{where}: {message}", file=sys.stderr)
    return code


def _combine(argv: Sequence[str]) -> int:
    args = build_combine_parser().parse_args(argv)
    try:
        digest = combine_models(args.sig, args.ins, args.output)
    except (AribError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {args.output!r}: {exc.strerror or exc}")
    print(f"wrote {args.output} (weights sha256 {digest[:16]}...)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits itself on bad syntax and --help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["combine"]:
        return _combine(argv[1:])
    if argv[:1] == ["generate-finetune"]:
        return _generate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        opts, nprocs = resolve_options(args)
        launch(opts, nprocs, args.master_port)
    except TrainingError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except ProcessException as exc:  # a --num_gpus child failed; its traceback went to stderr
        last = str(exc).strip().splitlines()[-1:] or ["a training process failed"]
        return _fail(last[0], EXIT_FAILED)
    except (AribError, ValueError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
