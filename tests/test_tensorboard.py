"""Optional TensorBoard logging of the training loop (``train.tensorboard``).

Checked: each epoch's record goes to ``<run>/tensorboard/`` as grouped scalars at step
``epoch``, equal (in float32) to ``log.jsonl``; an interrupted run resumed shows each epoch
once, with the uninterrupted run's values (the resumed writer's ``purge_step``), and its writer
was closed on the way out; off by default; a refused resume and a finished run resumed write no
``tensorboard/`` folder; a missing ``tensorboard`` package is one line through the CLI before a
folder is made; a value that is no boolean is refused naming the key.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent.data import synthetic_binary
from qlatent.models import lattice_vae
from qlatent.train import CheckpointError, TrainConfig, fit
from qlatent.train import loop as loop_module

pytest.importorskip("torch.utils.tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

DATA = synthetic_binary(n=120, dim=16, seed=3)
MISSING = "train.tensorboard = true needs the tensorboard package: pip install tensorboard"


def _fit(out, epochs, **kwargs):
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=2, hidden=8, data_dim=16)
    cfg = TrainConfig(epochs=epochs, batch_size=40, progress=False, **kwargs)
    return fit(model, DATA, cfg, out_dir=out)


def _scalars(run) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of ``run/tensorboard`` as (step, value) pairs, as TensorBoard reads the
    folder (crashed events purged)."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _f32(value: float) -> float:
    return float(np.float32(value))


def test_each_epoch_record_is_written_as_grouped_scalars(tmp_path):
    _fit(tmp_path, 3, tensorboard=True)
    scalars, log = _scalars(tmp_path), _log(tmp_path)
    assert {
        "train/objective",
        "train/distortion",
        "train/rate",
        "train/examples",
        "val/objective",
        "val/distortion",
        "val/rate",
        "schedule/beta",
        "schedule/lr",
        "run/step",
        "run/best_epoch",
        "bottleneck/spacing_mean",
    } <= set(scalars)
    assert not any("epoch" == tag.rsplit("/", 1)[-1] for tag in scalars)  # it is the step
    assert [step for step, _ in scalars["val/objective"]] == [1, 2, 3]
    for tag, key in [("val/objective", "val_objective"), ("train/rate", "train_rate")]:
        assert scalars[tag] == [(r["epoch"], _f32(r[key])) for r in log], tag
    assert scalars["run/step"] == [(r["epoch"], r["step"]) for r in log]


def test_interrupted_run_resumed_shows_each_epoch_once(tmp_path, monkeypatch):
    _fit(tmp_path / "straight", 3, tensorboard=True)
    straight = _log(tmp_path / "straight")
    closed = []
    writer_class = loop_module._summary_writer()
    real_close = writer_class.close
    monkeypatch.setattr(writer_class, "close", lambda self: closed.append(1) or real_close(self))
    real_checkpoint = loop_module._checkpoint

    def killed_at_epoch_two(path, model, optimizer, state, *args):
        if state.epoch == 2:  # epoch 2's events are written, its checkpoint is not
            raise KeyboardInterrupt
        real_checkpoint(path, model, optimizer, state, *args)

    monkeypatch.setattr(loop_module, "_checkpoint", killed_at_epoch_two)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _fit(run, 3, tensorboard=True)
    assert closed == [1]  # the writer was closed on the way out
    assert [step for step, _ in _scalars(run)["val/objective"]] == [1, 2]
    monkeypatch.setattr(loop_module, "_checkpoint", real_checkpoint)
    _fit(run, 3, tensorboard=True)  # resumed from epoch 1's checkpoint
    scalars = _scalars(run)
    expected = [(r["epoch"], _f32(r["val_objective"])) for r in straight]
    assert scalars["val/objective"] == expected
    assert [step for step, _ in scalars["schedule/lr"]] == [1, 2, 3]


def test_off_by_default(tmp_path):
    assert TrainConfig().tensorboard is False
    _fit(tmp_path, 1)
    assert (tmp_path / "last.pt").is_file()
    assert not (tmp_path / "tensorboard").exists()


def test_turned_on_at_resume_logs_the_epochs_it_trains(tmp_path):
    _fit(tmp_path, 1)
    _fit(tmp_path, 2, tensorboard=True)  # tensorboard may change on resume
    assert [step for step, _ in _scalars(tmp_path)["val/objective"]] == [2]


def test_refused_resume_and_finished_run_write_no_folder(tmp_path):
    _fit(tmp_path, 2)
    with pytest.raises(CheckpointError, match="different config"):
        _fit(tmp_path, 3, tensorboard=True, lr=1e-3)
    assert not (tmp_path / "tensorboard").exists()
    _fit(tmp_path, 2, tensorboard=True)  # finished: nothing to train, nothing written
    assert not (tmp_path / "tensorboard").exists()


def test_missing_package_fails_before_anything(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        _fit(tmp_path / "fit", 1, tensorboard=True)
    assert not (tmp_path / "fit").exists()
    _fit(tmp_path / "off", 1)  # not asked for, not needed
    assert (tmp_path / "off" / "last.pt").is_file()


def test_missing_package_is_one_line_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = tmp_path / "run.toml"
    config.write_text(TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[8]"))
    out = tmp_path / "runs" / "a"
    args = ["train", config, "--out", out, "--set", "train.tensorboard=true"]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err), err
    assert err.strip() == f"qlatent: error: {MISSING}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["maybe", "on", "2", "none"])
def test_a_setting_that_is_no_boolean_is_one_line(tmp_path, capsys, value):
    config = tmp_path / "run.toml"
    config.write_text(TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[8]"))
    out = tmp_path / "run"
    args = ["train", config, "--out", out, "--set", f"train.tensorboard={value}"]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err), err
    assert f"train.tensorboard expects a boolean, got {value!r}" in err
    assert not out.exists()


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_the_constructor_takes_a_bool_only(value):
    with pytest.raises(ValueError, match=f"tensorboard must be true or false, got {value!r}"):
        TrainConfig(tensorboard=value)


def test_a_toml_value_that_is_no_boolean_is_one_line(tmp_path, capsys):
    config = tmp_path / "run.toml"
    text = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[8]")
    config.write_text(text + 'tensorboard = "maybe"\n')
    code, err = run_cli(["train", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line_error(err) and "train.tensorboard" in err, err
    assert not (tmp_path / "run").exists()


def test_a_run_from_a_toml_config_writes_events(tmp_path, capsys):
    config = tmp_path / "run.toml"
    text = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[8]")
    config.write_text(text + "tensorboard = true\n")
    out = tmp_path / "run"
    code, err = run_cli(["train", config, "--out", out], capsys)
    assert code == 0, err
    assert [step for step, _ in _scalars(out)["val/objective"]] == [1]
    assert json.loads((out / "config.json").read_text())["train"]["tensorboard"] is True
