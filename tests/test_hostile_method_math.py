"""The bottlenecks' mathematics recomputed independently (NumPy / plain formulas, DESIGN.md §3):
half-precision EMA statistics, the Gaussian density view's dtype, and guards on the Soft VQ-VAE
posterior, the soft-EM step and the continuous methods' per-example rates."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.bottlenecks._codebook import EMACodebook
from qlatent.priors import gaussian_cell_log_prob, laplace_cell_log_prob


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ EMA codebook precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_ema_codebook_converges_to_its_cluster_mean(dtype):
    """One code counted 40 times a batch at the point 0.3: after t updates its EMA count is
    40·(1 − λ^t) and its codeword the cluster mean 0.3. With the statistics stored in bfloat16
    the count stalled at 31.4 (an update's step (1 − λ)(n − c) fell below half a bfloat16 step)
    while the sum went on, and the codeword settled at 0.256; in float16 the count was 39.09."""
    ema = EMACodebook(2, 1, decay=0.99, eps=1e-5).to(dtype)
    steps = 500
    for _ in range(steps):
        ema.update(torch.tensor([40.0, 0.0]), torch.tensor([[40 * 0.3], [0.0]]))
    expected = 40 * (1 - 0.99**steps)
    assert ema.ema_count[0].item() == pytest.approx(expected, rel=1e-4)
    assert ema.codebook.dtype == dtype  # the codebook follows the module's dtype
    assert ema.codebook[0, 0].item() == pytest.approx(0.3, abs=2e-3)  # a bfloat16 step at 0.3


def test_a_dtype_round_trip_keeps_the_ema_statistics():
    """``.to(bfloat16).float()`` of a trained ``vq_ema`` rounded its running counts and sums to
    bfloat16 (3 significant digits): the next M-step started from other statistics."""
    torch.manual_seed(0)
    neck = build("vq_ema", dim=3, num_codes=6).train()
    for seed in range(5):
        neck(torch.randn(40, 3, generator=_gen(seed)))
    count, total = neck.ema.ema_count.clone(), neck.ema.ema_sum.clone()
    half = copy.deepcopy(neck).to(torch.bfloat16)
    assert half.ema.ema_count.dtype == half.ema.ema_sum.dtype == torch.float32
    back = half.float()
    assert torch.equal(back.ema.ema_count, count) and torch.equal(back.ema.ema_sum, total)


# ------------------------------------------------------------ Gaussian density view dtype
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gaussian_posterior_density_of_a_half_input_is_computed_as_forward_computes(dtype):
    """``forward`` computes a half-precision input in float32, ``posterior_sample`` and
    ``log_prior`` did in the input's dtype: at m = 64 a bfloat16 log q was off by 0.3 nats from
    the same draw's float32 value (IWAE's importance weights with it)."""
    neck = build("gaussian", dim=64)
    y = torch.randn(4, 128, generator=_gen(1)).to(dtype)
    z, log_q = neck.posterior_sample(y, 3, generator=_gen(2))
    log_prior = neck.log_prior(z)
    # independently, in float64, from the same ε (drawn in float32 from the same generator)
    eps = torch.randn(3, 4, 64, generator=_gen(2)).double()
    mean = y[:, :64].double()
    logvar = y[:, 64:].double().clamp(-6.0, 2.0)
    z_ref = mean + torch.exp(0.5 * logvar) * eps
    log_q_ref = (-0.5 * (math.log(2 * math.pi) + logvar + eps.square())).sum(-1)
    log_prior_ref = (-0.5 * (math.log(2 * math.pi) + z_ref.square())).sum(-1)
    assert z.dtype == log_q.dtype == log_prior.dtype == torch.float32
    torch.testing.assert_close(log_q.double(), log_q_ref, rtol=0, atol=1e-3)
    torch.testing.assert_close(log_prior.double(), log_prior_ref, rtol=0, atol=1e-3)


# ------------------------------------------------------------------- guards: Soft VQ-VAE
@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_soft_vq_eval_output_and_stats_follow_the_posterior_of_eq_5(variant):
    """p_k ∝ exp(−‖z − μ_k‖²/(2σ_k²) + c_k), c_k = −d·log σ_k (eq. 5) or +log σ_k (notebook);
    eval y_hat = Σ p_k μ_k from the noiseless z; posterior entropy and the perplexity of Σ_i p_i."""
    torch.manual_seed(0)
    d, k = 3, 5
    neck = build("soft_vq", dim=d, num_codes=k, variant=variant).double().eval()
    y = torch.randn(2, d + k, 2, 3, generator=_gen(3), dtype=torch.float64)
    out = neck(y)
    rows = y.permute(0, 2, 3, 1).reshape(-1, d + k).numpy()
    z, s = rows[:, :d], rows[:, d:]
    mu = neck.codebook.detach().numpy()
    dist = ((z[:, None, :] - mu[None]) ** 2).sum(-1)
    logits = -dist / (2 * np.exp(2 * s)) + (-d * s if variant == "paper" else s)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y_hat = (p @ mu).reshape(2, 2, 3, d).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out.y_hat.detach().numpy(), y_hat, rtol=0, atol=1e-12)
    entropy = -(p * np.log(p)).sum(1).mean()
    assert out.stats["posterior_entropy"].item() == pytest.approx(entropy, rel=1e-10)
    usage = p.sum(0) / p.sum()
    soft = np.exp(-(usage * np.log(usage)).sum())
    assert out.stats["soft_perplexity"].item() == pytest.approx(soft, rel=1e-5)
    assert torch.equal(out.rate, torch.zeros(2, dtype=torch.float64))


# ------------------------------------------------------------------- guards: soft EM
def test_one_soft_em_step_matches_the_monte_carlo_em_formulas():
    """τ = softmax(−‖z − e_k‖²/T); m codes drawn from τ; y_hat = their mean codeword;
    aux = β·mse + β_VIB·mean(log K − H(τ)); the M-step with fractional counts 1/m."""
    torch.manual_seed(0)
    k, m, t, decay = 6, 4, 0.5, 0.9
    neck = build(
        "soft_em_vq", dim=3, num_codes=k, num_samples=m, temperature=t, vib_weight=0.3, decay=decay
    )
    neck = neck.double().train()
    y = torch.randn(5, 3, generator=_gen(4), dtype=torch.float64)
    e0 = neck.codebook.clone().numpy()
    out = neck(y, generator=_gen(5))
    logits = -((y.numpy()[:, None] - e0[None]) ** 2).sum(-1) / t
    logits -= logits.max(1, keepdims=True)
    log_tau = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    tau = np.exp(log_tau)
    draws = torch.multinomial(torch.from_numpy(tau), m, replacement=True, generator=_gen(5))
    draws = draws.numpy()
    mean_code = e0[draws].mean(1)
    np.testing.assert_allclose(out.y_hat.detach().numpy(), mean_code, rtol=0, atol=1e-12)
    entropy = -(tau * log_tau).sum(1)
    aux = 0.25 * ((y.numpy() - mean_code) ** 2).mean() + 0.3 * (math.log(k) - entropy).mean()
    assert out.aux_loss.item() == pytest.approx(aux, rel=1e-10)
    counts, sums = np.zeros(k), np.zeros((k, 3))
    for i, row in enumerate(draws):
        for code in row:
            counts[code] += 1 / m
            sums[code] += y.numpy()[i] / m
    c, total = (1 - decay) * counts, decay * e0 + (1 - decay) * sums
    smoothed = (c + 1e-5) / (c.sum() + k * 1e-5) * c.sum()
    np.testing.assert_allclose(neck.codebook.numpy(), total / smoothed[:, None], rtol=1e-10)
    assert torch.equal(out.rate, torch.full((5,), math.log(k), dtype=torch.float64))


# --------------------------------------------------- guards: rates of the continuous methods
def test_continuous_rates_are_nats_per_example_summed_over_dims_and_positions():
    """Information dropout: Σ −log(α/α_max), α = α_max·sigmoid(a); Gaussian dithering:
    KL(N(Ay + c, σ²) ‖ N(0, I)), summed over channels and spatial positions of each example."""
    torch.manual_seed(0)
    y = torch.randn(2, 6, 3, 2, generator=_gen(6), dtype=torch.float64)
    dropout = build("info_dropout", dim=3, alpha_max=0.5).eval()
    a = y[:, 3:].numpy()
    expected = -np.log(1 / (1 + np.exp(-a))).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(dropout(y).rate.numpy(), expected, rtol=1e-12)

    dither = build("gaussian_dither", dim=6, init_logvar=-1.5).double().eval()
    with torch.no_grad():
        dither.encode_map.weight.copy_(torch.randn(6, 6, generator=_gen(7)))
        dither.encode_map.bias.copy_(torch.randn(6, generator=_gen(8)))
    weight = dither.encode_map.weight.detach().numpy()
    bias = dither.encode_map.bias.detach().numpy()
    mean = np.einsum("ij,bjhw->bihw", weight, y.numpy()) + bias[None, :, None, None]
    kl = 0.5 * (mean**2 + math.exp(-1.5) - 1 + 1.5)
    np.testing.assert_allclose(dither(y).rate.detach().numpy(), kl.sum(axis=(1, 2, 3)), rtol=1e-12)


# ------------------------------------------------------------------------ guards: priors
@pytest.mark.parametrize(
    ("eta", "spacing", "scale"), [(0.3, 1.0, 0.5), (-2.0, 0.5, 0.3), (0.49, 1.0, 1e-3)]
)
def test_cell_probabilities_and_their_gradients_match_the_cdf_difference(eta, spacing, scale):
    """log[F(η + Δ/2) − F(η − Δ/2)] for Laplace and Gaussian priors and its derivatives in η,
    Δ and b, against the CDFs in float64 (central differences for the gradients)."""

    def laplace_cdf(x, b):
        return 0.5 * math.exp(x / b) if x < 0 else 1 - 0.5 * math.exp(-x / b)

    def gauss_cdf(x, b):
        return 0.5 * math.erfc(-x / (b * math.sqrt(2)))

    point = [eta, spacing, scale]
    for fn, cdf in ((laplace_cell_log_prob, laplace_cdf), (gaussian_cell_log_prob, gauss_cdf)):

        def ref(e, d, b, cdf=cdf):
            return math.log(cdf(e + d / 2, b) - cdf(e - d / 2, b))

        args = [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in point]
        value = fn(*args)
        value.sum().backward()
        assert value.item() == pytest.approx(ref(*point), rel=1e-9)
        for i, arg in enumerate(args):
            h = 1e-6 * max(abs(point[i]), 1e-3)
            up, down = list(point), list(point)
            up[i] += h
            down[i] -= h
            numeric = (ref(*up) - ref(*down)) / (2 * h)
            assert arg.grad.item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_a_gaussian_cell_far_narrower_than_its_prior_has_its_probability(dtype):
    """log P of a cell of width Δ under N(0, s²) took the difference of two nearly equal
    log Φ: its error grew as ε·s/Δ (2e-3 nats per coordinate at s = 10⁴Δ in float32) and below
    Δ ≈ ε·s it was −inf, so a Z block under a wide Gaussian prior had an infinite rate. Narrow
    cells are integrated around their centre now; the reference is mpmath at 60 digits."""
    import mpmath

    mpmath.mp.dps = 60
    tolerance = 3e-5 if dtype == torch.float32 else 1e-9
    for s in (1e3, 1e4, 1e7, 1e10):
        for eta in (0.0, 0.3, 0.5 * s, 3.0 * s):
            for width in (1.0, 0.25):
                got = gaussian_cell_log_prob(
                    torch.tensor([eta], dtype=dtype), torch.tensor(width, dtype=dtype),
                    torch.tensor(s, dtype=dtype),
                ).item()  # fmt: skip
                x = mpmath.mpf(float(torch.tensor(eta, dtype=dtype)))
                low, high = (x - mpmath.mpf(width) / 2) / s, (x + mpmath.mpf(width) / 2) / s
                expected = float(mpmath.log(mpmath.ncdf(high) - mpmath.ncdf(low)))
                assert abs(got - expected) < tolerance, (s, eta, width, got, expected)


def test_a_z_block_under_a_very_wide_gaussian_prior_has_a_finite_rate():
    neck = build("lattice", dim=3, lattice=["a2", "z"], prior="gaussian", init_scale=1e10)
    y = torch.randn(4, 3, generator=_gen(0))
    for training in (True, False):
        assert torch.isfinite(neck.train(training)(y, generator=_gen(1)).rate).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("lattice", ["z", ["e8", "z"]], ids=["z", "e8+z"])
def test_a_half_precision_lattice_under_a_gaussian_prior_runs_both_paths(lattice, dtype):
    """torch has no ``log_ndtr`` for float16 / bfloat16 on the CPU: a lattice bottleneck with
    ``prior="gaussian"`` cast to half failed on NotImplementedError on both paths. The cell
    probabilities are computed in float32 and the rate comes in the module's dtype, near the
    float32 module's."""
    torch.manual_seed(0)
    neck = build("lattice", dim=4 if lattice == "z" else 9, lattice=lattice, prior="gaussian",
                 samples=8, prior_samples=4, eval_samples=8, eval_prior_samples=4)  # fmt: skip
    y = torch.randn(6, neck.in_dim, generator=_gen(0))
    reference = neck.eval()(y, generator=_gen(1)).rate
    half = copy.deepcopy(neck).to(dtype)
    rate = half.eval()(y.to(dtype), generator=_gen(1)).rate
    assert rate.dtype == dtype
    assert torch.allclose(rate.float(), reference, rtol=0.02, atol=0.1)
    half.train()(y.to(dtype)).rate.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in half.parameters() if p.grad is not None)
