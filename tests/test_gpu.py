"""CUDA-only checks of the kernels, the CuPy backend and the NVML sampler.

    python -m pytest -q tests/test_gpu.py            # on a machine with an NVIDIA GPU

Without CUDA every GPU test is skipped with the reason; the two tests of
bench/gpu_profile.py's no-GPU behaviour run everywhere. Do not run this file
with TRITON_INTERPRET=1 on a GPU machine: the interpreter would replace the
compiled kernels this file is meant to test (the tests skip in that case).

What only a GPU can show, and is checked here:

* compiled Triton kernels agree with the references on the same device
  (cuDNN/ATen float32) within the tolerance documented in
  kernels/entropy_tail.py, and give bitwise identical outputs when run
  twice, in another batch composition, and with garbage at positions the
  decoder does not know yet: the properties lossless decoding relies on;
* TF32 settings do not leak into the kernels (``tl.dot`` runs in IEEE fp32);
* the CuPy backend equals the NumPy fallback exactly, shares memory with
  torch through DLPack, and stages results in pinned host memory;
* the NVML sampler sees the device;
* the encoder's prefetch thread on its own CUDA stream writes the same bytes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kernels import HAS_TRITON, interpreter_mode
from kernels.bitplanes_cupy import cupy_available
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def _gpu_only(ok: bool, reason: str):
    """Marks a test `gpu` (deselect with -m 'not gpu') and skips it with ``reason`` unless ``ok``."""
    def mark(fn):
        return pytest.mark.gpu(pytest.mark.skipif(not ok, reason=reason)(fn))
    return mark


gpu = _gpu_only(CUDA, "no CUDA device (torch.cuda.is_available() is False)")
triton_gpu = _gpu_only(CUDA and HAS_TRITON and not interpreter_mode(),
                       "needs a CUDA device, the triton package, and TRITON_INTERPRET unset (compiled kernels)")
cupy_gpu = _gpu_only(CUDA and cupy_available(), "needs a CUDA device and a working CuPy (pip install cupy-cuda12x)")


@pytest.fixture(autouse=True)
def _no_tf32():
    """cuDNN convolutions default to TF32 on Ampere+: turn it off so the float32 references are float32."""
    if not CUDA:
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _load_gpu_profile():
    return load_script("gpu_profile", ROOT / "bench" / "gpu_profile.py")


def _entropy_tests():
    """tests/test_entropy_tail.py: its tolerance helpers and model fixtures (one definition)."""
    return load_script("_entropy_tail_tests", ROOT / "tests" / "test_entropy_tail.py")


# ---------------------------------------------------------------- runs everywhere
def test_gpu_profile_runs_the_command_with_or_without_a_gpu():
    script = ROOT / "bench" / "gpu_profile.py"
    ok = subprocess.run([sys.executable, str(script), "--", sys.executable, "-c", "print('ran')"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "ran" in ok.stdout
    assert ("no GPU sampling" in ok.stderr) or ("utilisation" in ok.stderr)
    failing = subprocess.run([sys.executable, str(script), "--", sys.executable, "-c", "import sys; sys.exit(3)"],
                             capture_output=True, text=True, timeout=120)
    assert failing.returncode == 3  # the command's status passes through
    usage = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "exactly one" in usage.stderr


def test_gpu_sampler_without_nvml_is_a_no_op_or_samples(tmp_path):
    gp = _load_gpu_profile()
    result, stats = gp.profile_call(sum, [1, 2, 3], interval=0.01)
    assert result == 6
    if gp.nvml_status():
        assert stats is None
    else:
        assert stats.samples >= 1 and 0 <= stats.util_mean <= 100 and stats.mem_peak_bytes > 0
    with pytest.raises(ValueError, match="interval"):
        gp.GpuSampler(interval=0)


class _FakeNvml:
    """Stands in for pynvml: utilisation 0, 10, 20, ... and memory growing by 1 MiB per sample."""

    def __init__(self) -> None:
        self.calls = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index != 0:
            raise RuntimeError("no such device")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int):
        self.calls += 1
        return SimpleNamespace(gpu=min(10 * (self.calls - 1), 100))

    def nvmlDeviceGetMemoryInfo(self, handle: int):
        return SimpleNamespace(used=(1000 + self.calls) << 20, total=80 << 30)

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Fake GPU"


def test_gpu_sampler_logic_with_a_fake_nvml(monkeypatch):
    """The sampling thread, the statistics and the report, without a GPU."""
    gp = _load_gpu_profile()
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gp.nvml_status() == ""
    sampler = gp.GpuSampler(index=0, interval=0.005)
    assert sampler.available
    with sampler:
        time.sleep(0.1)
    stats = sampler.stats
    assert stats.samples == fake.calls and stats.samples >= 3
    trace = np.asarray(stats.util_trace, dtype=float)
    assert stats.util_mean == pytest.approx(trace.mean()) and stats.util_p95 == pytest.approx(np.percentile(trace, 95))
    assert stats.mem_peak_bytes == (1000 + fake.calls) << 20 and stats.mem_total_bytes == 80 << 30
    assert stats.device == "Fake GPU" and "p95" in stats.format() and "MiB" in stats.format()
    assert fake.shutdowns >= 1
    missing = gp.GpuSampler(index=3)
    assert not missing.available and "no NVML device 3" in missing.reason
    assert missing.start().stop() is None


# ---------------------------------------------------------------- Triton on CUDA
def _tail_inputs(seed: int, batch: int = 4, channels: int = 96, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn((batch, channels, size, size), generator=g) * 2
    weight = torch.randn((6, channels, 3, 3), generator=g) * 0.1
    bias = torch.randn((6,), generator=g)
    return [t.cuda() for t in (h, weight, bias)]


@triton_gpu
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_lattice_conv_on_cuda(s):
    from kernels.lattice_conv import lattice_conv, lattice_conv_kernel_order, lattice_conv_ref

    with torch.backends.cudnn.flags(allow_tf32=False):  # the float32 reference in float32
        for seed, shape in enumerate(((4, 3, 34, 30), (2, 3, 64, 64), (3, 1, 6, 10))):
            g = torch.Generator().manual_seed(10 * s + seed)
            bits = torch.randint(0, 2, shape, generator=g, dtype=torch.uint8).cuda()
            valid = (torch.rand((shape[0], 1, *shape[2:]), generator=g) > 0.1).cuda()
            weight = torch.randn((128, shape[1], 3, 3), generator=g).cuda()
            bias = torch.randn((128,), generator=g).cuda()
            for v in (valid, None):
                out = lattice_conv(bits, weight, bias, s, v)
                ref32 = lattice_conv_ref(bits, weight, bias, s, v)
                ref64 = lattice_conv_ref(bits, weight.double(), bias.double(), s, v)
                assert (out.double() - ref64).abs().max() <= 2 * (ref32.double() - ref64).abs().max() + 1e-6
                assert torch.equal(out, lattice_conv(bits, weight, bias, s, v))  # run to run
                assert torch.equal(out.cpu(), lattice_conv_kernel_order(bits.cpu(), weight.cpu(), bias.cpu(), s,
                                                                        None if v is None else v.cpu()))
            assert torch.equal(out[1:3], lattice_conv(bits[1:3], weight, bias, s, None))  # batch invariant


@triton_gpu
@pytest.mark.parametrize("prob_code", ["logit", "linear"])
def test_entropy_kernels_on_cuda_match_and_are_deterministic(prob_code):
    from kernels.entropy_tail import entropy_proj, entropy_proj_ref, entropy_tail, entropy_tail_ref

    assert_probs7_match = _entropy_tests().assert_probs7_match  # the documented tolerance

    h, weight, bias = _tail_inputs(0)
    probs7, logits = entropy_tail(h, weight, bias, return_logits=True, prob_code=prob_code)
    q_ref, l_ref = entropy_tail_ref(h, weight, bias, return_logits=True, prob_code=prob_code)
    _, l64 = entropy_tail_ref(h.double(), weight.double(), bias.double(), return_logits=True)
    err = (logits.double() - l64).abs().max().item()
    assert err <= 2 * (l_ref.double() - l64).abs().max().item() + 1e-6 * (1 + l64.abs().max().item())
    assert_probs7_match(probs7, q_ref, l_ref, (logits - l_ref).abs().max().item(), prob_code)
    for _ in range(3):
        assert torch.equal(entropy_tail(h, weight, bias, prob_code=prob_code), probs7)
    assert torch.equal(entropy_tail(h[2:], weight, bias, prob_code=prob_code), probs7[2:])

    g = torch.Generator().manual_seed(1)
    full = torch.randn((4, 160, 32, 32), generator=g).cuda()
    parts = [full[:, :, 1::2, 0::2], torch.randn((4, 64, 16, 16), generator=g).cuda()]
    gate = torch.rand((4, 224), generator=g).cuda()
    w1 = (torch.randn((192, 224, 1, 1), generator=g) * 0.1).cuda()
    out = entropy_proj(parts, gate, w1, None)
    ref64 = entropy_proj_ref([p.double() for p in parts], gate.double(), w1.double(), None)
    ref32 = entropy_proj_ref(parts, gate, w1, None)
    assert (out.double() - ref64).abs().max() <= 2 * (ref32.double() - ref64).abs().max() + 1e-6
    assert torch.equal(out, entropy_proj(parts, gate, w1, None))


@triton_gpu
def test_kernels_ignore_tf32_settings():
    """tl.dot runs in IEEE fp32 whatever torch's TF32 switches say."""
    from kernels.entropy_tail import entropy_tail

    h, weight, bias = _tail_inputs(2)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        a = entropy_tail(h, weight, bias, return_logits=True)[1]
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        b = entropy_tail(h, weight, bias, return_logits=True)[1]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert torch.equal(a, b)


@triton_gpu
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_dispatch_on_cuda(s):
    from aribbps.bitplanes import plane_bits, steps_before_mask
    from kernels import dispatch

    et = _entropy_tests()
    if dispatch.ENV_VAR not in os.environ:
        assert dispatch.kernel_path("cuda") == "triton"
    net = et._net(False, True, seed=s).cuda()
    k = net.planes[0]
    with torch.no_grad():
        x, valid, lat, context = et._batch(net, k, seed=s, device="cuda")
        bits = plane_bits(x, k)
        known = steps_before_mask(s, *x.shape[-2:], x.device).to(torch.uint8) * valid.to(torch.uint8)
        q, logits = dispatch.step_probs7(net, k, s, context, bits, valid, lat, path="triton", return_logits=True)
        q_torch, l_torch = dispatch.step_probs7(net, k, s, context, bits, valid, lat, path="torch",
                                                return_logits=True)
        et.assert_probs7_match(q, q_torch, l_torch, (logits - l_torch).abs().max().item())
        # The decoder's partial plane gives bitwise the same probabilities, run after run.
        assert torch.equal(q, dispatch.step_probs7(net, k, s, context, bits * known, valid, lat, path="triton"))


@gpu
@pytest.mark.parametrize("mode", ["single", "dataset"])
def test_encoder_overlap_on_cuda_streams_writes_the_same_bytes(mode):
    """The prefetch thread runs on its own CUDA stream: same bytes as without it, and decodable."""
    from aribbps.arib import AribCodec
    from aribbps.codec import PlaneNets
    from tests.test_arib import _items, arib_nets

    nets, multiple = arib_nets()
    nets = PlaneNets(nets.sig.cuda(), nets.ins.cuda())
    items = _items(np.random.default_rng(3), 40)
    plain, stats = AribCodec(nets, multiple, 8, mode, device="cuda", overlap=False).encode(items)
    for _ in range(2):
        assert AribCodec(nets, multiple, 8, mode, device="cuda", overlap=True).encode(items)[0] == plain
    decoded = AribCodec(nets, multiple, 8, mode, device="cuda").decode(
        [i.shape for i in items], plain, stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- CuPy on CUDA


@cupy_gpu
def test_cupy_step_bits_equal_fallbacks_and_are_pinned():
    from kernels import bitplanes_cupy as bp

    x = torch.randint(0, 256, (3, 3, 34, 18), dtype=torch.uint8)
    xc = x.cuda()
    assert bp.backend(xc) == "cupy"
    for k in (1, 4, 8):
        for s in range(1, 5):
            out = bp.step_bits(xc, k, s)
            np.testing.assert_array_equal(out, bp.step_bits_ref(x, k, s))
            np.testing.assert_array_equal(out, bp.step_bits(xc, k, s, backend="torch"))
            assert torch.from_numpy(out).is_pinned()
    plane = torch.zeros_like(xc)
    for s in range(1, 5):
        bp.scatter_step_bits(plane, s, bp.step_bits(xc, 6, s))
    assert torch.equal(plane.cpu(), (x >> 2) & 1)


@cupy_gpu
def test_cupy_latent_offsets_and_dlpack_zero_copy():
    import cupy

    from kernels import bitplanes_cupy as bp

    d = torch.cat([(torch.arange(-2600, 2600) + 0.5) / 256, torch.randn(10000) * 5,
                   torch.tensor([float("inf"), float("-inf"), 3e38, -0.0])])
    out = bp.quantise_latent_offsets(d.cuda())
    np.testing.assert_array_equal(out, bp.quantise_latent_offsets_ref(d))
    np.testing.assert_array_equal(out, bp.quantise_latent_offsets(d.cuda(), backend="torch"))
    assert torch.from_numpy(out).is_pinned()
    bad = d.clone().cuda()
    bad[7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bp.quantise_latent_offsets(bad)
    t = torch.arange(64, dtype=torch.int32, device="cuda")
    assert cupy.from_dlpack(t).data.ptr == t.data_ptr()  # DLPack: the same memory, no copy


@gpu
def test_to_host_from_cuda_is_pinned():
    from kernels.bitplanes_cupy import to_host

    t = torch.arange(1000, dtype=torch.uint8, device="cuda").reshape(10, 100)
    host = to_host(t)
    np.testing.assert_array_equal(host, t.cpu().numpy())
    assert torch.from_numpy(host).is_pinned()


@gpu
def test_gpu_sampler_sees_work():
    gp = _load_gpu_profile()
    if gp.nvml_status():
        pytest.skip(f"NVML unavailable: {gp.nvml_status()}")

    def work() -> float:
        a = torch.randn((4096, 4096), device="cuda")
        for _ in range(200):
            a = a @ a
            a = a / a.norm()
        torch.cuda.synchronize()
        return float(a.sum())

    _, stats = gp.profile_call(work, interval=0.02)
    assert stats is not None and stats.samples >= 2
    assert stats.mem_peak_bytes >= stats.mem_baseline_bytes
    assert stats.util_max > 0


@gpu
def test_lane_groups_on_cuda_streams_repeat_and_round_trip(trained_model_file):
    """Two lane groups on two CUDA streams: the same bytes run to run, and bit-exact decoding."""
    from aribbps import api, zoo
    from aribbps.container import decode_archive
    from tests.test_lane_groups import _images

    model = zoo.load(trained_model_file, "cuda")
    images = _images(24)
    first = api.encode_images(images, model, lanes=8, tile=0, mode="dataset", lane_groups=2)
    for _ in range(2):
        assert api.encode_images(images, model, lanes=8, tile=0, mode="dataset", lane_groups=2).data == first.data
    decoded = api.decode_archive_images(decode_archive(first.data), model)
    for got, image in zip(decoded, images):
        np.testing.assert_array_equal(got.pixels, image.pixels)
