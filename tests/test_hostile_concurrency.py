"""Concurrency: threads sharing one bottleneck, and several writers of one output file.

Two writers of one path at once (two ``qlatent compress -o same.qlc``, two processes building
the text corpus, a checkpoint saved while another save of it runs) must leave one complete file
and no temporary one, each write succeeding. Before, :func:`~qlatent._utils.write_atomic` wrote
through one fixed temporary name, so one writer renamed the file the other was still writing and
the other's rename failed ("No such file or directory"), and
:func:`~qlatent.train.checkpoint.save_atomic` removed every temporary file of its path as stale,
another writer's in progress too, whose rename then failed. The interleavings are forced (a
barrier inside ``os.replace``), not left to timing. Every thread is joined with a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from qlatent._utils import replacing, write_atomic
from qlatent.bottlenecks import build
from qlatent.rng import SeedKeys
from qlatent.train.checkpoint import load, save_atomic

JOIN_S = 60


def run_threads(targets) -> list[BaseException]:
    """Run each callable in its own thread; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(f):
        try:
            f()
        except BaseException as err:  # reported to the test, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(f,), daemon=True) for f in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}*"))


def test_two_writers_of_one_path_at_once_each_write_a_whole_file(tmp_path, monkeypatch):
    """Both renames wait until both files are written. With one shared temporary name the
    second rename failed with FileNotFoundError (and the first could rename a file the other
    was still writing)."""
    target = tmp_path / "codes.qlc"
    target.write_bytes(b"old")
    real_replace = os.replace
    both_written = threading.Barrier(2, timeout=JOIN_S)

    def replace_after_both(src, dst):
        both_written.wait()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_both)
    contents = [bytes([c]) * (1 << 20) for c in b"ab"]
    errors = run_threads([lambda data=data: write_atomic(target, data) for data in contents])
    assert errors == []
    assert target.read_bytes() in contents
    assert temporaries(target) == []


def test_a_checkpoint_save_leaves_another_save_in_progress_alone(tmp_path, monkeypatch):
    """A save while another save of the same checkpoint waits to rename: the second removed the
    first's temporary file as stale, and the first failed."""
    target = tmp_path / "last.pt"
    real_replace = os.replace
    first_waiting, go_on = threading.Event(), threading.Event()

    def replace(src, dst):
        if threading.current_thread() is not threading.main_thread():
            first_waiting.set()
            assert go_on.wait(JOIN_S)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    first = {"step": 1, "w": torch.ones(1000)}

    def release_when_waiting():
        assert first_waiting.wait(JOIN_S)
        save_atomic({"step": 2, "w": torch.zeros(1000)}, target)
        go_on.set()

    errors: list[BaseException] = []
    writer = threading.Thread(
        target=lambda: errors.extend(_raised(lambda: save_atomic(first, target))), daemon=True
    )
    writer.start()
    try:
        release_when_waiting()
    finally:
        go_on.set()
        writer.join(JOIN_S)
    assert not writer.is_alive() and errors == []
    assert load(target)["step"] == 1  # the first save renamed last
    assert temporaries(target) == []


def _raised(f) -> list[BaseException]:
    try:
        f()
    except BaseException as err:
        return [err]
    return []


def test_a_temporary_file_of_a_killed_writer_is_removed_by_the_next_checkpoint_save(tmp_path):
    """The lock a writer holds on its temporary file goes with the process: what a killed writer
    left is stale, and the next save removes it; a live writer's stays."""
    target = tmp_path / "last.pt"
    child = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from qlatent._utils import replacing\n"
        "with replacing(Path(sys.argv[1]), sweep=True) as f:\n"
        "    f.write(b'half')\n"
        "    f.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(temporaries(target)) == 1
        save_atomic({"step": 1}, target)  # the child still writes: its file stays
        assert len(temporaries(target)) == 1
    finally:
        proc.kill()
        proc.wait(JOIN_S)
        proc.stdout.close()
    save_atomic({"step": 2}, target)
    assert temporaries(target) == [] and load(target)["step"] == 2


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="midway"), replacing(target) as f:
        f.write(b"new")
        raise RuntimeError("midway")
    assert target.read_bytes() == b"old" and temporaries(target) == []


@pytest.mark.parametrize("lattice", ["e8", ["leech", "bw16"]])
def test_threads_sharing_a_good_lattice_get_the_single_threaded_results(lattice):
    """Four threads forward, compress and decompress through one bottleneck at once, from its
    first use (its decoding tables are built per dtype on demand): bit for bit what one thread
    gets afterwards."""
    torch.manual_seed(0)
    dim = 8 if lattice == "e8" else 40
    bottleneck = build("lattice", dim=dim, lattice=lattice).eval()
    y = 3 * torch.randn(32, dim)

    def work() -> tuple[torch.Tensor, bytes, torch.Tensor]:
        y_hat = bottleneck(y, generator=SeedKeys(7)).y_hat.detach()
        data = bottleneck.compress(y, seed=7)
        return y_hat, data, bottleneck.decompress(data)

    results: list = [None] * 4
    start = threading.Barrier(4, timeout=JOIN_S)

    def one(i: int) -> None:
        start.wait()
        results[i] = work()

    assert run_threads([lambda i=i: one(i) for i in range(4)]) == []
    y_hat, data, decoded = work()
    for got_y_hat, got_data, got_decoded in results:
        assert torch.equal(got_y_hat, y_hat) and got_data == data
        assert torch.equal(got_decoded, decoded)
