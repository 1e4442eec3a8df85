"""Text from outside reaching the terminal: control characters are shown, never acted on.

A file or folder name, a config value or key, a checkpoint's saved config, a ``.qlc`` file, a
dataset folder or a command-line argument may hold ESC (``\\x1b[31m`` recolours, ``\\x1b[2J``
clears the screen, ``\\x1b]0;…\\x07`` retitles the window), a C1 control (``\\x9b`` is CSI) or a
newline that forges a line of output. Every line the command line writes shows them escaped
(:func:`qlatent._utils.terminal_text`), while the path itself still works as a path and the
files written keep the text as it is.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent._utils import terminal_text
from qlatent.cli import main
from qlatent.train import save_atomic

#: an escape sequence, a C1 CSI, a bell, DEL and a newline, all in one name
HOSTILE = "a\x1b[31mred\x9b2J\x07\x7f\nX"
#: how :data:`HOSTILE` reads once escaped
SHOWN = "a\\x1b[31mred\\x9b2J\\x07\\x7f\\nX"


def _controls(text: str) -> list[str]:
    """The control characters in ``text`` other than the newlines that end its lines (and the
    surrogates that a stream writes back as the raw bytes 0x80-0x9f)."""
    return [
        c
        for c in text
        if (unicodedata.category(c) == "Cc" and c != "\n") or "\udc80" <= c <= "\udc9f"
    ]


# --------------------------------------------------------------------------- the function
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("\x9b31m", "\\x9b31m"),
        ("\x00\x07\x08\x7f", "\\x00\\x07\\x08\\x7f"),
        ("a\tb\rc\nd", "a\\tb\\rc\\nd"),
        ("\x85\x9f\x80", "\\x85\\x9f\\x80"),
        ("bad\udc9bname", "bad\\x9bname"),  # the byte 0x9b of an undecodable file name
    ],
)
def test_every_control_character_is_escaped(raw, shown):
    assert terminal_text(raw) == shown
    assert not _controls(terminal_text(raw))


def test_printable_text_is_left_as_it_is():
    text = "Λ ± é 漢 \\ / 'quoted' \udcff"  # \udcff: a byte 0xff, no control to a terminal
    assert terminal_text(text) == text
    assert terminal_text(3.5) == "3.5"


def test_lines_keep_their_newlines_and_nothing_else():
    assert terminal_text("one\x1b[1m\ntwo\r\n", lines=True) == "one\\x1b[1m\ntwo\\r\n"
    assert terminal_text(HOSTILE) == SHOWN


# --------------------------------------------------------------------------- error lines
def test_a_missing_checkpoints_name_is_shown_escaped(tmp_path, capsys):
    code, err = run_cli(["eval", tmp_path / "bad\x1b[31mred.pt"], capsys)
    assert code == 2 and one_line_error(err)
    assert "bad\\x1b[31mred.pt" in err and not _controls(err)


def test_an_undecodable_names_c1_byte_is_shown_escaped(tmp_path, capsys):
    # a name that is no UTF-8 reaches Python as surrogates, written back as the raw bytes
    code, err = run_cli(["eval", f"{tmp_path}/bad\udc9b31m.pt"], capsys)
    assert code == 2 and one_line_error(err)
    assert "bad\\x9b31m.pt" in err and not _controls(err)


def test_an_argument_argparse_refuses_is_shown_escaped(capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "model.pt", "extra\x1b[2J\x9b1m"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "unrecognized arguments: extra\\x1b[2J\\x9b1m" in err and not _controls(err)


def test_a_config_file_and_an_override_key_are_shown_escaped(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[bottleneck]\nname = "lat\\u001b]0;owned\\u0007tice"\n')
    code, err = run_cli(["train", config], capsys)
    assert code == 2 and one_line_error(err) and not _controls(err)
    assert "\\x1b]0;owned\\x07" in err
    code, err = run_cli(["train", tmp_path / f"{HOSTILE}.toml"], capsys)
    assert code == 2 and one_line_error(err) and not _controls(err)
    code, err = run_cli(["train", "--set", "model.\x1b[31m\x9b=1"], capsys)
    assert code == 2 and one_line_error(err) and not _controls(err)
    assert "model.\\x1b[31m\\x9b" in err


def test_the_lines_after_a_missing_datasets_message_are_escaped(capsys):
    from qlatent.data import DataNotFoundError
    from qlatent.data.cli import report_error

    # (the message's own newlines are its line structure: a name's newline is not told apart)
    name, shown = "d\x1b[2J\x9b1m\x07", "d\\x1b[2J\\x9b1m\\x07"
    capsys.readouterr()
    err = DataNotFoundError(f"no files under {name}\n  tried {name}\n  ways: fetch it")
    assert report_error(err) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"qlatent: error: no files under {shown}",
        f"  tried {shown}",
        "  ways: fetch it",
    ]


def test_an_interruptions_note_is_escaped(capsys):
    from qlatent.cli import _interrupted

    interruption = KeyboardInterrupt()
    interruption.add_note(f"the run in {HOSTILE} resumes")
    capsys.readouterr()
    assert _interrupted(interruption) == 130
    err = capsys.readouterr().err
    assert err == f"qlatent: interrupted; the run in {SHOWN} resumes\n"


# --------------------------------------------------------------------------- checkpoints
def _tiny_run(tmp_path, out) -> None:
    """``qlatent train`` of :data:`TINY_RUN` (a lattice bottleneck in a ReLU MLP) into ``out``."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_RUN.format(family="relu_mlp", hidden=[8], name="lattice"))
    assert main(["train", str(config), "--out", str(out)]) == 0


def test_a_checkpoints_hostile_bottleneck_name_is_shown_escaped(tmp_path, capsys):
    path = tmp_path / "hostile.pt"
    run = {
        "bottleneck": {"name": "\x1b]0;owned\x07\x1b[2J\x9b"},
        "loss": {},
        "derived": {"image_shape": [1, 8, 8], "data_variance": 1.0},
    }
    torch.save({"model": {}, "run_config": run}, path)
    for argv in (
        ["eval", path],
        ["compress", "--checkpoint", path, "--data", "synthetic-test", "-o", tmp_path / "o.qlc"],
    ):
        code, err = run_cli(argv, capsys)
        assert code == 2 and one_line_error(err), err
        assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b" in err and not _controls(err)


def test_a_checkpoints_hostile_data_folder_is_shown_escaped(tmp_path, capsys):
    # a trained model whose saved config names, as its data, a folder that clears the screen
    _tiny_run(tmp_path, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    data = ckpt["run_config"]["data"]
    data.update(name="folder", folder=str(tmp_path / HOSTILE), image_size=8)
    path = tmp_path / "hostile.pt"
    save_atomic(ckpt, path)  # with its digest recomputed, as anyone can
    code, err = run_cli(["eval", path], capsys)
    assert code == 2 and one_line_error(err), err
    # (an error line folds the name's newline into a space, as any other whitespace)
    folded = SHOWN.replace("\\n", " ")
    assert f"image folder {tmp_path}/{folded} does not" in err
    assert not _controls(err)


# --------------------------------------------------------------------------- status lines
def test_compress_and_decompress_work_on_hostile_paths_and_show_them_escaped(
    tmp_path, capsys, coding_checkpoint
):
    qlc = tmp_path / f"{HOSTILE}.qlc"
    capsys.readouterr()
    argv = ["compress", "--checkpoint", coding_checkpoint, "--data", "synthetic-test"]
    assert main([str(a) for a in [*argv, "--limit", 3, "-o", qlc]]) == 0
    out = capsys.readouterr().out
    assert qlc.is_file()  # the path is the path as given
    assert out.startswith(f"wrote {tmp_path}/{SHOWN}.qlc: ") and out.count("\n") == 1
    assert not _controls(out)

    recon, png = tmp_path / f"{HOSTILE}.npy", tmp_path / f"{HOSTILE}.png"
    argv = ["decompress", qlc, "--checkpoint", coding_checkpoint, "-o", recon, "--png", png]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert recon.is_file() and png.is_file()
    assert out.startswith(f"wrote {tmp_path}/{SHOWN}.npy: 3 reconstructions and ")
    assert f"{SHOWN}.png" in out and out.count("\n") == 1 and not _controls(out)


def test_data_info_shows_a_hostile_folder_escaped_line_by_line(tmp_path, capsys):
    folder = tmp_path / HOSTILE
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(b"not the MNIST file")
    capsys.readouterr()
    assert main(["data", "info", "--data-dir", str(folder)]) == 1  # a file that does not verify
    out = capsys.readouterr().out
    assert f"mnist: data-dir {tmp_path}/{SHOWN} (NOT verified)" in out.splitlines()
    assert not _controls(out)
    assert not any(line.startswith("X") for line in out.splitlines())  # no forged line


def test_train_and_eval_show_a_hostile_run_folder_escaped(tmp_path, capsys):
    run = tmp_path / HOSTILE
    capsys.readouterr()
    _tiny_run(tmp_path, run)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"training lattice (relu_mlp, synthetic) in {tmp_path}/{SHOWN}"
    assert f"wrote {tmp_path}/{SHOWN}/summary.json" in out and not _controls(out)
    assert (run / "best.pt").is_file()

    report = run / "report.json"
    assert main(["eval", str(run / "best.pt"), "-o", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"wrote {tmp_path}/{SHOWN}/report.json"
    assert not _controls(out)
    # the JSON written holds the command as it was given, not its display
    assert HOSTILE in json.loads(report.read_text())["command"]
