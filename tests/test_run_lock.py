"""One process at a time in a run folder (:mod:`qlatent.train.lock`): a second process training
into a folder another one holds is refused in one line before it writes anything, and the
lock goes with the process that held it, however that process ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent.models import lattice_vae
from qlatent.train import TrainConfig, fit
from qlatent.train.lock import FolderInUse, hold

fcntl = pytest.importorskip("fcntl", reason="run folders are locked where flock exists")

DATA = {"train": torch.rand(40, 64).round(), "val": torch.rand(20, 64).round()}


def _fit(out):
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=4, hidden=16, data_dim=64)
    cfg = TrainConfig(epochs=1, batch_size=20, progress=False)
    return fit(model, DATA, cfg, out_dir=out)


def _holder(folder):
    """Another process holding ``folder`` until it is killed (it says so on stdout first)."""
    code = textwrap.dedent(f"""
        import sys, time
        from qlatent.train.lock import hold
        with hold({str(folder)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_training_into_a_folder_another_process_holds_is_refused_before_writing(tmp_path):
    folder = tmp_path / "run"
    other = _holder(folder)
    try:
        with pytest.raises(FolderInUse, match=f"the run folder {folder} is in use by another"):
            _fit(folder)
        assert list(folder.iterdir()) == []  # nothing of the refused run written
    finally:
        other.send_signal(signal.SIGKILL)  # the kernel lets go of a killed process's lock
        other.wait()
    assert _fit(folder).history[-1]["epoch"] == 1
    assert (folder / "last.pt").is_file()


def test_qlatent_train_is_one_line_and_leaves_the_other_runs_config(tmp_path, capsys):
    folder = tmp_path / "run"
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_RUN.format(name="lattice", family="relu_mlp", hidden=[16]))
    folder.mkdir()
    (folder / "config.json").write_text("the other run's config\n")
    other = _holder(folder)
    try:
        code, err = run_cli(["train", config, "--set", f"out_dir={folder}"], capsys)
    finally:
        other.kill()
        other.wait()
    assert code == 2 and one_line_error(err) and "is in use by another process" in err
    assert (folder / "config.json").read_text() == "the other run's config\n"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]


def test_the_lock_is_reentrant_within_a_process_and_let_go_after_the_last_hold(tmp_path):
    folder = tmp_path / "run"

    def locked_elsewhere() -> bool:
        """Whether another open of the folder (as another process would) finds it locked."""
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing lets go of a lock taken here
        return False

    with hold(folder):
        with hold(folder):  # qlatent train holds the folder around fit, which holds it too
            assert locked_elsewhere()
        assert locked_elsewhere()
    assert not locked_elsewhere()


def test_two_folders_are_held_independently(tmp_path):
    other = _holder(tmp_path / "a")
    try:
        assert _fit(tmp_path / "b").history[-1]["epoch"] == 1
    finally:
        other.kill()
        other.wait()
