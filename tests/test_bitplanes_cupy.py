"""kernels/bitplanes_cupy.py: the fallbacks equal the plain references exactly.

Integer outputs, so every comparison is exact equality. The NumPy backend runs
the same function body as the CuPy backend (written against the array
namespace), so these CPU tests cover the CuPy code's logic; the CuPy backend
itself (DLPack, streams, pinned staging) runs in tests/test_gpu.py.

    python -m pytest -q tests/test_bitplanes_cupy.py
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aribbps.bitplanes import plane_bits, step_view
from kernels import bitplanes_cupy as bp

FALLBACKS = ["numpy", "torch"]
# (B, C, H, W): plain, odd quarter grid, the smallest, greyscale, wide.
SHAPES = [(2, 3, 8, 8), (3, 3, 6, 10), (1, 3, 2, 2), (2, 1, 4, 6), (1, 3, 2, 18)]


def _image(shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_backend_choice_on_cpu():
    assert bp.backend(_image((1, 3, 2, 2))) == "numpy"
    assert bp.backend(np.zeros((1, 3, 2, 2), np.uint8)) == "numpy"
    assert isinstance(bp.cupy_available(), bool)  # never raises, whatever is installed
    with pytest.raises(ValueError, match="backend"):
        bp.step_bits(_image((1, 3, 2, 2)), 1, 1, backend="opencl")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            bp.step_bits(_image((1, 3, 2, 2)), 1, 1, backend="cupy")


def test_cupy_can_be_disabled(monkeypatch):
    bp._cupy_module.cache_clear()
    monkeypatch.setenv("ARIBBPS_CUPY", "0")
    try:
        assert not bp.cupy_available()
    finally:
        bp._cupy_module.cache_clear()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", FALLBACKS)
def test_step_bits_equal_reference_and_model_code(shape, backend):
    x = _image(shape, seed=sum(shape))
    b, c, h, w = shape
    for k in range(1, 9):
        for s in range(1, 5):
            out = bp.step_bits(x, k, s, backend=backend)
            ref = bp.step_bits_ref(x, k, s)
            model = step_view(plane_bits(x, k), s).reshape(b, c, -1).transpose(1, 2).numpy()
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.flags.c_contiguous
            assert out.shape == (b, (h // 2) * (w // 2), c)
            np.testing.assert_array_equal(out, ref)
            np.testing.assert_array_equal(out, model)


def test_step_bits_accept_numpy_and_strided_inputs():
    x = _image((2, 3, 6, 8), seed=5)
    strided = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not strided.is_contiguous()
    for backend in FALLBACKS:
        np.testing.assert_array_equal(bp.step_bits(strided, 3, 2, backend=backend), bp.step_bits_ref(x, 3, 2))
    np.testing.assert_array_equal(bp.step_bits(x.numpy(), 8, 4), bp.step_bits_ref(x, 8, 4))


def test_step_bits_refuse_bad_input():
    with pytest.raises(ValueError, match="plane"):
        bp.step_bits(_image((1, 3, 2, 2)), 0, 1)
    with pytest.raises(ValueError, match="step"):
        bp.step_bits(_image((1, 3, 2, 2)), 1, 5)
    with pytest.raises(ValueError, match="uint8"):
        bp.step_bits(_image((1, 3, 2, 2)).int(), 1, 1)
    with pytest.raises(ValueError, match="even"):
        bp.step_bits(_image((1, 3, 3, 2)), 1, 1)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_scatter_inverts_step_bits(shape):
    x = _image(shape, seed=11)
    for k in (1, 5, 8):
        plane = torch.zeros_like(x)
        ref = np.zeros(shape, np.uint8)
        for s in range(1, 5):
            flat = bp.step_bits(x, k, s)
            assert bp.scatter_step_bits(plane, s, flat) is plane
            ref = bp.scatter_step_bits_ref(ref, s, flat)
            np.testing.assert_array_equal(plane.numpy(), ref)
        assert torch.equal(plane, plane_bits(x, k))
    with pytest.raises(ValueError, match="flat"):
        bp.scatter_step_bits(torch.zeros_like(x), 1, np.zeros((1, 2, 3), np.uint8))


def _offsets() -> np.ndarray:
    """Ties at every 1/512, values at the clamp, beyond it, ±inf, -0.0, tiny and random values."""
    ties = (np.arange(-1300, 1300, dtype=np.float64) + 0.5) / 256
    edges = np.array([9.5, -9.5, 9.5 + 1 / 512, -9.5 - 1 / 512, 9.49609375, 1e6, -1e6, 3e38, -3e38,
                      np.inf, -np.inf, -0.0, 0.0, 1e-30, -1e-30, 1 / 512, -1 / 512])
    rand = np.random.default_rng(0).normal(0, 4, 2000)
    return np.concatenate([ties, edges, rand]).astype(np.float32)


@pytest.mark.parametrize("backend", FALLBACKS)
def test_latent_offsets_equal_reference(backend):
    d = _offsets()
    ref = bp.quantise_latent_offsets_ref(d)
    out = bp.quantise_latent_offsets(torch.from_numpy(d), backend=backend)
    assert out.dtype == np.int32 and out.shape == d.shape
    np.testing.assert_array_equal(out, ref)
    assert ref.max() == bp.LATENT_D_MAX and ref.min() == -bp.LATENT_D_MAX
    # Ties go to even: 0.5/256 -> 0, 1.5/256 -> 2, -2.5/256 -> -2.
    np.testing.assert_array_equal(
        bp.quantise_latent_offsets(np.array([0.5, 1.5, -2.5, 2432.5], np.float32) / 256, backend="numpy"),
        [0, 2, -2, 2432])
    # Any shape, float64 input (cast to float32 first, as the model code does).
    d2 = torch.from_numpy(d[:600].astype(np.float64).reshape(2, 3, 10, 10))
    np.testing.assert_array_equal(bp.quantise_latent_offsets(d2, backend=backend),
                                  bp.quantise_latent_offsets_ref(d2))


def test_latent_offsets_equal_the_model_code():
    latent_math = pytest.importorskip("aribbps.latent_math")
    d = torch.from_numpy(_offsets())
    np.testing.assert_array_equal(bp.quantise_latent_offsets(d), latent_math.quantise_offset(d).numpy())
    assert (bp.LATENT_D_FRAC_BITS, bp.LATENT_D_MAX) == (latent_math.LATENT_D_FRAC_BITS, latent_math.LATENT_D_MAX)


def test_latent_constants_match_the_coder():
    coder = pytest.importorskip("aribbps.coder")
    assert (bp.LATENT_D_FRAC_BITS, bp.LATENT_D_MAX) == (coder.LATENT_D_FRAC_BITS, coder.LATENT_D_MAX)


@pytest.mark.parametrize("backend", FALLBACKS)
def test_latent_offsets_refuse_nan_and_integers(backend):
    d = torch.zeros(5)
    d[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bp.quantise_latent_offsets(d, backend=backend)
    with pytest.raises(ValueError, match="NaN"):
        bp.quantise_latent_offsets_ref(d)
    with pytest.raises(ValueError, match="floating point"):
        bp.quantise_latent_offsets(torch.zeros(5, dtype=torch.int32), backend=backend)


def test_to_host_is_zero_copy_on_cpu():
    t = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    host = bp.to_host(t)
    assert isinstance(host, np.ndarray) and np.shares_memory(host, t.numpy())
    arr = np.zeros(3)
    assert bp.to_host(arr) is arr
