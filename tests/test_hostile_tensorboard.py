"""TensorBoard logging (``train.tensorboard``) where a run is replaced, trained on, or fails.

Checked: a ``--fresh`` run (TensorBoard on or off) leaves ``tensorboard/`` describing itself
only, with the first checkpoint that replaces the old run, and a fresh start that fails before
that checkpoint leaves the old run's curves as they were; a new run that fails at its first
checkpoint leaves no folder; a run trained on for more epochs shows each epoch once; an event
file that cannot be written (a full disk, the folder removed mid-run) stops the run with an
error naming the folder, resumable from its last checkpoint; NaN, inf, a bool and keys that are
no plain names; ``progress = false`` with TensorBoard under warnings-as-errors, resumed; the
missing package through ``qlatent reproduce`` and ``qlatent demo``.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import sys
import time

import numpy as np
import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent.data import synthetic_binary
from qlatent.models import lattice_vae
from qlatent.train import TrainConfig, fit, load
from qlatent.train import loop as loop_module
from run_helpers import fill_disk

pytest.importorskip("torch.utils.tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from tensorboard.compat.tensorflow_stub.io import gfile  # noqa: E402

DATA = synthetic_binary(n=120, dim=16, seed=3)
MISSING = "train.tensorboard = true needs the tensorboard package: pip install tensorboard"


def _fit(out, epochs, *, resume=True, **kwargs):
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=2, hidden=8, data_dim=16)
    cfg = TrainConfig(epochs=epochs, batch_size=40, progress=False, **kwargs)
    return fit(model, DATA, cfg, out_dir=out, resume=resume)


def _scalars(run, tag="val/objective") -> list[tuple[int, float]]:
    """``tag`` of ``run/tensorboard`` as (step, value) pairs, as TensorBoard reads the folder."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _expected(run, key="val_objective") -> list[tuple[int, float]]:
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["epoch"], float(np.float32(r[key]))) for r in log]


def _event_files(run) -> list[str]:
    return sorted(p.name for p in (run / "tensorboard").iterdir())


def _config(tmp_path, epochs=2):
    config = tmp_path / "run.toml"
    text = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[8]")
    config.write_text(text.replace("epochs = 1\nmax_steps = 3", f"epochs = {epochs}"))
    return config


# ---------------------------------------------------------------- a run replaced
def test_a_fresh_run_over_a_logged_run_keeps_only_its_own_events(tmp_path):
    _fit(tmp_path, 3, tensorboard=True)
    _fit(tmp_path, 2, resume=False, tensorboard=True, lr=2e-3)
    assert len(_event_files(tmp_path)) == 1  # the old run's file went with the first checkpoint
    assert _scalars(tmp_path) == _expected(tmp_path)
    assert [step for step, _ in _scalars(tmp_path, "schedule/lr")] == [1, 2]


def test_a_fresh_run_without_tensorboard_drops_the_old_runs_curves(tmp_path, capsys):
    config, out = _config(tmp_path), tmp_path / "run"
    extra = ["--set", "train.tensorboard=true"]
    assert run_cli(["train", config, "--out", out, *extra], capsys)[0] == 0
    assert [step for step, _ in _scalars(out)] == [1, 2]
    (out / "tensorboard" / "notes.txt").write_text("mine")  # not an event file: it stays
    code, err = run_cli(["train", config, "--out", out, "--fresh"], capsys)
    assert code == 0, err
    assert _event_files(out) == ["notes.txt"]


def test_a_fresh_start_that_fails_before_its_checkpoint_keeps_the_old_curves(tmp_path, monkeypatch):
    _fit(tmp_path, 3, tensorboard=True)
    before, curves = _event_files(tmp_path), _scalars(tmp_path)
    fill_disk(monkeypatch)  # the first checkpoint of the fresh run cannot be written
    with pytest.raises(OSError, match="cannot write the checkpoint"):
        _fit(tmp_path, 2, resume=False, tensorboard=True, lr=2e-3)
    assert _event_files(tmp_path) == before
    assert _scalars(tmp_path) == curves == _expected(tmp_path)


def test_a_new_run_that_fails_at_its_first_checkpoint_leaves_no_folder(
    tmp_path, capsys, monkeypatch
):
    config = _config(tmp_path)
    fill_disk(monkeypatch)
    out = tmp_path / "runs" / "new"
    code, err = run_cli(["train", config, "--out", out, "--set", "train.tensorboard=true"], capsys)
    assert code == 2 and one_line_error(err) and "cannot write the checkpoint" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


def _next_second() -> None:
    """Wait for the clock's next whole second. TensorBoard names an event file by the second,
    then host, process and a per-process counter, and reads a folder's files in name order: the
    counter compares as text (…10 before …9), so two writers one process opens within a second
    can be read out of order (in a test worker that has opened nine before). A resumed run
    starts in a later second than its last writer."""
    time.sleep(1.01 - time.time() % 1)


def test_a_run_trained_on_for_more_epochs_shows_each_epoch_once(tmp_path):
    _fit(tmp_path / "straight", 5, tensorboard=True)
    run = tmp_path / "run"
    for epochs in (2, 4, 5):
        _next_second()
        _fit(run, epochs, tensorboard=True)
    assert _scalars(run) == _expected(run) == _expected(tmp_path / "straight")
    assert [step for step, _ in _scalars(run, "run/step")] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------- the writer fails
def _fail_events_after_epoch_one(monkeypatch, failure):
    """From epoch 1's checkpoint on, the event file meets ``failure``."""
    real_checkpoint, real_write = loop_module._checkpoint, gfile.LocalFileSystem._write
    failing = []

    def checkpoint(path, model, optimizer, state, *args):
        real_checkpoint(path, model, optimizer, state, *args)
        if state.epoch == 1:
            failing.append(1)
            if failure == "removed":
                shutil.rmtree(path.parent / "tensorboard")

    def write(self, filename, content, mode):
        if failing and failure == "full disk":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, filename, content, mode)

    monkeypatch.setattr(loop_module, "_checkpoint", checkpoint)
    monkeypatch.setattr(gfile.LocalFileSystem, "_write", write)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize(
    ("failure", "reason"),
    [("full disk", "No space left on device"), ("removed", "No such file or directory")],
)
def test_an_event_file_that_cannot_be_written_stops_the_run_resumably(
    tmp_path, monkeypatch, failure, reason
):
    _fail_events_after_epoch_one(monkeypatch, failure)
    with pytest.raises(OSError) as caught:
        _fit(tmp_path, 3, tensorboard=True)
    folder = tmp_path / "tensorboard"
    assert str(caught.value).endswith(f"cannot write the TensorBoard events in {folder}: {reason}")
    stopped_at = load(tmp_path / "last.pt")["state"]["epoch"]
    assert stopped_at in (1, 2)  # the worker thread's error may come at the next record
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    monkeypatch.undo()
    result = _fit(tmp_path, 3, tensorboard=True)  # the disk has room again
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert [step for step, _ in _scalars(tmp_path)][-1] == 3


# ---------------------------------------------------------------- what a record holds
def test_nan_inf_bools_and_odd_keys(tmp_path):
    record = {
        "epoch": 1,
        "val_objective": math.nan,
        "train_rate": math.inf,
        "lr": -math.inf,
        "train_skipped": True,
        "usage/codes": 3.0,
        "code usage": 4.0,
        "code_usage": 5.0,
    }
    with loop_module._Board(tmp_path, first_epoch=1) as board:
        board.write(record)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    got = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    assert math.isnan(got.pop("val/objective")[0][1])
    assert got == {
        "train/rate": [(1, math.inf)],
        "schedule/lr": [(1, -math.inf)],
        "bottleneck/usage/codes": [(1, 3.0)],
        "bottleneck/code usage": [(1, 4.0)],
        "bottleneck/code_usage": [(1, 5.0)],
    }


@pytest.mark.filterwarnings("error")
def test_without_progress_under_warnings_as_errors_resumed(tmp_path):
    _fit(tmp_path, 1, tensorboard=True)
    _fit(tmp_path, 2, tensorboard=True)
    assert _scalars(tmp_path) == _expected(tmp_path)


# ---------------------------------------------------------------- the package missing
@pytest.mark.parametrize("command", ["reproduce", "demo"])
def test_missing_package_through_reproduce_and_demo(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "out"
    if command == "reproduce":
        args = ["reproduce", "text-rd", "--quick", "--runs-dir", out, "--results-dir", out]
    else:
        args = ["demo", "--out", out]
    args += ["--set", "train.tensorboard=true", "--data-dir", tmp_path / "data"]
    code, err = run_cli(args, capsys)
    assert code == 2 and err.strip().splitlines()[-1] == f"qlatent: error: {MISSING}", err
    assert sorted(tmp_path.iterdir()) == []
