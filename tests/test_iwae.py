"""IWAE-S negative log-likelihood (``qlatent.eval.iwae``) against models with a known likelihood.

Checked: on a linear-Gaussian model, where p(x) = N(c, W Wᵀ + s² I) exactly, the exact posterior
gives the true NLL for every S (constant weights), a wrong posterior gives an estimate above the
truth that falls towards it as S grows (S = 1, 10, 1000), and S = 1 averages to the closed-form
negative ELBO; on the lattice VAE, S = 1 averages to the training-path objective of
``evaluate_objective`` and the estimate does not grow with S; chunking and batching change only
the Monte-Carlo draws; a seed reproduces the result; modes are restored (also on error);
``DataParallel`` is unwrapped; bad input is rejected. Defensive mixture proposals: at α = 0 the
own estimate bit for bit, importance weights that integrate the prior to 1 beyond a lattice cell,
and on a toy E8 ⊕ Z² model with a closed-form log p(x) a bound that reaches it where the cell's
own falls short.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from qlatent.bottlenecks import Bottleneck, BottleneckOutput, build
from qlatent.eval import DefensiveProposal, iwae_nll, iwae_summary
from qlatent.eval.proposals import parse_mixture
from qlatent.losses import RateDistortionLoss, evaluate_objective
from qlatent.models import Autoencoder, lattice_vae
from qlatent.nn import Bernoulli, Likelihood

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_and_se(values: Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


# ------------------------------------------------------------ linear-Gaussian test model
class GaussianPosterior(Bottleneck):
    """Test only (not registered): q(z | y) = N(y, diag σ²) with a fixed σ, prior N(0, I)."""

    discrete = False

    def __init__(self, *, dim: int, log_sigma: Tensor) -> None:
        super().__init__(dim=dim)
        self.register_buffer("log_sigma", log_sigma.clone())

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        z, log_q = self.posterior_sample(y, 1, generator=generator)
        rate = (log_q - self.log_prior(z))[0]
        return BottleneckOutput(z[0], rate, y.new_zeros(()), None)

    def posterior_sample(self, y, num_samples, *, generator=None):
        self._check_density_input(y, num_samples)
        eps = torch.randn((num_samples, *y.shape), generator=generator, dtype=y.dtype)
        eps = eps.to(y.device)
        z = y + self.log_sigma.exp() * eps
        log_q = (-0.5 * eps.square() - self.log_sigma - 0.5 * LOG_2PI).sum(-1)
        return z, log_q

    def log_prior(self, z):
        return (-0.5 * z.square() - 0.5 * LOG_2PI).sum(-1)


class FixedGaussian(Likelihood):
    """Test only: p(x | mean) = N(mean, s² I)."""

    def __init__(self, s: float) -> None:
        self.s = s

    def nll(self, x, params):
        assert x.shape == params.shape
        sq = ((x - params) / self.s).square().reshape(x.shape[0], -1).sum(1)
        return 0.5 * sq + x[0].numel() * (math.log(self.s) + 0.5 * LOG_2PI)

    def mean(self, params):
        return params


class LinearGaussian:
    """z ~ N(0, I_m), x = W z + c + s ε with orthogonal columns of W: diagonal exact posterior."""

    def __init__(self, data_dim: int = 5, latent_dim: int = 2, s: float = 0.5, seed: int = 0):
        g = gen(seed)
        q, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim, generator=g, dtype=F64))
        self.d = torch.linspace(0.6, 1.8, latent_dim, dtype=F64)
        self.W = q * self.d
        self.c = torch.randn(data_dim, generator=g, dtype=F64)
        self.s = s
        # exact posterior: Σ = (I + WᵀW / s²)⁻¹ (diagonal), μ = Σ Wᵀ (x − c) / s²
        self.post_var = 1 / (1 + self.d.square() / s**2)
        self.post_weight = self.post_var[:, None] * self.W.T / s**2

    def sample(self, n: int, seed: int) -> Tensor:
        g = gen(seed)
        z = torch.randn(n, self.W.shape[1], generator=g, dtype=F64)
        noise = torch.randn(n, self.W.shape[0], generator=g, dtype=F64)
        return z @ self.W.T + self.c + self.s * noise

    def true_nll(self, x: Tensor) -> Tensor:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0], dtype=F64)
        return -torch.distributions.MultivariateNormal(self.c, cov).log_prob(x)

    def model(self, weight_scale: float = 1.0, shift: float = 0.0, sigma_scale: float = 1.0):
        """Autoencoder with the exact posterior, or a deliberately wrong one."""
        encoder = nn.Linear(*self.W.shape, dtype=F64)
        decoder = nn.Linear(*reversed(self.W.shape), dtype=F64)
        with torch.no_grad():
            encoder.weight.copy_(weight_scale * self.post_weight)
            encoder.bias.copy_(-weight_scale * self.post_weight @ self.c + shift)
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.c)
        log_sigma = 0.5 * self.post_var.log() + math.log(sigma_scale)
        bottleneck = GaussianPosterior(dim=self.W.shape[1], log_sigma=log_sigma)
        return Autoencoder(encoder, bottleneck, decoder, FixedGaussian(self.s))

    def neg_elbo(self, model: Autoencoder, x: Tensor) -> Tensor:
        """Closed form: -E_q[log p(x | z)] + KL(N(μ_q, σ_q²) ‖ N(0, I))."""
        with torch.no_grad():
            mu = model.encoder(x)
            var = (2 * model.bottleneck.log_sigma).exp()
        resid = x - mu @ self.W.T - self.c
        trace = (self.W.square() * var).sum()  # tr(W diag(σ²) Wᵀ)
        data_dim = x.shape[1]
        expected_nll = (resid.square().sum(1) + trace) / (2 * self.s**2) + data_dim * (
            math.log(self.s) + 0.5 * LOG_2PI
        )
        kl = 0.5 * (var + mu.square() - 1 - var.log()).sum(1)
        return expected_nll + kl


def test_exact_posterior_gives_the_true_nll_for_every_sample_size():
    lg = LinearGaussian()
    model, x = lg.model(), lg.sample(50, seed=1)
    truth = lg.true_nll(x)
    for num_samples, chunk in ((1, None), (7, 3), (64, None)):
        nll = iwae_nll(
            model, x, num_samples=num_samples, sample_chunk=chunk, generator=gen(2), progress=False
        )
        assert nll.dtype == F64 and nll.shape == (50,) and nll.device.type == "cpu"
        torch.testing.assert_close(nll, truth, rtol=0, atol=1e-9)


def test_wrong_posterior_is_an_upper_bound_that_tightens_with_samples():
    lg = LinearGaussian()
    model = lg.model(weight_scale=0.7, shift=0.3, sigma_scale=1.6)
    x = lg.sample(2000, seed=3)
    truth = lg.true_nll(x)
    gaps = {
        s: iwae_nll(model, x, num_samples=s, generator=gen(10 + s), progress=False) - truth
        for s in (1, 10, 1000)
    }
    # each step down is significant: paired over the same images, independent draws
    for big, small in ((1, 10), (10, 1000)):
        drop, se = mean_and_se(gaps[big] - gaps[small])
        assert drop > 5 * se, (big, small, drop, se)
    gap, se = mean_and_se(gaps[1000])
    assert -5 * se < gap < 0.05 * gaps[1].mean().item(), (gap, se)
    assert gaps[1].mean() > 0.1  # the wrong posterior is clearly wrong at S = 1


def test_single_sample_averages_to_the_closed_form_negative_elbo():
    lg = LinearGaussian()
    model = lg.model(weight_scale=0.7, shift=0.3, sigma_scale=1.6)
    x = lg.sample(20, seed=4).repeat(500, 1)
    diff = iwae_nll(model, x, num_samples=1, generator=gen(5), progress=False) - lg.neg_elbo(
        model, x
    )
    mean, se = mean_and_se(diff)
    assert abs(mean) < 5 * se, (mean, se)


# ------------------------------------------------------------------------- lattice VAE
def small_lattice_vae(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return lattice_vae(latent_dim=4, hidden=16, data_dim=12)


def binary_data(n: int, seed: int) -> Tensor:
    return torch.bernoulli(torch.full((n, 12), 0.3), generator=gen(seed))


def test_lattice_single_sample_matches_training_path_objective():
    model = small_lattice_vae()
    x = binary_data(20, seed=1).repeat(300, 1)
    iwae = iwae_nll(model, x, num_samples=1, batch_size=500, generator=gen(2), progress=False)
    parts = evaluate_objective(
        model, RateDistortionLoss(), x, batch_size=500, hard=False, generator=gen(3)
    )
    mean, se = mean_and_se(iwae - (parts["distortion"] + parts["rate"]))
    assert abs(mean) < 5 * se, (mean, se)


def test_lattice_estimate_is_finite_and_does_not_grow_with_samples():
    model = small_lattice_vae()
    x = binary_data(200, seed=1)
    nll = {s: iwae_nll(model, x, num_samples=s, generator=gen(s), progress=False) for s in (1, 100)}
    assert all(torch.isfinite(v).all() for v in nll.values())
    drop, se = mean_and_se(nll[1] - nll[100])
    assert drop > -5 * se, (drop, se)


# ----------------------------------------------------------------- chunking, seeding
def test_chunking_and_batching_change_only_the_draws():
    model = small_lattice_vae()
    x = binary_data(300, seed=1)
    reference = iwae_nll(model, x, num_samples=32, generator=gen(0), progress=False)
    again = iwae_nll(model, x, num_samples=32, generator=gen(0), progress=False)
    assert torch.equal(reference, again)  # a seed reproduces the estimate exactly
    for batch_size, chunk, seed in ((100, 5, 1), (7, 32, 2), (300, 1, 3)):
        other = iwae_nll(
            model,
            x,
            num_samples=32,
            batch_size=batch_size,
            sample_chunk=chunk,
            generator=gen(seed),
            progress=False,
        )
        mean, se = mean_and_se(other - reference)
        assert abs(mean) < 5 * se, (batch_size, chunk, mean, se)


def test_data_parallel_is_unwrapped():
    model = small_lattice_vae()
    x = binary_data(10, seed=1)
    plain = iwae_nll(model, x, num_samples=8, generator=gen(0), progress=False)
    wrapped = iwae_nll(nn.DataParallel(model), x, num_samples=8, generator=gen(0), progress=False)
    assert torch.equal(plain, wrapped)


def test_progress_bar_runs(capsys):
    model = small_lattice_vae()
    nll = iwae_nll(model, binary_data(5, seed=1), num_samples=3, batch_size=2, progress=True)
    assert nll.shape == (5,)


# --------------------------------------------------------------------- modes, errors
def test_every_module_mode_is_restored():
    model = small_lattice_vae()
    model.train()
    model.bottleneck.eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    iwae_nll(model, binary_data(4, seed=1), num_samples=2, progress=False)
    assert [m.training for m in model.modules()] == before


def test_mode_is_restored_on_error():
    model = small_lattice_vae()
    model.train()
    with pytest.raises(RuntimeError):  # the encoder cannot take 13 features
        iwae_nll(model, torch.zeros(4, 13), num_samples=2, progress=False)
    assert all(m.training for m in model.modules())


def test_bad_arguments_are_rejected():
    model = small_lattice_vae()
    x = binary_data(4, seed=1)
    for kwargs in (
        {"num_samples": 0},
        {"num_samples": 2.0},
        {"num_samples": True},
        {"batch_size": 0},
        {"sample_chunk": 0},
    ):
        with pytest.raises(ValueError):
            iwae_nll(model, x, progress=False, **kwargs)
    for bad in (
        x[0],  # no batch axis
        x[:0],  # no examples
        x.long(),  # not floating point
        torch.full((4, 12), math.nan),
        x.numpy(),
    ):
        with pytest.raises(ValueError):
            iwae_nll(model, bad, num_samples=2, progress=False)


def test_model_without_density_view_or_parts_is_a_type_error():
    torch.manual_seed(0)
    model = Autoencoder(nn.Linear(12, 4), build("identity", dim=4), nn.Linear(4, 12), Bernoulli())
    with pytest.raises(TypeError, match="Identity"):
        iwae_nll(model, binary_data(4, seed=1), num_samples=2, progress=False)
    with pytest.raises(TypeError, match="encoder"):
        iwae_nll(nn.Linear(12, 12), binary_data(4, seed=1), num_samples=2, progress=False)


def test_summary():
    summary = iwae_summary(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert summary == pytest.approx({"mean": 3.0, "se": math.sqrt(14 / 3) / 2, "count": 4})
    assert math.isnan(iwae_summary(torch.tensor([5.0]))["se"])
    with pytest.raises(ValueError):
        iwae_summary(torch.zeros(0))
    with pytest.raises(ValueError):
        iwae_summary(torch.zeros(2, 2))


# ------------------------------------------------------------ defensive mixture proposals
def _defensive_weights(neck, y, weight, widen, draws=4000):
    """Mean and s.e. of f(z)/q_mix(z) over draws: the prior's mass where q_mix is positive."""
    proposal = DefensiveProposal(neck, weight, widen)
    with torch.no_grad():
        z, log_q = proposal.posterior_sample(y, draws, generator=gen(1))
        weights = (proposal.log_prior(z) - log_q).exp().flatten()
    return weights.mean().item(), weights.std().item() / math.sqrt(weights.numel())


def test_defensive_proposal_integrates_the_prior_beyond_the_cell():
    neck = build("lattice", dim=8, lattice="e8", prior="gaussian", spacing_per="coordinate")
    with torch.no_grad():
        neck.log_scale.fill_(math.log(0.4))  # a prior wider than the unit cell
    neck.eval()
    y = torch.zeros(1, 8)
    z_own, q_own = neck.posterior_sample(y, 64, generator=gen(3))
    z_zero, q_zero = DefensiveProposal(neck, 0.0, 2.0).posterior_sample(y, 64, generator=gen(3))
    assert torch.equal(z_own, z_zero) and torch.equal(q_own, q_zero)
    # E_q[f(z)/q(z)] is the prior's mass where q is positive: one cell for the own proposal,
    # the whole space (1) for the mixture
    own, _ = _defensive_weights(neck, y, 0.0, 2.0)
    mixed, se = _defensive_weights(neck, y, 0.5, 2.0)
    assert own < 0.2
    assert abs(mixed - 1.0) < 4 * se + 0.01
    # the rectangular lattice, exact density: a Laplace prior of scale 1 against a unit box,
    # the Gaussian part as wide as the prior (τ = 6/√12 ≈ 1.7)
    rect = build("lattice", dim=4).eval()
    own, _ = _defensive_weights(rect, torch.zeros(1, 4), 0.0, 6.0)
    mixed, se = _defensive_weights(rect, torch.zeros(1, 4), 0.5, 6.0)
    assert own < 0.6
    assert abs(mixed - 1.0) < 4 * se + 0.01


def test_defensive_proposal_keeps_a_gaussian_posterior_unbiased_and_refuses_others():
    neck = build("gaussian_lattice", dim=4)
    with torch.no_grad():
        neck.logvar.fill_(math.log(0.25))
    mixed, se = _defensive_weights(neck, torch.full((1, 4), 0.5), 0.5, 2.0)
    assert abs(mixed - 1.0) < 4 * se + 0.01
    with pytest.raises(TypeError, match="a lattice or a Gaussian"):
        DefensiveProposal(build("vq", dim=4, num_codes=8), 0.5, 2.0)
    for weight, widen in ((1.0, 2.0), (-0.1, 1.0), (0.5, 0.0), (0.5, math.inf), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="0 <= alpha < 1"):
            DefensiveProposal(neck, weight, widen)
    assert parse_mixture(" 0.9:1") == (0.9, 1.0)
    for bad in ("0.5", "1:2", "0.5:0", "a:b", "0.5:1:2"):
        with pytest.raises(ValueError, match="ALPHA:K"):
            parse_mixture(bad)


def test_iwae_defensive_argument_is_checked_and_zero_weight_is_the_own_estimate():
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=8, hidden=16, lattice="e8", prior="gaussian")
    x = torch.rand(6, 784).round()

    def run(defensive):
        torch.manual_seed(1)  # a good lattice's density points come from the global generator
        return iwae_nll(
            model, x, num_samples=20, generator=gen(2), progress=False, defensive=defensive
        )

    own, zero, mixed = run(None), run((0, 1)), run((0.5, 1))
    assert torch.equal(own, zero)
    assert torch.isfinite(mixed).all() and not torch.equal(own, mixed)
    for bad in ((1.0, 1.0), (0.5,), "0.5:1", (0.5, -1.0)):
        with pytest.raises(ValueError, match="defensive"):
            iwae_nll(model, x, num_samples=2, progress=False, defensive=bad)
    vq = Autoencoder(
        nn.Linear(784, 4), build("vq", dim=4, num_codes=8), nn.Linear(4, 784), Bernoulli()
    )
    with pytest.raises(TypeError, match="a lattice or a Gaussian"):
        iwae_nll(vq, x, num_samples=2, progress=False, defensive=(0.5, 1.0))


def test_defensive_iwae_reaches_a_known_log_likelihood_the_cell_alone_misses():
    """x = y_hat + N(0, s²) with y_hat ~ f_{X̂−U} on E8 ⊕ Z² (X̂ ~ N(0, I); the Z blocks take
    their closed-form density): log p(x) is log E_U N(x + U; 0, (1 + s²)I), computed from cell
    draws alone, no density estimate."""
    noise = 0.3

    class Gaussian:
        def nll(self, x, params):
            t = (x - params) / noise
            return 0.5 * (t.square() + math.log(2 * math.pi * noise**2)).sum(-1)

    model = nn.Module()
    model.encoder, model.decoder, model.likelihood = nn.Identity(), nn.Identity(), Gaussian()
    neck = build("lattice", dim=10, lattice=["e8", "z", "z"], prior="gaussian")
    model.bottleneck = neck.eval()
    x = torch.randn(10, 10, generator=gen(0))
    with torch.no_grad():
        u = neck._unit_dither(2**19, gen(5), F64)
        t = x.double()[:, None, :] + u[None] * neck._coordinate_scale().double()
        var = 1.0 + noise**2
        log_n = (-0.5 * t.square() / var - 0.5 * math.log(2 * math.pi * var)).sum(-1)
        exact = (log_n.logsumexp(1) - math.log(u.shape[0])).mean().item()

    def iwae(mixture):
        nll = iwae_nll(
            model, x, num_samples=1000, generator=gen(1), progress=False, defensive=mixture
        )
        return -nll.mean().item()

    # the cell holds a part of the posterior only; the mixture's bound is within its noise and
    # its O(1/S) shortfall of the truth
    assert iwae(None) < exact - 0.3
    assert abs(iwae((0.5, 1.0)) - exact) < 0.1
