"""Hostile paths and files around reading and writing: an output under a regular file, a
checkpoint tensor whose elements share memory, a torchrun environment whose other processes
never start, and an IDX header of more dimensions than are read.

Each refusal is one line naming what was wrong (a ValueError or CheckpointError; on the command
line ``qlatent: error: ...``, exit code 2), made before the work it would have spoiled.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent._utils import write_atomic
from qlatent.data import datasets
from qlatent.data.idx import read_idx
from qlatent.train import distributed as D
from qlatent.train.checkpoint import CheckpointError, load, save_atomic


@pytest.fixture()
def afile(tmp_path: Path) -> Path:
    """A regular file where a folder is expected."""
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    return path


# ------------------------------------------------------------------ outputs under a regular file
@pytest.mark.parametrize("below", ["ckpt.pt", "deeper/ckpt.pt"])
def test_a_checkpoint_under_a_regular_file_is_one_error_naming_both(afile, below):
    """The parent a file: "[Errno 17] File exists: 'notes.txt'"; further down: "[Errno 20] Not
    a directory", neither naming the checkpoint."""
    target = afile / below
    message = f"^cannot write the checkpoint {target}: {afile} is a file, not a folder"
    with pytest.raises(ValueError, match=message):
        save_atomic({"step": 1}, target)
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("below", ["log.jsonl", "deeper/log.jsonl"])
def test_an_atomic_write_under_a_regular_file_is_one_error_naming_both(afile, below):
    target = afile / below
    with pytest.raises(ValueError, match=f"^cannot write {target}: {afile} is a file, not a"):
        write_atomic(target, b"{}\n")
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("below", ["", "png", "png/deeper"])
def test_data_export_under_a_regular_file_names_the_folder_before_reading(
    afile, below, monkeypatch, capsys
):
    """``data export mnist notes.txt/png`` read the whole split, then failed with "[Errno 20]
    Not a directory: 'notes.txt/png'"."""
    reads: list[str] = []

    def fake_load(split, data_dir=None, *, download=True):
        reads.append(split)
        return torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)

    monkeypatch.setattr(datasets, "load_mnist", fake_load)
    folder = afile / below if below else afile
    code, err = run_cli(["data", "export", "mnist", folder, "--no-download"], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"folder {folder} cannot be written: {afile} is a file" in err
    assert reads == []


def test_data_export_into_a_folder_that_holds_files_is_refused_before_reading(
    tmp_path, monkeypatch, capsys
):
    """The folder's emptiness was checked when the first image was written, after the split
    was read (and perhaps downloaded)."""
    reads: list[str] = []

    def fake_load(split, data_dir=None, *, download=True):
        reads.append(split)
        return torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)

    monkeypatch.setattr(datasets, "load_mnist", fake_load)
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "notes.txt").write_text("kept")
    code, err = run_cli(["data", "export", "mnist", tmp_path / "png", "--no-download"], capsys)
    assert code == 2 and one_line_error(err), err
    assert "images are written into a new or empty folder only" in err
    assert reads == [] and (tmp_path / "png" / "notes.txt").read_text() == "kept"


# ----------------------------------------------------------- tensors whose elements share memory
def _overlapping() -> torch.Tensor:
    """(10, 10) over 100 stored numbers, each row one further along: 19 distinct elements."""
    return torch.arange(100.0).as_strided((10, 10), (1, 1))


def test_a_checkpoint_tensor_whose_elements_share_memory_is_refused(tmp_path):
    """No zero stride and no more elements than its storage holds, so it passed the storage
    check; an optimizer moment of that layout was stepped in place without a word, its
    elements overwriting each other."""
    path = tmp_path / "overlap.pt"
    torch.save({"model": {"w": _overlapping()}}, path)
    with pytest.raises(CheckpointError, match=r"overlap\.pt holds a tensor .* share memory"):
        load(path)


def test_a_zero_stride_over_a_storage_large_enough_is_named_as_such(tmp_path):
    """Refused before too, but as a tensor its stored data "cannot fill", which it can."""
    path = tmp_path / "expanded.pt"
    torch.save({"w": torch.arange(100.0).as_strided((10, 10), (0, 1))}, path)
    with pytest.raises(CheckpointError, match="share memory"):
        load(path)


def test_save_refuses_what_load_would_refuse_and_keeps_views_that_store_each_element_once(
    tmp_path,
):
    with pytest.raises(CheckpointError, match="share memory"):
        save_atomic({"w": _overlapping()}, tmp_path / "overlap.pt")
    assert not (tmp_path / "overlap.pt").exists()
    base = torch.arange(60.0).reshape(3, 4, 5)
    views = {"t": base.transpose(0, 2), "s": base[::2, 1:, ::3], "p": base.permute(1, 2, 0)}
    save_atomic(views, tmp_path / "views.pt")
    loaded = load(tmp_path / "views.pt")
    assert all(torch.equal(loaded[k], v) for k, v in views.items())


# ------------------------------------------------------------------ a world whose peers never come
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_world_of_two_with_no_second_process_fails_fast_with_one_line(tmp_path):
    """WORLD_SIZE=2 with no other process waited 30 minutes in torch's rendezvous, silently."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_RUN.format(family="gated_mlp", hidden=[8], name="lattice"))
    port = _free_port()
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env |= {"MASTER_PORT": str(port), "QLATENT_DIST_TIMEOUT": "2", "OMP_NUM_THREADS": "1"}
    main = "import sys; from qlatent.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["train", str(config), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(
        [sys.executable, "-c", main, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hung rendezvous is killed with its group, not left behind
    )
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"a world of two without its second process still waited: {err[-2000:]}")
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, err
    assert lines[0] == f"waiting up to 2 s for 2 processes at 127.0.0.1:{port} (rank 0) ..."
    assert one_line_error(lines[1])
    assert f"rank 0 could not join 2 processes at 127.0.0.1:{port} within 2 s" in lines[1]
    assert "QLATENT_DIST_TIMEOUT" in lines[1]
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf", "1e300"])
def test_a_bad_join_timeout_is_named_before_joining(monkeypatch, value):
    for name, setting in [("WORLD_SIZE", "2"), ("RANK", "0"), ("QLATENT_DIST_TIMEOUT", value)]:
        monkeypatch.setenv(name, setting)
    monkeypatch.delenv("MASTER_ADDR", raising=False)  # the join cannot start: nothing waits
    with pytest.raises(ValueError, match=f"^QLATENT_DIST_TIMEOUT must be .* got '{value}'"):
        D.setup("cpu")


# ------------------------------------------------------------------------------ IDX dimensions
def test_an_idx_header_past_the_dimensions_read_says_it_is_a_bound(tmp_path):
    """33 dimensions: the format's byte allows 255 and NumPy 2 arrays 64, but NumPy 1.26, which
    the package supports, 32; the message said only "more than 32"."""
    path = tmp_path / "deep-idx"
    path.write_bytes(struct.pack(">HBB33I", 0, 8, 33, *[1] * 33) + b"\x00")
    with pytest.raises(ValueError, match=r"33 dimensions .* more than the 32 read here \(NumPy 1"):
        read_idx(path)
    assert read_idx(_idx_of(tmp_path / "ok-idx", 32)).shape == (1,) * 32


def _idx_of(path: Path, ndim: int) -> Path:
    path.write_bytes(struct.pack(f">HBB{ndim}I", 0, 8, ndim, *[1] * ndim) + np.uint8(7).tobytes())
    return path
