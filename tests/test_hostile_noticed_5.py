"""Four defects noticed in passing, each checked here.

Fixed here: an event file that could not be written stopped the run with one error naming the
folder, and TensorBoard's writer thread, which meets the error first, printed it again with its
traceback (through ``threading.excepthook``). While a run's writer is open the hook leaves that
thread's error to the run, which raises it at its next flush or close; every other thread's
error goes on to the hook as before, and the hook is the caller's again afterwards.

Also fixed: a text-rd point resumed in a moved runs folder read the warm start's recorded path
from ``config.json`` alone; a crash between the point's first checkpoint and that file's write
left none, and the resume was refused as "written with a different config". The path is now
read from the checkpoint's own record of the run where ``config.json`` is missing.

Also fixed: ``qlatent.rng.counter_uniform`` skipped its argument checks while ``make_fx`` or
``torch.export`` recorded it, so an int64 or 1-d key, or a float offset, drew other numbers
without a word; the checks read no tensor values and now run there too (a traced size or offset
may be a ``torch.SymInt``).

Not changed: ``AveragedModel`` (without ``use_buffers``) of a module with no parameters, such as
a bare ``vq_ema`` bottleneck, fails inside torch on its second ``update_parameters``; qlatent's
training loop has no weight averaging, so only a caller of torch reaches it.
"""

from __future__ import annotations

import errno
import json
import shutil
import threading

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from qlatent.data import synthetic_binary
from qlatent.models import lattice_vae
from qlatent.rng import counter_uniform
from qlatent.train import TrainConfig, fit
from qlatent.train import loop as loop_module

FULL = "No space left on device"


# ---------------------------------------------------------------- TensorBoard's writer thread
def _full_disk_after(monkeypatch, writes: int) -> None:
    """The event file's writes meet a full disk after its first ``writes`` ones."""
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.compat.tensorflow_stub.io import gfile

    real, done = gfile.LocalFileSystem._write, []

    def write(self, filename, content, mode):
        if len(done) >= writes:
            raise OSError(errno.ENOSPC, FULL)
        done.append(1)
        return real(self, filename, content, mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "_write", write)


def _heard(monkeypatch) -> list[threading.ExceptHookArgs]:
    """The threads' errors that reach ``threading.excepthook`` from now on."""
    heard: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", heard.append)
    return heard


def _fit_with_board(out) -> None:
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=2, hidden=8, data_dim=16)
    cfg = TrainConfig(epochs=3, batch_size=40, progress=False, tensorboard=True)
    fit(model, synthetic_binary(n=120, dim=16, seed=3), cfg, out_dir=out)


@pytest.mark.parametrize("writes", [0, 3], ids=["first write", "a later write"])
def test_an_event_file_that_cannot_be_written_is_reported_once(tmp_path, monkeypatch, writes):
    heard = _heard(monkeypatch)
    _full_disk_after(monkeypatch, writes)
    with pytest.raises(OSError, match=f"cannot write the TensorBoard events in .*: {FULL}$"):
        _fit_with_board(tmp_path / "run")
    assert [args.exc_value for args in heard] == []  # no second report, with a traceback
    assert threading.excepthook == heard.append  # the caller's hook again


def test_other_threads_errors_still_reach_the_hook_while_a_board_is_open(tmp_path, monkeypatch):
    pytest.importorskip("torch.utils.tensorboard")
    heard = _heard(monkeypatch)

    def fails() -> None:
        raise OSError(errno.EIO, "elsewhere")

    with loop_module._Board(tmp_path, first_epoch=1) as board:
        board.write({"epoch": 1, "val_objective": 1.0})
        assert threading.excepthook != heard.append  # the board's own, for its writer
        thread = threading.Thread(target=fails)
        thread.start()
        thread.join()
    assert [str(args.exc_value) for args in heard] == ["[Errno 5] elsewhere"]
    assert threading.excepthook == heard.append


# ---------------------------------------------------------------- text-rd without config.json
def test_a_moved_text_rd_point_without_its_config_json_resumes(tmp_path, capsys):
    """The crash came after the point's first checkpoint, before its ``config.json``."""
    from qlatent.experiments import text_rd

    def args(root) -> dict:
        runs, results = str(root / "runs"), str(root / "results")
        return dict(quick=True, models=["language_model"], runs_dir=runs, results_dir=results)

    old, new = tmp_path / "old", tmp_path / "new"
    text_rd.reproduce(**args(old))
    shutil.move(old, new)
    point = new / "runs" / "text-rd" / "language_model" / "no code"
    (point / "summary.json").unlink()
    (point / "config.json").unlink()
    warm = str(old / "runs" / "text-rd" / "identity" / "unquantized" / "best.pt")
    cfg = text_rd.point_config("language_model", "no code", quick=True, runs_dir=str(new / "runs"))
    assert text_rd._as_recorded(cfg).init_from == warm  # from the checkpoint's record
    capsys.readouterr()
    payload = text_rd.reproduce(**args(new))  # resumed, not refused as another config
    assert payload["curves"]["language_model"][0]["rate_bits_per_word"] >= 0
    assert json.loads((point / "summary.json").read_text())["config"]["init_from"] == warm
    assert json.loads((point / "config.json").read_text())["init_from"] == warm


# ---------------------------------------------------------------- counter_uniform under make_fx
KEY = torch.tensor(5, dtype=torch.int32)


@pytest.mark.parametrize("mode", ["real", "fake", "symbolic"])
@pytest.mark.parametrize(
    ("key", "shape", "dtype", "offset", "message"),
    [
        (KEY.long(), (3,), torch.float32, 0, "key must be a 0-d int32 tensor"),
        (KEY.reshape(1), (3,), torch.float32, 0, "key must be a 0-d int32 tensor"),
        (KEY.float(), (3,), torch.float32, 0, "key must be a 0-d int32 tensor"),
        (KEY, (3,), torch.float32, 1.5, "offset must be an integer"),
        (KEY, (-2, -3), torch.float32, 0, "shape must be a tuple of non-negative integers"),
        (KEY, (3,), torch.int32, 0, "dtype must be a floating-point torch.dtype"),
    ],
    ids=["int64 key", "1-d key", "float key", "float offset", "negative sizes", "integer dtype"],
)
def test_counter_uniform_checks_its_arguments_under_make_fx(
    mode, key, shape, dtype, offset, message
):
    with pytest.raises(ValueError, match=message):
        counter_uniform(key, shape, dtype, offset)  # as eagerly
    with pytest.raises(ValueError, match=message):
        make_fx(lambda k: counter_uniform(k, shape, dtype, offset), tracing_mode=mode)(key)


def test_counter_uniform_traced_on_symbolic_sizes_still_draws_the_eager_numbers():
    """Sizes and an offset that are ``torch.SymInt`` pass the checks; a bad key still not."""

    def draw(k, y):
        return counter_uniform(k, y.shape, y.dtype, offset=y.shape[1])

    y = torch.zeros(4, 3)
    graph = make_fx(draw, tracing_mode="symbolic")(KEY, y)
    y = torch.zeros(6, 2)
    assert torch.equal(graph(KEY, y), counter_uniform(KEY, (6, 2), offset=2))
    with pytest.raises(ValueError, match="key must be a 0-d int32 tensor"):
        make_fx(draw, tracing_mode="symbolic")(KEY.long(), y)
