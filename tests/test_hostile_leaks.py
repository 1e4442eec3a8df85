"""What a call leaves behind, after success and after failure: no open file descriptor, no
temporary file (beside the output, in the run folder, in the system's temporary folder), no
thread (tqdm's monitor, a pool's), no child process, no other working directory or umask, and
no run folder still held (:mod:`qlatent.train.lock`). Each case counts ``/proc/self/fd``,
``threading.enumerate()`` and the process's children before and after, in this process, over
the command line (``compress``, ``decompress``, ``update``, ``eval``, ``train``, ``data info``,
``data export``), the coding API, checkpoints, image folders and :func:`~qlatent.train.fit`,
with hostile inputs: truncated and corrupt files, missing ones, a disk that fills up part-way,
an interrupted write, a callback that raises.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent.train import lock
from run_helpers import fill_disk

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd"
)


# ------------------------------------------------------------------------------- the probe
def _descriptors() -> dict[int, str]:
    """This process's open descriptors and what each names."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def _children() -> set[str]:
    """The ids of this process's child processes (those of every thread)."""
    kids: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
            kids |= set(f.read().split())
    return kids


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _font(name: str) -> bool:
    """Whether ``name`` is one of matplotlib's fonts, which its font cache keeps open on
    purpose (``matplotlib.font_manager.get_font``) once a figure has drawn text with it."""
    import matplotlib

    return name.startswith(os.path.dirname(matplotlib.__file__))


def _tree(folder: Path) -> set[str]:
    """The paths under ``folder``, but for its ``cache`` (a cache is kept on purpose)."""
    paths = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    return {p for p in paths if p.split("/")[0] != "cache"}


def _stop_tqdm_monitors() -> None:
    """End a tqdm monitor thread another test started, so that a new one shows."""
    from tqdm import std

    monitors = [t for t in threading.enumerate() if t.name == "tqdm_monitor"]
    for monitor in monitors:
        monitor.exit()
    classes = [std.tqdm]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if cls.__dict__.get("monitor") in monitors:
            cls.monitor = None


@pytest.fixture()
def leaves_nothing(tmp_path, monkeypatch) -> Callable:
    """``check(call, outputs=())``: run ``call`` (whatever it raises is returned, not raised)
    and fail the test if it left an open descriptor, a thread, a child process, another
    working directory or umask, a held run folder, or a file under ``tmp_path`` (the system's
    temporary folder is in it here) other than ``outputs``."""
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    monkeypatch.setenv("TMPDIR", str(system_temp))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _stop_tqdm_monitors()

    def check(call: Callable[[], object], outputs=()) -> object:
        before = (set(threading.enumerate()), _children(), os.getcwd(), _umask(), _tree(tmp_path))
        fds = _descriptors()
        try:
            result = call()
        except Exception as err:
            result = err
        leaked = {
            fd: name
            for fd, name in _descriptors().items()
            if fds.get(fd) != name and not _font(name)
        }
        assert leaked == {}, f"open descriptors left: {leaked}"
        threads = set(threading.enumerate()) - before[0]
        assert not threads, f"threads left: {[t.name for t in threads]}"
        assert _children() - before[1] == set(), "child processes left"
        assert (os.getcwd(), _umask()) == before[2:4]
        assert lock._held == {}, "a run folder is still held"
        allowed = {str(Path(p).relative_to(tmp_path)) for p in outputs}
        new = _tree(tmp_path) - before[4]
        left = {p for p in new if not any(p == a or p.startswith(a + "/") for a in allowed)}
        left -= _parents(allowed)
        assert left == set(), f"files left: {sorted(left)}"
        return result

    return check


def _parents(paths) -> set[str]:
    return {str(parent) for p in paths for parent in Path(p).parents if str(parent) != "."}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture()
def qlc(tmp_path, coding_checkpoint, capsys) -> Path:
    """Four synthetic images compressed with ``coding_checkpoint``."""
    path = tmp_path / "codes.qlc"
    code, err = run_cli(
        ["compress", "--checkpoint", coding_checkpoint, "--data", "synthetic-test"]
        + ["--limit", 4, "-o", path],
        capsys,
    )
    assert code == 0, err
    return path


@pytest.fixture()
def broken_checkpoint(tmp_path, coding_checkpoint) -> Path:
    """The first 500 bytes of a checkpoint."""
    path = tmp_path / "broken.pt"
    path.write_bytes(coding_checkpoint.read_bytes()[:500])
    return path


@pytest.fixture()
def full_disk(monkeypatch) -> None:
    """Every atomic write (:func:`qlatent._utils.replacing`) fills the disk after 64 bytes."""
    fill_disk(monkeypatch, 64)


# ------------------------------------------------------------------------- compress, update
def test_compress_leaves_only_its_output(leaves_nothing, tmp_path, coding_checkpoint, capsys):
    out = tmp_path / "out" / "a.qlc"
    args = ["compress", "--checkpoint", coding_checkpoint, "--data", "synthetic-test"]
    code, _ = leaves_nothing(lambda: run_cli([*args, "--limit", 4, "-o", out], capsys), [out])
    assert code == 0 and out.is_file()


@pytest.mark.parametrize("problem", ["missing", "broken", "full disk", "/dev/full"])
def test_a_failed_compress_leaves_nothing(
    leaves_nothing, tmp_path, coding_checkpoint, broken_checkpoint, capsys, request, problem
):
    checkpoint = {"missing": tmp_path / "none.pt", "broken": broken_checkpoint}.get(
        problem, coding_checkpoint
    )
    out = "/dev/full" if problem == "/dev/full" else tmp_path / "a.qlc"
    if problem == "full disk":
        request.getfixturevalue("full_disk")
    args = ["compress", "--checkpoint", checkpoint, "--data", "synthetic-test", "--limit", 40]
    code, err = leaves_nothing(lambda: run_cli([*args, "-o", out], capsys))
    assert code == 2 and one_line_error(err), err


@pytest.mark.parametrize("problem", [None, "broken", "full disk"])
def test_update_leaves_only_its_output(
    leaves_nothing, tmp_path, broken_checkpoint, capsys, request, problem
):
    from qlatent.models import gated_vae
    from qlatent.train import save_atomic

    torch.manual_seed(0)
    counted = tmp_path / "vq.pt"
    model = gated_vae("vq", latent_dim=4, hidden=8, data_dim=784, num_codes=16)
    save_atomic({"model": model.state_dict()}, counted)
    checkpoint = broken_checkpoint if problem == "broken" else counted
    if problem == "full disk":
        request.getfixturevalue("full_disk")
    out = tmp_path / "updated.pt"
    args = ["update", "--checkpoint", checkpoint, "--data", "synthetic-test", "--limit", 8]
    code, err = leaves_nothing(
        lambda: run_cli([*args, "-o", out], capsys), [] if problem else [out]
    )
    assert code == (2 if problem else 0), err
    assert out.is_file() == (problem is None)


# ---------------------------------------------------------------------------- decompress
@pytest.mark.parametrize("suffix", [".pt", ".npy", ".png", "/"])
def test_decompress_leaves_only_its_output(
    leaves_nothing, tmp_path, qlc, coding_checkpoint, capsys, suffix
):
    out = tmp_path / "decoded" / f"r{suffix}" if suffix != "/" else tmp_path / "decoded"
    target = str(out) + ("/" if suffix == "/" else "")
    figure = tmp_path / "figure.png"
    args = ["decompress", qlc, "--checkpoint", coding_checkpoint, "-o", target, "--png", figure]
    code, err = leaves_nothing(lambda: run_cli(args, capsys), [out, figure])
    assert code == 0, err


@pytest.mark.parametrize(
    "damage", ["truncated", "header only", "flipped byte", "missing", "empty", "checkpoint"]
)
def test_a_failed_decompress_leaves_nothing(
    leaves_nothing, tmp_path, qlc, coding_checkpoint, broken_checkpoint, capsys, damage
):
    data = qlc.read_bytes()
    bad = tmp_path / "bad.qlc"
    if damage == "truncated":
        bad.write_bytes(data[:-7])
    elif damage == "header only":
        bad.write_bytes(data[:30])
    elif damage == "flipped byte":
        bad.write_bytes(data[:60] + bytes([data[60] ^ 0xFF]) + data[61:])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "checkpoint":
        bad = qlc
    checkpoint = broken_checkpoint if damage == "checkpoint" else coding_checkpoint
    args = ["decompress", bad, "--checkpoint", checkpoint, "-o", tmp_path / "r.pt"]
    code, err = leaves_nothing(lambda: run_cli(args, capsys))
    assert code == 2 and one_line_error(err), err


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_decompress_onto_a_full_disk_leaves_nothing(
    leaves_nothing, tmp_path, coding_checkpoint, capsys, request, suffix
):
    big = tmp_path / "big.qlc"  # 40 images: reconstructions of 125 kB
    args = ["compress", "--checkpoint", coding_checkpoint, "--data", "synthetic-test"]
    assert run_cli([*args, "--limit", 40, "-o", big], capsys)[0] == 0
    request.getfixturevalue("full_disk")
    out = tmp_path / f"r{suffix}"
    args = ["decompress", big, "--checkpoint", coding_checkpoint, "-o", out]
    code, err = leaves_nothing(lambda: run_cli(args, capsys))
    assert code == 2 and "No space left on device" in err and not out.exists()


@pytest.mark.parametrize("made", [True, False])
def test_a_folder_of_pngs_that_fails_part_way_is_taken_back(
    leaves_nothing, tmp_path, qlc, coding_checkpoint, capsys, monkeypatch, made
):
    """The disk filled at the third PNG of ``-o DIR/``: the two written stayed, and the same
    command then refused the folder ("a folder of PNGs goes into a new or empty folder")."""
    from qlatent.data import folder as pngs  # the module that writes the PNGs

    out = tmp_path / "pngs"
    if not made:
        out.mkdir()
    write, written = pngs.write_atomic, []

    def fills_at_the_third(path, data):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return write(path, data)

    monkeypatch.setattr(pngs, "write_atomic", fills_at_the_third)
    args = ["decompress", qlc, "--checkpoint", coding_checkpoint, "-o", f"{out}/"]
    code, err = leaves_nothing(lambda: run_cli(args, capsys))
    assert code == 2 and "No space left on device" in err
    assert len(written) == 2 and out.exists() == (not made)
    monkeypatch.setattr(pngs, "write_atomic", write)
    code, err = run_cli(args, capsys)  # the same command, the disk no longer full
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [f"00000{i}.png" for i in range(4)]


# ------------------------------------------------------------------------- eval and data
def test_eval_leaves_only_its_report(leaves_nothing, tmp_path, capsys):
    run, report = tmp_path / "run", tmp_path / "eval.json"
    assert run_cli(["train", _config(tmp_path), "--out", run], capsys)[0] == 0
    args = ["eval", run / "best.pt", "--limit", 20, "--iwae", 2, "-o", report]
    code, err = leaves_nothing(lambda: run_cli(args, capsys), [report])
    assert code == 0 and report.is_file(), err


def test_a_failed_eval_leaves_nothing(leaves_nothing, tmp_path, broken_checkpoint, capsys):
    args = ["eval", broken_checkpoint, "-o", tmp_path / "eval.json"]
    code, err = leaves_nothing(lambda: run_cli(args, capsys))
    assert code == 2 and one_line_error(err), err


def _mnist(folder: Path, monkeypatch) -> Path:
    """An MNIST of 30 training and 6 test images in ``folder``, which the checksums expect."""
    import hashlib

    from qlatent.data import _providers, datasets, sources
    from qlatent.data.idx import write_idx

    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(30, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(6, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True)
    table = {
        name: hashlib.sha256(write_idx(folder / name, array).read_bytes()).hexdigest()
        for name, array in arrays.items()
    }
    monkeypatch.setitem(sources.SHA256, "mnist", table)
    monkeypatch.setattr(datasets, "N_TRAIN_IMAGES", 30)
    monkeypatch.setattr(datasets, "N_TEST_IMAGES", 6)
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", folder.parent / "no-such-folder")
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    return folder


def test_data_info_and_export_leave_only_the_images(leaves_nothing, tmp_path, capsys, monkeypatch):
    idx = _mnist(tmp_path / "data" / "mnist", monkeypatch).parent
    code, err = leaves_nothing(lambda: run_cli(["data", "info", "--data-dir", idx], capsys))
    assert code == 0, err
    out = tmp_path / "export"
    args = ["data", "export", "mnist", out, "--data-dir", idx, "--no-download"]
    code, err = leaves_nothing(lambda: run_cli(args, capsys), [out])
    assert code == 0 and len(list(out.iterdir())) == 6, err


def test_a_data_export_that_fails_part_way_can_be_run_again(
    leaves_nothing, tmp_path, capsys, monkeypatch
):
    """An export interrupted at its fourth image left three PNGs: the same command then refused
    the folder, which was no longer empty."""
    from qlatent.data import folder as pngs  # the module that writes the PNGs

    idx = _mnist(tmp_path / "data" / "mnist", monkeypatch).parent
    out = tmp_path / "export"
    write, calls = pngs.write_atomic, []

    def interrupted_at_the_fourth(path, data):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return write(path, data)

    monkeypatch.setattr(pngs, "write_atomic", interrupted_at_the_fourth)
    args = ["data", "export", "mnist", out, "--data-dir", idx, "--no-download"]
    code, _ = leaves_nothing(lambda: run_cli(args, capsys))
    assert code == 130 and not out.exists()
    monkeypatch.setattr(pngs, "write_atomic", write)
    code, err = run_cli(args, capsys)
    assert code == 0 and len(list(out.iterdir())) == 6, err


def test_a_data_export_without_its_dataset_leaves_nothing(leaves_nothing, tmp_path, capsys):
    args = ["data", "export", "mnist", tmp_path / "export", "--no-download"]
    code, err = leaves_nothing(lambda: run_cli([*args, "--data-dir", tmp_path / "none"], capsys))
    assert code == 2 and err.startswith("qlatent: error:")


# -------------------------------------------------------------------------------- train
def _config(tmp_path: Path, progress: bool = False) -> Path:
    text = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[8]")
    config = tmp_path / "tiny.toml"
    config.write_text(text.replace("progress = false", f"progress = {str(progress).lower()}"))
    return config


@pytest.mark.parametrize("progress", [False, True])
def test_train_leaves_only_its_run_and_no_thread(leaves_nothing, tmp_path, capsys, progress):
    """tqdm started its monitor thread with the first bar, a disabled one too, and nothing
    ended it: every ``qlatent train`` (``fit``) left a thread running in the process."""
    run = tmp_path / "run"
    config = _config(tmp_path, progress)
    code, err = leaves_nothing(lambda: run_cli(["train", config, "--out", run], capsys), [run])
    assert code == 0, err
    assert (run / "summary.json").is_file()


def test_train_resuming_a_corrupt_checkpoint_leaves_nothing(leaves_nothing, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"PK\x03\x04" + bytes(200))
    config = _config(tmp_path)
    code, err = leaves_nothing(lambda: run_cli(["train", config, "--out", run], capsys))
    assert code == 2 and one_line_error(err) and "last.pt" in err
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]  # no config.json beside it


def test_train_into_a_full_disk_leaves_nothing(leaves_nothing, tmp_path, capsys, full_disk):
    run, config = tmp_path / "run", _config(tmp_path)
    code, err = leaves_nothing(lambda: run_cli(["train", config, "--out", run], capsys), [run])
    assert code == 2 and "No space left on device" in err, err
    assert not run.exists()  # the run folder it made, empty, is taken back


@pytest.mark.parametrize("progress", [False, True])
@pytest.mark.parametrize("failure", ["callback", "diverged"])
def test_fit_that_raises_leaves_nothing(leaves_nothing, tmp_path, failure, progress):
    """An exception in ``on_epoch_end`` (after the first checkpoint) and a loss that is not
    finite (in the middle of an epoch's progress bar) leave the run folder free, no bar and no
    thread; the checkpoints written before stay."""
    from qlatent.models import gated_vae
    from qlatent.train import TrainConfig, fit

    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=4, hidden=8, data_dim=16)
    data = {"train": torch.rand(30, 16), "val": torch.rand(10, 16)}
    if failure == "diverged":
        with torch.no_grad():
            for weight in model.decoder.parameters():
                weight.fill_(float("nan"))

    def callback(record):
        raise RuntimeError("the callback failed")

    run = tmp_path / "run"
    cfg = TrainConfig(epochs=2, batch_size=10, progress=progress)
    err = leaves_nothing(lambda: fit(model, data, cfg, out_dir=run, on_epoch_end=callback), [run])
    expected = "the callback failed" if failure == "callback" else "training diverged"
    assert expected in str(err)
    from tqdm import std

    assert not [bar for bar in std.tqdm._instances if not bar.disable]
    if failure == "callback":
        assert {p.name for p in run.iterdir()} == {"last.pt", "best.pt", "log.jsonl"}
    else:  # nothing written before the first checkpoint: the folder fit made is taken back
        assert not run.exists()


# ---------------------------------------------------------------- coding and checkpoints
def test_the_coding_api_on_hostile_bytes_leaves_nothing(leaves_nothing):
    from qlatent.bottlenecks import build
    from qlatent.coding import CodingError, compress, decompress
    from qlatent.coding.container import unpack

    bottleneck = build("lattice", dim=8, lattice="e8").eval()
    data = compress(bottleneck, torch.randn(4, 8), seed=1)
    hostile = [data[:k] for k in (0, 3, 10, 50, len(data) - 1)]
    hostile += [data + b"\0", b"QLC\x00" + bytes(200), bytes([b ^ 0x55 for b in data])]

    def every_one():
        for bad in hostile:
            with pytest.raises(CodingError):
                unpack(bad)
            with pytest.raises(CodingError):
                decompress(bottleneck, bad)
        return decompress(bottleneck, data)

    assert leaves_nothing(every_one).shape == (4, 8)


def test_checkpoints_leave_nothing_after_success_and_failure(leaves_nothing, tmp_path):
    from qlatent.train import CheckpointError, load, save_atomic

    good = tmp_path / "good.pt"
    leaves_nothing(lambda: save_atomic({"w": torch.arange(10.0)}, good), [good])
    raw = good.read_bytes()
    variants = {
        "truncated": raw[: len(raw) // 2],
        "text": b"not a checkpoint",
        "zip header": b"PK\x03\x04" + bytes(100),
        "flipped": raw[:300] + bytes([raw[300] ^ 0xFF]) + raw[301:],
        "empty": b"",
    }
    for name, data in variants.items():
        (tmp_path / f"{name}.pt").write_bytes(data)

    def load_every_one():
        for name in variants:
            with pytest.raises(CheckpointError):
                load(tmp_path / f"{name}.pt")
        with pytest.raises(FileNotFoundError):
            load(tmp_path / "missing.pt")
        with pytest.raises(CheckpointError):
            load(tmp_path)
        return load(good)

    assert torch.equal(leaves_nothing(load_every_one)["w"], torch.arange(10.0))


@pytest.mark.parametrize("failure", ["full disk", "interrupted", "bad object"])
def test_a_failed_checkpoint_save_leaves_the_old_file_and_nothing_else(
    leaves_nothing, tmp_path, monkeypatch, request, failure
):
    from qlatent.train import load, save_atomic

    path = tmp_path / "last.pt"
    save_atomic({"step": 1}, path)
    obj = {"step": 2, "w": torch.zeros(10_000)}
    if failure == "full disk":
        request.getfixturevalue("full_disk")
    elif failure == "interrupted":
        save = torch.save

        def interrupted(obj, f):
            save(obj, io.BytesIO())
            f.write(b"half a checkpoint")
            raise KeyboardInterrupt

        monkeypatch.setattr(torch, "save", interrupted)
    else:
        obj["code"] = object()

    def saved():
        try:
            save_atomic(obj, path)
        except KeyboardInterrupt:
            return "interrupted"

    result = leaves_nothing(saved)
    assert result is not None
    monkeypatch.undo()
    assert load(path)["step"] == 1


# ---------------------------------------------------------------------------- image folders
def _images(folder: Path, count: int = 3) -> Path:
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("progress", [False, True])
@pytest.mark.parametrize("damage", [None, "not an image", "truncated", "a folder", "tiff"])
def test_reading_an_image_folder_leaves_nothing(leaves_nothing, tmp_path, progress, damage):
    from PIL import Image

    from qlatent.data import DataError
    from qlatent.data.folder import load_image_folder

    folder = _images(tmp_path / "images")
    bad = folder / "9.png"
    if damage == "not an image":
        bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    elif damage == "truncated":
        bad.write_bytes((folder / "1.png").read_bytes()[:45])
    elif damage == "a folder":
        bad.mkdir()
    elif damage == "tiff":  # libtiff's messages go through a temporary file
        bad = folder / "9.tif"
        Image.fromarray(np.full((10, 12), 7, np.uint8)).save(bad, compression="tiff_lzw")
        data = bytearray(bad.read_bytes())
        data[8:40] = b"\xff" * 32
        bad.write_bytes(bytes(data))
    stderr = os.readlink("/proc/self/fd/2")
    result = leaves_nothing(lambda: load_image_folder(folder, size=8, progress=progress))
    assert os.readlink("/proc/self/fd/2") == stderr
    if damage is None:
        assert result.shape == (3, 3, 8, 8)
    elif damage != "tiff":  # Pillow reads some damaged TIFFs as an image
        assert isinstance(result, DataError) and bad.name in str(result)


def test_writing_an_image_folder_that_fails_takes_back_what_it_wrote(
    leaves_nothing, tmp_path, monkeypatch
):
    from qlatent.data import folder as pngs  # the module that writes the PNGs
    from qlatent.data.folder import write_image_folder

    write = pngs.write_atomic

    def fails_at_the_third(path, data):
        if path.name == "000002.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(pngs, "write_atomic", fails_at_the_third)
    for out in (tmp_path / "a" / "b" / "new", _images(tmp_path / "empty", 0)):
        err = leaves_nothing(lambda out=out: write_image_folder(torch.rand(4, 1, 8, 8), out))
        assert isinstance(err, OSError) and err.errno == errno.ENOSPC
        assert not (tmp_path / "a").exists() and list((tmp_path / "empty").iterdir()) == []


# ---------------------------------------------------------------------- standard output
def test_a_reader_that_has_gone_leaves_no_descriptor(monkeypatch):
    """``main`` pointed standard output at the null device through a descriptor it opened and
    never closed: one more open file per call that found its reader gone."""
    from qlatent.cli import main

    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(sys, "stdout", open(write, "w", buffering=1 << 16))  # noqa: SIM115
    try:
        before = set(_descriptors())
        assert main(["train", "--list"]) == 141
        assert set(_descriptors()) == before
        assert os.readlink(f"/proc/self/fd/{write}") == os.devnull  # what is left goes nowhere
    finally:
        sys.stdout.close()


# ------------------------------------------------------------------------------ run folders
def test_a_run_folder_in_use_is_let_go_after_every_ending(leaves_nothing, tmp_path):
    from qlatent.train.lock import hold

    folder = tmp_path / "run"

    def held_and_failed() -> None:
        with hold(folder), hold(folder):
            raise RuntimeError("inside")

    assert "inside" in str(leaves_nothing(held_and_failed, [folder]))
    with hold(folder):
        pass
    assert lock._held == {}
