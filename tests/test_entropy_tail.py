"""kernels/entropy_tail.py and kernels/dispatch.py: the fused entropy head against the model.

The Triton tests run on CPU through the interpreter, on small shapes:

    TRITON_INTERPRET=1 python -m pytest -q tests/test_entropy_tail.py

Without ``TRITON_INTERPRET=1`` (and without CUDA) they are skipped with that
reason; reference and dispatch-policy tests always run. CUDA runs: tests/test_gpu.py.

Tolerances (documented in kernels/entropy_tail.py):

* logits: the kernel's error against a float64 evaluation is at most twice
  the float32 PyTorch error, plus 1e-6 per unit of logit magnitude;
* quantised probabilities (integers): equal, except where ``256·σ`` of the
  reference lies within ``64·3·max|Δlogit| + 1e-4`` of a ``.5`` boundary,
  and there they differ by exactly one. The rounding itself is tested exact.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aribbps.bitplanes import known_before, plane_bits, steps_before_mask
from aribbps.config import CONFIGS
from aribbps.models.bitplane_net import BitPlaneNet
from aribbps.models.entropy_head import EntropyHead
from aribbps.probability import quantise_probs7
from kernels import HAS_TRITON, interpreter_mode
from kernels import dispatch
from kernels.entropy_tail import (
    LOGIT_STEPS,
    PROB_CODES,
    eca_gate,
    entropy_proj,
    entropy_proj_ref,
    entropy_tail,
    entropy_tail_ref,
    quantise_probs7_ref,
)

needs_triton = pytest.mark.skipif(
    not (HAS_TRITON and interpreter_mode()),
    reason="Triton kernels on CPU need the triton package and TRITON_INTERPRET=1 "
           "(CUDA runs are in tests/test_gpu.py)",
)
# The interpreter evaluates σ/SiLU/dot with NumPy, which warns when a value overflows to inf (intended).
def quiet_exp(fn):
    for what in ("exp", "matmul"):
        fn = pytest.mark.filterwarnings(f"ignore:overflow encountered in {what}:RuntimeWarning")(fn)
    return fn


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_logits_close(out: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor) -> float:
    """Kernel error <= 2 x float32-reference error + 1e-6 x magnitude; returns the kernel's error vs ref32."""
    err = (out.double() - ref64).abs().max().item()
    base = (ref32.double() - ref64).abs().max().item()
    scale = 1.0 + ref64.abs().max().item()
    assert err <= 2 * base + 1e-6 * scale, f"kernel error {err:.3g} vs float32 reference error {base:.3g}"
    return (out.double() - ref32.double()).abs().max().item()


def coupled_scaled(logits: torch.Tensor, prob_code: str = "logit") -> torch.Tensor:
    """The values q rounds, in float64, (B, h*w, 7): 16·z + 128 (logit) or 256·σ(z) (linear)
    of the 7 coupled logits z."""
    z = logits.double()
    lr, lg, lb, a, b, c = z.unbind(1)
    coupled = torch.stack([lr, lg - a, lg + a, lb - b - c, lb - b + c, lb + b - c, lb + b + c], -1)
    scaled = coupled * LOGIT_STEPS + 128 if prob_code == "logit" else torch.sigmoid(coupled) * 256
    return scaled.reshape(z.shape[0], -1, 7)


def assert_probs7_match(q: torch.Tensor, q_ref: torch.Tensor, ref_logits: torch.Tensor, logit_err: float,
                        prob_code: str = "logit") -> None:
    """Equal, except by one where the reference is within the documented margin of a .5 boundary."""
    assert q.dtype == torch.uint8 and q.shape == q_ref.shape and q.is_contiguous()
    assert int(q.min()) >= 1 and int(q.max()) <= 255
    diff = (q.int() - q_ref.int()).abs()
    if not bool(diff.any()):
        return
    margin = 64 * 3 * logit_err + 1e-4
    v = coupled_scaled(ref_logits, prob_code)
    near_half = ((v - v.floor()) - 0.5).abs() <= margin
    bad = (diff > 0) & ~near_half
    assert not bool(bad.any()) and int(diff.max()) <= 1, (
        f"{int((diff > 0).sum())} quantised values differ, {int(bad.sum())} of them away from a rounding "
        f"boundary (margin {margin:.3g}); first at {bad.nonzero()[:5].tolist()}")


# ---------------------------------------------------------------- references
def test_quantise_ref_follows_the_contract():
    """Both probability codes on hand-picked logits, ±inf and 3e38 included; the model code is the ref."""
    logits = torch.zeros((1, 6, 1, 8))
    logits[0, 0] = torch.tensor([0.0, 1 / 32, 3 / 32, -1 / 32, 2.0, -7.9, float("inf"), float("-inf")])
    logits[0, 1, 0, 0], logits[0, 3, 0, 0] = float("inf"), float("-inf")  # g|r=0 = inf + inf, g|r=1 = inf - inf
    logits[0, 2, 0, 1] = 3e38
    logit = quantise_probs7_ref(logits, "logit")[0]
    # 16·z + 128, rounded half to even, clamped to 1..255
    assert logit[:, 0].tolist() == [128, 128, 130, 128, 160, 2, 255, 1]
    assert logit[0, 1:3].tolist() == [255, 128] and logit[1, 3:].tolist() == [255] * 4
    linear = quantise_probs7_ref(logits, "linear")[0]
    assert linear[:, 0].tolist() == [128, 130, 134, 126, 225, 1, 255, 1]  # round(256·σ(z))
    assert linear[0, 1:3].tolist() == [255, 128]
    for code in PROB_CODES:
        assert torch.equal(quantise_probs7(logits, code), quantise_probs7_ref(logits, code))
        assert torch.equal(dispatch.quantise_probs7(logits, code), quantise_probs7_ref(logits, code))
        assert torch.equal(quantise_probs7_ref(logits.double(), code), quantise_probs7_ref(logits, code))
    assert torch.equal(quantise_probs7(logits)[0], logit)  # what files are written with
    logits[0, 5, 0, 6] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantise_probs7_ref(logits)
    with pytest.raises(ValueError, match="shape"):
        quantise_probs7_ref(logits[:, :5])
    with pytest.raises(ValueError, match="prob_code"):
        quantise_probs7_ref(logits[:, :, :, :6], "cubic")


@pytest.mark.parametrize("with_valid", [True, False])
def test_gate_and_projection_refs_equal_the_entropy_head(with_valid):
    torch.manual_seed(0)
    head = EntropyHead(in_channels=20, width=12, depth=1)
    g = _gen(1)
    parts = [torch.randn((2, c, 4, 6), generator=g) for c in (8, 5, 7)]
    valid = (torch.rand((2, 1, 4, 6), generator=g) > 0.3) if with_valid else None
    features = torch.cat(parts, 1)
    with torch.no_grad():
        gate = eca_gate(parts, head.eca.conv.weight, valid)
        gated = head.eca(features, valid)
        torch.testing.assert_close(features * gate[:, :, None, None], gated, rtol=1e-6, atol=1e-6)
        proj = entropy_proj_ref(parts, gate, head.conv_in.weight, head.conv_in.bias)
        torch.testing.assert_close(proj, head.conv_in(gated), rtol=1e-5, atol=1e-5)
        h = head.blocks[0](proj)
        nn.init.normal_(head.conv_out.weight, std=0.2)  # zero-initialised: make it matter
        probs7, logits = entropy_tail_ref(h, head.conv_out.weight, head.conv_out.bias, return_logits=True)
        assert torch.equal(logits, head.conv_out(head.act(h)))
        assert torch.equal(probs7, quantise_probs7(logits))


def test_refs_refuse_bad_arguments():
    h = torch.zeros((1, 4, 3, 3))
    with pytest.raises(ValueError, match="act"):
        entropy_tail_ref(h, torch.zeros((6, 4, 3, 3)), None, act="relu")
    with pytest.raises(ValueError, match="act"):
        entropy_tail(h, torch.zeros((6, 4, 3, 3)), None, act="relu")
    with pytest.raises(ValueError, match="weight"):
        entropy_tail(h, torch.zeros((5, 4, 3, 3)), None)
    with pytest.raises(ValueError, match="float32"):
        entropy_tail(h.double(), torch.zeros((6, 4, 3, 3)), None)
    with pytest.raises(ValueError, match="parts"):
        entropy_proj([], None, torch.zeros((2, 4, 1, 1)), None)
    with pytest.raises(ValueError, match="share"):
        entropy_proj([h, torch.zeros((1, 2, 3, 4))], None, torch.zeros((2, 6, 1, 1)), None)
    with pytest.raises(ValueError, match="weight"):
        entropy_proj([h], None, torch.zeros((2, 5, 1, 1)), None)
    with pytest.raises(ValueError, match="gate"):
        entropy_proj([h], torch.zeros((1, 3)), torch.zeros((2, 4, 1, 1)), None)


# ---------------------------------------------------------------- kernel A: concat-free projection
PROJ_CASES = [  # (B, channels of the parts, h, w, O)
    (2, (8, 5, 20), 5, 7, 24),  # three parts, one crossing the 32-channel step
    (1, (40,), 3, 3, 16),  # one part
    (3, (7, 33), 2, 5, 130),  # two parts; O spans two output blocks of 128
    (2, (3, 3, 3), 9, 8, 5),  # more than one position block (72 > 64)
]


@needs_triton
@pytest.mark.parametrize("case", PROJ_CASES, ids=lambda c: f"B{c[0]}-C{'+'.join(map(str, c[1]))}-O{c[4]}")
@pytest.mark.parametrize("gated", [True, False])
def test_projection_kernel_matches_reference(case, gated):
    b, chans, h, w, o = case
    g = _gen(sum(chans) + o)
    # The first part is a strided step view of a full-resolution map, as the head reads it.
    full = torch.randn((b, chans[0], 2 * h, 2 * w), generator=g)
    parts = [full[:, :, 1::2, 0::2]] + [torch.randn((b, c, h, w), generator=g) for c in chans[1:]]
    gate = torch.rand((b, sum(chans)), generator=g) if gated else None
    weight = torch.randn((o, sum(chans), 1, 1), generator=g) * 0.3
    bias = torch.randn((o,), generator=g) if gated else None
    out = entropy_proj(parts, gate, weight, bias)
    assert out.shape == (b, o, h, w) and out.is_contiguous()
    ref32 = entropy_proj_ref(parts, gate, weight, bias)
    ref64 = entropy_proj_ref([p.double() for p in parts], None if gate is None else gate.double(),
                             weight.double(), None if bias is None else bias.double())
    assert_logits_close(out, ref32, ref64)


# ---------------------------------------------------------------- kernel B: the tail
if HAS_TRITON:
    import triton
    import triton.language as tl

    from kernels.entropy_tail import _round_half_even

    @triton.jit
    def _round_probe(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(Y + offs, _round_half_even(tl.load(X + offs, mask=mask, other=0.0)), mask=mask)


@needs_triton
def test_rounding_is_exact_half_to_even():
    """The kernel's rounding equals torch.round on every kind of value 256·σ can take."""
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))
    special = [0.0, 0.5, 1.5, 2.5, 3.5, 127.5, 128.5, 254.5, 255.5, 256.0, below_half, 1e-30, 1e-8,
               float(np.nextafter(np.float32(2.5), np.float32(3))), float(np.nextafter(np.float32(2.5), np.float32(2))),
               float(np.nextafter(np.float32(255.5), np.float32(0))), 1.0, 255.0, 7.25, 200.75]
    halves = [k + 0.5 for k in range(256)]
    rand = (torch.rand(500, generator=_gen(3)) * 256).tolist()
    x = torch.tensor(special + halves + rand, dtype=torch.float32)
    y = torch.empty_like(x)
    _round_probe[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256)
    assert torch.equal(y, torch.round(x))


TAIL_CASES = [(2, 40, 5, 7), (1, 8, 1, 1), (3, 16, 3, 5), (1, 33, 9, 8)]  # (B, C, h, w)


@needs_triton
@quiet_exp
@pytest.mark.parametrize("case", TAIL_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("act", ["silu", "none"])
@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_tail_kernel_matches_reference(case, act, prob_code):
    b, c, h, w = case
    g = _gen(c * h + w)
    x = torch.randn((b, c, h, w), generator=g) * 2
    weight = torch.randn((6, c, 3, 3), generator=g) * 0.4
    bias = torch.randn((6,), generator=g) if act == "silu" else None
    probs7, logits = entropy_tail(x, weight, bias, act=act, return_logits=True, prob_code=prob_code)
    q_ref, l_ref = entropy_tail_ref(x, weight, bias, act=act, return_logits=True, prob_code=prob_code)
    _, l64 = entropy_tail_ref(x.double(), weight.double(), None if bias is None else bias.double(), act=act,
                              return_logits=True)
    assert logits.shape == (b, 6, h, w) and logits.is_contiguous()
    err = assert_logits_close(logits, l_ref, l64)
    assert_probs7_match(probs7, q_ref, l_ref, err, prob_code)
    # Without the logits the kernel writes the same probabilities.
    assert torch.equal(entropy_tail(x, weight, bias, act=act, prob_code=prob_code), probs7)


def _diagonal_tail(scale: float) -> torch.Tensor:
    """A 3x3 weight whose logits are ``scale * input`` (centre tap, channel j -> logit j)."""
    weight = torch.zeros((6, 6, 3, 3))
    weight[range(6), range(6), 1, 1] = scale
    return weight


@needs_triton
@quiet_exp
@pytest.mark.parametrize("prob_code", PROB_CODES)
def test_tail_saturates_infinite_logits_like_the_reference(prob_code):
    """±inf logits (from overflow) give q = 255 / 1, and inf - inf gives 128, as quantise_probs7."""
    g = _gen(5)
    x = torch.randn((1, 6, 3, 4), generator=g)
    x[0, 0, 0, 0] = 1e30  # lr -> 1e30 * 1e10 = inf
    x[0, 0, 0, 1] = -1e30  # lr -> -inf
    x[0, 1, 1, 1], x[0, 3, 1, 1] = 1e30, -1e30  # lg = inf, a = -inf: g|r=1 = inf - inf -> 0
    x[0, 2, 2, 2], x[0, 4, 2, 2] = 1e30, 1e30  # lb = b = inf
    values, weight = x, _diagonal_tail(1e10)
    probs7, logits = entropy_tail(values, weight, None, act="none", return_logits=True, prob_code=prob_code)
    q_ref, l_ref = entropy_tail_ref(values, weight, None, act="none", return_logits=True, prob_code=prob_code)
    assert torch.isinf(l_ref).sum() == 6
    assert torch.equal(torch.isinf(logits), torch.isinf(l_ref))
    assert probs7[0, 0, 0] == 255 and probs7[0, 1, 0] == 1
    assert probs7[0, 5, 2] == 128 and probs7[0, 5, 1] == 255
    err = (logits[torch.isfinite(l_ref)] - l_ref[torch.isfinite(l_ref)]).abs().max().item()
    assert_probs7_match(probs7, q_ref, torch.nan_to_num(l_ref, posinf=1e30, neginf=-1e30), err, prob_code)


@needs_triton
@quiet_exp
def test_tail_refuses_nan():
    x = torch.randn((2, 6, 3, 3), generator=_gen(6))
    x[1, 2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        entropy_tail(x, torch.randn((6, 6, 3, 3), generator=_gen(7)), None)
    # check_nan=False skips the flag read (the caller takes responsibility):
    probs7 = entropy_tail(x, torch.randn((6, 6, 3, 3), generator=_gen(7)), None, check_nan=False)
    assert probs7.shape == (2, 9, 7)


@needs_triton
@quiet_exp
def test_tail_is_batch_invariant_and_stride_agnostic():
    g = _gen(8)
    x = torch.randn((3, 12, 4, 6), generator=g)
    weight, bias = torch.randn((6, 12, 3, 3), generator=g) * 0.5, torch.randn((6,), generator=g)
    batched = entropy_tail(x, weight, bias)
    for i in range(3):
        assert torch.equal(entropy_tail(x[i:i + 1], weight, bias), batched[i:i + 1])
    strided = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(entropy_tail(strided, weight, bias), batched)


# ---------------------------------------------------------------- dispatch: the whole step
def _randomize(net: nn.Module, seed: int) -> nn.Module:
    g = _gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def _net(share: bool, latent: bool, seed: int = 0) -> BitPlaneNet:
    base = CONFIGS["tiny"].sig_net() if latent else CONFIGS["tiny"].ins_net()
    return _randomize(BitPlaneNet(dataclasses.replace(base, share=share)), seed)


def _batch(net: BitPlaneNet, k: int, seed: int = 0, device: str = "cpu"):
    """A padded 2-image round as the codec builds it: image, valid mask, latent, plane context."""
    g = _gen(seed)
    x = torch.randint(0, 256, (2, 3, 8, 12), generator=g, dtype=torch.uint8)
    valid = torch.ones((2, 1, 8, 12), dtype=torch.bool)
    valid[1, :, 5:] = False
    valid[1, :, :, 9:] = False
    latent = torch.randn((2, net.cfg.latent_channels, 8, 12), generator=g) if net.cfg.latent_channels else None
    x, valid = x.to(device), valid.to(device)
    latent = latent.to(device) if latent is not None else None
    context = net.plane_context(known_before(x, k), k, valid)
    return x, valid, latent, context


@needs_triton
@quiet_exp
@pytest.mark.parametrize("share,latent", [(True, True), (False, False), (False, True)])
def test_dispatch_triton_path_matches_the_model(share, latent):
    net = _net(share, latent, seed=int(share) + 2 * int(latent))
    twin = BitPlaneNet(net.cfg)  # the float64 baseline
    twin.load_state_dict(net.state_dict())
    twin = twin.double().eval()
    k = net.planes[-1]
    with torch.no_grad():
        x, valid, lat, context = _batch(net, k)
        bits = plane_bits(x, k) * valid.to(torch.uint8)
        ctx64 = context.double()
        for s in range(1, 5):
            probs7, logits = dispatch.step_probs7(net, k, s, context, bits, valid, lat, path="triton",
                                                  return_logits=True)
            l_ref = net.step_logits(k, s, context, bits, valid, lat)
            l64 = twin.step_logits(k, s, ctx64, bits, valid, None if lat is None else lat.double())
            err = assert_logits_close(logits, l_ref, l64)
            assert_probs7_match(probs7, quantise_probs7(l_ref), l_ref, err)
            assert torch.equal(dispatch.step_logits(net, k, s, context, bits, valid, lat, path="triton"), logits)


@needs_triton
@quiet_exp
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_dispatch_triton_path_reads_only_what_the_decoder_knows(s):
    """Encoder (whole plane) and decoder (steps < s, zeros elsewhere) get bitwise the same probabilities."""
    net = _net(False, True, seed=4)
    k = net.planes[0]
    with torch.no_grad():
        x, valid, lat, context = _batch(net, k, seed=s)
        bits = plane_bits(x, k)
        before = steps_before_mask(s, 8, 12).to(torch.uint8)
        decoder_bits = bits * before * valid.to(torch.uint8)
        enc = dispatch.step_probs7(net, k, s, context, bits, valid, lat, path="triton")
        dec = dispatch.step_probs7(net, k, s, context, decoder_bits, valid, lat, path="triton")
    assert torch.equal(enc, dec)


def test_dispatch_torch_path_is_the_model_code():
    net = _net(True, True, seed=1)
    k = net.planes[1]
    with torch.no_grad():
        x, valid, lat, context = _batch(net, k)
        bits = plane_bits(x, k) * valid.to(torch.uint8)
        for s in (1, 3):
            probs7, logits = dispatch.step_probs7(net, k, s, context, bits, valid, lat, path="torch",
                                                  return_logits=True)
            ref = net.step_logits(k, s, context, bits, valid, lat)
            assert torch.equal(logits, ref)
            assert torch.equal(probs7, quantise_probs7(ref))
            assert torch.equal(dispatch.step_logits(net, k, s, context, bits, valid, lat, path="torch"), ref)
        with pytest.raises(ValueError, match="path"):
            dispatch.step_probs7(net, k, 1, context, bits, valid, lat, path="cuda")
        with pytest.raises(ValueError, match="latent"):
            dispatch.step_probs7(net, k, 1, context, bits, valid, None, path="triton")


# ---------------------------------------------------------------- dispatch: path policy
def test_kernel_path_policy(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.kernel_path("cpu") == "torch"
    if HAS_TRITON:
        assert dispatch.kernel_path("cuda") == "triton"
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.kernel_path("cuda") == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        dispatch.kernel_path("cpu")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="cannot run"):
        dispatch.kernel_path("cpu")
    if HAS_TRITON:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert dispatch.kernel_path("cpu") == "triton"


_NUMERICS_SCRIPT = """
import threading, torch
from kernels import dispatch
B = torch.backends
new_api = hasattr(B.cuda.matmul, "fp32_precision")
def state():
    precision = ((B.cuda.matmul.fp32_precision, B.cudnn.conv.fp32_precision) if new_api
                 else (B.cuda.matmul.allow_tf32, B.cudnn.allow_tf32))
    return (B.cudnn.benchmark, B.cudnn.deterministic, *precision)
pinned = (False, True, "ieee", "ieee") if new_api else (False, True, False, False)
case = CASE
if case == "legacy":
    B.cuda.matmul.allow_tf32 = B.cudnn.allow_tf32 = True
elif case == "new" and new_api:
    B.cuda.matmul.fp32_precision = B.fp32_precision = "tf32"
elif case == "medium":
    torch.set_float32_matmul_precision("medium")
B.cudnn.benchmark = True
before = state()
with dispatch.coding_numerics("cpu"):  # pins CPU backends only
    assert state() == before
with dispatch.coding_numerics(torch.device("cuda", 0)):
    assert state() == pinned, state()
assert state() == before
try:
    with dispatch.coding_numerics("cuda"):
        raise KeyError("restored on errors too")
except KeyError:
    pass
assert state() == before
# Overlapping codings in two threads: pinned until the last one leaves.
entered, leave = threading.Event(), threading.Event()
def other():
    with dispatch.coding_numerics("cuda"):
        entered.set()
        leave.wait()
        assert state() == pinned
thread = threading.Thread(target=other)
with dispatch.coding_numerics("cuda"):
    thread.start()
    entered.wait()
assert state() == pinned  # the other coding is still running
leave.set()
thread.join()
assert state() == before
if case == "medium":
    assert torch.get_float32_matmul_precision() == "medium"
print("ok")
"""


@pytest.mark.parametrize("case", ["defaults", "legacy", "new", "medium"])
def test_coding_numerics_pins_cuda_settings_and_restores_them(case):
    """Each caller setting in a fresh process: torch refuses some mixes of its TF32 APIs for good."""
    import subprocess
    import sys

    script = _NUMERICS_SCRIPT.replace("CASE", repr(case))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_decoding_refuses_a_path_mismatch(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.check_kernel_path("torch", "cpu") == "torch"
    with pytest.raises(dispatch.KernelPathError, match="'triton' kernels.*CUDA"):
        dispatch.check_kernel_path("triton", "cpu")
    with pytest.raises(ValueError, match="unknown kernel path"):
        dispatch.check_kernel_path("cudnn", "cpu")
    # A torch-encoded file decodes with the torch path even where Triton would be picked.
    assert dispatch.check_kernel_path("torch", "cuda") == "torch"
    assert issubclass(dispatch.KernelPathError, ValueError)
