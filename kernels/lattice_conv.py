"""Masked lattice-step convolution of the space context (Triton + reference).

The space context's first layer (DESIGN 1.4, ``aribbps.models.space_context``)
is, by definition, a full-resolution 3x3 convolution over the *space prior*
of plane k at lattice step s (±1 where a bit of a step < s is known and the
position is valid, 0 elsewhere), read at step s's positions only::

    out[b, o, i, j] = bias[o] + sum_{c, dy, dx} W[o, c, 1+dy, 1+dx] * prior[b, c, y+dy, x+dx]
    prior[b, c, y', x'] = (2*bits[b, c, y', x'] - 1) * valid[b, y', x'] * known_s(y', x') * inside(y', x')

with ``(y, x) = (2i + pr, 2j + pc)`` the full-resolution position of quarter
grid cell ``(i, j)`` of step s (parity ``(pr, pc)``, DESIGN 1.2), ``known_s``
true on the parities of steps 1..s-1, and zero padding outside the image.

:func:`lattice_conv` computes exactly that, one program per block of step-s
positions and all output channels, reading the uint8 plane bits and the
valid mask directly: only the taps whose parity is already coded are
visited (decided at compile time from s: 4 taps at step 2, 4 at step 3, 8 at
step 4, none at step 1), the ±1 value of a bit is made in registers, and no
zero-filled full-resolution map (nor the quarter-grid ±1 stack
``space_prior_quarter`` builds) is ever written to memory.

:func:`lattice_conv_ref` is the plain-PyTorch definition above (zero-filled
full-resolution prior, ``F.conv2d``, subsample), the function the kernel is
tested against; ``aribbps.models.space_context.masked_lattice_conv`` is the
model's own quarter-grid formulation, also compared in the tests.

Numerics: products are ``±W`` (exact), summed in float32 in a fixed order
(taps row-major, then channels, then the bias) that does not depend on the
batch, the launch or the device; ``F.conv2d`` sums in its own order, so the
two agree to float32 rounding of a sum of at most 24 weights (tests: 1e-5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import HAS_TRITON, calculate_settings, require_triton
from kernels.launch_lock import LAUNCH_LOCK

__all__ = ["CUDA_KERNEL_ORDER_STEPS", "STEP_POSITIONS", "known_tap_mask", "lattice_conv", "lattice_conv_kernel_order",
           "lattice_conv_ref", "launch_kernel"]

#: (row parity, col parity) of lattice steps 1..4 (DESIGN 1.2).
STEP_POSITIONS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (0, 1), (1, 0))

#: Steps at which :func:`lattice_conv` on a CUDA device computes with
#: :func:`lattice_conv_kernel_order` (bitwise the kernel's result) instead of
#: the compiled kernel. On an H200 (Triton 3.6, torch 2.11, 2026-12-04) the
#: compiled kernel was wrong at step 2 only: about 6% of the positions of
#: random 34x30 planes were off (by up to 14), and without a valid mask it
#: read out of bounds; steps 1, 3 and 4 matched the reference. The
#: interpreter computes step 2 right, so the cause lies in the compilation
#: and is not found yet (docs/gpu.md).
CUDA_KERNEL_ORDER_STEPS = frozenset({2})

#: Largest number of output channels kept in one block (all channels of a
#: position are computed by one program so the bits are read once).
MAX_OUT_CHANNELS = 1024
#: Output elements (positions x channels) per program: 64 fp32 registers per
#: thread at 4 warps.
_TILE_ELEMENTS = 8192


def _check_step(s: int) -> tuple[int, int]:
    if not isinstance(s, int) or not 1 <= s <= 4:
        raise ValueError(f"lattice step must be an int in 1..4, got {s!r}")
    return STEP_POSITIONS[s - 1]


def known_tap_mask(s: int) -> int:
    """9-bit mask of the 3x3 taps (row-major, bit ``3*(dy+1) + (dx+1)``) already coded at step ``s``.

    Tap ``(dy, dx)`` of a step-s position ``(pr, pc)`` lands on parity
    ``((pr+dy) & 1, (pc+dx) & 1)``; it is known iff that parity belongs to a
    step before s. Step 1: 0; step 2: the 4 diagonals; step 3: 4 edge taps;
    step 4: all 8 neighbours.
    """
    pr, pc = _check_step(s)
    known = set(STEP_POSITIONS[: s - 1])
    mask = 0
    for t in range(9):
        dy, dx = t // 3 - 1, t % 3 - 1
        if ((pr + dy) & 1, (pc + dx) & 1) in known:
            mask |= 1 << t
    return mask


def _check_inputs(bits: Tensor, weight: Tensor, bias: Tensor | None, valid: Tensor | None) -> None:
    if bits.dim() != 4 or bits.dtype != torch.uint8:
        raise ValueError(f"bits must be a uint8 (B, C, H, W) tensor, got {bits.dtype} {tuple(bits.shape)}")
    if bits.shape[2] % 2 or bits.shape[3] % 2:
        raise ValueError(f"H and W must be even, got {tuple(bits.shape[2:])}")
    if weight.dim() != 4 or weight.shape[1] != bits.shape[1] or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight must be (O, {bits.shape[1]}, 3, 3), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    if valid is not None and valid.shape != (bits.shape[0], 1, *bits.shape[2:]):
        raise ValueError(f"valid must be (B, 1, H, W) = {(bits.shape[0], 1, *bits.shape[2:])}, "
                         f"got {tuple(valid.shape)}")


def _check_float32_call(bits: Tensor, weight: Tensor, bias: Tensor | None, s: int,
                        valid: Tensor | None) -> tuple[int, int]:
    """The checks of :func:`lattice_conv` (both its paths): the step's parity, or ValueError."""
    parity = _check_step(s)
    _check_inputs(bits, weight, bias, valid)
    if weight.dtype != torch.float32:
        raise ValueError(f"lattice_conv computes in float32; got weight dtype {weight.dtype}")
    return parity


def lattice_conv_ref(bits: Tensor, weight: Tensor, bias: Tensor | None, s: int,
                     valid: Tensor | None = None) -> Tensor:
    """Plain PyTorch: full-resolution conv of the zero-filled space prior, subsampled.

    Args:
        bits: (B, C, H, W) uint8 0/1 bits of the plane; only positions of
            steps < s are read.
        weight: (O, C, 3, 3) float; bias: (O,) or None.
        s: lattice step 1..4.
        valid: (B, 1, H, W) bool or None; False positions count as unknown.

    Returns:
        (B, O, H/2, W/2) in ``weight.dtype``.
    """
    pr, pc = _check_step(s)
    _check_inputs(bits, weight, bias, valid)
    height, width = bits.shape[-2:]
    known = torch.zeros(height, width, dtype=torch.bool, device=bits.device)
    for qr, qc in STEP_POSITIONS[: s - 1]:
        known[qr::2, qc::2] = True
    signs = bits.to(weight.dtype) * 2 - 1
    prior = torch.where(known, signs, torch.zeros((), dtype=weight.dtype, device=bits.device))
    if valid is not None:
        prior = prior * valid.to(weight.dtype)
    return F.conv2d(prior, weight, bias, padding=1)[:, :, pr::2, pc::2]


def lattice_conv_kernel_order(bits: Tensor, weight: Tensor, bias: Tensor | None, s: int,
                              valid: Tensor | None = None) -> Tensor:
    """The kernel's sums in PyTorch, in the kernel's order: bitwise :func:`lattice_conv`'s result.

    For each known tap (row-major), then each channel, ``acc += sign * W``
    over the whole quarter grid, then the bias. The products are ``±W`` or 0,
    so each addition is rounded exactly as in the kernel (with or without a
    fused multiply-add). Used where the compiled kernel cannot be trusted
    (:data:`CUDA_KERNEL_ORDER_STEPS`); the arguments are those of :func:`lattice_conv`.
    """
    pr, pc = _check_float32_call(bits, weight, bias, s, valid)
    batch, channels, height, width = bits.shape
    h, w = height // 2, width // 2
    signs = bits.to(torch.float32) * 2 - 1
    if valid is not None:
        signs = torch.where(valid.bool(), signs, torch.zeros((), device=bits.device))
    padded = F.pad(signs, (1, 1, 1, 1))  # zero outside the image
    acc = torch.zeros((batch, weight.shape[0], h, w), dtype=torch.float32, device=bits.device)
    taps = known_tap_mask(s)
    for t in range(9):
        if not (taps >> t) & 1:
            continue
        dy, dx = t // 3 - 1, t % 3 - 1
        y, x = 1 + pr + dy, 1 + pc + dx  # in the padded plane
        tap = padded[:, :, y:y + 2 * h:2, x:x + 2 * w:2]
        for c in range(channels):
            acc += tap[:, c:c + 1] * weight[:, c, 1 + dy, 1 + dx].view(1, -1, 1, 1)
    if bias is not None:
        acc += bias.view(1, -1, 1, 1)
    return acc


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _lattice_conv_kernel(
        BITS_ptr, bits_stride_b, bits_stride_c, bits_stride_h, bits_stride_w,
        VALID_ptr, valid_stride_b, valid_stride_h, valid_stride_w,
        W_ptr,  # (C, 9, O) contiguous: the O weights of one (channel, tap) are adjacent
        BIAS_ptr,  # (O,)
        OUT_ptr, out_stride_b, out_stride_c,  # (B, O, h, w): a position's stride is 1
        height, width,  # full resolution H, W
        n_out, n_pos, n_pos_blocks,  # O, h*w, cdiv(h*w, BLOCK_P)
        C: tl.constexpr, PR: tl.constexpr, PC: tl.constexpr, TAP_MASK: tl.constexpr,
        HAS_VALID: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr,
    ):
        """out[b, :, p] = bias + sum over known taps t, channels c of W[c, t, :] * sign(b, c, tap t of p)."""
        pid = tl.program_id(0).to(tl.int64)  # int64 before any stride product
        b = pid // n_pos_blocks
        p = (pid % n_pos_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < n_pos
        half_w = width // 2
        y0 = 2 * (p // half_w) + PR
        x0 = 2 * (p % half_w) + PC
        o = tl.arange(0, BLOCK_O)
        o_mask = o < n_out
        acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
        for t in tl.static_range(9):
            if (TAP_MASK >> t) & 1:  # compile-time: only already-coded parities
                y = y0 + (t // 3 - 1)
                x = x0 + (t % 3 - 1)
                inside = p_mask & (y >= 0) & (y < height) & (x >= 0) & (x < width)
                if HAS_VALID:
                    v = tl.load(VALID_ptr + b * valid_stride_b + y * valid_stride_h + x * valid_stride_w,
                                mask=inside, other=0)
                    inside = inside & (v != 0)
                for c in tl.static_range(C):
                    bit = tl.load(BITS_ptr + b * bits_stride_b + c * bits_stride_c + y * bits_stride_h
                                  + x * bits_stride_w, mask=inside, other=0)
                    sign = tl.where(inside, bit.to(tl.float32) * 2.0 - 1.0, 0.0)
                    w = tl.load(W_ptr + (c * 9 + t) * n_out + o, mask=o_mask, other=0.0)
                    acc += sign[:, None] * w[None, :]  # ±w or 0: exact products
        if HAS_BIAS:
            acc += tl.load(BIAS_ptr + o, mask=o_mask, other=0.0)[None, :]
        out = OUT_ptr + b * out_stride_b + o[None, :] * out_stride_c + p[:, None]
        tl.store(out, acc, mask=p_mask[:, None] & o_mask[None, :])


def lattice_conv(bits: Tensor, weight: Tensor, bias: Tensor | None, s: int,
                 valid: Tensor | None = None) -> Tensor:
    """Triton: the space context's masked 3x3 conv at step ``s``'s positions only.

    Same function as :func:`lattice_conv_ref` (see the module docstring for
    the math and the float32 tolerance). Reads ``bits`` only at the positions
    of steps < s, so the decoder's partially decoded plane and the encoder's
    full plane give identical outputs. On CUDA, the steps in
    :data:`CUDA_KERNEL_ORDER_STEPS` are computed by
    :func:`lattice_conv_kernel_order` (same result, bit for bit).

    Args:
        bits: (B, C, H, W) uint8 0/1, any strides; H, W even.
        weight: (O, C, 3, 3) float32 (O <= 1024); bias: (O,) or None.
        s: lattice step 1..4.
        valid: (B, 1, H, W) bool or uint8, or None (all valid).

    Returns:
        (B, O, H/2, W/2) float32, contiguous.

    Raises:
        ValueError: bad shapes/dtypes, or O above 1024.
        RuntimeError: Triton cannot run here (no CUDA and no TRITON_INTERPRET=1).
    """
    if bits.is_cuda and s in CUDA_KERNEL_ORDER_STEPS:
        return lattice_conv_kernel_order(bits, weight.detach(), None if bias is None else bias.detach(), s, valid)
    return launch_kernel(bits, weight, bias, s, valid)


def launch_kernel(bits: Tensor, weight: Tensor, bias: Tensor | None, s: int, valid: Tensor | None = None) -> Tensor:
    """The compiled (or interpreted) kernel at every step, without :data:`CUDA_KERNEL_ORDER_STEPS`.

    For tests and ``bench/diag_lattice_conv.py``; the codec calls :func:`lattice_conv`.
    """
    pr, pc = _check_float32_call(bits, weight, bias, s, valid)
    require_triton(bits, weight, bias, valid)
    batch, channels, height, width = bits.shape
    n_out = weight.shape[0]
    n_pos = (height // 2) * (width // 2)
    out = torch.empty((batch, n_out, height // 2, width // 2), dtype=torch.float32, device=bits.device)
    if out.numel() == 0:
        return out
    block_o, num_warps = calculate_settings(n_out, minimum=16, max_size=MAX_OUT_CHANNELS)
    block_p = max(16, min(128, _TILE_ELEMENTS // block_o))
    # (C, 9, O): the weights of one (channel, tap) are contiguous along O.
    w_packed = weight.detach().reshape(n_out, channels, 9).permute(1, 2, 0).contiguous()
    b_arg = bias.detach().contiguous() if bias is not None else w_packed
    if valid is not None:
        v = valid.view(torch.uint8) if valid.dtype == torch.bool else valid
        v_strides = (v.stride(0), v.stride(2), v.stride(3))
    else:
        v, v_strides = bits, (0, 0, 0)
    n_pos_blocks = triton.cdiv(n_pos, block_p)
    with LAUNCH_LOCK:
        _lattice_conv_kernel[(batch * n_pos_blocks,)](
            bits, *bits.stride(),
            v, *v_strides,
            w_packed, b_arg,
            out, out.stride(0), out.stride(1),
            height, width, n_out, n_pos, n_pos_blocks,
            C=channels, PR=pr, PC=pc, TAP_MASK=known_tap_mask(s),
            HAS_VALID=valid is not None, HAS_BIAS=bias is not None,
            BLOCK_P=block_p, BLOCK_O=block_o, num_warps=num_warps,
        )
    return out
