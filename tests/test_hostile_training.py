"""Hostile or mistaken training input: config values, ``--set`` overrides, torchrun's
environment and edited run folders. Each case was accepted, or failed with a traceback or a line
naming something else, or skipped work without a word; now it is one line naming the key, the
variable or the file (a ValueError naming the key in the Python API)."""

from __future__ import annotations

import shutil

import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent.config import apply_overrides
from qlatent.experiments import custom
from qlatent.experiments.lattice_vae import LatticeVAEConfig
from qlatent.train import TrainConfig
from qlatent.train import distributed as D

TINY = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[16]")


def _config(tmp_path, head: str = "") -> str:
    path = tmp_path / "run.toml"
    path.write_text(head + TINY)
    return str(path)


# ------------------------------------------------------------------------------ overrides
def test_a_key_below_a_plain_value_names_the_value(tmp_path, capsys):
    """Without a config file ``data`` is a string (the lattice VAE's schema): ``data.name`` was
    refused as "'name' is not a config section"."""
    out = tmp_path / "run"
    code, err = run_cli(["train", "--set", "data.name=synthetic", "--out", out], capsys)
    assert code == 2 and one_line_error(err), err
    assert "'data' is a value (str), not a section; set it as data=..." in err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"'train.lr' is a value \(float\), not a section"):
        apply_overrides(LatticeVAEConfig(), ["train.lr.x=1"])


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
def test_a_count_beyond_int64_is_refused_naming_the_key(tmp_path, capsys, key):
    """A batch of 2^63 examples failed after the data was loaded with "Overflow when unpacking
    long long"."""
    out = tmp_path / "run"
    code, err = run_cli(
        ["train", _config(tmp_path), "--set", f"train.{key}={2**63}", "--out", out], capsys
    )
    assert code == 2 and one_line_error(err), err
    assert f"{key} must be an integer in [1, 2^63)" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": "5"}, "epochs"),  # a TypeError from '<' that named nothing
        ({"epochs": 2.5}, "epochs"),  # accepted; range() failed in the loop
        ({"epochs": True}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"warmup_epochs": None}, "warmup_epochs"),
        ({"patience": 1.5}, "patience"),
        ({"max_steps": 2.5}, "max_steps"),
        ({"anneal_steps": True}, "anneal_steps"),
        ({"lr": True}, "lr"),
        ({"lr_decay": "x"}, "lr_decay"),
        ({"max_minutes": True}, "max_minutes"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"progress": "no"}, "progress"),  # a non-empty string switched the bar on
    ],
)
def test_train_config_checks_kinds_naming_the_key(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: custom.DataConfig(name="mnits"), "data.name"),  # fell through to synthetic
        (lambda: custom.ModelConfig(family="gatedmlp"), "model.family"),  # became relu_mlp
        (lambda: custom.ModelConfig(likelihood="bernulli"), "model.likelihood"),
        (lambda: LatticeVAEConfig(data="synth"), "data"),  # became binarized MNIST
    ],
)
def test_a_misspelt_choice_in_python_is_refused(make, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        make()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("loss.rate_weight=1e31", "loss.rate_weight"),
        ("loss.aux_weight=1e300", "loss.aux_weight"),
        ("model.variance=1e-300", "model.variance"),
    ],
)
def test_weights_the_loss_refuses_are_refused_in_the_config(override, key):
    """The loss and the likelihood refused these after the data was loaded, naming ``lmbda``
    or ``variance`` rather than the key."""
    with pytest.raises(ValueError, match=f"--set: {key} must be"):
        custom.load_config(None, [override])


@pytest.mark.parametrize(
    "line",
    [
        'out_dir = ["a"]',  # the run went to a folder named ["a"]
        "out_dir = 5",
        "out_dir = 1979-05-27T07:32:00Z",
        "init_from = 1979-05-27",
    ],
)
def test_a_text_key_takes_a_toml_string_only(tmp_path, line):
    key = line.split()[0]
    with pytest.raises(ValueError, match=f"{key} expects a string, got "):
        custom.load_config(_config(tmp_path, line + "\n"))


def test_a_text_key_below_a_section_takes_a_toml_string_only(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TINY.replace('name = "synthetic"', 'name = "folder"\nfolder = [1]'))
    with pytest.raises(ValueError, match=r"data.folder expects a string, got \[1\]"):
        custom.load_config(path)


# ------------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63)])
def test_every_accepted_seed_trains(tmp_path, capsys, seed):
    """A seed beyond ±2^63 / 1009 overflowed ``manual_seed`` after the data was loaded."""
    out = tmp_path / "run"
    code, err = run_cli(
        ["train", _config(tmp_path), "--set", f"train.seed={seed}", "--out", out], capsys
    )
    assert code == 0, err
    assert (out / "summary.json").is_file()


def test_the_lattice_vaes_eval_seed_is_checked_before_training(tmp_path, capsys):
    """``eval_seed = 2^64 - 1`` failed after the training, where the hard path seeds with
    eval_seed + 1."""
    out = tmp_path / "run"
    args = ["train", "--set", "data=synthetic", "--set", f"eval_seed={2**64 - 1}"]
    args += ["--set", "train.epochs=1", "--set", "train.max_steps=1", "--out", out]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err), err
    assert "eval_seed + 1 must be an integer" in err
    assert not out.exists()


# ----------------------------------------------------------------------------------- device
def test_device_strings_torch_misreads_are_refused(tmp_path, capsys, monkeypatch):
    """torch reads ``cuda:01`` as invalid (a traceback), a huge index as unparsable (a
    traceback), and wraps ``cuda:255`` to ``cuda``: device 0, without a word."""
    with pytest.raises(ValueError, match="^device must be"):
        TrainConfig(device="cuda:01")
    code, err = run_cli(["train", _config(tmp_path), "--device", "cuda:" + "9" * 20], capsys)
    assert code == 2 and one_line_error(err), err
    assert "device must be" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:255' requested but this machine has 1 CUDA"):
        D.resolve_device("cuda:255")


# ------------------------------------------------------------------------------ environment
@pytest.mark.parametrize("rank", ["1", "x"])
def test_a_stray_rank_without_a_world_still_evaluates(tmp_path, capsys, monkeypatch, rank):
    """RANK without WORLD_SIZE is a world of one: RANK=1 skipped the evaluation and the summary
    without a word, RANK=x failed after the training with "invalid literal for int()"."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", rank)
    out = tmp_path / "run"
    code, err = run_cli(["train", _config(tmp_path), "--out", out], capsys)
    assert code == 0, err
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize("port", ["abc", "99999", "-1"])
def test_a_bad_master_port_is_named(tmp_path, capsys, monkeypatch, port):
    for name, value in [("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", port)
    code, err = run_cli(["train", _config(tmp_path), "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line_error(err), err
    assert "MASTER_PORT must be" in err


@pytest.mark.parametrize("local_rank", ["x", "3", "-1"])
def test_a_bad_local_rank_is_named(monkeypatch, local_rank):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name, value in [("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", local_rank)]:
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="^LOCAL_RANK must"):
        D.setup("cuda")


# ------------------------------------------------------------------------------- run folders
#: two epochs of the tiny run, each of its three updates
TWO_EPOCHS = ["--set", "train.epochs=2", "--set", "train.max_steps=6"]


def _validation_values(monkeypatch, values):
    """The validation objective of the epochs to come, in order (the rest of the validation as
    computed): which epoch is the best, set by the test."""
    from qlatent.train import loop

    computed, left = loop._validate, list(values)
    monkeypatch.setattr(loop, "_validate", lambda *a: computed(*a) | {"val_objective": left.pop(0)})


def test_a_run_without_its_best_checkpoint_is_refused(tmp_path, capsys, monkeypatch):
    """With best.pt deleted, a resumed run kept its last weights and reported them as the best
    epoch's (here epoch 1 of 2)."""
    config, out = _config(tmp_path), tmp_path / "run"
    _validation_values(monkeypatch, [100.0, 101.0])
    assert run_cli(["train", config, "--out", out, *TWO_EPOCHS], capsys)[0] == 0
    (out / "best.pt").unlink()
    code, err = run_cli(["train", config, "--out", out, *TWO_EPOCHS], capsys)
    assert code == 2 and one_line_error(err), err
    assert "best.pt is missing: the run in" in err and "needs its best epoch (1)" in err


@pytest.mark.parametrize("left", ["none", "an older epoch"])
def test_a_run_stopped_between_its_last_and_best_checkpoints_resumes(
    tmp_path, capsys, monkeypatch, left
):
    """best.pt is written after last.pt: a run stopped between the two writes has a last.pt that
    counts its own epoch the best and a best.pt of an older epoch, or none at the first. Those
    weights are last.pt's, and best.pt is written again from them (before, best.pt came first,
    and a run stopped between the writes was refused at its end unless it retrained the epoch)."""
    from qlatent.train.checkpoint import load

    config, out = _config(tmp_path), tmp_path / "run"
    _validation_values(monkeypatch, [101.0, 100.0])
    first = ["--set", "train.max_steps=6"]  # epoch 1 alone: its five updates are fewer
    assert run_cli(["train", config, "--out", out, *first], capsys)[0] == 0
    older = (out / "best.pt").read_bytes()  # epoch 1's
    assert run_cli(["train", config, "--out", out, *TWO_EPOCHS], capsys)[0] == 0
    if left == "none":
        (out / "best.pt").unlink()
    else:
        (out / "best.pt").write_bytes(older)
    code, err = run_cli(["train", config, "--out", out, *TWO_EPOCHS], capsys)
    assert code == 0, err
    best, last = load(out / "best.pt"), load(out / "last.pt")
    assert best["epoch"] == last["state"]["best_epoch"] == 2
    for name, weight in last["model"].items():
        assert torch.equal(weight, best["model"][name]), name


def test_another_runs_best_checkpoint_is_refused(tmp_path, capsys):
    """A best.pt copied from another run was loaded and evaluated as this run's."""
    config, ours, theirs = _config(tmp_path), tmp_path / "ours", tmp_path / "theirs"
    assert run_cli(["train", config, "--out", ours], capsys)[0] == 0
    other = ["--set", "train.lr=0.01", "--out", theirs]
    assert run_cli(["train", config, *other], capsys)[0] == 0
    shutil.copyfile(theirs / "best.pt", ours / "best.pt")
    code, err = run_cli(["train", config, "--out", ours], capsys)
    assert code == 2 and one_line_error(err), err
    assert "does not hold this run's best epoch (1; it holds epoch 1 of another config)" in err


def test_a_loss_that_is_not_finite_stops_training_naming_the_update(tmp_path):
    """A NaN or infinite loss stops the run before the optimizer step, naming the update; the
    step used to turn every weight into NaN, and the next batch failed in the bottleneck on a
    "non-finite input", blaming the data."""
    from qlatent.data import synthetic_binary
    from qlatent.models import lattice_vae
    from qlatent.train import fit

    model = lattice_vae(latent_dim=4, hidden=16)
    with torch.no_grad():
        list(model.decoder.parameters())[-1].fill_(float("nan"))
    cfg = TrainConfig(epochs=2, batch_size=50, progress=False)
    with pytest.raises(ValueError, match=r"training diverged: the loss is nan at update 1 \("):
        fit(model, synthetic_binary(n=300), cfg, out_dir=tmp_path / "run")
    assert all(p.isfinite().all() for p in model.encoder.parameters())
