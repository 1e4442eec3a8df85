"""Gaussian VAE (``build("gaussian", ...)``) and Gaussian lattice VAE (``"gaussian_lattice"``).

Checked (float64, fixed seeds): the analytic KL equals torch's ``kl_divergence`` and the
Monte-Carlo average of log q − log p within 5 standard errors, and is ≥ 0 even at σ² ≈ 1;
log-variance clipping to [-6, 2] (with zero gradient beyond it, and either side switchable off);
training-path samples have mean μ and variance σ²; eval returns μ deterministically; the lattice
variant's σ² does not depend on x and is trained; the density view matches
``torch.distributions.Normal``; seeded sampling is reproducible; bad arguments raise ValueError.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from qlatent.bottlenecks import GaussianLattice, GaussianVAE, build
from qlatent.bottlenecks.gaussian import kl_to_standard_normal, log_normal, log_standard_normal

F64 = torch.float64
DIM = 4


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def vae_input(batch: int, seed: int, dim: int = DIM) -> torch.Tensor:
    """``[μ | log σ²]`` rows with log σ² inside the default clip range [-6, 2]."""
    g = gen(seed)
    mean = 2.0 * torch.randn(batch, dim, generator=g, dtype=F64)
    logvar = torch.empty(batch, dim, dtype=F64).uniform_(-5.0, 1.5, generator=g)
    return torch.cat([mean, logvar], 1)


def make_lattice(seed: int, dim: int = DIM) -> GaussianLattice:
    module = build("gaussian_lattice", dim=dim).double()
    with torch.no_grad():
        module.logvar.uniform_(-3.0, 1.0, generator=gen(seed))
    return module


def cases(seed: int, batch: int = 3):
    """(module, input, μ, log σ²) for both bottlenecks."""
    y = vae_input(batch, seed)
    yield build("gaussian", dim=DIM), y, y[:, :DIM], y[:, DIM:]
    lattice = make_lattice(seed)
    mean = y[:, :DIM]
    yield lattice, mean, mean, lattice.logvar.detach().expand(batch, DIM)


CASE_IDS = ["gaussian", "gaussian_lattice"]


# ------------------------------------------------------------------------ the maths
def test_kl_equals_torch_kl_divergence():
    mean = torch.tensor([[0.0, 1.5, -3.0, 0.2, 1e-9, 10.0]], dtype=F64)
    logvar = torch.tensor([[0.0, -6.0, 2.0, 1e-9, -1e-12, 0.3]], dtype=F64)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    kl = kl_to_standard_normal(mean, logvar)
    torch.testing.assert_close(kl, expected, rtol=1e-12, atol=1e-15)
    assert (kl >= 0).all()
    # near σ² = 1 the plain σ² − 1 − log σ² cancels; expm1 keeps ≈ x²/4 exactly
    tiny = torch.tensor([1e-6, -1e-6], dtype=F64)
    torch.testing.assert_close(kl_to_standard_normal(torch.zeros(2, dtype=F64), tiny), tiny**2 / 4)


@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_rate_is_the_analytic_kl_on_both_paths(case):
    module, y, mean, logvar = list(cases(seed=1))[case]
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    for training in (True, False):
        rate = module.train(training)(y, generator=gen(2)).rate
        torch.testing.assert_close(rate, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_kl_equals_monte_carlo_average_of_log_ratio(case):
    """E_q[log q(z) − log p(z)] = KL: sample mean within 5 standard errors of the rate."""
    module, y, _, _ = list(cases(seed=3))[case]
    n = 100_000
    with torch.no_grad():
        z, log_q = module.posterior_sample(y, n, generator=gen(4))
        ratio = log_q - module.log_prior(z)  # (S, B)
        rate = module.eval()(y).rate
    se = ratio.std(0) / math.sqrt(n)
    assert ((ratio.mean(0) - rate).abs() <= 5 * se).all(), (ratio.mean(0), rate, se)


def test_log_densities_match_torch_normal():
    g = gen(5)
    z, mean = torch.randn(2, 3, 7, generator=g, dtype=F64), torch.randn(3, 7, generator=g)
    logvar = torch.randn(3, 7, generator=g, dtype=F64)
    expected = Normal(mean.double(), (0.5 * logvar).exp()).log_prob(z)
    torch.testing.assert_close(log_normal(z, mean.double(), logvar), expected)
    torch.testing.assert_close(log_standard_normal(z), Normal(0.0, 1.0).log_prob(z))


# ----------------------------------------------------------------------- clipping
def test_logvar_is_clipped_with_zero_gradient_beyond_the_bounds():
    module = build("gaussian", dim=3)
    logvar = torch.tensor([[-10.0, 0.5, 5.0]], dtype=F64)
    y = torch.cat([torch.zeros(1, 3, dtype=F64), logvar], 1).requires_grad_()
    out = module.train()(y, generator=gen(6))
    clipped = torch.tensor([[-6.0, 0.5, 2.0]], dtype=F64)
    torch.testing.assert_close(out.rate, kl_to_standard_normal(torch.zeros(1, 3), clipped).sum(-1))
    torch.testing.assert_close(out.stats["mean_variance"], clipped.exp().mean())
    (out.rate.sum() + out.y_hat.square().sum()).backward()
    grad = y.grad[0, 3:]
    assert grad[0] == 0 and grad[2] == 0 and grad[1] != 0


def test_clipping_sides_can_be_switched_off():
    logvar = torch.tensor([[-10.0, 5.0]], dtype=F64)
    y = torch.cat([torch.zeros(1, 2, dtype=F64), logvar], 1)
    for low, high, expected in [
        (None, 2.0, [-10.0, 2.0]),
        (-6.0, None, [-6.0, 5.0]),
        (None, None, [-10.0, 5.0]),
    ]:
        module = build("gaussian", dim=2, logvar_min=low, logvar_max=high).eval()
        target = kl_to_standard_normal(torch.zeros(1, 2), torch.tensor([expected], dtype=F64))
        torch.testing.assert_close(module(y).rate, target.sum(-1))


# --------------------------------------------------------------------- the paths
@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_training_samples_have_mean_mu_and_variance_sigma2(case):
    module, y, mean, logvar = list(cases(seed=7, batch=1))[case]
    n = 50_000
    rows = y.expand(n, -1)
    with torch.no_grad():
        y_hat = module.train()(rows, generator=gen(8)).y_hat
    var = logvar[0].exp()
    assert ((y_hat.mean(0) - mean[0]).abs() <= 5 * (var / n).sqrt()).all()
    assert ((y_hat.var(0) - var).abs() <= 5 * var * math.sqrt(2 / (n - 1))).all()


@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_eval_returns_mu_deterministically(case):
    module, y, mean, _ = list(cases(seed=9))[case]
    module.eval()
    a, b = module(y, generator=gen(10)), module(y, generator=gen(11))
    assert torch.equal(a.y_hat, mean) and torch.equal(b.y_hat, mean)
    assert torch.equal(a.rate, b.rate)
    assert a.indices is None
    with pytest.raises(TypeError):
        module.quantize(y)


def test_spatial_input_splits_mu_and_logvar_on_axis_1():
    module = build("gaussian", dim=2).eval()
    y = torch.randn(3, 4, 5, 6, generator=gen(12))
    out = module(y)
    assert torch.equal(out.y_hat, y[:, :2])
    rows = y.movedim(1, -1).reshape(-1, 4)
    per_row = kl_to_standard_normal(rows[:, :2], rows[:, 2:].clamp(-6, 2)).sum(-1)
    torch.testing.assert_close(out.rate, per_row.reshape(3, -1).sum(1))


def test_training_path_is_reproducible_and_keeps_dtype():
    module = build("gaussian", dim=DIM).train()
    y = vae_input(5, seed=13)
    a, b = module(y, generator=gen(14)), module(y, generator=gen(14))
    assert torch.equal(a.y_hat, b.y_hat) and a.y_hat.dtype == F64
    assert not torch.equal(a.y_hat, module(y, generator=gen(15)).y_hat)
    assert module(y.float()).y_hat.dtype == torch.float32  # default generator works too


# ------------------------------------------------------------- gaussian_lattice
def test_lattice_variance_does_not_depend_on_x_and_is_trained():
    module = make_lattice(seed=16).train()
    y1, y2 = torch.randn(2, 5, DIM, generator=gen(17), dtype=F64)
    out1, out2 = module(y1, generator=gen(18)), module(y2, generator=gen(18))
    # same noise, same σ: the perturbations agree although the inputs differ
    torch.testing.assert_close(out1.y_hat - y1, out2.y_hat - y2)
    torch.testing.assert_close(out1.stats["mean_variance"], out2.stats["mean_variance"])
    assert module.variance.shape == (DIM,)
    torch.testing.assert_close(module.variance, module.logvar.exp())
    (out1.rate.sum() + out1.y_hat.square().sum()).backward()
    grad = module.logvar.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


def test_lattice_variance_can_be_frozen():
    module = build("gaussian_lattice", dim=3, init_logvar=-2.0, learn_variance=False)
    assert not module.logvar.requires_grad
    torch.testing.assert_close(module.variance, torch.full((3,), math.exp(-2.0)))


# ------------------------------------------------------------------ density view
@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_posterior_sample_matches_torch_normal(case):
    module, y, mean, logvar = list(cases(seed=19))[case]
    z, log_q = module.posterior_sample(y, 6, generator=gen(20))
    assert z.shape == (6, 3, DIM) and log_q.shape == (6, 3)
    expected = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, expected)
    torch.testing.assert_close(module.log_prior(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_posterior_sample_is_reproducible_given_seed(case):
    module, y, _, _ = list(cases(seed=21))[case]
    (za, la), (zb, lb) = (module.posterior_sample(y, 4, generator=gen(22)) for _ in range(2))
    assert torch.equal(za, zb) and torch.equal(la, lb)
    assert not torch.equal(za, module.posterior_sample(y, 4, generator=gen(23))[0])


# ------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("gaussian", dict(dim=0)),
        ("gaussian", dict(dim=2.0)),
        ("gaussian", dict(dim=2, logvar_min=3.0, logvar_max=2.0)),
        ("gaussian", dict(dim=2, logvar_min=float("nan"))),
        ("gaussian", dict(dim=2, logvar_max=float("inf"))),
        ("gaussian", dict(dim=2, logvar_min=True)),
        ("gaussian_lattice", dict(dim=0)),
        ("gaussian_lattice", dict(dim=2, init_logvar=float("nan"))),
        ("gaussian_lattice", dict(dim=2, learn_variance=1)),
    ],
)
def test_bad_constructor_arguments_raise_value_error(name, kwargs):
    with pytest.raises(ValueError):
        build(name, **kwargs)


def test_constructor_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        GaussianVAE(3)
    with pytest.raises(TypeError):
        GaussianLattice(3)


def test_gaussian_rejects_input_without_logvar_half():
    module = build("gaussian", dim=3)
    assert module.in_dim == 6
    with pytest.raises(ValueError, match="6"):
        module(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="6"):
        module.posterior_sample(torch.zeros(2, 3), 1)


@pytest.mark.parametrize("name", ["gaussian", "gaussian_lattice"])
def test_bad_input_to_density_view_raises_value_error(name):
    module = build(name, dim=2)
    good = torch.zeros(2, module.in_dim)
    for bad in (good.clone().fill_(float("nan")), good[:, :, None], good[:, :1]):
        with pytest.raises(ValueError):
            module.posterior_sample(bad, 1)
    with pytest.raises(ValueError):
        module.posterior_sample(good, 0)
    with pytest.raises(ValueError):
        module.log_prior(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError):
        module.train()(good.clone().fill_(float("nan")))
