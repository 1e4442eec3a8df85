"""Hostile configs, arguments and output paths: one clear line, never a traceback or a hang.

Each case was found by trying to break the command line from outside: deeply nested TOML or
JSON, a config that is a pipe, a device or a huge file, seeds beyond what torch takes, an output
path that is a pipe, a ``.qlc`` too large to read, a figure in an unknown format, and the
allocation failures left to ``main``.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from cli_helpers import commands_run, one_line_error, run_cli
from qlatent.config import apply_overrides
from qlatent.data import DataError
from qlatent.experiments.custom import (
    DataConfig,
    RunConfig,
    load_config,
    load_text_data,
)
from run_helpers import tiny_fit


# --------------------------------------------------------------------------- config files
@pytest.mark.parametrize(
    "body",
    [
        "args = { x = " + "[" * 3000 + "]" * 3000 + " }",
        "args = " + "{ a = " * 3000 + "1" + " }" * 3000,
    ],
    ids=["arrays", "tables"],
)
def test_deeply_nested_toml_is_one_error(tmp_path, body):
    config = tmp_path / "deep.toml"
    config.write_text(f'[bottleneck]\nname = "lattice"\n{body}\n')
    with pytest.raises(ValueError, match="not valid TOML: nested too deeply"):
        load_config(config)


def test_a_pipe_as_config_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)  # opening it for reading would block: no writer
    with pytest.raises(ValueError, match="not a regular file"):
        load_config(fifo)


def test_a_device_or_a_huge_file_as_config_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="/dev/zero is not a regular file"):
        load_config("/dev/zero")
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as f:
        f.truncate(2 << 20)  # sparse: nothing is written
    with pytest.raises(ValueError, match="more than a config's"):
        load_config(huge)


@pytest.mark.parametrize("key", ["bottleneck.args", "model.hidden", "eval.extra"])
def test_deeply_nested_json_in_an_override_is_one_error(key):
    deep = "[" * 20000 + "]" * 20000
    with pytest.raises(ValueError, match="nested too deeply"):
        load_config(None, [f"{key}={deep}"])


@pytest.mark.parametrize("key", ["train.seed", "data.split_seed"])
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_seeds_beyond_torchs_range_name_the_key(key, value):
    with pytest.raises(ValueError, match=key.split(".")[1] + " must be an integer in"):
        apply_overrides(RunConfig(), [f"{key}={value}"])


def test_an_unknown_key_of_a_section_with_a_free_table_names_the_tables_entry():
    """A bottleneck's constructor argument given as a key of the section itself
    (``bottleneck.lattice``) is refused with the key it belongs under; a section without such a
    table, or the top level, gets no hint; a key's control characters stay escaped."""
    cfg = RunConfig()
    with pytest.raises(ValueError) as err:
        apply_overrides(cfg, ["bottleneck.lattice=e8"])
    assert str(err.value).endswith(
        "BottleneckConfig has: ['args', 'name'] (an entry of bottleneck.args? set "
        "'bottleneck.args.lattice')"
    )
    assert apply_overrides(cfg, ["bottleneck.args.lattice=e8"]).bottleneck.args == {"lattice": "e8"}
    for key in ("model.lattice", "lattice"):
        with pytest.raises(ValueError, match=r"has: \[[^]]*\]$"):
            apply_overrides(cfg, [f"{key}=e8"])
    with pytest.raises(ValueError) as err:
        apply_overrides(cfg, ["bottleneck.a\x1bb=1"])
    assert "\x1b" not in str(err.value) and str(err.value).endswith("'bottleneck.args.a\\x1bb')")


def test_seeds_at_the_ends_of_torchs_range_are_taken():
    for value in (2**64 - 1, -(2**63)):
        cfg = apply_overrides(RunConfig(), [f"train.seed={value}", f"data.split_seed={value}"])
        assert cfg.train.seed == cfg.data.split_seed == value
        torch.manual_seed(cfg.train.seed)  # torch takes them (a seed it refused would raise)
        torch.Generator().manual_seed(cfg.data.split_seed)


@pytest.mark.parametrize("value", ["-1", "0", "NaN", "inf"])
def test_a_time_budget_must_be_a_positive_number(value):
    with pytest.raises(ValueError, match="max_minutes must be a positive number"):
        apply_overrides(RunConfig(), [f"train.max_minutes={value}"])


def test_text_too_short_for_every_sentence_names_the_split_and_the_setting():
    cfg = DataConfig(name="synthetic-text", synthetic_size=60, max_tokens=1)
    with pytest.raises(DataError, match="no sentence of at most data.max_tokens = 1 words"):
        load_text_data(cfg)


# --------------------------------------------------------------------------- outputs and inputs
def test_an_output_that_is_a_pipe_is_not_replaced(tmp_path, capsys, coding_checkpoint):
    from qlatent.image_coding import write_atomic

    fifo = tmp_path / "out.qlc"
    os.mkfifo(fifo)
    args = ["--data", "synthetic-test", "--limit", 3, "-o", fifo]
    code, err = run_cli(["compress", "--checkpoint", coding_checkpoint, *args], capsys)
    assert code == 2 and one_line_error(err) and "not a regular file" in err
    with pytest.raises(ValueError, match="not a regular file"):
        write_atomic(fifo, b"data")
    assert fifo.is_fifo()


def test_decompress_refuses_a_file_too_large_to_read_before_reading_it(
    tmp_path, capsys, coding_checkpoint, monkeypatch
):
    from qlatent.coding.container import MAGIC

    out = tmp_path / "r.pt"
    zeros = tmp_path / "zeros.qlc"
    with zeros.open("wb") as f:
        f.truncate(1 << 20)
    code, err = run_cli(["decompress", zeros, "--checkpoint", coding_checkpoint, "-o", out], capsys)
    assert code == 2 and one_line_error(err) and "bad magic number" in err
    big = tmp_path / "big.qlc"
    big.write_bytes(MAGIC + bytes(1 << 20))
    monkeypatch.setattr("qlatent.data.sources.physical_memory", lambda: 1 << 20)
    code, err = run_cli(["decompress", big, "--checkpoint", coding_checkpoint, "-o", out], capsys)
    assert code == 2 and one_line_error(err) and "more than this machine's" in err
    assert not out.exists()


def test_a_figure_that_cannot_be_written_leaves_no_output(tmp_path, capsys, coding_checkpoint):
    codes = tmp_path / "c.qlc"
    args = ["--data", "synthetic-test", "--limit", 5, "-o", codes]
    assert run_cli(["compress", "--checkpoint", coding_checkpoint, *args], capsys)[0] == 0
    decode = ["decompress", codes, "--checkpoint", coding_checkpoint]
    recon = tmp_path / "r.pt"
    code, err = run_cli([*decode, "-o", recon, "--png", tmp_path / "grid.txt"], capsys)
    assert code == 2 and one_line_error(err) and "extension" in err and not recon.exists()
    folder = tmp_path / "decoded"
    code, err = run_cli([*decode, "-o", f"{folder}/", "--png", folder / "000000.png"], capsys)
    assert code == 2 and one_line_error(err) and "not inside" in err and not folder.exists()
    # a figure that fails once the reconstructions are written takes them back
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the figure's folder would be")
    for output in (recon, f"{folder}/"):
        code, err = run_cli([*decode, "-o", output, "--png", blocked / "grid.png"], capsys)
        assert code == 2 and one_line_error(err)
    assert not recon.exists() and not folder.exists()


def test_iwae_samples_are_bounded_by_the_parser(coding_checkpoint):
    from qlatent.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(coding_checkpoint), "--iwae", str(10**11)])
    assert exit_.value.code == 2


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
            "can't allocate memory: you tried to allocate 8589934592 bytes."
        ),
    ],
    ids=["python", "torch"],
)
def test_an_allocation_failure_is_one_line(monkeypatch, capsys, error):
    def fail(args):
        raise error

    commands_run(monkeypatch, fail)
    code, err = run_cli(["train"], capsys)
    assert code == 2 and one_line_error(err) and "out of memory" in err


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"rows": []}', "[" * 100000 + "]" * 100000, None],
    ids=["text", "a list", "rows not a table", "deep", "a folder"],
)
def test_an_unreadable_results_file_is_written_anew(tmp_path, text):
    from qlatent.experiments.coding_mnist import kept_rows

    previous = tmp_path / "coding-mnist.json"
    if text is None:
        previous.mkdir()  # a folder where the file was
    else:
        previous.write_text(text)
    assert kept_rows(previous, ["lattice"]) == {}
    previous = tmp_path / "good.json"
    previous.write_text(json.dumps({"rows": {"lattice": {"a": 1}, "vq": _CODING_ROW}}))
    assert kept_rows(previous, ["lattice"]) == {"vq": _CODING_ROW}


_CODING_ROW = {
    "code_model": "counted",
    "coded_bits_per_image": 7.1,
    "ideal_bits_per_image": 7.0,
    "overhead_percent": 1.4,
    "round_trip_exact": True,
    "encode_symbols_per_s": 1e6,
    "decode_symbols_per_s": 1e6,
    "rate_control": [
        {
            "factor": 1.0,
            "coded_bits_per_image": 7.1,
            "hard_distortion_nats_per_image": 90.0,
            "hard_distortion_se": 0.5,
            "total_nats_per_image": 95.0,
            "round_trip_exact": True,
        }
    ],
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.pop("code_model"), "row holds no code_model"),
        (lambda r: r.update(coded_bits_per_image="7"), "row.coded_bits_per_image is a string"),
        (lambda r: r.update(train_rate_bits_per_image=7.0), "row holds no train_rate_se"),
        (
            lambda r: r["rate_control"][0].update(factor=2.0),
            "its rate_control holds no point at factor 1",
        ),
        (lambda r: r["rate_control"].append(3), "a rate_control point holds an integer"),
        (lambda r: r.update(mc_ideal_bits_per_image=7.0), "row holds no mc_ideal_se"),
    ],
    ids=["missing", "string", "train rate", "factor", "point", "mc"],
)
def test_a_kept_coding_row_the_tables_cannot_read_is_dropped(tmp_path, capsys, change, reason):
    """Rows of an earlier run are kept beside the new ones; one without the fields the tables
    read used to end the run, after training, in a bare KeyError or a StopIteration traceback."""
    import copy

    from qlatent.experiments.coding_mnist import kept_rows

    row = copy.deepcopy(_CODING_ROW)
    change(row)
    previous = tmp_path / "coding-mnist.json"
    previous.write_text(json.dumps({"rows": {"vq": row, "kept": _CODING_ROW}}))
    assert kept_rows(previous, ["lattice"]) == {"kept": _CODING_ROW}
    assert f"dropping the row 'vq' ({reason}" in capsys.readouterr().out


# --------------------------------------------------------------------------- run folders
def _moment(checkpoint) -> dict:
    """Adam's saved state of the first parameter (its step and moments)."""
    return checkpoint["optimizer"]["state"][0]


def test_a_resumed_log_is_not_written_through_a_symlink_or_into_a_pipe(tmp_path):
    out, victim = tmp_path / "run", tmp_path / "victim.toml"
    tiny_fit(out)
    victim.write_text("precious")
    (out / "log.jsonl").unlink()
    (out / "log.jsonl").symlink_to(victim)
    tiny_fit(out, epochs=2)
    assert victim.read_text() == "precious" and not (out / "log.jsonl").is_symlink()
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    (out / "log.jsonl").unlink()
    os.mkfifo(out / "log.jsonl")  # appending would block until a reader came
    with pytest.raises(ValueError, match="not a regular file"):
        tiny_fit(out, epochs=3)


def test_a_figure_replaces_a_symlink_at_its_path_not_its_target(tmp_path):
    from qlatent.eval.plots import plt, save_figure

    victim, figure = tmp_path / "victim.txt", tmp_path / "figure.png"
    victim.write_text("precious")
    figure.symlink_to(victim)
    save_figure(plt.figure(), figure)
    assert victim.read_text() == "precious" and figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("setting", [f"hidden = {[8] * 65}", "num_residual = 65"])
def test_a_config_of_too_many_layers_is_one_line(tmp_path, capsys, setting):
    """A config (or the one saved in a checkpoint) of 100,000 layers built modules for minutes."""
    config = tmp_path / "run.toml"
    config.write_text(f'[data]\nname = "synthetic"\n[model]\n{setting}\n')
    code, err = run_cli(["train", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line_error(err) and "more than the 64 a model may have" in err


def test_train_refuses_to_write_its_run_files_over_its_config(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    config = out / "config.json"
    config.write_text('[data]\nname = "synthetic"\n')
    code, err = run_cli(["train", config, "--out", out], capsys)
    assert code == 2 and one_line_error(err) and "same file" in err
    assert config.read_text() == '[data]\nname = "synthetic"\n'


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["state"].update(epoch="x"), "state.epoch must be a non-negative integer"),
        (lambda c: c["state"].update(epoch=10**30), "state.epoch must be a non-negative"),
        (lambda c: c["state"].update(history=5), "state.history must be a list"),
        (lambda c: c["state"].update(history=[torch.zeros(2)]), "state.history must be a list"),
        (lambda c: c["state"].update(history=[{"t": torch.zeros(2)}]), "not JSON serializable"),
        (lambda c: c["state"].update(history=[]), "0 records for 1 epochs"),
        (lambda c: c["state"].update(best_val="x"), "state.best_val must be a number"),
        (lambda c: c["state"].update(wall_s=float("nan")), "state.wall_s must be a time"),
        (lambda c: c["state"].update(stopped=["epochs"]), "state.stopped must be a string"),
        (lambda c: c.update(world_size=torch.ones(3)), "world_size that is no integer"),
        (lambda c: c.update(train_config=[1]), "train_config that is no table"),
        (lambda c: c.update(run_config="abc"), "run_config that is no table"),
        (lambda c: c.update(optimizer=[1, 2]), "holds no optimizer state"),
        (lambda c: c["optimizer"].update(param_groups=[]), "other parameter groups"),
        (lambda c: _moment(c).update(exp_avg=torch.zeros(3)), "exp_avg of parameter 0 has shape"),
        (lambda c: _moment(c).update(exp_avg_sq=-_moment(c)["exp_avg_sq"] - 1), "negative"),
        (lambda c: _moment(c).update(step=torch.tensor(float("nan"))), "step of parameter 0"),
        (lambda c: _moment(c).update(step="x"), "not a floating-point tensor"),
        (lambda c: c["optimizer"]["param_groups"][0].update(betas=(2.0,)), r"betas is \(2.0,\)"),
        (lambda c: c["optimizer"]["state"].update({99: {}}), "names parameter 99"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_tampered_training_state_is_refused_on_resume(tmp_path, change, message):
    from qlatent.train import CheckpointError, load, save_atomic

    out = tmp_path / "run"
    tiny_fit(out)
    saved = load(out / "last.pt")
    change(saved)
    save_atomic(saved, out / "last.pt")  # with a digest that matches the edit
    with pytest.raises(CheckpointError, match=message):
        tiny_fit(out, epochs=2)


_TABLE1_ROW = {
    "epochs": 3,
    "best_epoch": 3,
    "epoch_cap_hit": True,
    "val_neg_elbo_curve": [120.0, 110.0, 105.0],
    "test_neg_elbo": 104.0,
    "test_nll_iwae_se": 0.1,
    "iwae_samples": 20,
    "test_nll_iwae20": 101.0,
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.pop("iwae_samples"), "row holds no iwae_samples"),
        (lambda r: r.update(iwae_samples=7), "row holds no test_nll_iwae7"),
        (lambda r: r.update(val_neg_elbo_curve=[]), "its val_neg_elbo_curve is no list of numbers"),
        (lambda r: r.update(epoch_cap_hit="yes"), "row.epoch_cap_hit is a string"),
        (lambda r: r.update(iwae_defensive="1:1"), "row holds no test_nll_iwae_defensive_se"),
    ],
    ids=["samples", "nll", "curve", "flag", "defensive"],
)
def test_a_kept_table1_row_the_table_cannot_read_is_dropped(tmp_path, capsys, change, reason):
    """Rows of an earlier run are kept beside the new ones; one without the fields the
    markdown table and Figure 3 read ended the run, after training, in a bare KeyError."""
    import copy

    from qlatent.experiments.lattice_mnist import _previous_rows, markdown_table

    row = copy.deepcopy(_TABLE1_ROW)
    change(row)
    results = tmp_path / "results.json"
    models = {"rect_lattice": row, "gaussian_lattice": _TABLE1_ROW}
    results.write_text(json.dumps({"data": "d", "models": models}))
    kept = _previous_rows(results, "d")
    assert list(kept["models"]) == ["gaussian_lattice"]
    assert f"dropping the row 'rect_lattice' ({reason}" in capsys.readouterr().out
    assert "101.00" in markdown_table({"models": kept["models"], "theoretical_gap_nats": 7.06})


def test_lattice_mnist_reads_back_no_pipe_and_no_malformed_rows(tmp_path):
    from types import SimpleNamespace

    from qlatent.experiments.lattice_mnist import _previous_rows, _warm_start

    out = tmp_path / "row"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")  # a resumed row: init.json is read back
    os.mkfifo(out / "init.json")  # reading it would block
    cfg = SimpleNamespace(init_from="gaussian_lattice")
    assert _warm_start(None, cfg, out)["checkpoint"] == "unrecorded"
    results = tmp_path / "results.json"
    results.write_text('{"data": "d", "models": [1], "configs": [2]}')
    assert _previous_rows(results, "d")["models"] == {}
    rows = {"a": 5, "b": {}, "c": _TABLE1_ROW}
    results.write_text(json.dumps({"data": "d", "models": rows, "configs": {}}))
    assert list(_previous_rows(results, "d")["models"]) == ["c"]
    results.write_text("[" * 100000 + "]" * 100000)
    assert _previous_rows(results, "d") == {}


# --------------------------------------------------------------------------- data and environment
def test_a_huge_file_under_a_dataset_name_is_refused_not_hashed_for_ever(tmp_path):
    from qlatent.data.sources import ChecksumError, sha256_of

    huge = tmp_path / "t10k-labels-idx1-ubyte"
    with huge.open("wb") as f:
        f.truncate(1 << 40)  # sparse: 1 TB of zeros that take no disk
    with pytest.raises(ChecksumError, match="larger than the file it is named after"):
        sha256_of(huge, max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "5"}, r"RANK must lie in \[0, WORLD_SIZE = 2\)"),
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be a positive integer"),
        ({"WORLD_SIZE": "2", "RANK": "one"}, "RANK must be an integer"),
    ],
)
def test_a_torchrun_environment_that_cannot_be_joined_is_one_error(monkeypatch, env, message):
    from qlatent.train.distributed import setup

    monkeypatch.delenv("RANK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        setup("cpu")


def test_a_home_folder_of_no_user_is_one_error(capsys):
    from qlatent._utils import expanded

    with pytest.raises(ValueError, match="no home folder for the user"):
        expanded("~no-such-user-qlatent/data")
    code, err = run_cli(["data", "info", "--data-dir", "~no-such-user-qlatent/data"], capsys)
    assert code != 0 and "no home folder" in err and "Traceback" not in err


def test_a_benchmark_budget_must_be_finite():
    from qlatent.cli import main

    for budget in ("inf", "nan", "-1", "0"):
        with pytest.raises(SystemExit):
            main(["bench", "quantizers", "--budget", budget])


def test_a_record_read_back_is_none_when_it_is_no_readable_json(tmp_path):
    from qlatent.results import read_json, write_json

    fifo = tmp_path / "summary.json"
    os.mkfifo(fifo)  # reading it would block
    assert read_json(fifo) is None
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert read_json(deep) is None and read_json(tmp_path / "missing.json") is None
    with pytest.raises(ValueError, match="not a regular file"):
        write_json({"a": 1}, fifo)  # nor is a pipe replaced by a results file
    assert read_json(write_json({"a": 1}, tmp_path / "ok.json")) == {"a": 1}


@pytest.mark.parametrize(
    "args",
    [
        ["data", "fetch", "mnist", "--data-dir="],
        ["data", "export", "mnist", " "],
        ["reproduce", "lattice-mnist", "--quick", "--runs-dir="],
        ["reproduce", "lattice-mnist", "--quick", "--results-dir="],
        ["train", "--out="],
        ["eval", "run/best.pt", "--data-dir="],
        ["compress", "--checkpoint", "c.pt", "-o="],
        ["decompress", "x.qlc", "--checkpoint", "c.pt", "-o="],
    ],
)
def test_an_empty_path_is_refused_by_the_parser(capsys, args):
    """An empty path (an unset shell variable) was read as no option at all (--data-dir) or as
    the current folder (--runs-dir, export's folder)."""
    from qlatent.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "expected a path, got" in err, err


def test_version_names_the_package_and_torch(capsys):
    """``qlatent --version`` was an error ("the following arguments are required: command")."""
    from importlib.metadata import version

    from qlatent.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"qlatent {version('qlatent')} (torch {version('torch')})\n"
