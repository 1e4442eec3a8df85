"""What the library reports, against independent computations on tiny models.

Checked: a spatial latent's rate is the sum of its positions' rates per image; a validation
mean over batches of unequal size is the per-example mean; the IWAE estimate is
logsumexp(log w) − log S of the very draws the density view gives (recomputed in NumPy);
``codelength_report``'s means and standard errors (n − 1, per image, the gap paired) are those
of the per-image values; a row's spread over seeds is the sample standard deviation.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from qlatent._utils import to_rows
from qlatent.bottlenecks import build
from qlatent.data import synthetic_binary
from qlatent.eval import codelength_report, iwae_nll, iwae_summary
from qlatent.experiments.softvq_mnist import seed_statistics
from qlatent.losses import RateDistortionLoss, evaluate_objective
from qlatent.models import gated_vae, lattice_vae
from qlatent.rng import SeedKeys
from qlatent.train import TrainConfig, fit


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_model(bottleneck: str = "lattice", seed: int = 0):
    torch.manual_seed(seed)
    return gated_vae(bottleneck, latent_dim=4, hidden=16, data_dim=12)


def binary(n: int, seed: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 12), 0.3), generator=gen(seed))


# ------------------------------------------------------------------ rates of spatial latents
@pytest.mark.parametrize("name", ["lattice", "vq"])
def test_a_spatial_latents_rate_is_the_sum_over_its_positions(name):
    """(B, D, H, W): one rate per image, the sum of its H·W rows' rates (not over channels or
    over the batch)."""
    torch.manual_seed(0)
    neck = build(name, dim=3).eval()
    y = 2.0 * torch.randn(4, 3, 2, 5, generator=gen(1))
    rate = neck(y, generator=SeedKeys(7)).rate
    rows = neck(to_rows(y), generator=SeedKeys(7)).rate  # (4·2·5,), image-major
    assert rate.shape == (4,)
    torch.testing.assert_close(rate, rows.view(4, 10).sum(1))
    if name == "vq":  # a uniform index per position: log K nats each
        torch.testing.assert_close(rate, torch.full((4,), 10 * math.log(neck.num_codes)))


# ------------------------------------------------------------------ dataset means
def test_validation_means_are_per_example_over_an_uneven_last_batch(tmp_path):
    """``val_distortion`` over 20 images in batches of 7, 7 and 6 is the mean over images (a
    mean of the batch means would weigh the last six images more)."""
    data = synthetic_binary(n=120, dim=12, seed=3)
    model = small_model("vq")  # a deterministic training path: the value can be recomputed
    cfg = TrainConfig(epochs=1, batch_size=25, eval_batch_size=7, lr=1e-3, progress=False)
    result = fit(model, data, cfg, out_dir=tmp_path)
    record = result.history[-1]
    model.train()
    with torch.no_grad():
        out = model(data["val"])
        distortion = model.likelihood.nll(data["val"], out.params).double()
        rate = out.bottleneck.rate.double()
    assert data["val"].shape[0] == 20
    assert record["val_distortion"] == pytest.approx(distortion.mean().item(), rel=1e-6)
    assert record["val_rate"] == pytest.approx(rate.mean().item(), rel=1e-6)
    assert record["val_objective"] == pytest.approx((distortion + rate).mean().item(), rel=1e-6)
    assert record["train_examples"] == data["train"].shape[0]


def test_a_deterministic_evaluation_is_the_same_in_any_batch_size():
    model = small_model("vq")
    x = binary(23, seed=2)
    loss = RateDistortionLoss()
    whole = evaluate_objective(model, loss, x, batch_size=23, hard=True)
    for batch_size in (1, 5, 22):
        parts = evaluate_objective(model, loss, x, batch_size=batch_size, hard=True)
        for key in ("distortion", "rate"):
            # float32 networks: another batch shape may round a matrix product differently
            torch.testing.assert_close(parts[key], whole[key], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["vq_ema", "soft_em_vq"])
def test_an_ema_codebooks_training_path_value_does_not_follow_the_batch_size(name):
    """Each training-path forward of an EMA codebook takes an M-step; its buffers were put back
    only after the whole pass, so batch k met the codebook batches 1 … k−1 had moved: the
    validation distortion of a toy vq_ema was 14.16 in one batch of 300 and 16.31 in batches of
    7 (the hard path 14.16). Every batch is now scored with the model's own codebook."""
    torch.manual_seed(0)
    model = gated_vae(name, latent_dim=4, hidden=16, data_dim=12, num_codes=8)
    x = binary(60, seed=3)
    loss = RateDistortionLoss()
    codebook = {k: v.clone() for k, v in model.bottleneck.state_dict().items()}
    whole = evaluate_objective(model, loss, x, batch_size=60, generator=gen(4))
    for batch_size in (1, 7, 59):
        parts = evaluate_objective(model, loss, x, batch_size=batch_size, generator=gen(4))
        if name == "vq_ema":  # no sampling on its training path: the same values
            torch.testing.assert_close(
                parts["distortion"], whole["distortion"], rtol=1e-6, atol=1e-5
            )
        else:  # sampled assignments: the same expectation, within a few standard errors
            gap = parts["distortion"].mean() - whole["distortion"].mean()
            se = (parts["distortion"].var() / 60 + whole["distortion"].var() / 60).sqrt()
            assert abs(gap) < 5 * se + 1e-3
    if name == "vq_ema":
        hard = evaluate_objective(model, loss, x, batch_size=7, hard=True)
        torch.testing.assert_close(hard["distortion"], whole["distortion"], rtol=1e-6, atol=1e-5)
    after = model.bottleneck.state_dict()
    assert all(torch.equal(codebook[k], after[k]) for k in codebook)


# ------------------------------------------------------------------ IWAE
def _log_sigmoid(v: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -v)


def test_iwae_is_the_log_mean_weight_of_its_own_draws():
    """Recomputed in NumPy from the same draws (one chunk, one batch): log p(x | z) of the
    Bernoulli logits, log f(z) − log q(z), then −(logsumexp over S − log S) per image."""
    model = small_model("lattice").eval()
    x = binary(9, seed=4)
    samples = 16
    nll = iwae_nll(
        model,
        x,
        num_samples=samples,
        batch_size=9,
        sample_chunk=samples,
        generator=gen(5),
        progress=False,
    )
    with torch.no_grad():
        y = model.encoder(x)
        z, log_q = model.bottleneck.posterior_sample(y, samples, generator=gen(5))
        log_prior = model.bottleneck.log_prior(z)
        logits = model.decoder(z.reshape(-1, 4)).view(samples, 9, 12)
    v, xs = logits.double().numpy(), x.double().numpy()[None]
    log_px = (xs * _log_sigmoid(v) + (1 - xs) * _log_sigmoid(-v)).sum(-1)
    log_w = log_px + log_prior.double().numpy() - log_q.double().numpy()
    top = log_w.max(0)
    expected = -(top + np.log(np.exp(log_w - top).mean(0)))
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-6, atol=1e-5)
    summary = iwae_summary(nll)
    assert summary["mean"] == pytest.approx(expected.mean())
    assert summary["se"] == pytest.approx(expected.std(ddof=1) / 3.0)  # sqrt(9 images)


# ------------------------------------------------------------------ codelength report
def test_codelength_report_is_the_per_image_statistics_of_both_paths():
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=4, hidden=16, data_dim=12)
    x = binary(30, seed=6)
    report = codelength_report(model, x, seed=11, batch_size=7)
    loss = RateDistortionLoss()
    train = evaluate_objective(model, loss, x, batch_size=7, hard=False, generator=gen(11))
    hard = evaluate_objective(model, loss, x, batch_size=7, hard=True, generator=gen(12))
    t = (train["distortion"] + train["rate"]).numpy()
    h = (hard["distortion"] + hard["rate"]).numpy()
    n = math.sqrt(30)
    assert report.neg_elbo.total == pytest.approx(t.mean())
    assert report.neg_elbo.total_se == pytest.approx(t.std(ddof=1) / n)
    assert report.neg_elbo.rate == pytest.approx(train["rate"].numpy().mean())
    assert report.codelength.total == pytest.approx(h.mean())
    assert report.codelength.total_se == pytest.approx(h.std(ddof=1) / n)
    assert report.codelength.distortion == pytest.approx(hard["distortion"].numpy().mean())
    assert report.gap_se == pytest.approx((h - t).std(ddof=1) / n)  # paired, per image
    assert report.relative_gap == pytest.approx((h.mean() - t.mean()) / t.mean())


# ------------------------------------------------------------------ spread over seeds
def test_a_rows_spread_over_seeds_is_the_sample_standard_deviation():
    runs = {
        0: {"kmeans_acc": 0.5, "nmi": 0.4, "linear_acc": 0.9},
        1: {"kmeans_acc": 0.7, "nmi": 0.5, "linear_acc": 0.8},
        2: {"kmeans_acc": 0.6, "nmi": None, "linear_acc": 0.95},
    }
    row = seed_statistics("vq", runs)
    for key in ("kmeans_acc", "linear_acc"):
        values = [r[key] for r in runs.values()]
        assert row["stats"][key]["mean"] == pytest.approx(statistics.fmean(values))
        assert row["stats"][key]["sd"] == pytest.approx(statistics.stdev(values))
        assert row["stats"][key]["n"] == 3
    # a missing value leaves that seed out of that score only
    assert row["stats"]["nmi"]["n"] == 2
    assert row["stats"]["nmi"]["sd"] == pytest.approx(statistics.stdev([0.4, 0.5]))
