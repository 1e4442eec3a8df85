"""Starting a good-lattice row of Table 1 from the trained Gaussian-lattice VAE
(``lattice_mnist.gaussian_lattice_start`` and the ``init_from`` of ``reproduce lattice-mnist``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from qlatent.cli import main
from qlatent.experiments.lattice_mnist import gaussian_lattice_start
from qlatent.models import gated_vae
from qlatent.train import CheckpointError

LATTICE = ["e8"] + ["z"] * 8  # 16 coordinates


def _gaussian_lattice(seed: int = 0):
    torch.manual_seed(seed)
    model = gated_vae("gaussian_lattice", latent_dim=16, hidden=12, data_dim=20)
    with torch.no_grad():  # distinct σ_i in (0, 1), in no particular order
        model.bottleneck.logvar.copy_(2 * torch.log(torch.rand(16) * 0.9 + 0.05))
    return model


def _target(prior: str = "gaussian", **kwargs):
    return gated_vae(
        "lattice",
        latent_dim=16,
        hidden=12,
        data_dim=20,
        lattice=LATTICE,
        prior=prior,
        spacing_per="coordinate",
        **kwargs,
    )


@pytest.mark.parametrize("prior", ["gaussian", "laplace"])
def test_the_started_model_is_the_gaussian_lattice_vae_with_a_lattice_dither(prior):
    """Encoder and decoder are the source's up to the coordinate order (least noisy first); the
    dither's variance along each coordinate is the source's σ_i²; the prior has variance
    1 − σ_i² (a Laplace's scale b with 2b² = 1 − σ_i²)."""
    gl = _gaussian_lattice()
    model = _target(prior)
    order = gaussian_lattice_start(model, gl.state_dict())
    sigma = gl.bottleneck.variance.detach().sqrt()
    assert torch.equal(order, torch.argsort(sigma, stable=True))
    assert (sigma[order].diff() >= 0).all()
    x = torch.rand(5, 20)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), gl.encoder(x)[:, order])
        z = torch.randn(5, 16)
        torch.testing.assert_close(model.decoder(z[:, order]), gl.decoder(z))
    neck = model.bottleneck
    with torch.no_grad():
        u = neck._hard_dither(40000, torch.Generator().manual_seed(0), "cpu", torch.float32)
    ratio = u.var(0) / sigma[order].square()
    assert ((ratio - 1).abs() < 0.05).all(), ratio
    variance = neck.scale.detach().square() * (1 if prior == "gaussian" else 2)
    torch.testing.assert_close(variance, 1 - sigma[order].square())


def test_the_encoders_order_can_be_kept():
    gl = _gaussian_lattice()
    model = _target()
    order = gaussian_lattice_start(model, gl.state_dict(), by_sigma=False)
    assert torch.equal(order, torch.arange(16))
    x = torch.rand(3, 20)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), gl.encoder(x))


def test_a_start_that_cannot_be_made_is_refused():
    gl = _gaussian_lattice()
    with pytest.raises(ValueError, match="spacing_per"):
        gaussian_lattice_start(
            gated_vae("lattice", latent_dim=16, hidden=12, data_dim=20, lattice=LATTICE),
            gl.state_dict(),
        )
    with pytest.raises(ValueError, match="scale_per"):
        gaussian_lattice_start(_target(scale_per="block"), gl.state_dict())
    state = {k: v for k, v in gl.state_dict().items() if k != "bottleneck.logvar"}
    with pytest.raises(CheckpointError, match="no Gaussian-lattice VAE of dimension 16"):
        gaussian_lattice_start(_target(), state, "gl.pt")
    state = {**gl.state_dict(), "bottleneck.logvar": torch.full((16,), math.nan)}
    with pytest.raises(CheckpointError, match="not finite"):
        gaussian_lattice_start(_target(), state, "gl.pt")
    wider = gated_vae("gaussian_lattice", latent_dim=16, hidden=13, data_dim=20).state_dict()
    with pytest.raises(CheckpointError, match="different model"):
        gaussian_lattice_start(_target(), wider, "gl.pt")


def test_reproduce_starts_the_row_from_the_gaussian_lattice_row(tmp_path, capsys):
    """``--models e8_gl_lattice`` after ``gaussian_lattice`` in the same runs folder: the row
    records where it started from, and a second run resumes it without starting again; without
    the Gaussian-lattice row the command says what to train first."""
    small = ["--set", "data.name=synthetic", "--set", "model.hidden=[16,16]"]
    small += ["--set", "train.progress=false", "--set", "train.epochs=1"]
    small += ["--set", "eval.iwae_samples=4", "--set", "eval.test_examples=40"]
    for key in ("samples", "eval_samples"):
        small += ["--set", f"bottleneck.args.{key}=64"]
    for key in ("prior_samples", "eval_prior_samples"):
        small += ["--set", f"bottleneck.args.{key}=8"]
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    base = ["reproduce", "lattice-mnist", "--quick", *small, *dirs]
    assert main([*base, "--models", "e8_gl_lattice"]) != 0
    assert "--models gaussian_lattice" in capsys.readouterr().err
    # the Gaussian-lattice row with the defaults (the overrides above name the E8 row's args)
    gl_args = ["--set", "data.name=synthetic", "--set", "model.hidden=[16,16]"]
    gl_args += ["--set", "train.progress=false", "--set", "train.epochs=1"]
    gl_args += ["--set", "eval.iwae_samples=4", "--set", "eval.test_examples=40"]
    assert (
        main(
            [
                "reproduce",
                "lattice-mnist",
                "--quick",
                *gl_args,
                *dirs,
                "--models",
                "gaussian_lattice",
            ]
        )
        == 0
    )
    assert main([*base, "--models", "e8_gl_lattice"]) == 0
    payload = json.loads((tmp_path / "results" / "lattice-mnist-quick.json").read_text())
    row = payload["models"]["e8_gl_lattice"]
    start = row["init_from"]
    assert start["row"] == "gaussian_lattice" and start["checkpoint"].endswith("best.pt")
    assert sorted(start["coordinate_order"]) == list(range(40))
    assert main([*base, "--models", "e8_gl_lattice"]) == 0
    again = json.loads((tmp_path / "results" / "lattice-mnist-quick.json").read_text())
    assert again["models"]["e8_gl_lattice"]["init_from"] == start
    assert again["models"]["e8_gl_lattice"]["test_neg_elbo"] == row["test_neg_elbo"]


def test_load_trained_reads_a_rows_best_checkpoint_or_names_the_file(monkeypatch, tmp_path):
    """``lattice_mnist.load_trained``: the row's model with its best checkpoint's weights, in
    eval mode; a missing file, a checkpoint without weights and another model's weights are
    refused with errors that name the file."""
    from qlatent.experiments import lattice_mnist
    from qlatent.train.checkpoint import save_atomic

    images = (torch.rand(8, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    monkeypatch.setattr(
        lattice_mnist, "load_data", lambda cfg, d: {"train": images, "test": images}
    )
    path = tmp_path / "lattice-mnist" / "e8_lattice" / "best.pt"
    with pytest.raises(FileNotFoundError, match="best.pt"):
        lattice_mnist.load_trained("e8_lattice", tmp_path)
    cfg = lattice_mnist.model_config("e8_lattice", quick=False, overrides=[])
    trained = lattice_mnist.build_model(cfg, 784)
    with torch.no_grad():
        trained.bottleneck.log_scale.fill_(-0.7)
    save_atomic({"epoch": 5}, path)
    with pytest.raises(CheckpointError, match="best.pt holds no model weights"):
        lattice_mnist.load_trained("e8_lattice", tmp_path)
    save_atomic({"model": trained.state_dict(), "epoch": 5}, path)
    other = tmp_path / "lattice-mnist" / "leech_lattice" / "best.pt"
    save_atomic({"model": trained.state_dict()}, other)  # E8^5 weights where Λ24 ⊕ Λ16 is read
    with pytest.raises(CheckpointError, match="best.pt holds weights of a different model"):
        lattice_mnist.load_trained("leech_lattice", tmp_path)
    _, data, model, ckpt = lattice_mnist.load_trained("e8_lattice", tmp_path)
    assert ckpt["epoch"] == 5 and not model.training and data["test"] is images
    assert torch.equal(model.bottleneck.log_scale, trained.bottleneck.log_scale)


def test_the_gaussian_lattice_row_can_start_from_its_own_best_checkpoint(tmp_path):
    """``gaussian_gl_lattice`` (the reference for rows trained on from the Gaussian-lattice VAE)
    starts from that VAE's weights exactly, coordinates in their own order."""
    from qlatent.experiments import lattice_mnist
    from qlatent.train import load

    small = ["data.name=synthetic", "model.hidden=[16,16]", "train.progress=false"]
    small += ["train.epochs=1", "eval.iwae_samples=4", "eval.test_examples=40"]
    args = ["reproduce", "lattice-mnist", "--quick", "--models", "gaussian_lattice"]
    args += [x for s in small for x in ("--set", s)]
    args += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(args) == 0
    (source,) = (tmp_path / "runs").glob("*/gaussian_lattice/best.pt")
    cfg = lattice_mnist.model_config("gaussian_gl_lattice", quick=True, overrides=small)
    full = lattice_mnist.model_config("gaussian_gl_lattice", quick=False, overrides=[])
    assert full.init_from == "gaussian_lattice" and full.train.warmup_epochs == 0
    assert (full.train.epochs, full.model.bottleneck) == (80, "gaussian_lattice")
    model = lattice_mnist.build_model(cfg, 784)
    saved = load(source)["model"]
    assert not torch.equal(model.bottleneck.logvar, saved["bottleneck.logvar"])
    out_dir = source.parent.parent / "gaussian_gl_lattice"
    start = lattice_mnist._warm_start(model, cfg, out_dir)
    assert start["row"] == "gaussian_lattice" and start["coordinate_order"] == list(range(40))
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert json.loads((out_dir / "init.json").read_text()) == start
