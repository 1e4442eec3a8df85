"""Evaluation statistics recomputed independently: a number that comes out plausible, with no
error, must be the one the docstring and the papers define.

Found: ``code_usage`` gave every batch the same dither (a fresh generator per batch), so a
dithered lattice's count of distinct codes followed ``batch_size`` (7 codes on 300 images at
``batch_size=1`` against 21 to 30 with a dither per image), and it left the model in eval mode
(a model counted between epochs then trained on its hard path). Guards: the Hungarian clustering
accuracy against a brute-force search over all one-to-one maps, and both probes' training
numbers untouched by the test split.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from qlatent.eval import cluster_accuracy, code_usage, linear_probe, linear_probe_converged
from qlatent.models import gated_vae

X = torch.rand(300, 12, generator=torch.Generator().manual_seed(0))


def _lattice_model():
    torch.manual_seed(0)
    return gated_vae("lattice", latent_dim=4, hidden=16, data_dim=12)


# -------------------------------------------------------------------------------- usage
@pytest.mark.parametrize("seed", [0, 1])
def test_a_dithered_lattices_code_count_does_not_follow_the_batch_size(seed):
    """One dither per image, from one generator seeded ``seed``: in a single batch the count is
    that of one ``quantize`` call on all images; image by image it is that of a loop drawing
    each image's dither in turn (a fresh generator per batch counted 7 there)."""
    model = _lattice_model().eval()
    neck = model.bottleneck
    assert code_usage(model, [X], batch_size=1, progress=False).unique_codes >= 15
    with torch.no_grad():
        y = model.encoder(X)
        whole = neck.quantize(y, generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        rows = torch.cat([neck.quantize(y[i : i + 1], generator=g) for i in range(len(X))])
    one_batch = code_usage(model, [X], batch_size=len(X), progress=False, seed=seed)
    per_image = code_usage(model, [X[:1], X[1:]], batch_size=1, progress=False, seed=seed)
    assert one_batch.unique_codes == torch.unique(whole, dim=0).shape[0]
    assert per_image.unique_codes == torch.unique(rows, dim=0).shape[0]
    assert per_image.total_vectors == one_batch.total_vectors == len(X)
    # the same law either way: both far above the one shared dither's count
    assert min(per_image.unique_codes, one_batch.unique_codes) >= 15


def test_code_usage_puts_back_every_modules_mode():
    """Counting left the model in eval mode; also a failing count puts the modes back."""
    model = _lattice_model().train()
    code_usage(model, [X], batch_size=64, progress=False)
    assert all(module.training for module in model.modules())
    with pytest.raises(RuntimeError):
        code_usage(model, [torch.zeros(3, 5)], progress=False)  # 5 features, not 12
    assert all(module.training for module in model.modules())
    model.eval()
    code_usage(model, [X], progress=False)
    assert not any(module.training for module in model.modules())


# ------------------------------------------------------------------------------ clustering
def _brute_force_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """The best count over every one-to-one map between cluster ids and labels."""
    labels, clusters = np.unique(y), np.unique(p)
    table = np.array([[np.sum((p == k) & (y == c)) for c in labels] for k in clusters])
    if len(clusters) < len(labels):
        table = table.T
    best = max(
        sum(table[i, j] for i, j in zip(rows, range(table.shape[1]), strict=False))
        for rows in itertools.permutations(range(table.shape[0]), table.shape[1])
    )
    return best / y.size


def test_cluster_accuracy_is_the_best_one_to_one_map():
    """More clusters than classes, fewer, and ids that are neither 0..C-1 nor non-negative."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, classes, clusters = rng.integers(1, 25), rng.integers(1, 5), rng.integers(1, 6)
        y = rng.choice(rng.integers(-40, 40, classes), n)
        p = rng.choice(rng.integers(-(2**40), 2**40, clusters), n)
        assert cluster_accuracy(y, p) == pytest.approx(_brute_force_accuracy(y, p), abs=1e-12)


# ---------------------------------------------------------------------------------- probes
def test_the_probes_training_numbers_do_not_see_the_test_split():
    """Only ``linear_acc`` reads the test features: the chosen C, the validation accuracies
    and the training accuracy are the same for any test split, and the test accuracy is the
    complement of itself on the same features with the two labels swapped."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(np.int64)
    x_test, y_test = rng.normal(size=(40, 4)), rng.integers(0, 2, 40)
    a = linear_probe_converged(x, y, x_test, y_test, Cs=(0.01, 1.0))
    b = linear_probe_converged(x, y, 100 * x_test[:7], y_test[:7], Cs=(0.01, 1.0))
    assert (a["C"], a["val_acc"], a["train_acc"]) == (b["C"], b["val_acc"], b["train_acc"])
    flipped = linear_probe_converged(x, y, x_test, 1 - y_test, Cs=(0.01, 1.0))
    assert a["linear_acc"] + flipped["linear_acc"] == pytest.approx(1.0)  # two classes
    p = linear_probe(x, y, x_test, y_test, steps=50, batch_size=16)
    q = linear_probe(x, y, -x_test, y_test, steps=50, batch_size=16)
    assert p["train_acc"] == q["train_acc"]


@pytest.mark.parametrize("name", ["gaussian", "soft_vq"])
def test_eval_downstream_scores_the_code_not_the_scales(name, monkeypatch):
    """``qlatent eval --downstream`` scored every encoder output: a Gaussian VAE's log σ²
    channels and Soft VQ's K log-scales beside the code, where the Soft VQ-VAE table (and
    its paper) take only the first ``dim`` outputs (μ, z_e)."""
    import qlatent.eval as qeval
    from qlatent.experiments import custom

    torch.manual_seed(0)
    model = gated_vae(
        name, latent_dim=3, hidden=8, data_dim=12, **({"num_codes": 5} if name == "soft_vq" else {})
    )
    assert model.bottleneck.in_dim > model.bottleneck.dim
    seen = {}

    def report(train_z, train_y, test_z, test_y, **kwargs):
        seen.update(train=train_z, test=test_z)
        return {"kmeans_acc": 0.0, "nmi": 0.0, "linear_acc": 0.0}

    monkeypatch.setattr(qeval, "downstream_report", report)
    data = {"train": X[:200], "test": X[200:]}
    labels = {k: torch.arange(v.shape[0]) % 3 for k, v in data.items()}
    custom.downstream_scores(model, data, labels, progress=False)
    with torch.no_grad():
        for split, x in data.items():
            assert torch.equal(seen[split], model.encoder(x)[:, :3])


def test_eval_names_the_constant_a_squared_error_iwae_leaves_out(tmp_path):
    """A squared-error model's likelihood Σ(x̂ − x)²/v is a Gaussian's −log p with variance v/2
    less its normalising term D/2·log(π·v): ``eval --iwae`` reported the sum as an "IWAE NLL"
    without a word. The report now gives the term, checked here against the Gaussian density
    of one decoded image."""
    import math

    from qlatent.experiments import custom

    overrides = ["data.name=synthetic", "data.synthetic_size=60", "model.hidden=[8]",
                 "model.latent_dim=2", "model.likelihood=squared_error", "train.epochs=1",
                 "train.max_steps=2", "train.batch_size=10", "train.progress=false",
                 f"out_dir={tmp_path / 'run'}"]  # fmt: skip
    custom.train(custom.load_config(None, overrides))
    best = tmp_path / "run" / "best.pt"
    report = custom.eval_checkpoint(best, iwae_samples=2, limit=4, progress=False)
    model, _ = custom.model_from_checkpoint(torch.load(best, weights_only=True))
    x, x_hat = torch.rand(1, 784), torch.rand(1, 784)
    gaussian = torch.distributions.Normal(x_hat, math.sqrt(model.likelihood.variance / 2))
    expected = -gaussian.log_prob(x).sum().item()
    own = model.likelihood.nll(x, torch.logit(x_hat)).item()  # the sigmoid link's logits
    assert report["iwae"]["gaussian_constant"] == pytest.approx(expected - own, rel=1e-5)
    assert "normalising term" in custom.format_report(report)


def test_eval_of_a_good_lattice_does_not_follow_the_processs_earlier_draws(tmp_path):
    """A good lattice's Monte-Carlo density points come from torch's global generator, which
    ``evaluate`` did not seed: the training-path rate and the IWAE NLL of the same checkpoint
    changed with whatever the process had drawn before. They are drawn from ``eval_seed``
    now."""
    from qlatent.experiments import custom

    overrides = ["data.name=synthetic", "data.synthetic_size=60", "model.hidden=[8]",
                 "model.latent_dim=8", "bottleneck.args={\"lattice\": \"e8\", \"eval_samples\": 4}",
                 "train.epochs=1", "train.max_steps=2", "train.batch_size=10",
                 "train.progress=false", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
    custom.train(custom.load_config(None, overrides))
    best = tmp_path / "run" / "best.pt"
    reports = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        reports.append(custom.eval_checkpoint(best, iwae_samples=3, limit=6, progress=False))
    first, second = reports
    assert first["training_path"] == second["training_path"]
    assert first["iwae"] == second["iwae"]
