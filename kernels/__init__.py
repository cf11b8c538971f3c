"""GPU kernels of the codec, each next to a plain reference of the same function.

One name stem per op, four files (STYLE.md, "kernels/")::

    kernels/<op>.py          kernel(s), launcher ``<op>(...)``, reference ``<op>_ref(...)``
    tests/test_<op>.py       kernel == reference (and == the aribbps model code)
    bench/bench_<op>.py      kernel vs reference vs torch.compile(reference)

Modules:

* :mod:`kernels.lattice_conv` -- Triton: the space context's masked 3x3
  convolution, evaluated at one lattice step's positions straight from the
  uint8 plane bits (no ±1 map, no zero-filled full-resolution map).
* :mod:`kernels.entropy_tail` -- Triton: the entropy head's concat-free,
  ECA-gated 1x1 projection (kernel A) and its SiLU + 3x3 conv + RGB coupling +
  sigmoid + 8-bit quantisation tail writing the coder's ``(B, h*w, 7)`` uint8
  buffer (kernel B).
* :mod:`kernels.launch_lock` -- the lock every Triton launch takes, so that
  concurrent lane groups never JIT-compile a kernel in two threads at once.
* :mod:`kernels.bitplanes_cupy` -- CuPy: bit-plane slicing, lattice packing
  and fixed-point latent offsets, zero-copy with torch through DLPack, staged
  in pinned host memory; NumPy/torch fallback.
* :mod:`kernels.dispatch` -- what the codec calls: Triton/CuPy on CUDA,
  torch/NumPy elsewhere, and :func:`kernels.dispatch.kernel_path`.

House rule: nothing here imports :mod:`aribbps` (the references are plain
PyTorch written here; the tests compare against the aribbps model code).
Triton and CuPy are optional: without them every module imports and the
references and fallbacks work.

This file holds the few helpers the kernel modules share. It deliberately
does not re-export the submodules' functions: ``kernels.lattice_conv`` must
stay the module, not the function of the same name.
"""
from __future__ import annotations

import os

try:  # Triton is optional (the `gpu` extra); every module imports without it.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

#: Largest block any launcher accepts for a dimension it keeps in one block
#: (Liger's ``MAX_FUSED_SIZE``).
MAX_FUSED_SIZE = 65536

__all__ = ["HAS_TRITON", "MAX_FUSED_SIZE", "calculate_settings", "interpreter_mode", "next_power_of_2",
           "require_triton", "triton_can_run"]


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def calculate_settings(n: int, minimum: int = 16, max_size: int = MAX_FUSED_SIZE) -> tuple[int, int]:
    """Block size and warp count for a dimension of ``n`` elements kept in one block.

    Args:
        n: number of elements the block must cover.
        minimum: smallest block (16: ``tl.dot`` needs every dimension >= 16).
        max_size: largest block allowed.

    Returns:
        ``(BLOCK_SIZE, num_warps)``: the next power of two >= max(n, minimum)
        and 4, 8, 16 or 32 warps as Liger picks them.

    Raises:
        ValueError: the block would exceed ``max_size`` (quotes ``n``).
    """
    block = max(next_power_of_2(n), minimum)
    if block > max_size:
        raise ValueError(f"cannot launch a block of {n} elements: the block size {block} exceeds the "
                         f"maximum {max_size}; split the dimension or use the torch path")
    num_warps = 4
    if block >= 32768:
        num_warps = 32
    elif block >= 8192:
        num_warps = 16
    elif block >= 2048:
        num_warps = 8
    return block, num_warps


def interpreter_mode() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_can_run(*tensors) -> bool:
    """Whether the Triton kernels can run on these tensors here.

    CUDA tensors on a machine with Triton, or CPU tensors under the Triton
    interpreter (``TRITON_INTERPRET=1``, slow, for tests).
    """
    if not HAS_TRITON:
        return False
    devices = {t.device.type for t in tensors if t is not None}
    if devices == {"cuda"}:
        return True
    return devices <= {"cpu"} and interpreter_mode()


def require_triton(*tensors) -> None:
    """Raises a ``RuntimeError`` saying what to do when :func:`triton_can_run` is False."""
    if not HAS_TRITON:
        raise RuntimeError("the Triton kernels need the `triton` package (pip install 'aribbps[gpu]'); "
                           "use the torch path (kernels.dispatch with path='torch') instead")
    if not triton_can_run(*tensors):
        devices = sorted({t.device.type for t in tensors if t is not None})
        raise RuntimeError(f"the Triton kernels need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 "
                           f"for the interpreter), got tensors on {devices} with TRITON_INTERPRET="
                           f"{os.environ.get('TRITON_INTERPRET', '<unset>')}")
