"""``qlatent reproduce lattice-mnist --quick`` end to end on synthetic data, and its resume."""

from __future__ import annotations

import json
import math

import pytest

from qlatent.cli import main
from qlatent.experiments.lattice_mnist import model_config

SMALL = [
    "--set",
    "data.name=synthetic",
    "--set",
    "model.hidden=[16,16]",
    "--set",
    "model.latent_dim=4",
]
SMALL += ["--set", "train.progress=false"]


PAPER_ROWS = "rect_lattice,gaussian_lattice,gaussian"


def test_quick_pipeline_writes_the_table(tmp_path, capsys):
    args = ["reproduce", "lattice-mnist", "--quick", "--models", PAPER_ROWS, *SMALL]
    args += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(args) == 0
    payload = json.loads((tmp_path / "results" / "lattice-mnist-quick.json").read_text())
    assert set(payload["models"]) == set(PAPER_ROWS.split(","))
    for name, result in payload["models"].items():
        for key in ("test_nll_iwae20", "test_neg_elbo", "epochs", "best_epoch", "wall_s"):
            assert key in result, (name, key)
        # an importance-sampled bound is never worse than the single-sample one on average
        assert result["test_nll_iwae20"] <= result["test_neg_elbo"] + 3 * result["test_neg_elbo_se"]
    lattice = payload["models"]["rect_lattice"]
    assert len(lattice["spacing"]["values"]) == 4 and lattice["test_codelength_hard"] > 0
    assert payload["paper"]["test_nll_iwae1000"]["gaussian"] == 88.85
    assert payload["theoretical_gap_nats"] == pytest.approx(4 * 0.5 * 0.35297, abs=1e-3)
    assert payload["commit"] is None or len(payload["commit"]) == 40
    assert (tmp_path / "results" / "lattice-mnist-quick-fig3.png").stat().st_size > 0
    # the gain figure needs a lattice row beside the rectangular one
    assert not (tmp_path / "results" / "lattice-mnist-quick-gain.png").exists()
    table = capsys.readouterr().out
    assert "| rectangular-lattice VAE |" in table and "94.45" in table

    # a second run resumes: nothing is retrained or re-evaluated, the numbers are identical
    assert main(args) == 0
    again = json.loads((tmp_path / "results" / "lattice-mnist-quick.json").read_text())

    def numbers(p):
        return {
            name: {k: v for k, v in row.items() if k != "provenance"} for name, row in p.items()
        }

    assert numbers(again["models"]) == numbers(payload["models"])


def test_defensive_iwae_is_reported_beside_the_protocol_and_keeps_its_cache(tmp_path, capsys):
    """``eval.iwae_defensive`` adds IWAE under the defensive mixture proposal on the same images
    and seeds; a run evaluated without it keeps its protocol IWAE (cached, not recomputed); at
    α = 0 the mixture is the own proposal, so the two agree exactly; a bad value is one line."""
    import torch

    rows = "rect_lattice,gaussian_lattice"
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    base = ["reproduce", "lattice-mnist", "--quick", "--models", rows, *SMALL, *dirs]
    out = tmp_path / "results" / "lattice-mnist-quick.json"
    assert main(base) == 0
    plain = json.loads(out.read_text())["models"]
    assert all("iwae_defensive" not in r for r in plain.values())
    chunk = tmp_path / "runs" / "lattice-mnist-quick" / "rect_lattice" / "iwae-chunks"
    chunk = next(chunk.glob("chunk-*.pt"))
    stamp = chunk.stat().st_mtime_ns
    capsys.readouterr()

    assert main([*base, "--set", "eval.iwae_defensive=0.5:1.4"]) == 0
    wide = json.loads(out.read_text())["models"]
    assert chunk.stat().st_mtime_ns == stamp  # the protocol's chunks were reused
    for name in rows.split(","):
        r = wide[name]
        assert r["test_nll_iwae20"] == plain[name]["test_nll_iwae20"]
        assert r["iwae_defensive"] == "0.5:1.4" and math.isfinite(r["test_nll_iwae20_defensive"])
        diff = r["test_nll_iwae20_defensive"] - r["test_nll_iwae20"]
        assert r["iwae_defensive_minus_own"] == pytest.approx(diff, abs=1e-9)
    assert "under the defensive proposal 0.5:1.4" in capsys.readouterr().out

    assert main([*base, "--set", "eval.iwae_defensive=0:1"]) == 0
    same = json.loads(out.read_text())["models"]
    for name in rows.split(","):
        assert same[name]["test_nll_iwae20_defensive"] == same[name]["test_nll_iwae20"]
    folder = tmp_path / "runs" / "lattice-mnist-quick" / "rect_lattice" / "iwae-chunks-defensive"
    tags = {tuple(torch.load(p, weights_only=True)["key"]["defensive"]) for p in folder.iterdir()}
    assert tags == {(0.0, 1.0)}  # each mixture's chunks are tagged with it

    capsys.readouterr()
    assert main([*base, "--set", "eval.iwae_defensive=1:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ALPHA:K" in err and len(err.splitlines()) == 1


def test_evaluate_without_a_cache_reads_the_defensive_proposal_on_the_same_draws():
    import torch

    from qlatent.experiments.lattice_mnist import EvalConfig, evaluate
    from qlatent.models import lattice_vae

    torch.manual_seed(0)
    model = lattice_vae(latent_dim=4, hidden=8, data_dim=12)
    x = torch.rand(30, 12).round()
    cfg = EvalConfig(iwae_samples=8, codelength_repeats=1, iwae_defensive="0:1")
    same = evaluate("gaussian", model, x, cfg)
    assert same["test_nll_iwae8_defensive"] == same["test_nll_iwae8"]
    assert same["iwae_defensive_minus_own"] == 0.0
    wide = evaluate("gaussian", model, x, EvalConfig(iwae_samples=8, iwae_defensive="0.5:2"))
    assert wide["test_nll_iwae8"] == same["test_nll_iwae8"]
    assert wide["test_nll_iwae8_defensive"] != wide["test_nll_iwae8"]
    with pytest.raises(ValueError, match="ALPHA:K"):
        EvalConfig(iwae_defensive="0.5")


def test_good_lattice_rows_are_added_to_the_table(tmp_path, capsys):
    """The E8 and Leech ⊕ BW16 rows on synthetic data (m = 40, the rows' own dimension), run
    after a paper row: the table keeps the earlier row with its provenance and adds the new
    ones with the learned scales, the measured log-density bias and the theoretical gap."""
    small = [
        "--set",
        "data.name=synthetic",
        "--set",
        "model.hidden=[16,16]",
        "--set",
        "train.progress=false",
    ]
    small += ["--set", "train.epochs=2", "--set", "eval.iwae_samples=4"]
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    base = ["reproduce", "lattice-mnist", "--quick", *small, *dirs]
    assert main([*base, "--models", "gaussian_lattice"]) == 0
    assert main([*base, "--models", "e8_lattice,leech_lattice"]) == 0
    payload = json.loads((tmp_path / "results" / "lattice-mnist-quick.json").read_text())
    assert list(payload["models"]) == ["gaussian_lattice", "e8_lattice", "leech_lattice"]
    assert payload["models"]["gaussian_lattice"]["provenance"]["date"]
    for name, lattice, blocks in (("e8_lattice", "E8^5", 5), ("leech_lattice", "Leech ⊕ BW16", 2)):
        row = payload["models"][name]
        assert row["lattice"] == lattice and len(row["block_spacing"]) == blocks
        assert set(row["log_density_bias"]) == {"train", "eval"}
        assert row["log_density_bias"]["train"]["bias_nats"] <= 0.5
        assert row["log_density_bias"]["eval"]["reference_proposal"] == "tilted"
        assert row["test_codelength_hard"] > 0 and "test_nll_iwae4" in row
    from matplotlib.image import imread

    assert imread(tmp_path / "results" / "lattice-mnist-quick-fig3.png").shape[0] > 0
    gaps = payload["theoretical_gaps_nats"]
    assert gaps["e8_lattice"] == pytest.approx(4.05, abs=0.01)
    assert gaps["leech_lattice"] == pytest.approx(2.63, abs=0.01)
    table = capsys.readouterr().out
    assert "| E8^5-lattice VAE |" in table and "| 4.05 |" in table


def test_gain_figure_plots_each_lattice_row_against_the_rectangular_one(tmp_path):
    from matplotlib.image import imread

    from qlatent.experiments.lattice_mnist import figure_gain

    curve = lambda start: [start - 0.1 * i for i in range(30)]  # noqa: E731
    models = {
        "rect_lattice": {"val_neg_elbo_curve": curve(120.0)},
        "gaussian": {"val_neg_elbo_curve": curve(110.0)},
        "e8_lattice": {"val_neg_elbo_curve": curve(117.0)[:25]},  # a run still training
    }
    path = figure_gain(models, tmp_path / "gain.png")
    assert path is not None and imread(path).shape[0] > 0
    assert figure_gain({"e8_lattice": models["e8_lattice"]}, tmp_path / "none.png") is None
    assert figure_gain({"rect_lattice": models["rect_lattice"]}, tmp_path / "none.png") is None
    # a Gaussian-prior row is drawn against the Gaussian-prior rectangular row, not the Laplace one
    gauss = {"rect_lattice": models["rect_lattice"], "e8_gauss_lattice": models["e8_lattice"]}
    assert figure_gain(gauss, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    both = {**models, "rect_gauss_lattice": models["rect_lattice"], **gauss}
    wide = imread(figure_gain(both, tmp_path / "two.png"))
    assert wide.shape[1] > imread(path).shape[1]  # two panels


@pytest.mark.parametrize(
    ("row", "control"),
    [
        ("e8_lattice", "rect_lattice"),
        ("leech_tilted_lattice", "rect_lattice"),
        ("e8_gauss_lattice", "rect_gauss_lattice"),
        ("leechz_gauss_lattice", "rect_gauss_lattice"),
        ("e8_gl_lattice", "rect_gl_lattice"),
        ("leeche8_gl_lattice", "rect_gl_lattice"),
        ("leech_gl_lattice", "rect_gl_lattice"),
        ("e8z_gl_lattice", "rect_gl_lattice"),
        ("e8z8_gl_lattice", "rect_gl_lattice"),
        ("rect_lattice", None),
        ("rect_gl_lattice", None),
        ("gaussian_lattice", None),
        ("gaussian_gl_lattice", None),
    ],
)
def test_each_lattice_row_is_compared_with_the_rectangular_row_of_its_prior_and_start(row, control):
    from qlatent.experiments.lattice_mnist import control_row

    assert control_row(row) == control


def test_config_files_and_overrides():
    cfg = model_config("gaussian", quick=False, overrides=["train.lr=1e-3"])
    assert cfg.model.bottleneck == "gaussian" and cfg.train.lr == 1e-3
    assert (cfg.train.batch_size, cfg.train.warmup_epochs, cfg.train.patience) == (100, 100, 50)
    quick = model_config("rect_lattice", quick=True, overrides=[])
    assert quick.model.bottleneck == "lattice" and quick.train.epochs < 10
    with pytest.raises(ValueError, match="unknown model"):
        model_config("vq", quick=False, overrides=[])
    with pytest.raises(ValueError, match="unknown config key"):
        model_config("gaussian", quick=False, overrides=["train.nope=1"])


def test_iwae_resumes_chunk_by_chunk(tmp_path, monkeypatch):
    """Each chunk's NLL is cached; a rerun reads them back instead of recomputing, and a chunk
    cached under another key is recomputed."""
    import torch

    from qlatent.experiments import _lattice_mnist_eval as lm
    from qlatent.models import gated_vae

    torch.manual_seed(0)
    model = gated_vae("gaussian_lattice", latent_dim=4, hidden=8, data_dim=12)
    x = (torch.rand(25, 12) < 0.5).float()
    cfg = lm.EvalConfig(iwae_samples=3, iwae_batch_size=5, iwae_chunk=10)
    first = lm._chunked_iwae(model, x, cfg, tmp_path, key="a")
    assert first.shape == (25,) and len(list(tmp_path.iterdir())) == 3
    calls = []
    real = lm.iwae_nll
    monkeypatch.setattr(lm, "iwae_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(lm._chunked_iwae(model, x, cfg, tmp_path, key="a"), first)
    assert not calls
    lm._chunked_iwae(model, x, cfg, tmp_path, key="b")
    assert len(calls) == 3
    # the same config's run trained on: another best epoch recomputes, the same one does not
    lm._chunked_iwae(model, x, cfg, tmp_path, key="b", epoch=7)
    assert len(calls) == 6
    lm._chunked_iwae(model, x, cfg, tmp_path, key="b", epoch=7)
    assert len(calls) == 6
    lm._chunked_iwae(model, x, cfg, tmp_path, key="b", epoch=9)
    assert len(calls) == 9
