"""A run folder's record under a start that is refused or fails. ``qlatent train CONFIG`` wrote
``config.json`` before the resume was checked, so a refused resume (a damaged ``last.pt``, one
of another config, a ``best.pt`` of another epoch) left the new config beside the old
checkpoint, and a ``--fresh`` start interrupted before its first epoch left the new config and an
emptied log beside the last run's checkpoints; a start that failed before its first checkpoint
(Ctrl-C, a full disk, a device the machine lacks) left an empty run folder, or one holding only
that config, and the folders above it; a checkpoint the disk could not take was reported as a
bare "[Errno 28] No space left on device"."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent import _utils
from qlatent.models import lattice_vae
from qlatent.train import TrainConfig, fit, load, save_atomic
from qlatent.train import loop as loop_module
from qlatent.train.lock import hold


def _config(folder):
    config = folder / "tiny.toml"
    config.write_text(TINY_RUN.format(name="lattice", family="relu_mlp", hidden=[16]))
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of the tiny config: (config, run folder), copied before each use."""
    root = tmp_path_factory.mktemp("finished")
    config, run = _config(root), root / "run"
    from qlatent.cli import main

    assert main(["train", str(config), "--out", str(run)]) == 0
    return config, run


def _copy(finished, tmp_path):
    config, run = finished
    shutil.copytree(run, tmp_path / "run")
    return config, tmp_path / "run"


def _files(folder) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden ones too: a temporary file left behind) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def _cli(args, capsys) -> tuple[int, str]:
    """``run_cli``; a KeyboardInterrupt escaping ``main`` fails the test, not the session."""
    try:
        return run_cli(args, capsys)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main")


def _damage_last(run):
    (run / "last.pt").write_bytes(b"PK\x03\x04" + bytes(200))


def _best_of_another_epoch(run):
    best = load(run / "best.pt")
    save_atomic(best | {"epoch": 7}, run / "best.pt")


# ------------------------------------------------------------------ refused starts
@pytest.mark.parametrize(
    ("damage", "extra", "message"),
    [
        (_damage_last, [], "last.pt is not a readable checkpoint"),
        (None, ["--set", "train.lr=0.001"], "last.pt was written with a different config (lr:"),
        (None, ["--set", "train.batch_size=20"], "different config (batch_size: 10 → 20)"),
        (_best_of_another_epoch, [], "best.pt does not hold this run's best epoch (1; it holds"),
    ],
    ids=["damaged last.pt", "other lr", "other batch size", "best.pt of another epoch"],
)
def test_a_refused_resume_leaves_every_file_of_the_run_as_it_was(
    finished, tmp_path, capsys, damage, extra, message
):
    config, run = _copy(finished, tmp_path)
    if damage is not None:
        damage(run)
    before = _files(run)
    code, err = _cli(["train", config, "--out", run, *extra], capsys)
    assert code == 2 and one_line_error(err) and message in err, err
    after = _files(run)
    assert sorted(after) == sorted(before)
    assert [name for name in before if after[name] != before[name]] == []  # config.json was


def test_a_fresh_start_interrupted_before_its_first_epoch_leaves_the_last_run(
    finished, tmp_path, capsys, monkeypatch
):
    """Its config.json described a run whose checkpoint was never written, beside the last
    run's checkpoints, and its log was emptied."""
    config, run = _copy(finished, tmp_path)
    before = _files(run)
    monkeypatch.setattr(loop_module, "_train_epoch", _interrupted)
    code, err = _cli(["train", config, "--out", run, "--fresh", "--set", "train.seed=5"], capsys)
    assert code == 130 and "no epoch of the run" in err, err
    assert _files(run) == before


def test_a_fresh_start_records_its_config_with_its_first_checkpoint(
    finished, tmp_path, capsys, monkeypatch
):
    config, run = _copy(finished, tmp_path)
    calls = []

    def after_the_first_epoch(record):
        calls.append(record)
        assert '"seed": 5' in (run / "config.json").read_text()  # with last.pt, before on
        raise KeyboardInterrupt

    real_fit = loop_module.fit

    def fit_stopped(*args, **kwargs):
        epoch_end = kwargs["on_epoch_end"]
        kwargs["on_epoch_end"] = lambda record: (epoch_end(record), after_the_first_epoch(record))
        return real_fit(*args, **kwargs)

    from qlatent.experiments import custom

    monkeypatch.setattr(custom, "fit", fit_stopped)
    code, err = _cli(["train", config, "--out", run, "--fresh", "--set", "train.seed=5"], capsys)
    assert code == 130 and "resumes from its last completed epoch" in err, err
    assert len(calls) == 1 and load(run / "last.pt")["run_config"]["train"]["seed"] == 5


# ---------------------------------------------------------------- a start that fails
def _failures(monkeypatch, failure):
    if failure == "ctrl-c":
        monkeypatch.setattr(loop_module, "_train_epoch", _interrupted)
        return 130, "no epoch of the run"
    if failure == "full disk":
        fdopen = os.fdopen

        class Full:
            def __init__(self, file):
                self._file = file

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self._file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._file.__exit__(*exc)

        monkeypatch.setattr(_utils.os, "fdopen", lambda *a, **k: Full(fdopen(*a, **k)))
        return 2, "cannot write the checkpoint"
    # a device the machine lacks, refused by fit once the folder is held
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return 2, "CUDA is not available"


@pytest.mark.parametrize("failure", ["ctrl-c", "full disk", "no device"])
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_folder(
    tmp_path, capsys, monkeypatch, failure
):
    config = _config(tmp_path)
    run = tmp_path / "runs" / "new" / "run"  # and the folders above it
    code, message = _failures(monkeypatch, failure)
    extra = ["--set", "train.device=cuda"] if failure == "no device" else []
    got, err = _cli(["train", config, "--out", run, *extra], capsys)
    assert got == code and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_a_full_disk_at_the_first_checkpoint_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    config, run = _config(tmp_path), tmp_path / "run"
    _failures(monkeypatch, "full disk")
    code, err = _cli(["train", config, "--out", run], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"cannot write the checkpoint {run / 'last.pt'}: No space left on device" in err


@pytest.mark.parametrize("failure", ["ctrl-c", "full disk"])
def test_a_failed_start_keeps_a_folder_it_did_not_make(tmp_path, capsys, monkeypatch, failure):
    config, run = _config(tmp_path), tmp_path / "run"
    run.mkdir()
    code, _ = _failures(monkeypatch, failure)
    assert _cli(["train", config, "--out", run], capsys)[0] == code
    assert run.is_dir() and list(run.iterdir()) == []


def test_a_made_folder_that_holds_something_else_stays(tmp_path, capsys, monkeypatch):
    config, run = _config(tmp_path), tmp_path / "runs" / "run"

    def another_writer(*args, **kwargs):
        (run / "notes.txt").write_text("someone else's")
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "_train_epoch", another_writer)
    assert _cli(["train", config, "--out", run], capsys)[0] == 130
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------- fit and hold
def test_fit_into_a_new_folder_that_diverges_at_once_leaves_no_folder(tmp_path):
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=4, hidden=16, data_dim=16)
    with torch.no_grad():
        for weight in model.decoder.parameters():
            weight.fill_(float("nan"))
    data = {"train": torch.rand(20, 16).round(), "val": torch.rand(10, 16).round()}
    cfg = TrainConfig(epochs=1, batch_size=10, progress=False)
    with pytest.raises(ValueError, match="training diverged"):
        fit(model, data, cfg, out_dir=tmp_path / "a" / "run")
    assert list(tmp_path.iterdir()) == []  # an empty log.jsonl was left, and its folders


def test_hold_takes_back_only_the_empty_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError), hold(tmp_path / "a" / "b" / "c"):
        raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), hold(tmp_path / "a" / "b"):
        (tmp_path / "a" / "kept.txt").write_text("x")  # a file above the run folder
        raise RuntimeError("failed")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["kept.txt"]
    with hold(tmp_path / "done"):  # a block that ends well keeps its folder, empty or not
        pass
    assert (tmp_path / "done").is_dir()


def test_a_full_disk_under_write_atomic_names_the_file(tmp_path, monkeypatch):
    """``config.json``, ``summary.json``, the log, figures and ``.qlc`` files go through
    ``write_atomic``, whose OSError named no file ("[Errno 28] No space left on device")."""
    _failures(monkeypatch, "full disk")
    target = tmp_path / "summary.json"
    with pytest.raises(OSError, match="No space left on device") as info:
        _utils.write_atomic(target, b"{}")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # nor a temporary file
