"""What ``--mode finetune`` buys: single-image actual bpd before and after fine-tuning.

    python bench/finetune_effect.py --model model.safetensors --data_dir patches/ --steps 300 \\
        [--eval_dir held_out/] [--dataset_type filedataset] [--lr 1e-4] [--batch_size 16] \\
        [--random-crop 32] [--limit 64] [--control] [--work runs/finetune-effect] [--json]

1. ``generate-finetune``: the qp list of ``--data_dir`` under ``--model``
   (written to ``WORK/qp_list.json``; the data folder is not touched);
2. ``--mode finetune`` for ``--steps`` iterations from ``--model``
   (no validation; the export is ``WORK/run/final_finetune.safetensors``);
3. ``aribbps.evaluate.evaluate(..., "single")`` of both models on the same
   images (``--eval_dir``, a folder of images, or by default the first
   ``--limit`` images of ``--data_dir``): every image in its own ``.arib``,
   encoded, decoded and checked.

With ``--control``, also ``--mode sig`` for the same steps, learning rate
and data from ``--model`` (continuous latents): fine-tuning trains SIG
further, and the control separates that from the effect of training with
the codec's discretisation.

Prints, for each model, the actual bpd (bytes of the ``.arib`` files), the
bits the coder was given (quantised planes + latent prior − posterior +
auxiliary padding) and its parts, and the decode failures (must be 0).
Finetuning trains the latent model for exactly this cost, so the difference
is its effect; on a small or briefly trained model it can be nil or
negative (the seed's recipe fine-tunes a fully trained model with lr 1e-5
for 5.6e4-1.3e5 iterations).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aribbps.datasets import DATASET_KINDS, open_dataset
from aribbps.evaluate import EvalReport, evaluate
from aribbps.imageio import LoadedImage
from aribbps.train import TrainOptions, generate_finetune, train
from aribbps.zoo import load


def dataset_images(kind: str, root: str, limit: int) -> list[LoadedImage]:
    """The first ``limit`` items (0 = all) of a data set, as the codec's images (RGB)."""
    dataset = open_dataset(kind, root, split="train")
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    images = []
    for index in range(count):
        image, name = dataset[index]
        pixels = np.ascontiguousarray(image.numpy().transpose(1, 2, 0))
        images.append(LoadedImage(Path(name).name, "PNG", "RGB", pixels))
    return images


def report_row(label: str, report: EvalReport) -> dict:
    return {
        "model": label,
        "actual_bpd": report.actual_bpd,
        "coded_bpd": report.quantised_bpd,  # planes (quantised) + prior - posterior + auxiliary
        "plane_bpd": report.plane_bpd,
        "latent_prior_bpd": report.latent_prior_bpd,
        "latent_posterior_bpd": report.latent_posterior_bpd,
        "auxiliary_bpd": report.auxiliary_bpd,
        "decode_failures": report.decode_failures,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the trained model (both nets, with latent model)")
    p.add_argument("--data_dir", required=True, help="fine-tuning images")
    p.add_argument("--dataset_type", default="filedataset", choices=DATASET_KINDS)
    p.add_argument("--steps", type=int, required=True, help="fine-tuning iterations")
    p.add_argument("--eval_dir", default=None, help="images to measure (filedataset; default: --data_dir's)")
    p.add_argument("--limit", type=int, default=64, help="measure at most this many images (0 = all)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--random-crop", type=int, default=0, dest="random_crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--control", action="store_true",
                   help="also continue --mode sig (continuous latents) for the same steps, as a control")
    p.add_argument("--work", default=None, help="folder for the qp list and the run (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        start = time.perf_counter()
        before = load(args.model, "cpu")
        listed = generate_finetune(args.data_dir, args.dataset_type, before, data_dst=work)
        qp_values = np.array(list(listed.qp.values()))
        t_list = time.perf_counter() - start

        def run(mode: str, **extra: object) -> Path:
            with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines
                return train(TrainOptions(
                    mode=mode, data_dir=args.data_dir, dataset_type=args.dataset_type,
                    save_dir=str(work / mode), init=args.model, num_iters=args.steps, valid_num=0,
                    batch_size=args.batch_size, lr=args.lr, log_interval=max(1, args.steps // 5),
                    valid_interval=args.steps, random_crop=args.random_crop, seed=args.seed, device="cpu",
                    **extra,  # type: ignore[arg-type]
                )).final_path

        tuned = run("finetune", qp_path=str(listed.path.resolve()))
        t_train = time.perf_counter() - start - t_list
        after = load(str(tuned), "cpu")
        images = (dataset_images("filedataset", args.eval_dir, args.limit) if args.eval_dir
                  else dataset_images(args.dataset_type, args.data_dir, args.limit))
        rows = [report_row("before", evaluate(images, before, "single", threads=1)),
                report_row("after finetune", evaluate(images, after, "single", threads=1))]
        if args.control:
            control = load(str(run("sig")), "cpu")
            rows.append(report_row("after sig (ctrl)", evaluate(images, control, "single", threads=1)))
    summary = {
        "images": len(images), "steps": args.steps, "lr": args.lr,
        "qp": {int(q): int((qp_values == q).sum()) for q in np.unique(qp_values)},
        "seconds": {"qp_list": round(t_list, 1), "finetune": round(t_train, 1)},
        "rows": rows,
        "actual_bpd_change": rows[1]["actual_bpd"] - rows[0]["actual_bpd"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{len(images)} images, single-image mode; qp list of {len(qp_values)} training images: "
          + ", ".join(f"qp {q}: {n}" for q, n in summary["qp"].items()))
    print(f"{'model':<16} {'actual':>8} {'coded':>8} {'planes':>8} {'prior':>8} {'posterior':>9} {'aux':>7} {'fail':>5}")
    for row in rows:
        print(f"{row['model']:<16} {row['actual_bpd']:8.4f} {row['coded_bpd']:8.4f} {row['plane_bpd']:8.4f} "
              f"{row['latent_prior_bpd']:8.4f} {row['latent_posterior_bpd']:9.4f} {row['auxiliary_bpd']:7.4f} "
              f"{row['decode_failures']:5d}")
    for row in rows[1:]:
        change = row["actual_bpd"] - rows[0]["actual_bpd"]
        print(f"{row['model']}: actual bpd {change:+.4f} ({100 * change / rows[0]['actual_bpd']:+.2f}%)")
    print(f"{args.steps} steps, lr {args.lr:g}; qp list {t_list:.1f} s, finetune {t_train:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
