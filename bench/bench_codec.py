"""Codec throughput on the CPU (or the device given): images per second.

    python bench/bench_codec.py [--configs cifar10 small-context] [--sizes 32 64] [--images 32] [--lanes 16]
        [--mode context|single|dataset] [--lane-groups 1 2]
    pytest bench/bench_codec.py --benchmark-only

Random weights (perturbed away from the zero-initialised heads) are fine for
speed: the work per image does not depend on the values. Each row encodes and
decodes the same images in the dataset layout (all images in one file over
the lanes) through ``aribbps.api`` (container and checksums included), checks
the round trip, and reports encode/decode images per second and seconds per
image. With several ``--lane-groups`` the rows of one config and size run
side by side and a ratio line compares each against the first. For reference, the paper's code takes about 0.76 s to
encode and 0.72 s to decode one 32x32 image with the cifar10 config on this
2-core machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aribbps import api
from aribbps.codec import PlaneCodec, PlaneNets
from aribbps.config import get_config
from aribbps.container import decode_archive
from aribbps.imageio import LoadedImage
from aribbps.models.bitplane_net import build_nets
from aribbps.weights import model_hash
from aribbps.zoo import LoadedModel

PAPER_SECONDS_PER_IMAGE = {"encode": 0.76, "decode": 0.72}  # cifar10 config, 32x32, this machine


def natural_like_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random fields plus noise: image-like statistics without a data set."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (3, size // 8 + 1, size // 8 + 1)).astype(np.float64)
        field = np.kron(coarse, np.ones((8, 8)))[:, :size, :size]
        images.append(np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8))
    return images


def random_model(config: str, device: str = "cpu", latent: bool = False, seed: int = 0) -> LoadedModel:
    """A config's networks with random weights (with or without the latent model), as a model the API codes with."""
    cfg = dataclasses.replace(get_config(config), use_latent=latent)
    torch.manual_seed(seed)
    sig, ins = build_nets(cfg)
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    nets = PlaneNets(sig.eval().to(device), ins.eval().to(device))
    return LoadedModel(cfg, nets, bytes.fromhex(model_hash(sig, ins)), "random", torch.device(device))


def measure(config: str, size: int, n_images: int, lanes: int, device: str = "cpu", mode: str = "context",
            lane_groups: int = 1) -> dict:
    """Encode and decode ``n_images`` in one file; ``mode`` "context" or an ArIB mode."""
    model = random_model(config, device, latent=mode != "context")
    images = [LoadedImage(f"{i}.png", "PNG", "RGB", np.ascontiguousarray(a.transpose(1, 2, 0)))
              for i, a in enumerate(natural_like_images(n_images, size))]
    start = time.perf_counter()
    result = api.encode_images(images, model, lanes, tile=0, mode=mode, lane_groups=lane_groups)
    encode = time.perf_counter() - start
    start = time.perf_counter()
    decoded = api.decode_archive_images(decode_archive(result.data), model)
    decode = time.perf_counter() - start
    assert all(np.array_equal(d.pixels, i.pixels) for d, i in zip(decoded, images))
    row = {"config": config, "mode": mode, "size": size, "images": n_images, "lanes": lanes,
           "lane_groups": lane_groups, "device": device, "threads": torch.get_num_threads(),
           "encode_images_per_s": n_images / encode, "decode_images_per_s": n_images / decode,
           "encode_s_per_image": encode / n_images, "decode_s_per_image": decode / n_images}
    if config == "cifar10" and size == 32:
        row["encode_speedup_vs_paper"] = PAPER_SECONDS_PER_IMAGE["encode"] / row["encode_s_per_image"]
        row["decode_speedup_vs_paper"] = PAPER_SECONDS_PER_IMAGE["decode"] / row["decode_s_per_image"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aribbps codec images/s")
    parser.add_argument("--configs", nargs="+", default=["cifar10", "small-context"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--images", type=int, default=32, help="images per run (default 32)")
    parser.add_argument("--lanes", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="context", choices=("context", "single", "dataset"),
                        help="context: no latent model; single/dataset: ArIB with the config's latent model")
    parser.add_argument("--lane-groups", nargs="+", type=int, default=[1],
                        help="lane group counts to compare side by side (default 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "codec.jsonl")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for config in args.configs:
        for size in args.sizes:
            rows = []
            for groups in args.lane_groups:
                row = measure(config, size, args.images, args.lanes, args.device, args.mode, groups)
                rows.append(row)
                print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            for row in rows[1:]:
                print(f"lane groups {row['lane_groups']} vs {rows[0]['lane_groups']}: encode x"
                      f"{row['encode_images_per_s'] / rows[0]['encode_images_per_s']:.2f}, decode x"
                      f"{row['decode_images_per_s'] / rows[0]['decode_images_per_s']:.2f}")
    return 0


@pytest.mark.benchmark(group="codec-32px-cifar10")
@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_codec_cifar10_32px(benchmark, direction: str) -> None:
    model = random_model("cifar10")
    nets, multiple = model.nets, model.cfg.pad_multiple
    images = natural_like_images(8, 32)
    codec = PlaneCodec(nets, multiple, 8)
    streams, _ = codec.encode(images)
    if direction == "encode":
        benchmark.pedantic(lambda: codec.encode(images), rounds=2, iterations=1)
    else:
        out = benchmark.pedantic(lambda: codec.decode([i.shape for i in images], streams), rounds=2, iterations=1)
        assert all(np.array_equal(a, b) for a, b in zip(out, images))


if __name__ == "__main__":
    raise SystemExit(main())
