"""What the codec calls: Triton/CuPy on CUDA, torch/NumPy elsewhere.

Two *kernel paths* compute the network outputs of a (plane, step):

``"torch"``
    ``net.step_logits`` (ATen/cuDNN) and :func:`quantise_probs7` (plain
    torch, bit-identical to ``aribbps.probability.quantise_probs7``).
``"triton"``
    the same network with its hot spots replaced by the fused kernels:
    the space context's masked lattice conv (:func:`kernels.lattice_conv.lattice_conv`),
    the concat-free ECA-gated 1x1 projection and the SiLU + 3x3 + coupling
    + σ + quantisation tail of the entropy head (:mod:`kernels.entropy_tail`);
    the residual blocks and the ECA gate stay in torch.

The two paths agree to float32 rounding, not bit for bit (see
:mod:`kernels.entropy_tail` for the tolerance), so **a file must be decoded
with the path that encoded it**: the encoder records :func:`kernel_path` in
the container, the decoder calls :func:`check_kernel_path` with the recorded
value and gets a :class:`KernelPathError` on a mismatch, then passes that
path to every call here. Each path is deterministic by itself (no autotuning,
no atomics, fixed block sizes); the container's device kind covers the rest
(CPU and CUDA torch differ too).

How the path is chosen (:func:`kernel_path`): ``"triton"`` on a CUDA device
with Triton installed, ``"torch"`` otherwise. ``ARIBBPS_KERNELS=torch``
forces torch everywhere; ``ARIBBPS_KERNELS=triton`` insists on Triton
(an error where it cannot run; on CPU it needs ``TRITON_INTERPRET=1``, the
slow interpreter used by the tests).

Integer work (bit-plane slicing, lattice packing, latent offsets, host
staging) is exact on every backend, so it is chosen per call without
recording: :func:`step_bits`, :func:`scatter_step_bits`,
:func:`quantise_latent_offsets`, :func:`to_host` (re-exported from
:mod:`kernels.bitplanes_cupy`).

The network argument is used by duck typing (``net.head(k, s)``,
``net.cfg.latent_channels``, ``head.space.conv``/``.block``,
``head.entropy.eca``/``.conv_in``/``.blocks``/``.act``/``.conv_out``):
this package imports nothing from :mod:`aribbps`.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from kernels import HAS_TRITON, interpreter_mode
from kernels.bitplanes_cupy import quantise_latent_offsets, scatter_step_bits, step_bits, to_host
from kernels.entropy_tail import eca_gate, entropy_proj, entropy_tail, quantise_probs7_ref
from kernels.lattice_conv import STEP_POSITIONS, lattice_conv

__all__ = ["ENV_VAR", "KERNEL_PATHS", "KernelPathError", "check_kernel_path", "coding_numerics", "kernel_path",
           "writes_native_conv",
           "quantise_latent_offsets", "quantise_probs7", "scatter_step_bits", "step_bits", "step_logits",
           "step_probs7", "to_host"]

_NUMERICS_LOCK = threading.Lock()
# Per device kind ("cuda", "cpu"): codings running, the settings before them, the pinned settings.
_numerics_users: dict[str, int] = {"cuda": 0, "cpu": 0}
_numerics_saved: dict[str, tuple] = {}
_numerics_pinned: dict[str, tuple] = {}
#: Torch 2.9 and newer set TF32 through ``fp32_precision`` and refuse a mix
#: with the older ``allow_tf32`` flags, so each torch is driven through its own API.
_PRECISION_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")
#: (cuDNN benchmark, cuDNN deterministic, matmul precision, conv precision) while coding.
_PINNED_NUMERICS = (False, True, "ieee", "ieee") if _PRECISION_API else (False, True, False, False)


def _numerics() -> tuple:
    """The settings :func:`coding_numerics` pins, in the order of :data:`_PINNED_NUMERICS`."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if _PRECISION_API:
        return cudnn.benchmark, cudnn.deterministic, matmul.fp32_precision, cudnn.conv.fp32_precision
    return cudnn.benchmark, cudnn.deterministic, matmul.allow_tf32, cudnn.allow_tf32


def _set_numerics(state: tuple) -> None:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    cudnn.benchmark, cudnn.deterministic = state[:2]
    if _PRECISION_API:
        matmul.fp32_precision, cudnn.conv.fp32_precision = state[2:]
    else:
        matmul.allow_tf32, cudnn.allow_tf32 = state[2:]


def writes_native_conv(device: torch.device | str) -> bool:
    """Whether the codec codes files on ``device`` with torch's own convolutions (container
    features bit 1, :func:`coding_numerics`): every CPU file, for files that decode on other CPUs."""
    return torch.device(device).type == "cpu"


@contextmanager
def coding_numerics(device: torch.device | str, native_conv: bool = False) -> Iterator[None]:
    """Pins how torch computes the parts of a step that stay in torch, while coding.

    On CUDA: cuDNN deterministic, without its autotuner, and no TF32 in
    convolutions or matrix products (docs/gpu.md, determinism rule 5). On a
    CPU: oneDNN on, or with ``native_conv`` off together with NNPACK (which
    torch picks for batches of 16 and more, with blocks sized by the CPU's
    caches), so that every convolution runs torch's own im2col and BLAS
    products (MKL, whose results ``MKL_CBWR`` makes the same on every CPU;
    :mod:`aribbps.cpu_isa`), instead of kernels chosen for the machine at hand. The encoder
    and the decoder then compute alike whatever the calling program has set.
    The settings are process-wide, so overlapping uses (codings in several
    threads) share one pinning: the first sets it, the last puts the previous
    settings back; a use that needs other CPU settings while one runs is
    refused (RuntimeError). Elsewhere it does nothing.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        wanted, read, write = _PINNED_NUMERICS, _numerics, _set_numerics
    elif kind == "cpu":
        wanted, read, write = (not native_conv, not native_conv), _cpu_numerics, _set_cpu_numerics
    else:
        yield
        return
    with _NUMERICS_LOCK:
        if _numerics_users[kind] == 0:
            _numerics_saved[kind] = read()
            write(wanted)
            _numerics_pinned[kind] = wanted
        elif _numerics_pinned[kind] != wanted:
            raise RuntimeError("another coding in this process runs the CPU networks with other convolutions "
                               "(oneDNN or torch's own): code files of both kinds one after the other")
        _numerics_users[kind] += 1
    try:
        yield
    finally:
        with _NUMERICS_LOCK:
            _numerics_users[kind] -= 1
            if _numerics_users[kind] == 0:
                write(_numerics_saved.pop(kind))


def _cpu_numerics() -> tuple:
    """(oneDNN on, NNPACK on): torch's convolution backends that :func:`coding_numerics` pins on a CPU."""
    return torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()


def _set_cpu_numerics(state: tuple) -> None:
    torch.backends.mkldnn.enabled = state[0]
    torch.backends.nnpack.set_flags(state[1])


#: The values :func:`kernel_path` returns (the container stores one of them).
KERNEL_PATHS: tuple[str, ...] = ("torch", "triton")
#: Environment variable overriding the choice: "auto" (default), "torch", "triton".
ENV_VAR = "ARIBBPS_KERNELS"


class KernelPathError(ValueError):
    """The file was encoded with another kernel path than this decoder would use."""


def _device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def kernel_path(device: torch.device | str | None = None) -> str:
    """The kernel path the networks use on ``device``: "triton" or "torch".

    Args:
        device: where the networks run (default: CUDA if available, else CPU).

    Returns:
        "triton" on CUDA with Triton installed, else "torch"; overridden by
        ``ARIBBPS_KERNELS`` ("torch" | "triton" | "auto").

    Raises:
        ValueError: ``ARIBBPS_KERNELS`` holds another value.
        RuntimeError: ``ARIBBPS_KERNELS=triton`` where Triton cannot run.
    """
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in ("auto", *KERNEL_PATHS):
        raise ValueError(f"{ENV_VAR} must be 'auto', 'torch' or 'triton', got {choice!r}")
    dev = _device(device)
    if choice == "torch":
        return "torch"
    triton_ok = HAS_TRITON and (dev.type == "cuda" or (dev.type == "cpu" and interpreter_mode()))
    if choice == "triton":
        if not triton_ok:
            raise RuntimeError(f"{ENV_VAR}=triton, but the Triton kernels cannot run on {dev.type!r} here "
                               "(they need the `triton` package and a CUDA device, or TRITON_INTERPRET=1 "
                               f"on CPU); unset {ENV_VAR} to use the torch path")
        return "triton"
    return "triton" if HAS_TRITON and dev.type == "cuda" else "torch"


def check_kernel_path(recorded: str, device: torch.device | str | None = None) -> str:
    """Refuses to decode with another kernel path than the encoder's.

    Args:
        recorded: the path stored in the file.
        device: where the decoder runs the networks.

    Returns:
        ``recorded``: pass it as ``path=`` to :func:`step_probs7`.

    Raises:
        ValueError: ``recorded`` is not a known path.
        KernelPathError: this decoder would use another path (the message
            says what to change).
    """
    if recorded not in KERNEL_PATHS:
        raise ValueError(f"unknown kernel path {recorded!r} in the file (known: {KERNEL_PATHS})")
    if recorded == "torch":
        return recorded  # the torch path runs everywhere: decode with it, whatever this device would pick
    here = kernel_path(device)
    if here != recorded:
        hint = ("decode on a CUDA device with Triton installed (pip install 'aribbps[gpu]')"
                f"{' and unset ' + ENV_VAR if os.environ.get(ENV_VAR) else ''}")
        raise KernelPathError(f"this file was encoded with the {recorded!r} kernels, but this decoder would use "
                              f"{here!r} on {_device(device).type!r}; the probabilities would differ and the "
                              f"image would not decode: {hint}")
    return recorded


# ---------------------------------------------------------------- network steps
def quantise_probs7(logits: Tensor, prob_code: str = "logit") -> Tensor:
    """The torch path's quantiser (``aribbps.probability.quantise_probs7``, bit for bit)."""
    return quantise_probs7_ref(logits, prob_code)


def _step_view(t: Tensor, s: int) -> Tensor:
    pr, pc = STEP_POSITIONS[s - 1]
    return t[:, :, pr::2, pc::2]


def _latent_parts(net: Any, latent: Tensor | None, s: int, dtype: torch.dtype) -> list[Tensor]:
    """The latent input of the heads (as ``BitPlaneNet._latent_part``): a strided step view, no copy."""
    channels = net.cfg.latent_channels
    if channels == 0:
        if latent is not None:
            raise ValueError("this network takes no latent features (latent_channels = 0)")
        return []
    if latent is None or latent.shape[1] != channels:
        got = None if latent is None else tuple(latent.shape)
        raise ValueError(f"need latent features with {channels} channels, got {got}")
    return [_step_view(latent, s).to(dtype)]


def _triton_step(net: Any, k: int, s: int, context: Tensor, plane_bits: Tensor, valid: Tensor | None,
                 latent: Tensor | None, return_logits: bool, prob_code: str) -> Tensor | tuple[Tensor, Tensor]:
    """The Triton path of one (plane, step): kernels + the torch pieces between them."""
    if context.dtype != torch.float32:
        raise ValueError(f"the Triton path computes in float32; got a {context.dtype} plane context")
    head = net.head(k, s)
    parts = [_step_view(context, s)]
    parts.extend(_latent_parts(net, latent, s, context.dtype))
    if head.space is not None:
        conv = head.space.conv
        parts.append(head.space.block(lattice_conv(plane_bits, conv.weight, conv.bias, s, valid)))
    valid_q = _step_view(valid, s) if valid is not None else None
    ent = head.entropy
    gate = eca_gate(parts, ent.eca.conv.weight, valid_q)
    h = entropy_proj(parts, gate, ent.conv_in.weight, ent.conv_in.bias)
    for block in ent.blocks:
        h = block(h)
    if isinstance(ent.act, nn.SiLU):
        act = "silu"  # fused into kernel B
    else:
        h, act = ent.act(h), "none"
    return entropy_tail(h, ent.conv_out.weight, ent.conv_out.bias, act=act, return_logits=return_logits,
                        prob_code=prob_code)


def _resolve_path(path: str | None, context: Tensor) -> str:
    chosen = kernel_path(context.device) if path is None else path
    if chosen not in KERNEL_PATHS:
        raise ValueError(f"path must be one of {KERNEL_PATHS}, got {chosen!r}")
    return chosen


def step_logits(net: Any, k: int, s: int, context: Tensor, plane_bits: Tensor, valid: Tensor | None = None,
                latent: Tensor | None = None, *, path: str | None = None) -> Tensor:
    """Drop-in for ``net.step_logits(k, s, context, plane_bits, valid, latent)`` on either path.

    On the Triton path the logits come out of kernel B; use
    :func:`step_probs7` for what goes to the coder (it quantises inside the
    kernel; re-quantising these logits with torch could differ by one).

    Returns:
        (B, 6, H/2, W/2) float32 logits.
    """
    if _resolve_path(path, context) == "torch":
        return net.step_logits(k, s, context, plane_bits, valid, latent)
    return _triton_step(net, k, s, context, plane_bits, valid, latent, True, "logit")[1]


def step_probs7(net: Any, k: int, s: int, context: Tensor, plane_bits: Tensor, valid: Tensor | None = None,
                latent: Tensor | None = None, *, path: str | None = None,
                return_logits: bool = False, prob_code: str = "logit") -> Tensor | tuple[Tensor, Tensor]:
    """Drop-in for ``quantise_probs7(net.step_logits(k, s, context, plane_bits, valid, latent))``.

    Args:
        net: a ``BitPlaneNet`` (eval mode; call under ``torch.no_grad()``).
        k, s: plane and lattice step.
        context: ``net.plane_context(...)`` of plane ``k`` (float32 on the Triton path).
        plane_bits: (B, 3, H, W) uint8 bits of plane ``k``; only positions of
            steps < s (and valid) are read, on both paths.
        valid, latent: as ``BitPlaneNet.step_logits``.
        path: "torch" or "triton"; None = :func:`kernel_path` of ``context.device``.
            The decoder passes the path recorded in the file.
        return_logits: also return the float logits (the encoder's
            cross-entropy figure); on the Triton path they come from the
            same kernel launch.
        prob_code: what the bytes mean (``kernels.entropy_tail.PROB_CODES``);
            the decoder passes the file's.

    Returns:
        (B, H/2 * W/2, 7) uint8 on the networks' device (:func:`to_host` it
        for the coder), and the (B, 6, H/2, W/2) logits if asked.

    Raises:
        ValueError: NaN logits, bad shapes, or an unknown path.
    """
    if _resolve_path(path, context) == "torch":
        logits = net.step_logits(k, s, context, plane_bits, valid, latent)
        probs7 = quantise_probs7(logits, prob_code)
        return (probs7, logits) if return_logits else probs7
    return _triton_step(net, k, s, context, plane_bits, valid, latent, return_logits, prob_code)
