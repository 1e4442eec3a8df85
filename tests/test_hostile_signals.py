"""A command interrupted from outside: Ctrl-C and SIGTERM (``kill``, ``timeout``, a job
scheduler) end it with one line on stderr that says where its run stands (exit code 130 or
143), and the run resumes; a reader of stdout that has gone (``qlatent train --list | head -1``)
ends it without a word (exit code 141)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cli_helpers import TINY_RUN, run_cli
from qlatent.experiments import custom, text_rd
from qlatent.train.checkpoint import load, save_atomic

#: ``qlatent ARGS`` in a process of its own, with Ctrl-C's handler in place even where the
#: process running the tests was started with SIGINT ignored (its children inherit that)
LAUNCH = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from qlatent.cli import main; sys.exit(main())"
)


def _config(tmp_path, **train):
    """The tiny run of :data:`~cli_helpers.TINY_RUN`, with these ``[train]`` settings."""
    text = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[16]")
    text = text.replace("epochs = 1\nmax_steps = 3\n", "")
    config = tmp_path / "tiny.toml"
    config.write_text(text + "".join(f"{key} = {value}\n" for key, value in train.items()))
    return config


def _end_session(process: subprocess.Popen) -> None:
    """Kill what is left of ``process``'s session: the process, and a worker it started, which
    outlives it where SIGTERM's default action ended it."""
    with contextlib.suppress(ProcessLookupError):  # nothing left
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _interrupted_cli(args, capsys) -> tuple[int, str]:
    """:func:`~cli_helpers.run_cli`, an interruption that escapes ``main`` failing the test
    (rather than stopping the test session, as a KeyboardInterrupt does)."""
    try:
        return run_cli(args, capsys)
    except KeyboardInterrupt as err:
        pytest.fail(f"{type(err).__name__} escaped main")


# ------------------------------------------------------------------- Ctrl-C and SIGTERM
@pytest.mark.parametrize(
    ("signum", "code", "what"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
def test_a_signal_mid_run_is_one_line_and_the_run_resumes(tmp_path, capsys, signum, code, what):
    config, run = _config(tmp_path, epochs=100_000), tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "train", str(config), "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's Ctrl-C reaches the tests, not this process
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / "last.pt").is_file() and process.poll() is None:
            assert time.monotonic() < deadline, "no epoch completed in 60 s"
            time.sleep(0.05)
        process.send_signal(signum)  # in the middle of a later epoch, or of its checkpoint
        _, err = process.communicate(timeout=60)
    finally:
        _end_session(process)
    assert process.returncode == code, err
    assert err.splitlines() == [
        f"qlatent: {what}; the run in {run} resumes from its last completed epoch with the "
        "same command"
    ]
    epoch = load(run / "last.pt")["state"]["epoch"]
    assert epoch >= 1
    # the same command, told to stop one epoch later: it trains the epoch that was interrupted
    resumed, err = _interrupted_cli(
        ["train", config, "--out", run, "--set", f"train.epochs={epoch + 1}"], capsys
    )
    assert resumed == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train"]["epochs"] == epoch + 1 and summary["train"]["stopped"] == "epochs"
    assert len((run / "log.jsonl").read_text().splitlines()) == epoch + 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_program_ends_by_the_signal_after_its_line(tmp_path, signum):
    """``qlatent`` (``python -m qlatent``) writes its line, then ends by the signal itself, as
    Python's default does: a shell loop around a program that merely exited 130 went on to its
    next command after Ctrl-C."""
    config, run = _config(tmp_path, epochs=100_000), tmp_path / "run"
    program = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('qlatent', run_name='__main__')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program, "train", str(config), "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / "last.pt").is_file() and process.poll() is None:
            assert time.monotonic() < deadline, "no epoch completed in 60 s"
            time.sleep(0.05)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        _end_session(process)
    assert process.returncode == -signum, err
    assert len(err.splitlines()) == 1 and err.startswith("qlatent: "), err
    assert "resumes from its last completed epoch" in err


def test_an_interruption_before_the_first_epoch_says_the_run_starts_again(
    tmp_path, capsys, monkeypatch
):
    config, run = _config(tmp_path), tmp_path / "run"

    def interrupted(cfg, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(custom, "train", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    code, err = _interrupted_cli(["train", config, "--out", run], capsys)
    assert code == 130
    assert err.splitlines() == [
        f"qlatent: interrupted; no epoch of the run in {run} was completed; the same command "
        "starts it again"
    ]
    assert signal.getsignal(signal.SIGTERM) is before  # main's handler goes with it


@pytest.mark.parametrize("written_now", [False, True])
def test_a_fresh_run_resumes_from_its_own_checkpoint_only(
    tmp_path, capsys, monkeypatch, written_now
):
    """A ``--fresh`` run interrupted before its first checkpoint leaves the last run's
    ``last.pt``, which the same command does not resume: the line says so."""
    config, run = _config(tmp_path), tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"the last run's checkpoint")
    os.utime(run / "last.pt", (time.time() - 3600,) * 2)

    def interrupted(cfg, **kwargs):
        if written_now:  # an epoch of this run completed
            (run / "last.pt").write_bytes(b"this run's checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(custom, "train", interrupted)
    code, err = _interrupted_cli(["train", config, "--out", run, "--fresh"], capsys)
    assert code == 130
    if written_now:
        line = (
            f"the run in {run} resumes from its last completed epoch with the same command "
            "without --fresh"
        )
    else:
        line = f"no epoch of the run in {run} was completed; the same command starts it again"
    assert err.splitlines() == [f"qlatent: interrupted; {line}"]


class _Interrupted(io.BytesIO):
    """A file that Ctrl-C interrupts after its first 100 bytes."""

    def write(self, data):
        if self.tell() > 100:
            raise KeyboardInterrupt
        return super().write(data)


def test_an_interruption_mid_checkpoint_is_the_interruption_and_leaves_no_file(
    tmp_path, capsys, monkeypatch
):
    """torch.save interrupted in the middle of its zip file fails again closing it (a
    RuntimeError, the interruption its context): still the one line, and the checkpoint's
    temporary file is taken back."""
    config, run = _config(tmp_path), tmp_path / "run"
    save = torch.save

    def interrupted(cfg, **kwargs):
        monkeypatch.setattr(torch, "save", lambda obj, f: save(obj, _Interrupted()))
        save_atomic({"model": {"w": torch.zeros(1000)}}, run / "last.pt")

    monkeypatch.setattr(custom, "train", interrupted)
    code, err = _interrupted_cli(["train", config, "--out", run], capsys)
    assert code == 130
    assert err.splitlines() == [
        f"qlatent: interrupted; no epoch of the run in {run} was completed; the same command "
        "starts it again"
    ]
    assert list(run.iterdir()) == []


def test_an_interrupted_reproduction_names_its_runs_folder(tmp_path, capsys, monkeypatch):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(text_rd, "reproduce", interrupted)
    runs = tmp_path / "runs"
    code, err = _interrupted_cli(
        ["reproduce", "text-rd", "--runs-dir", runs, "--results-dir", tmp_path / "results"], capsys
    )
    assert code == 130
    assert err.splitlines() == [
        f"qlatent: interrupted; the same command resumes the runs in {runs} from their last "
        "completed epochs"
    ]


def test_only_rank_zero_of_a_torchrun_world_says_it_was_interrupted(tmp_path, capsys, monkeypatch):
    """Ctrl-C reaches every rank of the terminal's process group: one line, not one per rank;
    every rank still exits with 130."""

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(text_rd, "reproduce", interrupted)
    folders = ["--runs-dir", tmp_path / "runs", "--results-dir", tmp_path / "results"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    lines = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        code, err = _interrupted_cli(["reproduce", "text-rd", *folders], capsys)
        assert code == 130
        lines.append(err.splitlines())
    assert len(lines[0]) == 1 and lines[0][0].startswith("qlatent: interrupted; ")
    assert lines[1] == []


def test_sigterm_is_handled_by_the_command_outside_a_torchrun_world_only(
    tmp_path, capsys, monkeypatch
):
    """A torchrun worker keeps SIGTERM's default action: torchrun ends its workers with it,
    and one blocked in a collective would run no handler until the call returns."""
    config, seen = _config(tmp_path), []

    def record(cfg, **kwargs):
        seen.append(signal.getsignal(signal.SIGTERM))
        return {}  # as a rank other than 0 returns

    monkeypatch.setattr(custom, "train", record)
    before = signal.getsignal(signal.SIGTERM)
    for world_size in ("1", "2"):
        monkeypatch.setenv("WORLD_SIZE", world_size)
        assert run_cli(["train", config, "--out", tmp_path / "run"], capsys)[0] == 0
    assert seen[0] is not before and callable(seen[0])
    assert seen[1] is before
    assert signal.getsignal(signal.SIGTERM) is before


#: ``qlatent reproduce text-rd`` whose table is two runs that wait a minute each, in two worker
#: processes (:func:`~qlatent.experiments._jobs.run_jobs`); it says when they are handed over
SWEEP = """
import multiprocessing.connection, sys
from qlatent.cli import main
from qlatent.experiments import _jobs, text_rd

def reproduce(**kwargs):
    print("handing over", flush=True)
    wait = multiprocessing.connection.wait  # a module's function: it pickles for the workers
    _jobs.run_jobs(wait, [{"object_list": [], "timeout": 60}] * 2, jobs=2)

text_rd.reproduce = reproduce
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_ends_a_sweep_with_its_worker_processes(tmp_path):
    """SIGTERM to ``qlatent reproduce --jobs`` alone (``kill PID``) ends its workers too: the
    pool would otherwise wait for the runs they are in to finish before the command ends."""
    runs = tmp_path / "runs"
    args = ["reproduce", "text-rd", "--runs-dir", runs, "--results-dir", tmp_path / "results"]
    process = subprocess.Popen(
        [sys.executable, "-c", SWEEP, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the workers with it, for _end_session
    )
    try:
        assert process.stdout.readline() == "handing over\n"
        time.sleep(2)  # the workers are started and waiting
        process.send_signal(signal.SIGTERM)
        # the workers hold the pipes too: this returns once they have ended as well
        _, err = process.communicate(timeout=20)
    finally:
        _end_session(process)
    assert process.returncode == 143, err
    assert err.splitlines() == [
        f"qlatent: terminated (SIGTERM); the same command resumes the runs in {runs} from their "
        "last completed epochs"
    ]


# ------------------------------------------------------------------------- a closed stdout
@pytest.mark.parametrize(
    ("args", "buffered"),
    # argparse drops the errors of its own writes: unbuffered, --help ends quietly as it was
    [(["train", "--list"], True), (["train", "--list"], False), (["--help"], True)],
)
def test_a_reader_that_has_gone_ends_the_command_without_a_word(args, buffered):
    """stdout's reader closed before the command writes (``| head -1`` once its line is read,
    ``| true``): exit code 141 and nothing on stderr, whether the output is written at once
    (PYTHONUNBUFFERED) or only when the command ends (buffered, flushed at exit)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        process = subprocess.run(
            [sys.executable, "-c", LAUNCH, *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (process.returncode, process.stderr) == (141, "")
