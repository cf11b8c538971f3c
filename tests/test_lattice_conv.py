"""kernels/lattice_conv.py: the Triton masked lattice conv against its references.

The Triton tests run on CPU through the interpreter, on small shapes:

    TRITON_INTERPRET=1 python -m pytest -q tests/test_lattice_conv.py

Without ``TRITON_INTERPRET=1`` (and without CUDA) they are skipped with that
reason; the reference tests always run. The CUDA runs live in tests/test_gpu.py.

Float tolerance (STYLE.md, flash-attention's rule): against a float64
evaluation of the same definition, the kernel's error must be at most twice
the error of the float32 PyTorch reference, plus 1e-6 (a sum of at most 24
weights of O(1): both errors are a few float32 ulps).
"""
from __future__ import annotations

import pytest
import torch

from aribbps.bitplanes import space_prior, space_prior_quarter, steps_before_mask
from aribbps.models.space_context import masked_conv_ref, masked_lattice_conv
from kernels import HAS_TRITON, calculate_settings, interpreter_mode, next_power_of_2
from kernels.lattice_conv import (MAX_OUT_CHANNELS, known_tap_mask, lattice_conv, lattice_conv_kernel_order,
                                  lattice_conv_ref)

needs_triton = pytest.mark.skipif(
    not (HAS_TRITON and interpreter_mode()),
    reason="Triton kernels on CPU need the triton package and TRITON_INTERPRET=1 "
           "(CUDA runs are in tests/test_gpu.py)",
)

# (B, C, H, W, O): a plain one, "weird" sizes (odd quarter grid, O not a power
# of two, more than one position block), the smallest image, one channel.
SHAPES = [(2, 3, 8, 8, 16), (3, 3, 6, 10, 20), (1, 3, 2, 2, 5), (2, 1, 4, 6, 3), (1, 3, 18, 16, 40)]


def _inputs(shape, seed: int = 0, with_valid: bool = True, with_bias: bool = True):
    b, c, h, w, o = shape
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (b, c, h, w), generator=g, dtype=torch.uint8)
    valid = (torch.rand((b, 1, h, w), generator=g) > 0.2) if with_valid else None
    weight = torch.randn((o, c, 3, 3), generator=g)
    bias = torch.randn((o,), generator=g) if with_bias else None
    return bits, weight, bias, valid


def _assert_within_baseline(out: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor) -> None:
    err = (out.double() - ref64).abs().max().item()
    base = (ref32.double() - ref64).abs().max().item()
    assert err <= 2 * base + 1e-6, f"kernel error {err:.3g} vs float32 reference error {base:.3g}"


# ---------------------------------------------------------------- pure Python / references
def test_known_tap_mask_matches_the_lattice_order():
    for s in range(1, 5):
        known = steps_before_mask(s, 6, 6)
        pr, pc = ((0, 0), (1, 1), (0, 1), (1, 0))[s - 1]
        expected = 0
        for t in range(9):
            dy, dx = t // 3 - 1, t % 3 - 1
            if known[2 + pr + dy, 2 + pc + dx]:  # an interior position of step s
                expected |= 1 << t
        assert known_tap_mask(s) == expected
    assert [bin(known_tap_mask(s)).count("1") for s in range(1, 5)] == [0, 4, 4, 8]


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("with_valid", [True, False])
def test_reference_equals_the_model_code(s, with_valid):
    bits, weight, bias, valid = _inputs((2, 3, 6, 8, 7), seed=s, with_valid=with_valid)
    ref = lattice_conv_ref(bits, weight, bias, s, valid)
    full = masked_conv_ref(space_prior(bits, s, valid), weight, bias, s)
    quarter = masked_lattice_conv(space_prior_quarter(bits, s, valid), weight, bias, s)
    assert ref.shape == (2, 7, 3, 4)
    torch.testing.assert_close(ref, full, rtol=0, atol=0)  # the same definition, the same ops
    torch.testing.assert_close(ref, quarter, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("with_valid", [True, False])
def test_kernel_order_mirror_matches_the_reference(shape, s, with_valid):
    """The torch mirror of the kernel (used for the CUDA_KERNEL_ORDER_STEPS) computes the same function."""
    bits, weight, bias, valid = _inputs(shape, seed=3 * s, with_valid=with_valid)
    out = lattice_conv_kernel_order(bits, weight, bias, s, valid)
    assert out.shape == (shape[0], shape[4], shape[2] // 2, shape[3] // 2) and out.dtype == torch.float32
    _assert_within_baseline(out, lattice_conv_ref(bits, weight, bias, s, valid),
                            lattice_conv_ref(bits, weight.double(), bias.double(), s, valid))
    known = steps_before_mask(s, *bits.shape[-2:])[None, None]
    noise = torch.randint(0, 2, bits.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(lattice_conv_kernel_order(torch.where(known, bits, noise), weight, bias, s, valid), out)


def test_calculate_settings():
    assert next_power_of_2(1) == 1 and next_power_of_2(17) == 32 and next_power_of_2(64) == 64
    assert calculate_settings(5) == (16, 4)
    assert calculate_settings(3000)[0] == 4096
    with pytest.raises(ValueError, match="2000"):
        calculate_settings(2000, max_size=1024)


def test_bad_arguments_are_refused():
    bits, weight, bias, valid = _inputs((1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="step"):
        lattice_conv_ref(bits, weight, bias, 5, valid)
    with pytest.raises(ValueError, match="even"):
        lattice_conv_ref(bits[:, :, :3], weight, bias, 2)
    with pytest.raises(ValueError, match="uint8"):
        lattice_conv_ref(bits.float(), weight, bias, 2)
    with pytest.raises(ValueError, match="weight"):
        lattice_conv(bits, weight[:, :2], bias, 2)
    with pytest.raises(ValueError, match="float32"):
        lattice_conv(bits, weight.double(), bias.double(), 2)
    with pytest.raises(ValueError, match="valid"):
        lattice_conv(bits, weight, bias, 2, valid[:, :, :2])
    too_wide = torch.zeros((MAX_OUT_CHANNELS + 1, 3, 3, 3))
    if HAS_TRITON and interpreter_mode():
        with pytest.raises(ValueError, match=str(MAX_OUT_CHANNELS + 1)):
            lattice_conv(bits, too_wide, None, 2)


def test_triton_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    bits, weight, bias, valid = _inputs((1, 3, 4, 4, 4))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        lattice_conv(bits, weight, bias, 2, valid)


# ---------------------------------------------------------------- the kernel
@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_kernel_matches_reference(shape, s):
    bits, weight, bias, valid = _inputs(shape, seed=10 * s)
    out = lattice_conv(bits, weight, bias, s, valid)
    ref32 = lattice_conv_ref(bits, weight, bias, s, valid)
    ref64 = lattice_conv_ref(bits, weight.double(), bias.double(), s, valid)
    assert out.shape == ref32.shape and out.dtype == torch.float32 and out.is_contiguous()
    _assert_within_baseline(out, ref32, ref64)
    quarter = masked_lattice_conv(space_prior_quarter(bits, s, valid), weight, bias, s)
    torch.testing.assert_close(out, quarter, rtol=1e-6, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_kernel_equals_its_torch_mirror_bitwise(shape, s):
    for with_valid, with_bias in ((True, True), (False, False)):
        bits, weight, bias, valid = _inputs(shape, seed=5 * s, with_valid=with_valid, with_bias=with_bias)
        assert torch.equal(lattice_conv(bits, weight, bias, s, valid),
                           lattice_conv_kernel_order(bits, weight, bias, s, valid))


@needs_triton
@pytest.mark.parametrize("s", [2, 4])
def test_kernel_without_valid_or_bias(s):
    bits, weight, _, _ = _inputs((2, 3, 6, 6, 8), seed=3, with_valid=False, with_bias=False)
    out = lattice_conv(bits, weight, None, s)
    _assert_within_baseline(out, lattice_conv_ref(bits, weight, None, s),
                            lattice_conv_ref(bits, weight.double(), None, s))


@needs_triton
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_kernel_reads_only_coded_valid_positions(s):
    """Garbage at the positions of steps >= s and at invalid positions changes nothing, bit for bit."""
    bits, weight, bias, valid = _inputs((2, 3, 8, 6, 12), seed=s)
    height, width = bits.shape[-2:]
    known = steps_before_mask(s, height, width)[None, None] & valid
    noise = torch.randint(0, 2, bits.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(99))
    clean = torch.where(known, bits, torch.zeros_like(bits))  # what the decoder holds
    dirty = torch.where(known, bits, noise)  # what an encoder with the whole plane holds
    assert torch.equal(lattice_conv(clean, weight, bias, s, valid), lattice_conv(dirty, weight, bias, s, valid))


@needs_triton
def test_kernel_is_batch_invariant_and_stride_agnostic():
    """Each image's output is bitwise the same alone, in a batch, and from a strided view."""
    bits, weight, bias, valid = _inputs((3, 3, 6, 10, 20), seed=7)
    batched = lattice_conv(bits, weight, bias, 4, valid)
    for i in range(3):
        alone = lattice_conv(bits[i:i + 1], weight, bias, 4, valid[i:i + 1])
        assert torch.equal(alone, batched[i:i + 1])
    strided = bits.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last storage
    assert not strided.is_contiguous()
    assert torch.equal(lattice_conv(strided, weight, bias, 4, valid), batched)


@needs_triton
def test_kernel_empty_batch():
    bits, weight, bias, _ = _inputs((1, 3, 4, 4, 4))
    assert lattice_conv(bits[:0], weight, bias, 3).shape == (0, 4, 2, 2)
