"""The process around ``qlatent``: a standard stream closed by the caller (``>&-``, ``2>&-``) or
full (``> /dev/full``), an encoding that cannot show the program's text (``LANG=C``,
``PYTHONIOENCODING=ascii``), a file-size limit that stops a write part-way. Each ends with at
most one line on stderr, never a traceback, and leaves no output file behind; a stream that
is closed takes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cli_helpers import TINY_RUN, one_line_error, run_cli


def _qlatent(args, *, prefix=(), **kwargs) -> subprocess.CompletedProcess:
    """``python -m qlatent ARGS`` (the program, :func:`qlatent.cli.console`) in a process of
    its own, text captured unless a stream is given, behind ``prefix`` (a shell or a wrapper
    that sets up the process before it starts)."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    streams.update({k: kwargs.pop(k) for k in ("stdout", "stderr") if k in kwargs})
    return subprocess.run(
        [*prefix, sys.executable, "-m", "qlatent", *map(str, args)],
        **streams,
        text=True,
        timeout=120,
        **kwargs,
    )


def _closed(fd: int) -> tuple[str, ...]:
    """A prefix that runs its command with descriptor ``fd`` closed, as ``>&-`` / ``2>&-`` do."""
    return ("sh", "-c", f'exec "$@" {fd}>&-', "sh")


# ------------------------------------------------------------------------- a full stdout
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--list"]])
def test_an_output_that_cannot_be_written_is_one_error(args):
    """``> /dev/full`` (every write fails with ENOSPC): argparse dropped the error of writing
    the help, and ``qlatent --help`` exited 0 having written nothing."""
    with open("/dev/full", "w") as full:
        process = _qlatent(args, stdout=full)
    assert process.returncode == 2, process.stderr
    assert one_line_error(process.stderr), process.stderr
    assert "No space left on device" in process.stderr


# --------------------------------------------------------------- a closed stdout or stderr
def test_a_closed_stdout_takes_the_output_without_a_traceback():
    """``qlatent train --list >&-``: Python leaves ``sys.stdout`` None, and the command ended
    with a traceback flushing it."""
    process = _qlatent(["train", "--list"], prefix=_closed(1))
    assert (process.returncode, process.stderr) == (0, "")


def test_an_error_with_stderr_closed_does_not_go_to_stdout(tmp_path):
    """``2>&-``: ``print(..., file=sys.stderr)`` with ``sys.stderr`` None writes to stdout, so
    the error line went into the command's output."""
    args = ["compress", "--checkpoint", tmp_path / "none.pt", "--data", "synthetic-test"]
    process = _qlatent([*args, "-o", tmp_path / "x.qlc"], prefix=_closed(2))
    assert (process.returncode, process.stdout) == (2, "")


def test_a_progress_bar_with_stderr_closed_does_not_stop_the_run(tmp_path):
    """``qlatent train CONFIG 2>&-`` with a progress bar: the bar's first write failed, and the
    run stopped before its first step with exit code 1 and not a word."""
    text = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[8]")
    config = tmp_path / "tiny.toml"
    config.write_text(text.replace("progress = false", "progress = true"))
    run = tmp_path / "run"
    process = _qlatent(["train", config, "--out", run], prefix=_closed(2))
    assert process.returncode == 0, process.stdout
    assert (run / "summary.json").is_file()


# -------------------------------------------------------------- an encoding without Λ or ±
#: an ASCII terminal as Python's variable sets it, and as a C locale without UTF-8 mode does
ASCII = {"PYTHONIOENCODING": "ascii"}
C_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


@pytest.mark.parametrize(
    ("args", "env", "escaped"),
    [(["eval", "--help"], ASCII, "\\xb7"), (["bench", "--help"], C_LOCALE, "\\u039b")],
)
def test_help_shows_under_an_ascii_encoding(args, env, escaped):
    """``eval --help`` holds a ``·``, ``bench --help`` a ``Λ``: a UnicodeEncodeError traceback
    where stdout is ASCII; now escaped."""
    process = _qlatent(args, env={**os.environ, **env})
    assert (process.returncode, process.stderr) == (0, "")
    assert escaped in process.stdout


def test_a_written_file_is_not_reported_as_an_error_under_an_ascii_encoding(
    tmp_path, coding_checkpoint
):
    """``compress -o é.qlc`` under ``PYTHONIOENCODING=ascii`` wrote the file, then failed to
    print its name and exited 2 with a codec error."""
    output = tmp_path / "é.qlc"
    args = ["compress", "--checkpoint", coding_checkpoint, "--data", "synthetic-test"]
    process = _qlatent(
        [*args, "--limit", 4, "-o", output], env={**os.environ, "PYTHONIOENCODING": "ascii"}
    )
    assert (process.returncode, process.stderr) == (0, "")
    assert output.is_file() and "\\xe9.qlc" in process.stdout


# ------------------------------------------------------------------- a file-size limit
@pytest.mark.skipif(sys.platform == "win32", reason="needs resource limits")
def test_a_file_size_limit_mid_write_is_one_error_and_leaves_no_file(
    tmp_path, capsys, coding_checkpoint
):
    """RLIMIT_FSIZE below the reconstructions' size (``ulimit -f``; Python ignores SIGXFSZ, so
    the write fails with EFBIG): torch.save's zip writer replaced the error with its own
    ``RuntimeError: [enforce fail …] unexpected pos``, a traceback."""
    qlc = tmp_path / "a.qlc"
    args = ["compress", "--checkpoint", coding_checkpoint, "--data", "synthetic-test"]
    assert run_cli([*args, "--limit", 16, "-o", qlc], capsys)[0] == 0
    out = tmp_path / "out"
    out.mkdir()
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
    wrapper = (
        sys.executable,
        "-c",
        limit + "import runpy; runpy.run_module('qlatent', run_name='__main__')",
    )
    process = subprocess.run(
        [*wrapper, "decompress", str(qlc), "--checkpoint", str(coding_checkpoint)]
        + ["-o", str(out / "r.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2, process.stderr
    assert one_line_error(process.stderr), process.stderr
    assert "File too large" in process.stderr
    assert list(out.iterdir()) == []  # neither the reconstructions nor their temporary file
