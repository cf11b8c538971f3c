"""Latent model (ladder VAE) and discretised-logistic latent maths."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aribbps import coder, latent_math
from aribbps.bitplanes import known_before
from aribbps.config import get_config
from aribbps.latent_math import (
    LATENT_D_FRAC_BITS,
    LATENT_D_MAX,
    bin_logit_table,
    bin_values,
    bins_of,
    posterior_bin_log2_mass,
    posterior_bin_mass,
    quantise_offset,
)
from aribbps.models.latent import LatentModel


def _image(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8)


def _model(name: str, seed: int = 0, dropout: float = 0.0) -> LatentModel:
    torch.manual_seed(seed)
    return LatentModel(get_config(name), dropout=dropout).eval()


def _mean_sample(log: list | None = None):
    """A sample callback that returns the posterior mean (and records the call)."""
    def sample(l: int, mu_p: torch.Tensor, mu_q: torch.Tensor | None) -> torch.Tensor:
        if log is not None:
            log.append((l, mu_p.clone(), None if mu_q is None else mu_q.clone()))
        assert mu_q is not None
        return mu_q
    return sample


def _prior_sample(log: list):
    def sample(l: int, mu_p: torch.Tensor, mu_q: torch.Tensor | None) -> torch.Tensor:
        log.append((l, mu_p.clone(), mu_q))
        return mu_p + 0.5
    return sample


# -- model: shapes and the callback protocol -----------------------------------

@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("batch, height, width", [(1, 16, 16), (3, 16, 24)])
def test_shapes(name: str, batch: int, height: int, width: int) -> None:
    cfg = get_config(name)
    model = _model(name)
    x = _image(batch, height, width)
    shapes = model.layer_shapes(height, width)
    assert shapes == [
        (cfg.latent_channels, height >> (l + 1), width >> (l + 1)) for l in range(cfg.n_layers)
    ]
    assert model.latent_dims(height, width) == sum(c * h * w for c, h, w in shapes)
    feats = model.bottom_up(x)
    assert [tuple(f.shape) for f in feats] == [
        (batch, cfg.latent_width, h, w) for _, h, w in shapes
    ]
    with torch.no_grad():
        features, bits = model(x)
    assert features.shape == (batch, cfg.latent_feature_channels, height, width)
    assert features.dtype == torch.float32
    assert bits.shape == (batch,)


def test_callback_protocol_with_posterior() -> None:
    model = _model("small")
    x = _image(2, 16, 16)
    log: list = []
    with torch.no_grad():
        model.top_down(_mean_sample(log), model.bottom_up(x), 2, 16, 16)
    n = model.n_layers
    assert [entry[0] for entry in log] == list(reversed(range(n)))
    shapes = model.layer_shapes(16, 16)
    for l, mu_p, mu_q in log:
        assert mu_p.shape == (2, *shapes[l]) and mu_p.dtype == torch.float32
        assert mu_q is not None and mu_q.shape == mu_p.shape
    # The top prior is exactly Logistic(0, 1); the layers below are not.
    top = log[0]
    assert top[0] == n - 1 and torch.equal(top[1], torch.zeros_like(top[1]))
    assert all(bool(entry[1].abs().sum() > 0) for entry in log[1:])


def test_callback_protocol_without_posterior() -> None:
    model = _model("tiny")
    log: list = []
    with torch.no_grad():
        out = model.top_down(_prior_sample(log), None, 3, 16, 8)
    assert out.shape == (3, model.cfg.latent_feature_channels, 16, 8)
    assert [entry[0] for entry in log] == [1, 0]
    assert all(entry[2] is None for entry in log)
    assert torch.equal(log[0][1], torch.zeros(3, 2, 4, 2))
    assert log[1][1].shape == (3, 2, 8, 4)


def test_top_down_rejects_bad_inputs() -> None:
    model = _model("tiny")
    feats = model.bottom_up(_image(2, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        model.top_down(lambda l, mp, mq: mp[:, :1], None, 2, 16, 16)
    with pytest.raises(ValueError, match="bottom-up features"):
        model.top_down(_mean_sample(), feats, 3, 16, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        model.layer_shapes(16, 18)
    with pytest.raises(ValueError, match="uint8"):
        model.bottom_up(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="use_latent"):
        LatentModel(get_config("tiny-context"))


def test_prior_depends_only_on_layers_above() -> None:
    """mu_p of a layer is the same whatever the posterior: the decoder's pass 1 can rebuild it."""
    model = _model("small")
    x = _image(2, 16, 16)
    with_q: list = []
    without_q: list = []
    with torch.no_grad():
        a = model.top_down(_mean_sample(with_q), model.bottom_up(x), 2, 16, 16)
        zs = {l: mq for l, _, mq in with_q}
        b = model.top_down(
            lambda l, mp, mq: (without_q.append((l, mp.clone())), zs[l])[1], None, 2, 16, 16
        )
    assert torch.equal(a, b)
    for (l1, mp1, _), (l2, mp2) in zip(with_q, without_q):
        assert l1 == l2 and torch.equal(mp1, mp2)


def test_only_significant_planes_matter() -> None:
    model = _model("tiny")
    x = _image(2, 16, 16)
    x_sig = known_before(x, model.cfg.sig_num + 1)
    for f1, f2 in zip(model.bottom_up(x), model.bottom_up(x_sig)):
        assert torch.equal(f1, f2)


def test_replay_of_forward_samples() -> None:
    """Replaying forward's z through top_down reproduces its features and means."""
    model = _model("small")
    x = _image(3, 16, 16)
    with torch.no_grad():
        out = model.forward_details(x, generator=torch.Generator().manual_seed(5))
        log: list = []

        def replay(l: int, mu_p: torch.Tensor, mu_q: torch.Tensor | None) -> torch.Tensor:
            log.append((l, mu_p, mu_q))
            return out.z[l]

        features = model.top_down(replay, model.bottom_up(x), 3, 16, 16)
    assert torch.equal(features, out.features)
    for l, mu_p, mu_q in log:
        assert torch.equal(mu_p, out.mu_p[l]) and torch.equal(mu_q, out.mu_q[l])


def test_determinism_and_fresh_model() -> None:
    """Identical inputs give identical outputs, also from a separately built model."""
    model = _model("small", seed=1)
    other = LatentModel(get_config("small"))
    other.load_state_dict(model.state_dict())
    other.eval()
    x = _image(2, 16, 16, seed=3)
    with torch.no_grad():
        a = model.top_down(_mean_sample(), model.bottom_up(x), 2, 16, 16)
        b = model.top_down(_mean_sample(), model.bottom_up(x), 2, 16, 16)
        c = other.top_down(_mean_sample(), other.bottom_up(x), 2, 16, 16)
        f1, bits1 = model(x, generator=torch.Generator().manual_seed(0))
        f2, bits2 = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(f1, f2) and torch.equal(bits1, bits2)


# -- model: training objectives -------------------------------------------------

def test_latent_bits_finite_positive_and_differentiable() -> None:
    model = _model("tiny")
    x = _image(4, 16, 16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([model(x, generator=g)[1] for _ in range(16)])
    assert torch.isfinite(draws).all()
    assert draws.mean() > 0  # a KL estimate
    model.train()
    features, bits = model(x, generator=g)
    (bits.mean() + features.square().mean()).backward()
    for name in ("posterior_heads", "prior_heads", "head", "bottom_up_blocks", "top_down_blocks"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(gr is not None for gr in grads), name
        assert any(bool(gr.abs().sum() > 0) for gr in grads), name


def test_kl_matches_definition() -> None:
    model = _model("tiny")
    x = _image(2, 16, 16)
    with torch.no_grad():
        out = model.forward_details(x, generator=torch.Generator().manual_seed(2))
    total = torch.zeros(2, dtype=torch.float64)
    for z, mp, mq in zip(out.z, out.mu_p, out.mu_q):
        def log2_logistic(v: torch.Tensor) -> torch.Tensor:
            v = v.double()
            return (-v - 2 * torch.nn.functional.softplus(-v)) / math.log(2)
        total += (log2_logistic(z - mq) - log2_logistic(z - mp)).flatten(1).sum(1)
    torch.testing.assert_close(out.latent_bits.double(), total, rtol=1e-5, atol=1e-4)


def test_finetune_discretised_sample() -> None:
    """Eval mode feeds on exactly the coded bin centres and reports the bits-back
    cost; training mode feeds on their relaxation and passes gradients on."""
    model = _model("tiny")
    model.eval()
    x = _image(3, 16, 16)
    qp = torch.tensor([3, 10, 16])
    out = model.forward_details(x, qp=qp, generator=torch.Generator().manual_seed(1))
    assert out.bins is not None
    expected = torch.zeros(3, dtype=torch.float64)
    for z, mp, mq, bins in zip(out.z, out.mu_p, out.mu_q, out.bins):
        assert torch.equal(z, bin_values(bins, mp, qp))
        assert torch.equal(bins_of(z, mp, qp), bins)
        k = (2.0 ** qp.double()).view(-1, 1, 1, 1)
        d = (mq - mp).double()
        lo, hi = bins.double() / k, (bins.double() + 1) / k
        mass = torch.sigmoid(torch.logit(hi) - d) - torch.sigmoid(torch.logit(lo) - d)
        per_dim = qp.double().view(-1, 1, 1, 1) + torch.log2(mass.clamp_min(1e-12))
        expected += per_dim.flatten(1).sum(1)
    torch.testing.assert_close(out.latent_bits.double(), expected, rtol=1e-4, atol=1e-3)
    model.train()
    out = model.forward_details(x, qp=qp, generator=torch.Generator().manual_seed(1))
    assert out.bins is not None
    assert not any(torch.equal(z, bin_values(b, mp, qp)) for z, mp, b in zip(out.z, out.mu_p, out.bins))
    (out.latent_bits.mean() + out.features.square().mean()).backward()
    for name in ("posterior_heads", "prior_heads", "head"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert any(gr is not None and bool(gr.abs().sum() > 0) for gr in grads), name
    # The relaxed path: the features' gradient reaches z's posterior.
    model.zero_grad()
    out = model.forward_details(x, qp=7, generator=torch.Generator().manual_seed(1))
    out.features.square().mean().backward()
    assert bool(model.posterior_heads[0].out.weight.grad.abs().sum() > 0)


def test_training_lowers_objective() -> None:
    """30 Adam steps of the latent model plus a linear read-out lower a toy loss."""
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = LatentModel(cfg)
    readout = torch.nn.Conv2d(cfg.latent_feature_channels, 3, 1)
    opt = torch.optim.Adam(list(model.parameters()) + list(readout.parameters()), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    base = _image(4, 8, 8, seed=7).repeat_interleave(2, 2).repeat_interleave(2, 3)  # smooth 16x16
    target = known_before(base, cfg.sig_num + 1).float() / 128 - 1
    dims = target.numel()
    losses = []
    for _ in range(30):
        features, bits = model(base, generator=g)
        loss = bits.sum() / dims + 20 * (readout(features) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses


# -- latent maths ---------------------------------------------------------------

@pytest.mark.parametrize("qp", [3, 10, 16])
def test_bin_values_bins_of_inverse(qp: int) -> None:
    g = torch.Generator().manual_seed(qp)
    bins = torch.randint(0, 2**qp, (4, 3, 8, 8), generator=g)
    bins[0, 0, 0, :2] = torch.tensor([0, 2**qp - 1])
    mu_p = torch.randn(4, 3, 8, 8, generator=g) * 3
    z = bin_values(bins, mu_p, qp)
    assert z.dtype == torch.float32
    assert torch.equal(bins_of(z, mu_p, qp), bins)
    # The bin centre is logit((i + 0.5) / K) away from mu_p.
    expected = mu_p.double() + torch.logit((bins.double() + 0.5) / 2**qp)
    torch.testing.assert_close(z.double(), expected, rtol=0, atol=1e-5)
    # Continuous values land in the bin whose prior-CDF interval holds them.
    zc = mu_p + torch.randn(4, 3, 8, 8, generator=g) * 2
    b = bins_of(zc, mu_p, qp).double()
    u = torch.sigmoid((zc - mu_p).double()) * 2**qp
    assert bool(((u >= b - 1e-3) & (u <= b + 1 + 1e-3)).all())


def test_per_sample_qp_and_table() -> None:
    qp = torch.tensor([3, 10, 16])
    g = torch.Generator().manual_seed(0)
    bins = torch.stack([torch.randint(0, 2**int(q), (2, 4, 4), generator=g) for q in qp])
    mu_p = torch.randn(3, 2, 4, 4, generator=g)
    z = bin_values(bins, mu_p, qp)
    for i, q in enumerate(qp.tolist()):
        assert torch.equal(z[i], bin_values(bins[i], mu_p[i], q))
    assert torch.equal(bins_of(z, mu_p, qp), bins)
    table = bin_logit_table()
    for q in (1, 3, 16):
        part = table[2**q - 2: 2**(q + 1) - 2]
        assert torch.equal(part, -part.flip(0))
        assert bool((part[1:] > part[:-1]).all())
    with pytest.raises(ValueError, match="batch size"):
        bin_values(bins, mu_p, torch.tensor([3, 10]))


def test_latent_math_rejects_bad_arguments() -> None:
    bins = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    mu = torch.zeros(2, 1, 2, 2)
    for qp in (0, 17, True, 3.0, torch.tensor([3.0, 4.0])):
        with pytest.raises(ValueError, match="qp"):
            bin_values(bins, mu, qp)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        bin_values(bins + 8, mu, 3)
    with pytest.raises(ValueError, match="outside"):
        posterior_bin_mass(bins - 1, mu, 3)
    with pytest.raises(ValueError, match="outside"):
        bin_values(torch.tensor([[0], [8]]), torch.zeros(2, 1), torch.tensor([4, 3]))


@pytest.mark.parametrize("qp", [3, 10])
def test_posterior_bin_mass(qp: int) -> None:
    k = 2**qp
    d = torch.tensor([-9.0, -1.3, 0.0, 0.7, 9.5]).view(-1, 1)
    bins = torch.arange(k).view(1, -1)
    mass = posterior_bin_mass(bins, d, qp)
    assert mass.shape == (5, k)
    torch.testing.assert_close(mass.double().sum(1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-4)
    torch.testing.assert_close(mass[2], torch.full((k,), 1.0 / k), rtol=1e-4, atol=0)
    lo, hi = bins.double() / k, (bins.double() + 1) / k
    direct = torch.sigmoid(torch.logit(hi) - d.double()) - torch.sigmoid(torch.logit(lo) - d.double())
    torch.testing.assert_close(mass.double(), direct.clamp_min(1e-12), rtol=1e-3, atol=1e-9)
    # The coder's integer frequencies agree, up to its fixed-point rounding.
    d_fixed = quantise_offset(d.expand(5, k))
    freqs = np.stack([
        coder.latent_freqs(bins[0].numpy(), d_fixed[i].numpy(), qp) for i in range(5)
    ])
    quantised = posterior_bin_mass(bins, d_fixed.double() / 256, qp).double().numpy()
    np.testing.assert_allclose(freqs / 2.0**coder.LATENT_PRECISION_BITS, quantised, rtol=2e-2, atol=k / 2.0**24)


def test_posterior_log2_mass_gradients_and_clamp() -> None:
    d = torch.tensor([-30.0, -2.0, 0.0, 3.0, 30.0], requires_grad=True)
    bins = torch.tensor([0, 0, 5, 7, 7])
    log2m = posterior_bin_log2_mass(bins, d, 3)
    assert torch.isfinite(log2m).all() and bool((log2m <= 0).all())
    log2m.sum().backward()
    assert d.grad is not None and torch.isfinite(d.grad).all()
    # Far tail: mass clamped at 1e-12.
    tail = posterior_bin_log2_mass(torch.tensor([7]), torch.tensor([-40.0]), 3)
    assert float(tail) == pytest.approx(math.log2(1e-12))


def test_quantise_offset() -> None:
    d = torch.tensor([0.0, 0.5 / 256, 1.5 / 256, -0.5 / 256, 0.3, -0.3, 9.5, 9.6, -100.0,
                      float("inf"), float("-inf")])
    q = quantise_offset(d)
    assert q.dtype == torch.int32
    assert q.tolist() == [0, 0, 2, 0, 77, -77, 2432, 2432, -2432, 2432, -2432]
    with pytest.raises(ValueError, match="NaN"):
        quantise_offset(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="float"):
        quantise_offset(torch.tensor([1, 2]))


def test_constants_match_the_coder() -> None:
    assert LATENT_D_FRAC_BITS == coder.LATENT_D_FRAC_BITS
    assert LATENT_D_MAX == coder.LATENT_D_MAX
    assert latent_math.LATENT_MAX_QP <= coder.LATENT_PRECISION_BITS
    # The coder accepts the largest qp of these helpers.
    freqs = coder.latent_freqs(np.array([0, 2**16 - 1]), np.array([0, 0]), latent_math.LATENT_MAX_QP)
    assert freqs.tolist() == [2**8, 2**8]
