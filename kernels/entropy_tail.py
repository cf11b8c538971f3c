"""Fused pieces of the entropy head at one lattice step (Triton + references).

The entropy head (``aribbps.models.entropy_head.EntropyHead``, DESIGN 1.4)
runs on the step's quarter grid::

    [plane ctx | latent | space ctx] ─ ECA ─ 1x1 ─ depth × ResBlock ─ SiLU ─ 3x3 ─ 6 logits
                                                                              ─ coupling ─ q (uint8 ×7)

Which part runs where on the Triton path (:mod:`kernels.dispatch`):

============================  =========================================================
ECA gate                      torch, :func:`eca_gate`: per-channel means over the
                              valid positions of each part *separately* (the concat
                              is never built), a 1-D conv over channels, a sigmoid:
                              a ``(B, C_in)`` vector. A global reduction followed by
                              a tiny conv; not worth a kernel.
gate × features, 1x1 conv     **kernel A**, :func:`entropy_proj`: reads the (up to)
                              three inputs through their own pointers and strides
                              (strided step views of full-resolution maps are read
                              in place, no copy and no concat), multiplies each
                              channel by its gate on load, ``tl.dot`` in IEEE fp32
                              with the transposed 1x1 weight, adds the bias.
residual blocks               torch (3x3 convs, cuDNN): ``entropy_depth`` blocks.
SiLU, 3x3 conv to 6 logits,   **kernel B**, :func:`entropy_tail`: SiLU applied on
RGB coupling, quantisation    load, the 3x3 conv as 9 shifted ``tl.dot`` s (IEEE fp32,
of the 7 probabilities        6 outputs padded to 16), then per position the 7
                              coupled logits and their probability bytes ``q``
                              (round half to even, exact), stored straight into the
                              coder's contiguous uint8 ``(B, h*w, 7)`` buffer; the
                              float logits are written only when asked (the encoder's
                              cross-entropy figure needs them, the decoder does not).
============================  =========================================================

Contract of the 7 probabilities (``aribbps.probability``): per pixel
``q_r, q_g|r=0, q_g|r=1, q_b|00, q_b|01, q_b|10, q_b|11`` from the coupled
logits ``z`` = ``lr``, ``lg ∓ a``, ``lb ∓ b ∓ c`` of ``(lr, lg, lb, a, b, c)``
(the sums in that order), ``±inf`` logits replaced by ``±1e30`` first, a NaN
logit raises ``ValueError``. Two probability codes (:data:`PROB_CODES`):

* ``logit`` (written now): ``q = clamp(round(clamp(16·z, -128, 128) + 128),
  1, 255)``, the addition in float32, meaning ``P(1) ≈ σ((q - 128) / 16)``
  (the coder's 16-bit table, ``coder/rans_stack.cpp``);
* ``linear`` (files before it): ``q = clamp(round(256·σ(z)), 1, 255)``,
  meaning ``P(1) = q / 256``.

:func:`quantise_probs7_ref` is that contract in plain torch (and the one
``aribbps.probability.quantise_probs7`` calls).

Tolerance against the references (float32, tested): the kernels sum in a
different order than cuDNN/ATen and use Triton's ``exp`` in σ, so logits
agree to ~1e-6 relative (tests: 1e-5 absolute on O(1) values) and a
quantised q may differ by 1, only where ``256·σ`` (linear) or ``16·z + 128``
(logit) of the reference lies within ``64·3·max|Δlogit| + 1e-4`` of a ``.5``
rounding boundary. This is
why the codec records the kernel path and never mixes paths between the
encoder and the decoder: each path is deterministic on its own (fixed block
sizes, no autotuning, no atomics, a fixed reduction order per output
position, independent of the batch), which is what lossless decoding needs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import HAS_TRITON, calculate_settings, require_triton
from kernels.launch_lock import LAUNCH_LOCK

__all__ = ["INF_LOGIT", "LOGIT_STEPS", "NUM_LOGITS", "PROB_CODES", "eca_gate", "entropy_proj", "entropy_proj_ref",
           "entropy_tail", "entropy_tail_ref", "quantise_probs7_ref"]

#: Logits per pixel: (lr, lg, lb, a, b, c).
NUM_LOGITS = 6
#: What a probability byte means (index = the coder's code, ``aribbps.coder``).
PROB_CODES: tuple[str, ...] = ("linear", "logit")
#: The logit code's steps per unit of logit (a power of two: 16·z is exact).
LOGIT_STEPS = 16
#: ±inf logits are replaced by this before the conditional sums.
INF_LOGIT = 1e30
#: (r', g') sign pairs of the 7 coder probabilities (0 = not used).
_SEVEN_SIGNS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))
#: The kernels take at most this many input parts (plane ctx, latent, space ctx).
MAX_PARTS = 3
#: Output channels of kernel B padded to this (``tl.dot`` needs N >= 16).
_N_PAD = 16
_ACTIVATIONS = {"silu": 1, "none": 0}


# ---------------------------------------------------------------- references
def _check_prob_code(prob_code: str) -> None:
    if prob_code not in PROB_CODES:
        raise ValueError(f"prob_code must be one of {PROB_CODES}, got {prob_code!r}")


def quantise_probs7_ref(logits: Tensor, prob_code: str = "logit") -> Tensor:
    """The 7 quantised probabilities per pixel (the contract above), plain torch.

    Args:
        logits: (B, 6, h, w), any float dtype (computed in float32).
        prob_code: one of :data:`PROB_CODES`.

    Returns:
        (B, h*w, 7) contiguous uint8 in 1..255.

    Raises:
        ValueError: the logits hold a NaN.
    """
    if logits.dim() != 4 or logits.shape[1] != NUM_LOGITS:
        raise ValueError(f"logits must have shape (B, 6, h, w), got {tuple(logits.shape)}")
    _check_prob_code(prob_code)
    z = logits.to(torch.float32)
    if bool(torch.isnan(z).any()):
        raise ValueError("logits contain NaN; refusing to build coder probabilities")
    z = torch.nan_to_num(z, posinf=INF_LOGIT, neginf=-INF_LOGIT)
    lr, lg, lb, a, b, c = z.unbind(dim=1)
    columns = []
    for i, (rs, gs) in enumerate(_SEVEN_SIGNS):
        if i == 0:
            columns.append(lr)
        elif i < 3:
            columns.append(lg + a * float(rs))
        else:
            columns.append(lb + b * float(rs) + c * float(gs))
    coupled = torch.stack(columns, dim=-1)  # (B, h, w, 7)
    if prob_code == "logit":
        q = torch.round((coupled * LOGIT_STEPS).clamp_(-128, 128) + 128)
    else:
        q = torch.round(torch.sigmoid(coupled) * 256)
    q = q.clamp_(1, 255).to(torch.uint8)
    return q.reshape(q.shape[0], -1, 7).contiguous()


def eca_gate(parts: Sequence[Tensor], conv_weight: Tensor, valid: Tensor | None = None) -> Tensor:
    """The ECA channel gate of the concatenation of ``parts``, without building it.

    ``gate = σ(conv1d(mean))`` where ``mean`` is the per-channel mean over the
    valid positions (all positions if ``valid`` is None), as
    ``aribbps.models.layers.ECA`` computes it on the concatenated features.

    Args:
        parts: tensors (B, C_i, h, w), the head's inputs in concat order.
        conv_weight: (1, 1, k) weight of the ECA's bias-free ``Conv1d``.
        valid: (B, 1, h, w) bool or None.

    Returns:
        (B, sum C_i) float32.
    """
    means = []
    for x in parts:
        x = x.to(torch.float32)
        if valid is None:
            means.append(x.mean(dim=(2, 3)))
        else:
            v = valid.to(x.dtype)
            means.append((x * v).sum(dim=(2, 3)) / v.sum(dim=(2, 3)).clamp_min(1))
    mean = torch.cat(means, dim=1)
    k = conv_weight.shape[-1]
    return torch.sigmoid(F.conv1d(mean[:, None, :], conv_weight.to(torch.float32), padding=k // 2))[:, 0]


def entropy_proj_ref(parts: Sequence[Tensor], gate: Tensor | None, weight: Tensor,
                     bias: Tensor | None) -> Tensor:
    """Plain torch: ``conv1x1(cat(parts) * gate)``.

    Args:
        parts: 1..3 tensors (B, C_i, h, w).
        gate: (B, sum C_i) or None (no gating).
        weight: (O, sum C_i, 1, 1); bias: (O,) or None.

    Returns:
        (B, O, h, w).
    """
    x = torch.cat([p.to(weight.dtype) for p in parts], dim=1)
    if gate is not None:
        x = x * gate.to(weight.dtype)[:, :, None, None]
    return F.conv2d(x, weight, bias)


def entropy_tail_ref(h: Tensor, weight: Tensor, bias: Tensor | None, act: str = "silu",
                     return_logits: bool = False, prob_code: str = "logit") -> Tensor | tuple[Tensor, Tensor]:
    """Plain torch: ``quantise_probs7_ref(conv3x3(act(h)), prob_code)``.

    Args:
        h: (B, C, h, w) output of the head's residual blocks.
        weight: (6, C, 3, 3); bias: (6,) or None.
        act: "silu" (the head's activation) or "none".
        return_logits: also return the (B, 6, h, w) logits.

    Returns:
        probs7 (B, h*w, 7) uint8, and the logits if asked.
    """
    if act not in _ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
    x = F.silu(h) if act == "silu" else h
    logits = F.conv2d(x.to(weight.dtype), weight, bias, padding=1)
    probs7 = quantise_probs7_ref(logits, prob_code)
    return (probs7, logits) if return_logits else probs7


# ---------------------------------------------------------------- kernels
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _proj_part(acc, X_ptr, x_stride_b, x_stride_c, x_stride_h, x_stride_w, n_ch, ch_offset,
                   GATE_ptr, gate_stride_b, WT_ptr, n_out, b, qi, qj, p_mask, o, o_mask,
                   HAS_GATE: tl.constexpr, BLOCK_K: tl.constexpr):
        """acc += (X[b, :, qi, qj] * gate[b, ch_offset + :]) @ WT[ch_offset + :, o] over this part's channels."""
        for k0 in range(0, n_ch, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < n_ch
            x = tl.load(X_ptr + b * x_stride_b + k[None, :] * x_stride_c + qi[:, None] * x_stride_h
                        + qj[:, None] * x_stride_w, mask=p_mask[:, None] & k_mask[None, :], other=0.0)
            if HAS_GATE:
                g = tl.load(GATE_ptr + b * gate_stride_b + ch_offset + k, mask=k_mask, other=0.0)
                x = x * g[None, :]
            wt = tl.load(WT_ptr + (ch_offset + k)[:, None] * n_out + o[None, :],
                         mask=k_mask[:, None] & o_mask[None, :], other=0.0)
            # IEEE fp32, not TF32: the logits must not lose 13 mantissa bits.
            acc = tl.dot(x, wt, acc, input_precision="ieee")
        return acc

    @triton.jit
    def _entropy_proj_kernel(
        X1_ptr, x1_stride_b, x1_stride_c, x1_stride_h, x1_stride_w, n_ch1,
        X2_ptr, x2_stride_b, x2_stride_c, x2_stride_h, x2_stride_w, n_ch2,
        X3_ptr, x3_stride_b, x3_stride_c, x3_stride_h, x3_stride_w, n_ch3,
        GATE_ptr, gate_stride_b,  # (B, C_in) float32
        WT_ptr,  # (C_in, O) contiguous: the 1x1 weight transposed
        BIAS_ptr,  # (O,)
        OUT_ptr, out_stride_b, out_stride_c,  # (B, O, h, w): a position's stride is 1
        n_out, n_pos, width_q, n_pos_blocks,
        HAS_GATE: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    ):
        """out[b, o, p] = bias[o] + sum_c W[o, c] * gate[b, c] * cat(X1, X2, X3)[b, c, p]."""
        pid = tl.program_id(0).to(tl.int64)
        pid_o = tl.program_id(1).to(tl.int64)
        b = pid // n_pos_blocks
        p = (pid % n_pos_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < n_pos
        qi = p // width_q
        qj = p % width_q
        o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        o_mask = o < n_out
        acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
        acc = _proj_part(acc, X1_ptr, x1_stride_b, x1_stride_c, x1_stride_h, x1_stride_w, n_ch1, 0,
                         GATE_ptr, gate_stride_b, WT_ptr, n_out, b, qi, qj, p_mask, o, o_mask,
                         HAS_GATE, BLOCK_K)
        acc = _proj_part(acc, X2_ptr, x2_stride_b, x2_stride_c, x2_stride_h, x2_stride_w, n_ch2, n_ch1,
                         GATE_ptr, gate_stride_b, WT_ptr, n_out, b, qi, qj, p_mask, o, o_mask,
                         HAS_GATE, BLOCK_K)
        acc = _proj_part(acc, X3_ptr, x3_stride_b, x3_stride_c, x3_stride_h, x3_stride_w, n_ch3,
                         n_ch1 + n_ch2, GATE_ptr, gate_stride_b, WT_ptr, n_out, b, qi, qj, p_mask, o,
                         o_mask, HAS_GATE, BLOCK_K)
        if HAS_BIAS:
            acc += tl.load(BIAS_ptr + o, mask=o_mask, other=0.0)[None, :]
        out = OUT_ptr + b * out_stride_b + o[None, :] * out_stride_c + p[:, None]
        tl.store(out, acc, mask=p_mask[:, None] & o_mask[None, :])

    @triton.jit
    def _round_half_even(v):
        """round(v) with ties to even, exactly, for finite v >= 0 (every step is exact in fp32)."""
        f = tl.floor(v)
        frac = v - f  # exact: the fractional bits of v
        odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
        up = (frac > 0.5) | ((frac == 0.5) & odd)
        return tl.where(up, f + 1.0, f)

    @triton.jit
    def _quantise(z, LOGIT: tl.constexpr):
        """The probability byte of coupled logit z, as float (the contract above).

        logit: clamp(round(clamp(16 z, -128, 128) + 128), 1, 255); linear:
        clamp(round(256 σ(z)), 1, 255). 16 z and 256·σ are exact (powers of two)."""
        if LOGIT:
            q = _round_half_even(tl.minimum(tl.maximum(z * 16.0, -128.0), 128.0) + 128.0)
        else:
            q = _round_half_even((1.0 / (1.0 + tl.exp(-z))) * 256.0)
        return tl.minimum(tl.maximum(q, 1.0), 255.0)

    @triton.jit
    def _column(acc, cols, j: tl.constexpr):
        """Column j of a (P, 16) tile: one value plus zeros, exact."""
        return tl.sum(tl.where(cols[None, :] == j, acc, 0.0), axis=1)

    @triton.jit
    def _no_inf(z):
        """±inf -> ±1e30 (finite values unchanged, as torch.nan_to_num)."""
        z = tl.where(z > 3.4028234663852886e38, 1e30, z)
        return tl.where(z < -3.4028234663852886e38, -1e30, z)

    @triton.jit
    def _entropy_tail_kernel(
        H_ptr, h_stride_b, h_stride_c, h_stride_h, h_stride_w, n_ch,
        WT_ptr,  # (9, C, 16) contiguous: tap-major, outputs padded with zeros
        BIAS_ptr,  # (16,) zero padded
        Q_ptr,  # (B, h*w, 7) uint8 contiguous: the coder's buffer
        LOGITS_ptr,  # (B, 6, h, w) float32 contiguous, written iff WRITE_LOGITS
        NAN_ptr,  # (programs,) int32: 1 where the program saw a NaN logit
        height_q, width_q, n_pos, n_pos_blocks,
        ACT: tl.constexpr, WRITE_LOGITS: tl.constexpr, LOGIT: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, N_PAD: tl.constexpr,
    ):
        """Per position p of image b: logits = bias + sum_{tap, c} W[:, c, tap] * act(H[b, c, p + tap]);
        then q_j = _quantise(coupled_j(logits)) for the 7 coupled logits."""
        pid = tl.program_id(0).to(tl.int64)
        b = pid // n_pos_blocks
        p = (pid % n_pos_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < n_pos
        qi = p // width_q
        qj = p % width_q
        cols = tl.arange(0, N_PAD)
        acc = tl.zeros((BLOCK_P, N_PAD), dtype=tl.float32)
        for t in tl.static_range(9):
            y = qi + (t // 3 - 1)
            x = qj + (t % 3 - 1)
            inside = p_mask & (y >= 0) & (y < height_q) & (x >= 0) & (x < width_q)
            for k0 in range(0, n_ch, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                k_mask = k < n_ch
                h = tl.load(H_ptr + b * h_stride_b + k[None, :] * h_stride_c + y[:, None] * h_stride_h
                            + x[:, None] * h_stride_w, mask=inside[:, None] & k_mask[None, :], other=0.0)
                if ACT == 1:  # SiLU, as torch: x / (1 + e^-x); SiLU(0) = 0 keeps the zero padding
                    h = h / (1.0 + tl.exp(-h))
                wt = tl.load(WT_ptr + (t * n_ch + k)[:, None] * N_PAD + cols[None, :],
                             mask=k_mask[:, None], other=0.0)
                acc = tl.dot(h, wt, acc, input_precision="ieee")
        acc += tl.load(BIAS_ptr + cols)[None, :]

        nan = tl.where(p_mask[:, None] & (acc != acc), 1, 0)
        tl.store(NAN_ptr + pid, tl.max(tl.max(nan, axis=1), axis=0))
        if WRITE_LOGITS:
            logit_ptr = LOGITS_ptr + b * 6 * n_pos + cols[None, :] * n_pos + p[:, None]
            tl.store(logit_ptr, acc, mask=p_mask[:, None] & (cols[None, :] < 6))

        lr = _no_inf(_column(acc, cols, 0))
        lg = _no_inf(_column(acc, cols, 1))
        lb = _no_inf(_column(acc, cols, 2))
        ca = _no_inf(_column(acc, cols, 3))
        cb = _no_inf(_column(acc, cols, 4))
        cc = _no_inf(_column(acc, cols, 5))
        # The coupled logits in the reference's order of float operations.
        b_lo = lb - cb
        b_hi = lb + cb
        q0 = _quantise(lr, LOGIT)
        q1 = _quantise(lg - ca, LOGIT)
        q2 = _quantise(lg + ca, LOGIT)
        q3 = _quantise(b_lo - cc, LOGIT)
        q4 = _quantise(b_lo + cc, LOGIT)
        q5 = _quantise(b_hi - cc, LOGIT)
        q6 = _quantise(b_hi + cc, LOGIT)
        tile = (tl.where(cols[None, :] == 0, q0[:, None], 0.0) + tl.where(cols[None, :] == 1, q1[:, None], 0.0)
                + tl.where(cols[None, :] == 2, q2[:, None], 0.0) + tl.where(cols[None, :] == 3, q3[:, None], 0.0)
                + tl.where(cols[None, :] == 4, q4[:, None], 0.0) + tl.where(cols[None, :] == 5, q5[:, None], 0.0)
                + tl.where(cols[None, :] == 6, q6[:, None], 0.0))
        q_ptr = Q_ptr + b * n_pos * 7 + p[:, None] * 7 + cols[None, :]
        tl.store(q_ptr, tile.to(tl.uint8), mask=p_mask[:, None] & (cols[None, :] < 7))


# ---------------------------------------------------------------- launchers
_BLOCK_P = 64  # positions per program (both kernels)
_BLOCK_K = 32  # input channels per tl.dot step


def _check_parts(parts: Sequence[Tensor]) -> tuple[int, int, int, int]:
    if not 1 <= len(parts) <= MAX_PARTS:
        raise ValueError(f"expected 1..{MAX_PARTS} input parts, got {len(parts)}")
    batch, _, height, width = parts[0].shape
    for x in parts:
        if x.dim() != 4 or x.shape[0] != batch or x.shape[2:] != (height, width):
            raise ValueError(f"parts must share (B, ., h, w) = {(batch, height, width)}, got "
                             f"{[tuple(p.shape) for p in parts]}")
        if x.dtype != torch.float32:
            raise ValueError(f"the kernels compute in float32; got a part of dtype {x.dtype}")
    return batch, sum(x.shape[1] for x in parts), height, width


def entropy_proj(parts: Sequence[Tensor], gate: Tensor | None, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Kernel A: ``conv1x1(cat(parts) * gate)`` without the concat (same function as :func:`entropy_proj_ref`).

    Args:
        parts: 1..3 float32 tensors (B, C_i, h, w), any strides (step views
            of full-resolution maps are read in place).
        gate: (B, sum C_i) float32 ECA gate (:func:`eca_gate`) or None.
        weight: (O, sum C_i, 1, 1) float32; bias: (O,) or None.

    Returns:
        (B, O, h, w) float32, contiguous.
    """
    batch, c_in, height, width = _check_parts(parts)
    if weight.dim() != 4 or weight.shape[1:] != (c_in, 1, 1) or weight.dtype != torch.float32:
        raise ValueError(f"weight must be float32 (O, {c_in}, 1, 1), got {weight.dtype} {tuple(weight.shape)}")
    n_out = weight.shape[0]
    if bias is not None and bias.shape != (n_out,):
        raise ValueError(f"bias must be ({n_out},), got {tuple(bias.shape)}")
    if gate is not None and gate.shape != (batch, c_in):
        raise ValueError(f"gate must be (B, C_in) = {(batch, c_in)}, got {tuple(gate.shape)}")
    require_triton(*parts, gate, weight, bias)
    out = torch.empty((batch, n_out, height, width), dtype=torch.float32, device=parts[0].device)
    if out.numel() == 0:
        return out
    block_o, num_warps = calculate_settings(min(n_out, 128))
    n_pos = height * width
    n_pos_blocks = triton.cdiv(n_pos, _BLOCK_P)
    wt = weight.detach().reshape(n_out, c_in).t().contiguous()
    gate_arg = gate.detach().to(torch.float32).contiguous() if gate is not None else wt
    bias_arg = bias.detach().contiguous() if bias is not None else wt
    slots = []
    for i in range(MAX_PARTS):
        if i < len(parts):
            slots.extend([parts[i], *parts[i].stride(), parts[i].shape[1]])
        else:  # an empty part: its loop runs zero times
            slots.extend([parts[0], 0, 0, 0, 0, 0])
    grid = (batch * n_pos_blocks, triton.cdiv(n_out, block_o))
    with LAUNCH_LOCK:
        _entropy_proj_kernel[grid](
            *slots,
            gate_arg, gate_arg.stride(0) if gate is not None else 0,
            wt, bias_arg,
            out, out.stride(0), out.stride(1),
            n_out, n_pos, width, n_pos_blocks,
            HAS_GATE=gate is not None, HAS_BIAS=bias is not None,
            BLOCK_P=_BLOCK_P, BLOCK_K=_BLOCK_K, BLOCK_O=block_o, num_warps=num_warps,
        )
    return out


def entropy_tail(h: Tensor, weight: Tensor, bias: Tensor | None, act: str = "silu",
                 return_logits: bool = False, check_nan: bool = True,
                 prob_code: str = "logit") -> Tensor | tuple[Tensor, Tensor]:
    """Kernel B: act + 3x3 conv + coupling + quantisation, into the coder's buffer.

    Same function as :func:`entropy_tail_ref` (tolerance in the module docstring).

    Args:
        h: (B, C, h, w) float32, any strides: the output of the head's residual blocks.
        weight: (6, C, 3, 3) float32; bias: (6,) or None.
        act: "silu" (applied to ``h`` on load) or "none".
        return_logits: also write and return the (B, 6, h, w) float32 logits.
        check_nan: raise ``ValueError`` if a logit is NaN (one tiny
            device-to-host read of per-program flags; the caller reads the
            probabilities right after anyway).
        prob_code: one of :data:`PROB_CODES`.

    Returns:
        probs7 (B, h*w, 7) uint8 contiguous, and the logits if asked.
    """
    if act not in _ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
    batch, n_ch, height, width = _check_parts([h])
    if weight.shape != (NUM_LOGITS, n_ch, 3, 3) or weight.dtype != torch.float32:
        raise ValueError(f"weight must be float32 (6, {n_ch}, 3, 3), got {weight.dtype} {tuple(weight.shape)}")
    if bias is not None and bias.shape != (NUM_LOGITS,):
        raise ValueError(f"bias must be (6,), got {tuple(bias.shape)}")
    _check_prob_code(prob_code)
    require_triton(h, weight, bias)
    device = h.device
    n_pos = height * width
    probs7 = torch.empty((batch, n_pos, 7), dtype=torch.uint8, device=device)
    logits = torch.empty((batch, NUM_LOGITS, height, width) if return_logits else (1,),
                         dtype=torch.float32, device=device)
    if probs7.numel() == 0:
        return (probs7, logits) if return_logits else probs7
    wt = torch.zeros((9, n_ch, _N_PAD), dtype=torch.float32, device=device)
    wt[:, :, :NUM_LOGITS] = weight.detach().reshape(NUM_LOGITS, n_ch, 9).permute(2, 1, 0)
    bias_pad = torch.zeros(_N_PAD, dtype=torch.float32, device=device)
    if bias is not None:
        bias_pad[:NUM_LOGITS] = bias.detach()
    n_pos_blocks = triton.cdiv(n_pos, _BLOCK_P)
    nan_flags = torch.zeros(batch * n_pos_blocks, dtype=torch.int32, device=device)
    with LAUNCH_LOCK:
        _entropy_tail_kernel[(batch * n_pos_blocks,)](
            h, *h.stride(), n_ch,
            wt, bias_pad, probs7, logits, nan_flags,
            height, width, n_pos, n_pos_blocks,
            ACT=_ACTIVATIONS[act], WRITE_LOGITS=return_logits, LOGIT=prob_code == "logit",
            BLOCK_P=_BLOCK_P, BLOCK_K=_BLOCK_K, N_PAD=_N_PAD, num_warps=4,
        )
    if check_nan and bool(nan_flags.any()):
        raise ValueError("logits contain NaN; refusing to build coder probabilities")
    return (probs7, logits) if return_logits else probs7
