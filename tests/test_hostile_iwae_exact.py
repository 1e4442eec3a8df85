"""IWAE (``qlatent.eval.iwae_nll``) against likelihoods computed independently of the library.

Tiny models whose log p(x) is known to high precision by other means:

* rectangular dithered lattice, 1-D and 2-D, Bernoulli decoder: the model's marginal
  p(x) = ∫ f_{X̂−U}(z)·p(x | z) dz by quadrature (Laplace cell masses written here from the CDF),
  checked against Theorem 1's discrete view E_U Σ_λ P(Ẑ = λ | U)·p(x | λ − U) (lattice points
  enumerated in a window, the dither integrated by quadrature); the own proposal's target, the
  same integral over the cell around the encoder's output, by quadrature too;
* the library's Gaussian VAE and Gaussian-lattice bottlenecks with a linear-Gaussian decoder,
  p(x) = N(c, W Wᵀ + s² I) in closed form;
* an A2 good lattice with its Monte-Carlo density, against the model's generative view
  E[p(x | X̂ − U)] from NumPy draws (a hexagonal cell written here, not the library's decoder).

Each image is repeated R times in one call, so its R estimates are independent draws of
log p̂(x): their mean is checked to stay below the exact value (a lower bound in expectation),
the log of the mean of p̂ to match it (p̂ is unbiased), and the gap to shrink as S grows.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from qlatent.bottlenecks import build
from qlatent.eval import iwae_nll, iwae_summary
from qlatent.models import Autoencoder
from qlatent.nn import Bernoulli, Likelihood

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _log_sigmoid(v: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -v)


def _bernoulli_log_lik(x: np.ndarray, z: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """log p(x | z) of Bernoulli logits z Wᵀ + c, ``z`` ``(..., m)`` -> ``(...)``."""
    logits = z @ weight.T + bias
    return (x * _log_sigmoid(logits) + (1 - x) * _log_sigmoid(-logits)).sum(-1)


def _bernoulli_log_liks(xs: np.ndarray, z: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """:func:`_bernoulli_log_lik` of each image of ``xs`` at the same ``z``, the same numbers,
    with the log-sigmoids of the logits (most of the cost on a fine grid) taken once."""
    logits = z @ weight.T + bias
    on, off = _log_sigmoid(logits), _log_sigmoid(-logits)
    return [(x * on + (1 - x) * off).sum(-1) for x in xs]


def _laplace_cdf(t: np.ndarray, b: float) -> np.ndarray:
    return np.where(
        t < 0, 0.5 * np.exp(np.minimum(t, 0) / b), 1 - 0.5 * np.exp(-np.maximum(t, 0) / b)
    )


def _cell_mass(t: np.ndarray, spacing: float, b: float) -> np.ndarray:
    """P(X̂ ∈ [t − Δ/2, t + Δ/2)) for X̂ ~ Laplace(0, b)."""
    return _laplace_cdf(t + spacing / 2, b) - _laplace_cdf(t - spacing / 2, b)


def _linear_bernoulli(data_dim: int, latent_dim: int, bottleneck, seed: int, gain: float):
    g = gen(seed)
    encoder = nn.Linear(data_dim, bottleneck.in_dim, dtype=F64)
    decoder = nn.Linear(latent_dim, data_dim, dtype=F64)
    with torch.no_grad():
        encoder.weight.copy_(0.6 * torch.randn(bottleneck.in_dim, data_dim, generator=g, dtype=F64))
        encoder.bias.zero_()
        decoder.weight.copy_(gain * torch.randn(data_dim, latent_dim, generator=g, dtype=F64))
        decoder.bias.copy_(0.5 * torch.randn(data_dim, generator=g, dtype=F64))
    return Autoencoder(encoder, bottleneck.double(), decoder, Bernoulli())


def _replicated(model, x: Tensor, reps: int, samples: int, **kwargs) -> Tensor:
    """``(N, reps)`` independent log p̂(x) of each image (each image repeated ``reps`` times)."""
    xr = x.repeat_interleave(reps, 0)
    nll = iwae_nll(model, xr, num_samples=samples, progress=False, **kwargs)
    return -nll.view(x.shape[0], reps)


def _check_against(log_p_hat: Tensor, exact: np.ndarray, *, slack: float = 0.0) -> None:
    """Per image: mean log p̂ no more than 3 s.e. above the exact value (a lower bound in
    expectation) and log mean p̂ within 4 s.e. of it (p̂ unbiased; delta-method s.e.)."""
    for row, truth in zip(log_p_hat.double(), exact, strict=True):
        n = row.numel()
        mean, se = row.mean().item(), row.std().item() / math.sqrt(n)
        assert mean <= truth + 3 * se + slack, (mean, se, truth)
        top = row.max()
        ratio = (row - top).exp()
        log_mean = (top + ratio.mean().log()).item()
        se_log = (ratio.std() / ratio.mean()).item() / math.sqrt(n)
        assert abs(log_mean - truth) <= 4 * se_log + slack, (log_mean, se_log, truth)


# ------------------------------------------------------------------ rectangular lattice
SPACING, SCALE = 0.8, 1.3


def _rect_model(dim: int, seed: int = 0):
    neck = build("lattice", dim=dim, init_spacing=SPACING, init_scale=SCALE)
    return _linear_bernoulli(6, dim, neck, seed, gain=2.0 if dim == 1 else 1.2)


def _rect_exact_1d(model, x: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(full, discrete, cell)`` log-likelihoods per image: ∫_R f·p dz, Theorem 1's sum over
    lattice points with the dither integrated, and ∫ over the cell around y."""
    weight = model.decoder.weight.detach().numpy()
    bias = model.decoder.bias.detach().numpy()
    y = model.encoder(x).detach().numpy()[:, 0]
    grid = np.linspace(-40.0, 40.0, 400_001)
    f = _cell_mass(grid, SPACING, SCALE) / SPACING
    dither = np.linspace(-SPACING / 2, SPACING / 2, 4001)
    points = np.arange(-60, 61) * SPACING
    eta = points[None, :] - dither[:, None]  # y_hat = λ − u, (U, L)
    full, discrete, cell = [], [], []
    on_grid = _bernoulli_log_liks(x.numpy(), grid[:, None], weight, bias)
    on_eta = _bernoulli_log_liks(x.numpy(), eta[..., None], weight, bias)
    for xi, yi, log_lik, log_lik_eta in zip(x.numpy(), y, on_grid, on_eta, strict=True):
        lik = np.exp(log_lik)
        full.append(math.log(np.trapezoid(lik * f, grid)))
        terms = _cell_mass(eta, SPACING, SCALE) * np.exp(log_lik_eta)
        discrete.append(math.log(np.trapezoid(terms.sum(1), dither) / SPACING))
        box = np.linspace(yi - SPACING / 2, yi + SPACING / 2, 20_001)
        inner = np.exp(_bernoulli_log_lik(xi, box[:, None], weight, bias))
        cell.append(math.log(np.trapezoid(inner * _cell_mass(box, SPACING, SCALE) / SPACING, box)))
    return np.array(full), np.array(discrete), np.array(cell)


@pytest.fixture(scope="module")
def rect_1d():
    """The 1-D rectangular model, its five images and their ``(full, discrete, cell)`` exact
    log-likelihoods (:func:`_rect_exact_1d`, seconds of quadrature), shared by the tests of that
    model; each test takes a copy of the model."""
    model = _rect_model(1)
    x = (torch.rand(5, 6, generator=gen(1)) < 0.5).double()
    return model, x, _rect_exact_1d(model, x)


def test_rectangular_prior_is_theorem_1_density_and_the_marginal_two_ways_agree(rect_1d):
    model = copy.deepcopy(rect_1d[0])
    z = torch.linspace(-5, 5, 101, dtype=F64).view(1, -1, 1)
    log_f = model.bottleneck.log_prior(z).detach().squeeze(0).numpy()
    expected = np.log(_cell_mass(z.view(-1).numpy(), SPACING, SCALE) / SPACING)
    np.testing.assert_allclose(log_f, expected, rtol=0, atol=1e-6)  # Δ, b held as float32 logs
    full, discrete, cell = rect_1d[2]  # of the five images of rect_1d[1]
    np.testing.assert_allclose(full, discrete, rtol=0, atol=1e-6)
    # the cell holds only part of the posterior here: the own proposal's target is far lower
    assert (full - cell > 1.0).sum() >= 3


@pytest.mark.parametrize("chunk", [None, 7])
def test_own_proposal_reaches_the_cell_integral_not_the_marginal(chunk, rect_1d):
    model, x = copy.deepcopy(rect_1d[0]), rect_1d[1].clone()
    full, _, cell = rect_1d[2]
    est = _replicated(model, x, 300, 200, generator=gen(2), sample_chunk=chunk, batch_size=90)
    _check_against(est, cell)
    single = _replicated(model, x, 300, 1, generator=gen(3))
    gap_200, gap_1 = cell - est.mean(1).numpy(), cell - single.mean(1).numpy()
    assert (gap_200 < 0.02).all() and (gap_1 > 5 * gap_200).all()
    # per-image order, batch layout and the summary's mean: the images are told apart
    nll = iwae_nll(model, x, num_samples=4000, batch_size=2, generator=gen(4), progress=False)
    np.testing.assert_allclose(-nll.numpy(), cell, atol=0.03)
    assert iwae_summary(nll)["mean"] == pytest.approx(-cell.mean(), abs=0.02)


def test_defensive_proposal_reaches_the_marginal_beyond_the_cell(rect_1d):
    model, x = copy.deepcopy(rect_1d[0]), rect_1d[1].clone()
    full, _, _ = rect_1d[2]
    est = _replicated(model, x, 300, 200, generator=gen(5), defensive=(0.5, 10.0))
    _check_against(est, full)
    assert (full - est.mean(1).numpy() < 0.1).all()


def test_rectangular_2d_marginal_by_quadrature():
    model = _rect_model(2, seed=3)
    weight = model.decoder.weight.detach().numpy()
    bias = model.decoder.bias.detach().numpy()
    x = (torch.rand(3, 6, generator=gen(6)) < 0.5).double()
    axis = np.linspace(-16.0, 16.0, 1601)
    z = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1)
    f = np.prod(_cell_mass(z, SPACING, SCALE) / SPACING, -1)
    full = []
    for log_lik in _bernoulli_log_liks(x.numpy(), z, weight, bias):
        lik = np.exp(log_lik)
        full.append(math.log(np.trapezoid(np.trapezoid(lik * f, axis, axis=1), axis)))
    est = _replicated(model, x, 200, 200, generator=gen(7), defensive=(0.5, 10.0))
    _check_against(est, np.array(full))
    # float32: the same draws (dyadic dither), the same estimate to float rounding
    single = _rect_model(2, seed=3).float()
    nll64 = iwae_nll(model, x, num_samples=64, generator=gen(8), progress=False)
    nll32 = iwae_nll(single, x.float(), num_samples=64, generator=gen(8), progress=False)
    torch.testing.assert_close(nll32, nll64, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ Gaussian bottlenecks
class _Gaussian(Likelihood):
    """p(x | mean) = N(mean, s² I), normalised."""

    def __init__(self, s: float) -> None:
        self.s = s

    def nll(self, x, params):
        sq = ((x - params) / self.s).square().sum(1)
        return 0.5 * sq + x.shape[1] * (math.log(self.s) + 0.5 * math.log(2 * math.pi))

    def mean(self, params):
        return params


def _linear_gaussian(name: str, logvar_shift: float = 0.0):
    """z ~ N(0, I_2), x = W z + c + s ε with orthogonal columns of W (a diagonal exact
    posterior), around the library's ``gaussian`` or ``gaussian_lattice`` bottleneck."""
    g = gen(11)
    data_dim, m, s = 5, 2, 0.5
    q, _ = torch.linalg.qr(torch.randn(data_dim, m, generator=g, dtype=F64))
    d = torch.tensor([0.7, 1.6], dtype=F64)
    w, c = q * d, torch.randn(data_dim, generator=g, dtype=F64)
    post_var = 1 / (1 + d.square() / s**2)
    post_weight = post_var[:, None] * w.T / s**2
    neck = build(name, dim=m).double()
    encoder = nn.Linear(data_dim, neck.in_dim, dtype=F64)
    decoder = nn.Linear(m, data_dim, dtype=F64)
    with torch.no_grad():
        encoder.weight.zero_()
        encoder.weight[:m].copy_(post_weight)
        encoder.bias.zero_()
        encoder.bias[:m].copy_(-post_weight @ c)
        logvar = post_var.log() + logvar_shift
        if name == "gaussian":
            encoder.bias[m:].copy_(logvar)
        else:
            neck.logvar.copy_(logvar)
        decoder.weight.copy_(w)
        decoder.bias.copy_(c)
    model = Autoencoder(encoder, neck, decoder, _Gaussian(s))
    x = torch.randn(6, m, generator=g, dtype=F64) @ w.T + c
    x = x + s * torch.randn(x.shape, generator=g, dtype=F64)
    cov = w @ w.T + s**2 * torch.eye(data_dim, dtype=F64)
    exact = torch.distributions.MultivariateNormal(c, cov).log_prob(x).numpy()
    return model, x, exact


@pytest.mark.parametrize("name", ["gaussian", "gaussian_lattice"])
def test_gaussian_bottlenecks_with_their_exact_posterior_give_the_closed_form(name):
    model, x, exact = _linear_gaussian(name)
    for samples in (1, 13):
        nll = iwae_nll(model, x, num_samples=samples, generator=gen(12), progress=False)
        np.testing.assert_allclose(-nll.numpy(), exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "gaussian_lattice"])
def test_gaussian_bottlenecks_with_a_wrong_posterior_bound_the_closed_form(name):
    model, x, exact = _linear_gaussian(name, logvar_shift=1.5)  # 4.5x the posterior's variance
    est = _replicated(model, x, 200, 300, generator=gen(14))
    _check_against(est, exact)
    est = _replicated(model, x, 200, 300, generator=gen(15), defensive=(0.3, 2.0))
    _check_against(est, exact)
    single = _replicated(model, x, 200, 1, generator=gen(16)).mean(1).numpy()
    assert (exact - single > 0.2).all() and (exact - est.mean(1).numpy() < 0.05).all()


# ------------------------------------------------------------------ A2 good lattice
def _hexagon(volume: float):
    """Side ``a`` of the hexagonal lattice of cell volume ``volume``, its six neighbours of the
    origin, and a membership test of the origin's Voronoi cell."""
    a = math.sqrt(2 * volume / math.sqrt(3))
    h = a * math.sqrt(3) / 2
    neighbours = np.array([[a, 0], [-a, 0], [a / 2, h], [-a / 2, h], [a / 2, -h], [-a / 2, -h]])
    return a, neighbours, lambda u: (u @ neighbours.T <= 0.5 * a * a).all(-1)


def test_a2_monte_carlo_density_keeps_iwae_a_bound_on_the_generative_likelihood():
    neck = build(
        "lattice", dim=2, lattice="a2", init_spacing=0.9, eval_samples=16, eval_prior_samples=0
    )
    model = _linear_bernoulli(6, 2, neck, seed=0, gain=1.0)
    x = (torch.rand(3, 6, generator=gen(1)) < 0.5).double()
    weight = model.decoder.weight.detach().numpy()
    bias = model.decoder.bias.detach().numpy()
    a, _, inside = _hexagon(math.exp(model.bottleneck.log_volume().item()))
    rng = np.random.default_rng(0)
    n = 2**20
    box = rng.uniform([-a / 2, -a / math.sqrt(3)], [a / 2, a / math.sqrt(3)], size=(2 * n, 2))
    u = box[inside(box)][:n]
    assert u.shape[0] == n
    y_hat = rng.laplace(0.0, 1.0, size=(n, 2)) - u  # the model's own draws of X̂ − U
    y = model.encoder(x).detach().numpy()
    full, cell = [], []
    for yi, log_lik in zip(y, _bernoulli_log_liks(x.numpy(), y_hat, weight, bias), strict=True):
        lik = np.exp(log_lik)
        full.append(math.log(lik.mean()))
        cell.append(math.log((lik * inside(yi - y_hat)).mean()))
    full, cell = np.array(full), np.array(cell)
    assert (full - cell > 1.0).all()
    torch.manual_seed(0)  # a good lattice's density points come from the global generator
    own = _replicated(model, x, 120, 60, generator=gen(2))
    _check_against(own, cell, slack=0.01)  # the reference's own Monte-Carlo error
    wide = _replicated(model, x, 120, 60, generator=gen(3), defensive=(0.5, 3.0))
    _check_against(wide, full, slack=0.01)
    single = _replicated(model, x, 120, 1, generator=gen(4)).mean(1).numpy()
    assert (cell - own.mean(1).numpy() < 0.5 * (cell - single)).all()
