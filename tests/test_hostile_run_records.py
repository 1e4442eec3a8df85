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
import json
import shutil

import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent import _utils
from qlatent.models import lattice_vae
from qlatent.train import TrainConfig, fit, load, save_atomic
from qlatent.train import loop as loop_module
from qlatent.train.lock import hold
from run_helpers import fill_disk


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
    """``run_cli``; a KeyboardInterrupt escaping ``main`` fails the test, not the whole run."""
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
        fill_disk(monkeypatch)
        return 2, "cannot write the checkpoint"
    # a device the machine lacks (on a machine with a GPU too), refused by fit once the
    # folder is held
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
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


# ------------------------------------------------- a run that replaces another's results
# A --fresh run (or a new one where no last.pt was left) interrupted after its first epoch kept
# the last run's summary.json and figures beside its own checkpoints, and a resumed finished run
# that trained on kept the summary of its earlier config: the folder showed another run's
# results. They go with the first checkpoint the run writes, and only they.
RESULTS = {"summary.json", "training_curves.png", "reconstructions.png"}
CHECKPOINTS = {"last.pt", "best.pt", "log.jsonl"}


def _stopped_in_epoch(monkeypatch, epoch):
    """Ctrl-C as the ``epoch``-th epoch this process trains begins (the ones before it whole)."""
    real, calls = loop_module._train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(None)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "_train_epoch", train_epoch)


TWO_EPOCHS = ["--set", "train.epochs=2", "--set", "train.max_steps=100"]


def test_a_fresh_run_stopped_after_its_first_epoch_shows_none_of_the_last_runs_results(
    finished, tmp_path, capsys, monkeypatch
):
    config, run = _copy(finished, tmp_path)
    assert RESULTS <= set(_files(run))
    (run / "notes.txt").write_text("mine")  # no file of the run: it stays
    _stopped_in_epoch(monkeypatch, 2)
    args = ["train", config, "--out", run, "--fresh", "--set", "train.seed=5", *TWO_EPOCHS]
    code, err = _cli(args, capsys)
    assert code == 130 and "resumes from its last completed epoch" in err, err
    assert set(_files(run)) == CHECKPOINTS | {"config.json", "notes.txt"}
    assert (run / "notes.txt").read_text() == "mine"
    assert '"seed": 5' in (run / "config.json").read_text()
    assert load(run / "last.pt")["state"]["epoch"] == 1
    # the same command without --fresh finishes it: its own results, of its own config
    monkeypatch.undo()
    args = ["train", config, "--out", run, "--set", "train.seed=5", *TWO_EPOCHS]
    assert _cli(args, capsys)[0] == 0
    assert set(_files(run)) == CHECKPOINTS | RESULTS | {"config.json", "notes.txt"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["train"]["seed"] == 5 and summary["train"]["epochs"] == 2


def test_a_fresh_start_that_cannot_write_its_first_checkpoint_keeps_the_last_runs_results(
    finished, tmp_path, capsys, monkeypatch
):
    config, run = _copy(finished, tmp_path)
    before = _files(run)
    _failures(monkeypatch, "full disk")
    code, err = _cli(["train", config, "--out", run, "--fresh", "--set", "train.seed=5"], capsys)
    assert code == 2 and "cannot write the checkpoint" in err, err
    assert _files(run) == before


def test_a_new_run_where_no_checkpoint_was_left_replaces_the_results_beside_it(
    finished, tmp_path, capsys, monkeypatch
):
    """Without ``--fresh``: the last run's checkpoints were removed, its results were not."""
    config, run = _copy(finished, tmp_path)
    for name in CHECKPOINTS:
        (run / name).unlink()
    _stopped_in_epoch(monkeypatch, 2)
    code, _ = _cli(["train", config, "--out", run, "--set", "train.seed=5", *TWO_EPOCHS], capsys)
    assert code == 130
    assert set(_files(run)) == CHECKPOINTS | {"config.json"}


def test_a_finished_run_that_trains_on_drops_the_results_of_its_earlier_config(
    finished, tmp_path, capsys, monkeypatch
):
    """Resumed with more epochs and stopped: the summary of one epoch (train.epochs = 1) was
    left beside a checkpoint of two and a config.json of three."""
    config, run = _copy(finished, tmp_path)
    whole = ["--set", "train.max_steps=100"]  # the fixture's run stopped within its epoch
    assert _cli(["train", config, "--out", run, "--fresh", *whole], capsys)[0] == 0
    assert RESULTS <= set(_files(run))
    _stopped_in_epoch(monkeypatch, 2)
    more = [*whole, "--set", "train.epochs=3"]
    code, err = _cli(["train", config, "--out", run, *more], capsys)
    assert code == 130, err
    assert set(_files(run)) == CHECKPOINTS | {"config.json"}
    assert load(run / "last.pt")["state"]["epoch"] == 2
    monkeypatch.undo()
    assert _cli(["train", config, "--out", run, *more], capsys)[0] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["train"]["epochs"] == 3 and summary["train"]["epochs"] == 3
    assert RESULTS <= set(_files(run))


def test_a_finished_run_resumed_with_nothing_to_train_keeps_its_results(
    finished, tmp_path, capsys, monkeypatch
):
    config, run = _copy(finished, tmp_path)
    before = _files(run)
    monkeypatch.setattr(loop_module, "_train_epoch", _interrupted)  # no epoch is trained
    assert _cli(["train", config, "--out", run], capsys)[0] == 0
    after = _files(run)
    assert set(after) == set(before) == CHECKPOINTS | RESULTS | {"config.json"}
    for name in CHECKPOINTS:
        assert after[name] == before[name], name
    test, earlier = (json.loads(files["summary.json"])["test"] for files in (after, before))
    assert test["hard_path"] == earlier["hard_path"]  # evaluated again, to the same numbers


def test_a_fresh_text_run_over_an_image_run_leaves_no_image_figure(finished, tmp_path, capsys):
    """A text run draws no reconstructions: the image run's survived it, finished."""
    _, run = _copy(finished, tmp_path)
    text = tmp_path / "text.toml"
    text.write_text(TINY_TEXT)
    assert _cli(["train", text, "--out", run, "--fresh"], capsys)[0] == 0
    assert set(_files(run)) == CHECKPOINTS | {"config.json", "summary.json", "training_curves.png"}


TINY_TEXT = """
[data]
name = "synthetic-text"
synthetic_size = 60

[model]
family = "text_gru"
hidden = [16, 16]
latent_dim = 4
embed = 8

[bottleneck]
name = "lattice"

[train]
epochs = 1
max_steps = 2
batch_size = 20
progress = false
"""

DEMO = ["--set", "data=synthetic", "--set", "model.latent_dim=4", "--set", "model.hidden=16"]
DEMO += ["--set", "train.progress=false", "--set", "train.batch_size=200"]


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    """A finished ``qlatent demo`` run of one epoch on synthetic data: its folder."""
    run = tmp_path_factory.mktemp("demo") / "run"
    from qlatent.cli import main

    assert main(["demo", *DEMO, "--set", "train.epochs=1", "--out", str(run)]) == 0
    return run


def test_a_fresh_demo_stopped_after_its_first_epoch_shows_none_of_the_last_runs_results(
    finished_demo, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(finished_demo, run)
    assert set(_files(run)) == CHECKPOINTS | RESULTS
    _stopped_in_epoch(monkeypatch, 2)
    args = ["demo", *DEMO, "--set", "train.epochs=2", "--set", "train.seed=5"]
    code, err = _cli([*args, "--out", run, "--fresh"], capsys)
    assert code == 130 and "resumes from its last completed epoch" in err, err
    assert set(_files(run)) == CHECKPOINTS
    assert load(run / "last.pt")["run_config"]["train"]["seed"] == 5


def test_fit_removes_only_the_named_results_and_a_link_not_what_it_names(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "kept.json"
    run.mkdir()
    elsewhere.write_text("{}")
    (run / "summary.json").symlink_to(elsewhere)
    (run / "figure.png").mkdir()  # a folder of that name is no file the run wrote
    (run / "other.png").write_bytes(b"x")
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=4, hidden=16, data_dim=16)
    data = {"train": torch.rand(20, 16).round(), "val": torch.rand(10, 16).round()}
    cfg = TrainConfig(epochs=1, batch_size=10, progress=False)
    fit(model, data, cfg, out_dir=run, results=("summary.json", "figure.png", "absent.png"))
    assert {p.name for p in run.iterdir()} == CHECKPOINTS | {"figure.png", "other.png"}
    assert elsewhere.read_text() == "{}"


def test_the_demos_heading_names_what_is_run(tmp_path, capsys):
    """It said "m=40, binarized MNIST" whatever the overrides chose."""
    from qlatent.cli import main

    args = ["demo", *DEMO, "--set", "train.epochs=1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    heading = capsys.readouterr().out.splitlines()[0]
    latent = next(a.split("=")[1] for a in DEMO if a.startswith("model.latent_dim="))
    assert heading == f"rectangular-lattice VAE, m={latent}, synthetic binary data; config:"
