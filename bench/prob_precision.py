"""What the coder's quantised probabilities cost against exact ones.

    python bench/prob_precision.py DIR [DIR ...] [--model PATH] [--step K] [--bits 8 10 12 16]

For every K-th image of each folder: the model's plane bits per sub-pixel
with unquantised probabilities (clamped as in training), with the coder's
``logit`` code (what files are written with, :mod:`aribbps.probability`),
and with each probability of a 1 rounded to ``b`` bits,
``clamp(round(2^b P), 1, 2^b - 1)`` (at b = 8 exactly the ``linear`` code of
older files, DESIGN 1.3). Teacher forced with one latent sample, like
``aribbps eval --mode inference``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aribbps import api, zoo
from aribbps.bitplanes import step_view
from aribbps.codec import teacher_forced_steps
from aribbps.probability import bits_cost, coupled_probs, quantise_probs7, quantised_bits_cost


def quantised_cost(p: Tensor, bits: Tensor, precision: int, coded: Tensor | None = None) -> float:
    """Bits to code ``bits`` when each P(1) in ``p`` is rounded to ``precision`` bits.

    ``coded``: a bool mask broadcasting to ``bits``, the positions counted (default all).
    """
    scale = 2 ** precision
    q = torch.round(p.float() * scale).clamp_(1, scale - 1).double()
    cost = precision - torch.log2(torch.where(bits.bool(), q, scale - q))
    return float((cost if coded is None else cost * coded).sum())


@torch.no_grad()
def plane_costs(directory: Path, model: zoo.LoadedModel, step: int, precisions: list[int]) -> dict[str, float]:
    """Plane bits per sub-pixel: "float", "logit" and one entry per precision."""
    totals = dict.fromkeys(["float", "logit", *map(str, precisions)], 0.0)
    subpixels = 0
    generator = torch.Generator().manual_seed(0)
    for path in api.batch_inputs(directory)[::step]:
        pixels = api.load_images([path])[0].pixels
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise SystemExit(f"{path}: only RGB images are measured here")
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
        valid = torch.ones(1, 1, *x.shape[-2:], dtype=torch.bool)
        features = model.nets.sig.latent.forward_details(x, generator=generator).features
        for _, stage, _, logits, plane in teacher_forced_steps(model.nets, x, valid, features):
            step_bits, coded = step_view(plane, stage.s), stage.valid(valid)
            p = coupled_probs(logits.float(), step_bits)
            totals["float"] += float(bits_cost(logits.float(), step_bits, coded).sum())
            totals["logit"] += float(quantised_bits_cost(quantise_probs7(logits, "logit"), step_bits, coded,
                                                         "logit").sum())
            for b in precisions:
                totals[str(b)] += quantised_cost(p, step_bits, b, coded)
        subpixels += pixels.size
    return {k: v / subpixels for k, v in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--step", type=int, default=1, help="every K-th image")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 10, 12, 16])
    args = parser.parse_args(argv)
    model = zoo.load(args.model, "cpu")
    if model.nets.sig.latent is None:
        raise SystemExit("the model has no latent model; this bench measures latent models")
    columns = ["logit", *map(str, args.bits)]
    print("| set | float | logit code | " + " | ".join(f"{b} bits" for b in args.bits) + " |")
    print("|---|---|" + "---|" * len(columns))
    for d in args.dirs:
        c = plane_costs(d, model, max(1, args.step), args.bits)
        cells = [f"{c[k]:.4f} ({100 * (c[k] / c['float'] - 1):+.3f}%)" for k in columns]
        print(f"| {d.name} | {c['float']:.4f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
