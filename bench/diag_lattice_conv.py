"""Does the compiled lattice conv kernel compute every step right on this GPU? (docs/gpu.md)

    python bench/diag_lattice_conv.py [--seeds 5]

Runs the kernel itself (``kernels.lattice_conv.launch_kernel``, bypassing
the torch mirror that ``lattice_conv`` uses on CUDA for the steps in
``CUDA_KERNEL_ORDER_STEPS``) at steps 1-4 on random planes of a few shapes,
with a valid mask, and counts the outputs that differ from the bit-exact
torch mirror (``lattice_conv_kernel_order``, computed on the CPU). The
valid-mask-free launch is tried last and only where asked for
(``--without-valid``), since on the H200 it read out of bounds at step 2,
which poisons the CUDA context. Exit status 0 when every step matched, 1
otherwise: once it prints no mismatch at step 2, that step can leave
``CUDA_KERNEL_ORDER_STEPS``. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernels import HAS_TRITON  # noqa: E402
from kernels.lattice_conv import CUDA_KERNEL_ORDER_STEPS, lattice_conv_kernel_order, launch_kernel  # noqa: E402

SHAPES = ((4, 3, 34, 30), (2, 3, 64, 64), (3, 1, 6, 10), (8, 3, 32, 32))


def mismatches(s: int, seed: int, shape: tuple[int, int, int, int], with_valid: bool) -> tuple[int, int]:
    """(wrong outputs, all outputs) of the kernel against the mirror, bitwise."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, shape, generator=g, dtype=torch.uint8)
    valid = torch.rand((shape[0], 1, *shape[2:]), generator=g) > 0.1 if with_valid else None
    weight = torch.randn((128, shape[1], 3, 3), generator=g)
    bias = torch.randn((128,), generator=g)
    expected = lattice_conv_kernel_order(bits, weight, bias, s, valid)
    out = launch_kernel(bits.cuda(), weight.cuda(), bias.cuda(), s, None if valid is None else valid.cuda()).cpu()
    return int((out != expected).sum()), out.numel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--without-valid", action="store_true", help="also launch without a valid mask (last)")
    args = parser.parse_args(argv)
    if not (torch.cuda.is_available() and HAS_TRITON):
        print("diag_lattice_conv: no CUDA device or no Triton; nothing to check")
        return 0
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; mirror used on CUDA at steps "
          f"{sorted(CUDA_KERNEL_ORDER_STEPS)}")
    bad_steps = set()
    for with_valid in (True, False) if args.without_valid else (True,):
        for s in (1, 2, 3, 4):
            wrong = total = 0
            for seed in range(args.seeds):
                for shape in SHAPES:
                    w, n = mismatches(s, 100 * s + seed, shape, with_valid)
                    wrong, total = wrong + w, total + n
            print(f"step {s}, valid mask {'yes' if with_valid else 'no'}: {wrong} of {total} outputs differ")
            if wrong:
                bad_steps.add(s)
    print("all steps match" if not bad_steps else f"wrong at steps {sorted(bad_steps)}")
    return 1 if bad_steps else 0


if __name__ == "__main__":
    raise SystemExit(main())
