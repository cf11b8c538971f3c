"""Bit planes, lattice packing and fixed-point latent offsets on the device (CuPy + fallbacks).

Integer work around the coder, done where the tensors already live:

* :func:`step_bits` -- uint8 image ``x`` (B, C, H, W) -> the bits of plane k
  at lattice step s, packed as the coder reads them: ``(B, h*w, C)`` uint8,
  positions row-major on the step's quarter grid, channels last
  (DESIGN 1.1/1.2: plane k holds bit ``8-k``; step s has parity
  ``(0,0), (1,1), (0,1), (1,0)``).
* :func:`scatter_step_bits` -- the inverse on the decoder side: decoded
  ``(B, h*w, C)`` bits written into a plane tensor at step s's positions.
* :func:`quantise_latent_offsets` -- the posterior offsets ``d = mu_q - mu_p``
  as the coder's fixed point (DESIGN 1.5, ``coder/latent.hpp``):
  ``D = clamp(round(d * 256), -2432, 2432)`` int32, ``d`` first cast to
  float32, round half to even, NaN refused.
* :func:`to_host` -- device tensor -> NumPy array through pinned memory.

Backends, chosen per call by :func:`backend` (or forced with ``backend=``):

``"cupy"``
    CUDA tensor and a working CuPy. The tensor is viewed as a CuPy array
    through DLPack (``cupy.from_dlpack``: zero copy), the work runs on
    torch's current CUDA stream (``cupy.cuda.ExternalStream``, so no
    cross-stream race), and the result comes back through DLPack
    (``torch.from_dlpack``) into pinned host memory.
``"torch"``
    CUDA tensor without CuPy: the same operations in torch on the device,
    then the same pinned staging.
``"numpy"``
    CPU tensor or NumPy array: NumPy on a zero-copy ``Tensor.numpy()`` view.

The CuPy and NumPy backends run the *same* function body (written against
the array namespace ``xp``: slicing, shifts, ``rint``, ``clip``), so the CPU
tests of the NumPy backend exercise the code the CuPy backend runs. Every
operation is integer or exact (a power-of-two scaling and a rounding), so
all backends give identical results: the choice never needs recording in the
file. Each function has a ``_ref`` twin written the plain way (index arrays,
Python ``round``) that the tests compare against with exact equality.

Missing CuPy, no GPU or a CuPy that cannot start (no driver) is normal: the
fallback is used, never an error. ``ARIBBPS_CUPY=0`` disables CuPy.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["LATENT_D_FRAC_BITS", "LATENT_D_MAX", "backend", "cupy_available", "quantise_latent_offsets",
           "quantise_latent_offsets_ref", "scatter_step_bits", "scatter_step_bits_ref", "step_bits",
           "step_bits_ref", "to_host"]

#: (row parity, col parity) of lattice steps 1..4 (DESIGN 1.2).
STEP_POSITIONS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (0, 1), (1, 0))
#: Fractional bits of the coder's fixed-point offset (``kLatentDFracBits``).
LATENT_D_FRAC_BITS = 8
#: Clamp of the fixed-point offset (``kLatentDMax``: |d| <= 9.5).
LATENT_D_MAX = 2432
BACKENDS = ("cupy", "torch", "numpy")

ArrayLike = Any  # Tensor | np.ndarray


@functools.lru_cache(maxsize=1)
def _cupy_module() -> Any | None:
    """CuPy if it imports and sees a CUDA device, else None (cached; never raises)."""
    if os.environ.get("ARIBBPS_CUPY", "1") == "0":
        return None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, CUDARuntimeError (no driver), missing CUDA libs...
        return None


def cupy_available() -> bool:
    """Whether the CuPy backend can run here."""
    return _cupy_module() is not None


def backend(x: ArrayLike) -> str:
    """The backend the functions here pick for ``x``: "cupy", "torch" or "numpy"."""
    if isinstance(x, Tensor) and x.device.type == "cuda":
        return "cupy" if cupy_available() else "torch"
    return "numpy"


def _resolve(x: ArrayLike, forced: str | None) -> str:
    if forced is None:
        return backend(x)
    if forced not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {forced!r}")
    if forced == "cupy" and not (isinstance(x, Tensor) and x.is_cuda and cupy_available()):
        raise RuntimeError("the CuPy backend needs a CUDA tensor and a working CuPy (pip install cupy-cuda12x)")
    return forced


def _check_plane_step(k: int, s: int) -> tuple[int, int]:
    if not isinstance(k, int) or not 1 <= k <= 8:
        raise ValueError(f"plane index must be an int in 1..8, got {k!r}")
    if not isinstance(s, int) or not 1 <= s <= 4:
        raise ValueError(f"lattice step must be an int in 1..4, got {s!r}")
    return STEP_POSITIONS[s - 1]


def _check_image(x: ArrayLike) -> None:
    dtype_ok = x.dtype == torch.uint8 if isinstance(x, Tensor) else x.dtype == np.uint8
    if not dtype_ok or x.ndim != 4:
        raise ValueError(f"expected a uint8 (B, C, H, W) image, got {x.dtype} {tuple(x.shape)}")
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"H and W must be even (pad the image), got {tuple(x.shape[2:])}")


# ---------------------------------------------------------------- host staging
def _pinned_copy(t: Tensor) -> np.ndarray:
    """Device tensor -> NumPy array in pinned host memory (one synchronous DMA copy).

    Pinned blocks come from torch's caching host allocator, so a fresh buffer
    per call costs no ``cudaHostAlloc`` in steady state; each call returns its
    own buffer (the encoder keeps the arrays of all steps of a round).
    """
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t)  # synchronous: the data is on the host when this returns
    return host.numpy()


def to_host(t: ArrayLike) -> np.ndarray:
    """A tensor's data as a NumPy array: zero copy on CPU, pinned staging from CUDA.

    The replacement for ``t.cpu().numpy()`` on the coder's inputs (the
    probabilities of a step, its bits, latent offsets).
    """
    if isinstance(t, np.ndarray):
        return t
    if t.device.type == "cpu":
        return t.detach().numpy()
    return _pinned_copy(t.detach())


# ---------------------------------------------------------------- step bits
def _step_bits_xp(xp: Any, x: Any, k: int, pr: int, pc: int) -> Any:
    """The one body of the CuPy and NumPy backends (``xp`` = cupy or numpy)."""
    sub = x[:, :, pr::2, pc::2]
    bits = (sub >> (8 - k)) & 1
    b, c = bits.shape[:2]
    return xp.ascontiguousarray(bits.reshape(b, c, -1).transpose(0, 2, 1)).astype(xp.uint8, copy=False)


def _cupy_stream(t: Tensor) -> Any:
    cupy = _cupy_module()
    return cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream, t.device.index)


def step_bits(x: ArrayLike, k: int, s: int, *, backend: str | None = None) -> np.ndarray:
    """The bits of plane ``k`` at lattice step ``s``, packed for the coder.

    Args:
        x: (B, C, H, W) uint8 image (torch tensor on any device, or NumPy).
        k: plane 1..8 (bit ``8-k``).
        s: lattice step 1..4.
        backend: force "cupy", "torch" or "numpy" (default: :func:`backend`).

    Returns:
        (B, H/2 * W/2, C) uint8 0/1 on the host (pinned when ``x`` is on CUDA):
        ``out[b, i*(W/2) + j, c]`` is the bit of ``x[b, c, 2i+pr, 2j+pc]``.
    """
    pr, pc = _check_plane_step(k, s)
    _check_image(x)
    chosen = _resolve(x, backend)
    if chosen == "numpy":
        arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        return _step_bits_xp(np, arr, k, pr, pc)
    if chosen == "torch":
        t = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
        bits = (t[:, :, pr::2, pc::2] >> (8 - k)) & 1
        packed = bits.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2).contiguous()
        return to_host(packed)
    cupy = _cupy_module()
    with cupy.cuda.Device(x.device.index), _cupy_stream(x):
        packed = _step_bits_xp(cupy, cupy.from_dlpack(x.detach()), k, pr, pc)
        return _pinned_copy(torch.from_dlpack(packed))


def step_bits_ref(x: ArrayLike, k: int, s: int) -> np.ndarray:
    """Plain reference of :func:`step_bits`: full plane, then gather by index arrays."""
    pr, pc = _check_plane_step(k, s)
    _check_image(x)
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    full = (arr.astype(np.int64) >> (8 - k)) & 1
    ys, xs = np.meshgrid(np.arange(pr, arr.shape[2], 2), np.arange(pc, arr.shape[3], 2), indexing="ij")
    gathered = full[:, :, ys.ravel(), xs.ravel()]  # (B, C, h*w)
    return np.ascontiguousarray(np.moveaxis(gathered, 1, 2)).astype(np.uint8)


def scatter_step_bits(plane: Tensor, s: int, flat: ArrayLike) -> Tensor:
    """Writes decoded step bits into a plane tensor, in place (decoder side).

    Args:
        plane: (B, C, H, W) uint8 tensor (any device) of the plane being decoded.
        s: lattice step 1..4.
        flat: (B, H/2 * W/2, C) uint8 bits as :func:`step_bits` lays them out
            (NumPy or tensor; copied to ``plane``'s device once).

    Returns:
        ``plane``.
    """
    pr, pc = _check_plane_step(1, s)
    if plane.dim() != 4 or plane.dtype != torch.uint8:
        raise ValueError(f"plane must be a uint8 (B, C, H, W) tensor, got {plane.dtype} {tuple(plane.shape)}")
    b, c, height, width = plane.shape
    src = flat if isinstance(flat, Tensor) else torch.from_numpy(np.ascontiguousarray(flat))
    if tuple(src.shape) != (b, (height // 2) * (width // 2), c):
        raise ValueError(f"flat must be (B, h*w, C) = {(b, (height // 2) * (width // 2), c)}, "
                         f"got {tuple(src.shape)}")
    src = src.to(device=plane.device, dtype=torch.uint8)
    plane[:, :, pr::2, pc::2] = src.view(b, height // 2, width // 2, c).permute(0, 3, 1, 2)
    return plane


def scatter_step_bits_ref(plane: np.ndarray, s: int, flat: np.ndarray) -> np.ndarray:
    """Plain reference of :func:`scatter_step_bits` (returns a new array)."""
    pr, pc = _check_plane_step(1, s)
    out = np.array(plane, copy=True)
    w2 = out.shape[3] // 2
    for p in range(flat.shape[1]):
        i, j = divmod(p, w2)
        out[:, :, 2 * i + pr, 2 * j + pc] = flat[:, p, :]
    return out


# ---------------------------------------------------------------- latent offsets
def _quantise_xp(xp: Any, d32: Any) -> Any:
    """The one body of the CuPy and NumPy backends: rint(d * 256) clamped, int32."""
    scaled = xp.rint(d32 * xp.float32(1 << LATENT_D_FRAC_BITS))  # exact scaling, ties to even
    return xp.clip(scaled, -LATENT_D_MAX, LATENT_D_MAX).astype(xp.int32)


def _nan_error() -> ValueError:
    return ValueError("posterior offset d holds NaN; the latent model produced NaN means")


def quantise_latent_offsets(d: ArrayLike, *, backend: str | None = None) -> np.ndarray:
    """The coder's fixed-point posterior offsets ``clamp(round(d * 2**8), ±2432)``.

    Args:
        d: ``mu_q - mu_p``, float tensor (any device) or NumPy array, any
            shape; cast to float32 first; ±inf are clamped.
        backend: force "cupy", "torch" or "numpy" (default: :func:`backend`).

    Returns:
        int32 NumPy array of the same shape on the host (pinned when ``d``
        is on CUDA), ready for ``LaneCoder.push_latent``/``pop_latent``.

    Raises:
        ValueError: ``d`` is not floating point, or holds a NaN.
    """
    is_float = d.dtype.is_floating_point if isinstance(d, Tensor) else np.issubdtype(np.asarray(d).dtype,
                                                                                       np.floating)
    if not is_float:
        raise ValueError(f"d must be floating point, got dtype {d.dtype}")
    chosen = _resolve(d, backend)
    if chosen == "numpy":
        arr = d.detach().cpu().numpy() if isinstance(d, Tensor) else np.asarray(d)
        with np.errstate(over="ignore"):  # |d| > 3e38/256 overflows to ±inf, then clamps
            d32 = arr.astype(np.float32)
            if np.isnan(d32).any():
                raise _nan_error()
            return _quantise_xp(np, d32)
    if chosen == "torch":
        t = d.detach().to(torch.float32)
        if bool(torch.isnan(t).any()):
            raise _nan_error()
        q = torch.clamp(torch.round(t * float(1 << LATENT_D_FRAC_BITS)), -LATENT_D_MAX, LATENT_D_MAX)
        return to_host(q.to(torch.int32))
    cupy = _cupy_module()
    with cupy.cuda.Device(d.device.index), _cupy_stream(d):
        d32 = cupy.from_dlpack(d.detach()).astype(cupy.float32)
        if bool(cupy.isnan(d32).any()):
            raise _nan_error()
        return _pinned_copy(torch.from_dlpack(_quantise_xp(cupy, d32)))


def quantise_latent_offsets_ref(d: ArrayLike) -> np.ndarray:
    """Plain reference: Python's ``round`` (ties to even) on each float32 value."""
    arr = d.detach().cpu().numpy() if isinstance(d, Tensor) else np.asarray(d)
    flat = arr.astype(np.float32).ravel()
    out = np.empty(flat.shape, dtype=np.int32)
    for i, v in enumerate(flat.tolist()):
        if v != v:
            raise _nan_error()
        scaled = min(max(v * 256.0, -LATENT_D_MAX), LATENT_D_MAX)  # clamp first: round(inf) raises
        out[i] = round(scaled)
    return out.reshape(arr.shape)
