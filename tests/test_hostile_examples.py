"""Hostile or mistaken options to the scripts under examples/ and to ``qlatent data``: each is
one error line naming the option, before any long work starts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]

#: the scripts that read a trained lattice-mnist row from a runs folder (its option)
TRAINED = [
    ("e8-coset-cost", "--runs"),
    ("gradient-noise", "--runs"),
    ("latent-usage", "--runs"),
    ("lattice-plugin", "--runs"),
    ("lattice-plugin-tails", "--runs"),
    ("trained-log-density-bias", "--runs"),
    ("proposal-gradients", "--runs-dir"),
]


def _run(name, args, monkeypatch, capsys, **patch):
    """``python examples/NAME.py ARGS`` in-process: its exit code and the last line of stderr."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr, value in patch.items():
        monkeypatch.setattr(module, attr, value)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        module.main()
    lines = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, lines[-1] if lines else ""


@pytest.mark.parametrize("name,option", TRAINED)
def test_a_row_without_a_checkpoint_is_one_error_line(name, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, last = _run(name, [option, tmp_path / "runs"], monkeypatch, capsys)
    assert code == 2
    assert last.startswith(f"{name}.py: error: ") and "no checkpoint" in last


@pytest.mark.parametrize("name,option", TRAINED)
def test_an_unknown_row_is_one_error_line(name, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, last = _run(name, [option, tmp_path, "--model", "nope"], monkeypatch, capsys)
    assert code == 2
    assert last.startswith(f"{name}.py: error: ") and "unknown model 'nope'" in last


@pytest.mark.parametrize(
    "name,args",
    [
        *[(name, [option, "{tmp}"]) for name, option in TRAINED],
        ("lattice-gain-vs-rate", ["--rows", 2, "--cell-samples", 2, "--lattices", "z"]),
        ("lattice-gain-laplace", ["--rows", 2, "--cell-samples", 2, "--lattices", "z"]),
    ],
)
def test_an_out_that_is_a_folder_is_refused_first(name, args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path) if a == "{tmp}" else a for a in args]
    code, last = _run(name, [*args, "--out", tmp_path], monkeypatch, capsys)
    assert code == 2
    folder = f"--out {tmp_path} is a folder; it takes the path of a JSON file"
    assert last == f"{name}.py: error: {folder}"


@pytest.mark.parametrize(
    "name,args,message",
    [
        ("e8-coset-cost", ["--images", 0], "--images >= 2"),
        ("e8-coset-cost", ["--mc-images", -1], "--mc-images >= 2"),
        ("e8-coset-cost", ["--draws", 0], "--draws >= 1"),
        ("trained-log-density-bias", ["--images", 0], "--images >= 1"),
        ("trained-log-density-bias", ["--iwae-images", -1], "--iwae-images >= 0"),
        ("lattice-plugin", ["--counts", "abc"], "--counts takes two positive integers S,D"),
        ("lattice-plugin", ["--counts", "0,128"], "--counts takes two positive integers S,D"),
        ("lattice-plugin", ["--check-counts", "8192"], "--check-counts takes two positive"),
        ("lattice-plugin", ["--images", 0], "--images and --check-images must be positive"),
        ("lattice-plugin", ["--check-images", -3], "--images and --check-images must be positive"),
    ],
)
def test_trained_row_sizes_are_checked_first(name, args, message, tmp_path, monkeypatch, capsys):
    code, last = _run(name, ["--runs", tmp_path, *args], monkeypatch, capsys)
    assert code == 2
    assert last.startswith(f"{name}.py: error: ") and message in last


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
@pytest.mark.parametrize("name", ["lattice-gain-vs-rate", "lattice-gain-laplace"])
def test_max_bias_must_be_a_finite_non_negative_number(name, value, tmp_path, monkeypatch, capsys):
    args = ["--rows", 2, "--cell-samples", 2, "--lattices", "z", "--out", tmp_path / "out.json"]
    code, last = _run(name, [*args, "--max-bias", value], monkeypatch, capsys)
    assert code == 2
    assert last == f"{name}.py: error: --max-bias must be a finite number >= 0, got {float(value)}"
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("option", ["--rounds", "--calls", "--rows", "--dim"])
def test_eager_ab_sizes_are_checked_before_any_git_call(option, tmp_path, monkeypatch, capsys):
    class NoSubprocess:
        def run(*args, **kwargs):
            raise AssertionError("a subprocess was started")

    args = [option, 0, "--out", tmp_path / "out.json"]
    code, last = _run("lattice-eager-ab", args, monkeypatch, capsys, subprocess=NoSubprocess)
    assert code == 2
    assert last == (
        "lattice-eager-ab.py: error: --rounds, --calls, --rows and --dim must be positive"
    )


def test_data_fetch_text_with_a_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(["data", "fetch", "text-en", "--data-dir", afile, "--no-download"], capsys)
    assert code == 2 and one_line_error(err)
    assert f"--data-dir {afile} is a file" in err


@pytest.mark.parametrize(
    "name,args,kind",
    [
        ("decoder-chunks", [], "a JSON file"),
        ("iwae-density-counts", ["--row", "e8_lattice", "--runs", "{tmp}", "--counts", "8,8"],
         "a JSON file"),
        ("iwae-proposal-support", ["--runs", "{tmp}", "--rows", "e8_lattice", "--mixtures",
                                   "0.5:2"], "a JSON file"),
        ("log-density-bias", [], "a JSON file"),
        ("lattice-plugin-plot", ["{tmp}/rows.json"], "a figure"),
    ],
)  # fmt: skip
def test_more_scripts_refuse_an_out_that_is_a_folder_first(name, args, kind, tmp_path,
                                                           monkeypatch, capsys):  # fmt: skip
    """These wrote their result into an --out that is a folder only after the work, and failed
    there (decoder-chunks times processes for minutes first)."""
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, last = _run(name, [*args, "--out", tmp_path], monkeypatch, capsys)
    assert code == 2
    assert last == f"{name}.py: error: --out {tmp_path} is a folder; it takes the path of {kind}"
