"""``qlatent reproduce softvq-mnist --quick`` end to end on labelled synthetic data, its cached
re-run, the step budget of the training loop, and the pieces the experiment adds (ReLU MLP,
variance-normalised squared error, the loss's weight on auxiliary terms)."""

from __future__ import annotations

import json

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.cli import main
from qlatent.data import synthetic_labelled
from qlatent.experiments.softvq_mnist import (
    CAUSE_ROWS,
    DEFAULT_MODELS,
    LABELS,
    MODELS,
    PAPER,
    build_model,
    load_data,
    model_config,
)
from qlatent.losses import RateDistortionLoss
from qlatent.models import Autoencoder
from qlatent.nn import SquaredError, relu_mlp
from qlatent.train import TrainConfig, fit, load

SMALL = [
    "--set",
    "data.name=synthetic",
    "--set",
    "model.hidden=[24]",
    "--set",
    "model.latent_dim=4",
]


def test_quick_pipeline_writes_the_table(tmp_path, capsys):
    args = ["reproduce", "softvq-mnist", "--quick", *SMALL]
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(args + dirs) == 0
    payload = json.loads((tmp_path / "results" / "softvq-mnist-quick.json").read_text())
    assert set(payload["rows"]) == set(DEFAULT_MODELS)
    for name, row in payload["rows"].items():
        for key in ("kmeans_acc", "nmi", "nmi_geometric", "linear_acc"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        if name != "raw":
            assert row["train_steps"] == 60 and row["stopped"] == "max_steps"
            assert row["wall_s"] > 0
    assert payload["rows"]["raw"]["feature_dim"] == 784
    assert payload["rows"]["soft_vq"]["feature_dim"] == 4  # z_e only, not the K log-scales
    assert payload["rows"]["vq"]["quantizer_params"] == 128 * 4
    assert set(payload["perplexity"]) == {"vq", "soft_em_vq"}
    # the perplexities, recomputed from the saved weights by hand
    data = load_data(model_config("vq", quick=True, overrides=SMALL[1::2]), None)
    variance = data["x_train"].var().item()
    for name in ("vq", "soft_em_vq"):
        cfg = model_config(name, quick=True, overrides=SMALL[1::2])
        model = build_model(cfg.model, 784, variance)
        model.load_state_dict(
            load(tmp_path / "runs" / "softvq-mnist-quick" / name / "last.pt")["model"]
        )
        z = model.eval().encoder(data["x_test"]).detach()
        dist = torch.cdist(z.double(), model.bottleneck.codebook.double()).square()
        hard = torch.bincount(dist.argmin(1), minlength=128).double() / len(z)
        expected = torch.exp(-(hard * hard.clamp_min(1e-300).log()).sum()).item()
        assert payload["perplexity"][name] == pytest.approx(expected, rel=1e-4), name
        if name == "soft_em_vq":
            tau = torch.softmax(-dist / model.bottleneck.temperature, 1).mean(0)
            posterior = torch.exp(-(tau * tau.clamp_min(1e-300).log()).sum()).item()
            row = payload["rows"][name]
            assert row["test_posterior_perplexity"] == pytest.approx(posterior, rel=1e-4)
    assert payload["paper"]["soft_vq"] == {
        "kmeans_acc": 0.7764,
        "nmi": 0.7188,
        "linear_acc": 0.9354,
    }
    assert (tmp_path / "results" / "softvq-mnist-quick-tsne.png").stat().st_size > 0
    table = (tmp_path / "results" / "softvq-mnist-quick.md").read_text()
    assert "Soft VQ-VAE" in table and "77.64" in table
    # a second run reloads every row's cached evaluation: same numbers
    capsys.readouterr()
    assert main(args + dirs) == 0
    again = json.loads((tmp_path / "results" / "softvq-mnist-quick.json").read_text())
    assert again["rows"] == payload["rows"]


def test_row_configs_follow_the_notebook_weights():
    assert set(PAPER) == set(DEFAULT_MODELS) - {"soft_em_vq", "soft_vq_reference"}
    assert set(MODELS) == set(DEFAULT_MODELS) | set(CAUSE_ROWS)
    # each cause row differs from its table row in the one factor it tests
    base = model_config("vq", quick=False, overrides=[]).model.bottleneck_args
    commit = model_config("vq_commit025", quick=False, overrides=[]).model.bottleneck_args
    assert {**base, "commitment": 0.25} == commit
    noiseless = model_config("soft_vq_noiseless", quick=False, overrides=[]).model
    assert noiseless.bottleneck_args["variant"] == "paper"
    assert noiseless.bottleneck_args["noise_std"] == 0.0
    noisy = model_config("soft_vq_reference_noise", quick=False, overrides=[]).model
    assert noisy.bottleneck_args["variant"] == "reference"
    assert noisy.bottleneck_args["noise_std"] == 0.01
    b64 = model_config("beta_vae_batch64", quick=False, overrides=[])
    assert (b64.train.batch_size, b64.model.lmbda) == (64, 20.0)
    betas = [
        model_config(f"beta_vae_{b}", quick=False, overrides=[]).model.lmbda for b in (5, 10, 40)
    ]
    assert betas == [5.0, 10.0, 40.0]
    notebook = model_config("soft_vq_reference", quick=False, overrides=[])
    assert notebook.model.bottleneck_args["variant"] == "reference"
    vq = model_config("vq", quick=False, overrides=[])
    assert vq.model.bottleneck == "vq" and vq.model.aux_weight == 3.0 * 784
    assert vq.train.max_steps == 40_000 and vq.train.batch_size == 32 and vq.train.lr == 3e-4
    assert vq.train.keep == "last"
    assert model_config("beta_vae", quick=False, overrides=[]).model.lmbda == 20.0
    soft = model_config("soft_vq", quick=False, overrides=[])
    assert soft.model.bottleneck_args["variant"] == "paper"
    with pytest.raises(ValueError, match="unknown row"):
        model_config("vqgan", quick=False, overrides=[])


def _tiny_model():
    torch.manual_seed(0)
    return Autoencoder(
        relu_mlp([16, 8, 3]),
        build("vq", dim=3, num_codes=4),
        relu_mlp([3, 8, 16]),
        SquaredError(variance=0.25, link="sigmoid"),
    )


def test_step_budget_ends_mid_epoch_and_keep_last(tmp_path):
    x, _ = synthetic_labelled(n=100, dim=16, seed=0)
    data = {"train": x, "val": x[:20]}
    cfg = TrainConfig(epochs=50, max_steps=7, batch_size=30, keep="last", progress=False)
    model = _tiny_model()
    result = fit(model, data, cfg, out_dir=tmp_path, loss_fn=RateDistortionLoss(aux_weight=2.0))
    assert result.stopped == "max_steps"
    assert [h["step"] for h in result.history] == [4, 7]  # 4 batches per epoch, then 3 more
    last = load(tmp_path / "last.pt")["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, last[key]), key  # "last", not the best epoch's weights
    again = fit(_tiny_model(), data, cfg, out_dir=tmp_path)  # finished: nothing more to do
    assert again.stopped == "max_steps" and len(again.history) == 2
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)


def test_squared_error_and_relu_mlp():
    lik = SquaredError(variance=0.5, link="sigmoid")
    x = torch.tensor([[0.0, 1.0]])
    logits = torch.tensor([[0.0, 0.0]])
    assert lik.nll(x, logits).item() == pytest.approx((0.25 + 0.25) / 0.5)
    with pytest.raises(ValueError):
        SquaredError(variance=0.0)
    net = relu_mlp([5, 7, 2])
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"]
    assert all((m.bias == 0).all() for m in net if isinstance(m, torch.nn.Linear))
    bound = (6 / (5 + 7)) ** 0.5  # Glorot uniform
    assert net[0].weight.abs().max() <= bound
    with pytest.raises(ValueError):
        relu_mlp([5])


def test_loss_weights_the_auxiliary_term():
    model = _tiny_model().train()
    x = torch.rand(6, 16)
    out = model(x)
    one = RateDistortionLoss(lmbda=0.0)(x, out, model.likelihood).loss
    three = RateDistortionLoss(lmbda=0.0, aux_weight=3.0)(x, out, model.likelihood).loss
    torch.testing.assert_close(three - one, 2.0 * out.bottleneck.aux_loss)


def test_fit_uses_the_loss_rate_weight(tmp_path):
    """The loop's warm-up factor multiplies the loss's λ; it must not replace it."""
    x, _ = synthetic_labelled(n=60, dim=16, seed=1)
    data = {"train": x, "val": x[:10]}
    cfg = TrainConfig(epochs=1, batch_size=20, progress=False)
    weights = []
    for lmbda in (1.0, 20.0):
        torch.manual_seed(0)
        model = Autoencoder(
            relu_mlp([16, 8, 6]),
            build("gaussian", dim=3),
            relu_mlp([3, 8, 16]),
            SquaredError(variance=0.25),
        )
        fit(
            model, data, cfg, out_dir=tmp_path / str(lmbda), loss_fn=RateDistortionLoss(lmbda=lmbda)
        )
        weights.append(model.encoder[0].weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1])


def test_seeds_give_row_statistics_and_records_that_resume(tmp_path, capfd):
    """``--seeds 0,1 --jobs 2``: every row once per seed in two processes; per row the spread of
    each score over the seeds, the paper check, the Gaussian row's KL per dimension and the
    converged probe; a second call reads the committed records back without any run folder."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["reproduce", "softvq-mnist", "--quick", *SMALL, "--models", "vq,beta_vae_5"]
    args += ["--seeds", "0,1", "--jobs", "2", "--results-dir", str(results)]
    assert main(args + ["--runs-dir", str(runs)]) == 0
    payload = json.loads((results / "softvq-mnist-quick.json").read_text())
    assert payload["seeds"] == [0, 1]
    assert "set to the seed" in payload["configs_note"]  # the configs hold no run's seed
    for name in ("vq", "beta_vae_5"):
        row = payload["rows"][name]
        assert set(row["runs"]) == {"0", "1"}
        values = [row["runs"][s]["kmeans_acc"] for s in ("0", "1")]
        stats = row["stats"]["kmeans_acc"]
        assert stats["mean"] == pytest.approx(sum(values) / 2) == row["kmeans_acc"]
        assert stats["sd"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        assert (stats["min"], stats["max"]) == (min(values), max(values))
        paper = PAPER["vq" if name == "vq" else "beta_vae"]
        sd = row["stats"]["linear_acc"]["sd"]
        expected = abs(paper[2] - row["linear_acc"]) <= 2 * sd
        assert row["reproduced"]["linear_acc"] is expected
        for run in row["runs"].values():
            assert 0 <= run["linear_acc_converged"] <= 1 and run["probe_converged_C"] > 0
        record = json.loads(
            (results / "softvq-mnist-quick-runs" / name / "seed-1.json").read_text()
        )
        assert record["config"]["train"]["seed"] == record["config"]["eval"]["seed"] == 1
    # the two seeds trained differently
    vq_runs = payload["rows"]["vq"]["runs"]
    assert vq_runs["0"]["test_nmse"] != vq_runs["1"]["test_nmse"]
    beta = payload["rows"]["beta_vae_5"]["runs"]["0"]
    assert len(beta["kl_per_dim"]) == 4 and beta["active_dims"] == sum(
        v > 0.01 for v in beta["kl_per_dim"]
    )
    table = (results / "softvq-mnist-quick.md").read_text()
    assert "± " in table
    verdict = ", ".join("yes" if payload["rows"]["vq"]["reproduced"][k] else "no"
                        for k in ("kmeans_acc", "nmi", "linear_acc"))  # fmt: skip
    assert f"| {LABELS['vq']} | {verdict} |" in table
    # the records alone (no run folders, as on a fresh clone) give the same table
    capfd.readouterr()
    assert main(args + ["--runs-dir", str(tmp_path / "elsewhere")]) == 0
    assert capfd.readouterr().out.count("(recorded:") == 4  # printed by the worker processes
    again = json.loads((results / "softvq-mnist-quick.json").read_text())
    assert again["rows"] == payload["rows"]
    assert not (tmp_path / "elsewhere").exists()
    assert main(["reproduce", "lattice-mnist", "--quick", "--seeds", "0,1"]) == 2
    with pytest.raises(SystemExit, match="2"):  # argparse: usage and one error line
        main(["reproduce", "softvq-mnist", "--quick", "--seeds", "0,0"])
    assert "seeds must be distinct" in capfd.readouterr().err
