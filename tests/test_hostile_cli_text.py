"""What the command line shows, beyond control characters: Unicode format and separator
characters, a missing dataset's advice, an error the command line does not know, and the record
a finished run keeps while it is evaluated again.

* A bidirectional override or isolate (U+202E, U+2066), a zero-width character (U+200B,
  U+FEFF) or a line separator (U+2028) in a file name reorders, hides or breaks the text of an
  error line ("Trojan Source"): each is shown as a visible ``\\uXXXX`` escape.
* The advice after a missing dataset's message is the program's own lines: a newline in the
  data folder's name (or the cache folder's) started a line of its own there.
* An exception outside the errors the command line reports printed Python's whole traceback
  (and any escape sequence in its message, raw); it is now one line, the traceback on request
  (``QLATENT_TRACEBACK=1``).
* A finished run resumed with another ``eval_seed`` rewrote ``config.json`` before it was
  evaluated again: an evaluation that failed or was interrupted left a ``config.json`` beside
  the ``summary.json`` of the earlier config.
"""

from __future__ import annotations

import json
import shutil
import unicodedata

import pytest

from cli_helpers import TINY_RUN, commands_run, run_cli
from qlatent._utils import terminal_text

#: what :func:`terminal_text` shows as an escape: controls, format characters, separators
HIDDEN = ("Cc", "Cf", "Zl", "Zp")


def _hidden(text: str) -> list[str]:
    """The characters of ``text`` a terminal acts on or hides, other than the newlines that end
    its lines (and the surrogates a stream writes back as the raw bytes 0x80-0x9f)."""
    return [
        c
        for c in text
        if (unicodedata.category(c) in HIDDEN and c != "\n") or "\udc80" <= c <= "\udc9f"
    ]


# --------------------------------------------------------------------------- the function
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\u202eexe.txt", "\\u202eexe.txt"),  # right-to-left override: reads "txt.exe"
        ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),  # isolates
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),  # directional marks
        ("a\u200bb\u200cc\u200dd\u2060e\ufeff", "a\\u200bb\\u200cc\\u200dd\\u2060e\\ufeff"),
        ("one\u2028two\u2029three", "one\\u2028two\\u2029three"),  # line / paragraph separator
        ("soft\xadhyphen", "soft\\u00adhyphen"),  # a format character below U+0100
        ("tag\U000e0041\U000e007f", "tag\\U000e0041\\U000e007f"),  # invisible tag characters
    ],
)
def test_format_and_separator_characters_are_escaped(raw, shown):
    assert terminal_text(raw) == shown
    assert terminal_text(raw, lines=True) == shown
    assert not _hidden(terminal_text(raw))


def test_every_format_and_separator_character_is_escaped():
    every = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in HIDDEN]
    assert len(every) > 150
    shown = terminal_text("".join(every))
    assert not _hidden(shown) and shown.isascii()


def test_ordinary_text_and_the_older_escapes_are_left_as_they_were():
    text = "Λ ± é 漢字 ½ \xa0 \u3000 ü \\ 'q' \udcff \u0301 🙂"  # letters, spaces, a mark, emoji
    assert terminal_text(text) == text
    assert terminal_text("a\x1b[31m\x9b\x07\x7f\t\r\nb\udc9b") == (
        "a\\x1b[31m\\x9b\\x07\\x7f\\t\\r\\nb\\x9b"
    )
    assert terminal_text("x\u202e\ny\x1b", lines=True) == "x\\u202e\ny\\x1b"


def test_a_file_name_with_a_direction_override_is_shown_escaped(tmp_path, capsys):
    code, err = run_cli(["eval", tmp_path / "model\u202egnp.pt\u2028X\u2066"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("qlatent: error:")
    # (an error line folds the separator into a space, as any other whitespace)
    assert "model\\u202egnp.pt X\\u2066" in err and not _hidden(err)


# --------------------------------------------------------------------------- missing datasets
HOSTILE = "d\nX forged\x1b[31m\u202e"
SHOWN = "d\\nX forged\\x1b[31m\\u202e"


def test_a_missing_datasets_advice_shows_the_data_folder_on_its_own_line(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    folder = tmp_path / HOSTILE
    code, err = run_cli(["data", "fetch", "mnist", "--data-dir", folder, "--no-download"], capsys)
    assert code == 2
    lines = err.splitlines()
    assert lines[:3] == [
        "qlatent: error: mnist is not available.",
        "Tried:",
        f"  - folder {tmp_path}/{SHOWN}: no mnist files",
    ]
    assert not any(line.startswith("X") for line in lines)  # no forged line
    assert not _hidden(err)


def test_the_cache_folder_in_the_ways_to_get_a_dataset_stays_on_its_line(
    tmp_path, capsys, monkeypatch
):
    cache = tmp_path / "c\nFORGED"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    from qlatent.cli import main

    capsys.readouterr()
    main(["data", "info", "--data-dir", str(tmp_path / "empty")])
    out = capsys.readouterr().out
    assert f"fill the cache {tmp_path}/c\\nFORGED/qlatent/mnist/" in out
    assert not any(line.startswith("FORGED") for line in out.splitlines())
    code, err = run_cli(
        ["data", "fetch", "mnist", "--data-dir", tmp_path / "empty", "--no-download"], capsys
    )
    assert code == 2 and not any(line.startswith("FORGED") for line in err.splitlines())
    assert f"cache {tmp_path}/c\\nFORGED/qlatent/mnist: lacks" in err


# --------------------------------------------------------------------------- internal errors
def _failing(monkeypatch, error: BaseException):
    """Every command of ``qlatent`` raises ``error``."""

    def fail(args):
        raise error

    commands_run(monkeypatch, fail)


@pytest.mark.parametrize("setting", [None, "", "0"])
def test_an_unknown_error_is_one_line_without_a_traceback(monkeypatch, capsys, setting):
    if setting is None:
        monkeypatch.delenv("QLATENT_TRACEBACK", raising=False)
    else:
        monkeypatch.setenv("QLATENT_TRACEBACK", setting)
    _failing(monkeypatch, RuntimeError("boom\x1b[31m\nsecond line"))
    code, err = run_cli(["train"], capsys)
    assert code == 1
    assert err == (
        "qlatent: internal error: RuntimeError: boom\\x1b[31m\\nsecond line (set "
        "QLATENT_TRACEBACK=1 to see the traceback; please report it)\n"
    )
    _failing(monkeypatch, TypeError())
    code, err = run_cli(["eval", "x.pt"], capsys)
    assert code == 1 and err.startswith("qlatent: internal error: TypeError (set QLATENT")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_traceback_is_shown_on_request(monkeypatch, capsys):
    from qlatent.cli import main

    monkeypatch.setenv("QLATENT_TRACEBACK", "1")
    _failing(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="^boom$"):
        main(["train"])
    assert "internal error" not in capsys.readouterr().err


def test_interruptions_and_exits_are_not_internal_errors(monkeypatch, capsys):
    from qlatent.cli import main

    monkeypatch.delenv("QLATENT_TRACEBACK", raising=False)
    _failing(monkeypatch, KeyboardInterrupt())
    code, err = run_cli(["train"], capsys)
    assert code == 130 and err == "qlatent: interrupted\n"
    _failing(monkeypatch, SystemExit(3))
    with pytest.raises(SystemExit, match="3"):
        main(["train"])
    _failing(monkeypatch, ValueError("bad value"))
    code, err = run_cli(["train"], capsys)
    assert code == 2 and err == "qlatent: error: bad value\n"


@pytest.mark.parametrize("error", [BrokenPipeError(), OSError(28, "No space left on device")])
def test_a_stdout_without_a_descriptor_that_fails_ends_with_a_code(monkeypatch, capsys, error):
    """A broken pipe or a full disk on a standard output that has no file descriptor (a
    ``StringIO``, a notebook's stream): an exit code, not ``io.UnsupportedOperation`` raised
    from the handler that points the descriptor at the null device."""
    import io
    import sys

    from qlatent.cli import main

    class Failing(io.StringIO):
        def flush(self):
            raise error

    commands_run(monkeypatch, lambda args: 0)
    monkeypatch.setattr(sys, "stdout", Failing())
    assert main(["train"]) == (141 if isinstance(error, BrokenPipeError) else 2)
    assert "internal error" not in capsys.readouterr().err


# --------------------------------------------------------------------------- a run's record
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of :data:`TINY_RUN`: (config, run folder), copied before each use."""
    from qlatent.cli import main

    root = tmp_path_factory.mktemp("finished")
    config, run = root / "tiny.toml", root / "run"
    config.write_text(TINY_RUN.format(name="lattice", family="relu_mlp", hidden=[16]))
    assert main(["train", str(config), "--out", str(run)]) == 0
    return config, run


def test_a_finished_runs_config_is_rewritten_only_with_its_new_evaluation(
    finished, tmp_path, capsys, monkeypatch
):
    from qlatent.experiments import custom

    config, run = finished
    shutil.copytree(run, tmp_path / "run")
    run = tmp_path / "run"
    before = {name: (run / name).read_bytes() for name in ("config.json", "summary.json")}
    assert json.loads(before["config.json"])["eval_seed"] == 2020
    again = ["train", config, "--out", run, "--set", "eval_seed=7"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(custom, "evaluate", interrupted)
    code, err = run_cli(again, capsys)
    assert code == 130, err
    # the record still describes the checkpoint and its summary: the new config was not run
    assert {name: (run / name).read_bytes() for name in before} == before

    monkeypatch.undo()
    code, err = run_cli(again, capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["eval_seed"] == 7
    assert json.loads((run / "summary.json").read_text())["config"]["eval_seed"] == 7
