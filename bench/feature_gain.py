"""What a coding feature saves, side by side in one run.

    python bench/feature_gain.py DIR [DIR ...] [--feature F] [--step K] [--limit N] [--model PATH]

F is ``temperatures`` (per-plane temperature symbols, :mod:`aribbps.temperature`;
the default) or ``corrections`` (:mod:`aribbps.prob_correction`). For each
folder (every K-th of the first N images): single-image files and one
dataset-mode file, coded without and with the feature (the other one on),
every file decoded and checked; actual bpd and encode / decode seconds per
image. For temperatures, then, from the encoder's own candidate costs
(dataset mode), what one symbol per group of planes (INS planes, SIG planes),
per plane (what the codec does) and per coding stage would save, each with
the 4 bits per symbol it costs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from aribbps import api, codec, zoo
from aribbps.container import decode_archive
from aribbps.imageio import LoadedImage
from aribbps.temperature import NEUTRAL_SYMBOL, TEMPERATURE_BITS


FEATURES = ("temperatures", "corrections")


def coded(images: list[LoadedImage], model: zoo.LoadedModel, mode: str, feature: str, on: bool
          ) -> tuple[float, float, float]:
    """(actual bpd, encode and decode seconds per image) with ``feature`` on or off, every file round-tripped."""
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    batches = [[image] for image in images] if mode == "single" else [images]
    bits = subpixels = 0
    encode_s = decode_s = 0.0
    for batch in batches:
        start = time.perf_counter()
        result = api.encode_images(batch, model, mode=mode, lanes=1 if mode == "single" else None,
                                   name_from_file=mode == "single", **{feature: on})
        encode_s += time.perf_counter() - start
        start = time.perf_counter()
        decoded = api.decode_archive_images(decode_archive(result.data), model)
        decode_s += time.perf_counter() - start
        if not all(np.array_equal(d.pixels, i.pixels) for d, i in zip(decoded, batch)):
            raise RuntimeError("a file did not round-trip")
        bits += 8 * len(result.data)
        subpixels += result.subpixels
    return bits / subpixels, encode_s / len(images), decode_s / len(images)


def granularity(images: list[LoadedImage], model: zoo.LoadedModel) -> dict[str, float]:
    """Plane bpd at tau = 1 and with the best symbol per group / plane / stage (side bits included)."""
    recorded: list[tuple[int, np.ndarray]] = []  # (plane index in its call, (n, 16) costs) per stage
    original = codec.candidate_costs

    def recording(logits: torch.Tensor, step_bits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        costs = original(logits, step_bits, weight)
        recorded.append(costs.cpu().numpy())
        return costs

    codec.candidate_costs = recording
    try:
        result = api.encode_images(images, model, mode="dataset", lanes=1)
    finally:
        codec.candidate_costs = original
    stages = len(codec.coding_stages(model.nets.sig))
    per_stage = np.stack([c[0] for c in recorded])  # one lane: one item per round
    table = per_stage.reshape(-1, 4, stages, per_stage.shape[-1])  # (item-group, plane, stage, symbol)
    n_groups = len(table)
    side = TEMPERATURE_BITS / result.subpixels
    return {
        "neutral": table[..., NEUTRAL_SYMBOL].sum() / result.subpixels,
        "per group": table.sum(axis=(1, 2)).min(axis=1).sum() / result.subpixels + n_groups * side,
        "per plane": table.sum(axis=2).min(axis=2).sum() / result.subpixels + 4 * n_groups * side,
        "per stage": table.min(axis=3).sum() / result.subpixels + 4 * stages * n_groups * side,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--feature", choices=FEATURES, default="temperatures")
    parser.add_argument("--step", type=int, default=1, help="every K-th image")
    parser.add_argument("--limit", type=int, default=0, help="first N images (0 = all)")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    args = parser.parse_args(argv)
    model = zoo.load(args.model, "cpu")
    granular = args.feature == "temperatures"
    if granular and (model.nets.sig.latent is None or model.nets.sig.planes != (1, 2, 3, 4)):
        raise SystemExit("the granularity table assumes an ArIB model with 4 SIG planes")
    print(f"{args.feature}, shared CPU: compare the columns of one run only")
    print("| set | mode | without: bpd | with: bpd | change | encode s/image without / with "
          "| decode s/image without / with |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for d in args.dirs:
        images = api.load_images(api.batch_inputs(d)[: args.limit or None][:: args.step])
        for mode in ("single", "dataset"):
            off, enc_off, dec_off = coded(images, model, mode, args.feature, False)
            on, enc_on, dec_on = coded(images, model, mode, args.feature, True)
            print(f"| {d.name} | {mode} | {off:.4f} | {on:.4f} | {100 * (on / off - 1):+.2f}% | "
                  f"{enc_off:.3f} / {enc_on:.3f} | {dec_off:.3f} / {dec_on:.3f} |", flush=True)
        if granular:
            rows.append((d.name, granularity(images, model)))
    if not granular:
        return 0
    print("\nPlane bpd (dataset mode, 1 lane, theoretical) with one symbol per ... (4 bits each included)")
    print("| set | tau = 1 | per group | per plane | per stage |")
    print("|---|---|---|---|---|")
    for name, g in rows:
        print(f"| {name} | {g['neutral']:.4f} | {g['per group']:.4f} | {g['per plane']:.4f} | {g['per stage']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
