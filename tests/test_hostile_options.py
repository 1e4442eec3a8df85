"""Hostile numbers on the command line and in the paper tables' ``--set`` overrides: one line
naming the option or key, exit code 2, before any training (no run folder written).

Each case was found by trying 0, negative, fractional, NaN, boolean and huge values on every
numeric option and evaluation key: these were accepted, and failed (or averaged nothing) only
in the evaluation after the training, or ran a Monte-Carlo estimate to its cap of samples.
"""

from __future__ import annotations

import re

import pytest

from cli_helpers import one_line_error, run_cli


def _refused(tmp_path, capsys, table: str, *args) -> str:
    """``qlatent reproduce TABLE --quick ARGS`` refused: exit code 2, one error line (returned)
    and no run or results folder written."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    code, err = run_cli(
        ["reproduce", table, "--quick", *args, "--runs-dir", runs, "--results-dir", results],
        capsys,
    )
    assert code == 2 and one_line_error(err), err
    assert not runs.exists() and not results.exists()
    return err


@pytest.mark.parametrize(
    ("table", "override", "message"),
    [
        ("lattice-mnist", "eval.iwae_samples=0", "eval: iwae_samples must be a positive integer"),
        ("lattice-mnist", "eval.iwae_chunk=0", "eval: iwae_chunk must be a positive integer"),
        ("lattice-mnist", "eval.test_examples=-5", "eval: test_examples must be a positive"),
        ("lattice-mnist", "eval.codelength_repeats=0", "eval: codelength_repeats must be a"),
        (
            "lattice-mnist",
            f"eval.iwae_samples={10**12}",
            "eval: iwae_samples must be at most 1,048,576",
        ),
        ("lattice-mnist", "eval.seed=-1", r"eval: seed must be an integer in \[0, 2\^63\)"),
        ("softvq-mnist", "eval.kmeans_n_init=0", "eval: kmeans_n_init must be a positive"),
        ("softvq-mnist", f"eval.probe_steps={2**63}", "eval: probe_steps must be at most"),
        ("softvq-mnist", "eval.tsne_points=-1", "eval: tsne_points must be a positive"),
        ("softvq-mnist", "eval.probe_cs=[0]", "eval: probe_cs must be a list of positive"),
        ("softvq-mnist", f"eval_seed={2**32}", r"seed \(or eval_seed\) must be .* \[0, 2\^32\)"),
        ("llvq-fashion", "eval.figure_images=0", "eval: figure_images must be a positive"),
        ("coding-mnist", "timing_repeats=0", "timing_repeats must be a positive integer"),
        ("coding-mnist", "train_rate_repeats=-1", "train_rate_repeats must be a positive"),
        ("coding-mnist", f"ideal_samples={2**63}", "ideal_samples must be at most 1,048,576"),
        ("coding-mnist", "seed=-1", r"seed must be an integer in \[0, 2\^63\)"),
    ],
)
def test_evaluation_settings_are_checked_before_training(
    tmp_path, capsys, table, override, message
):
    err = _refused(tmp_path, capsys, table, "--set", override)
    assert re.search(message, err), err


def test_the_demos_eval_seed_is_checked_before_training(tmp_path, capsys):
    out = tmp_path / "demo"
    code, err = run_cli(["demo", "--set", f"eval_seed={2**64}", "--out", out], capsys)
    assert code == 2 and one_line_error(err), err
    assert "eval_seed must be an integer in [-2^63, 2^64)" in err
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1e-3", "nan", "inf", "1"])
def test_target_rse_is_a_number_in_zero_one(capsys, value):
    with pytest.raises(SystemExit) as exit_:
        run_cli(["bench", "lattices", "--output", "", f"--target-rse={value}"], capsys)
    assert exit_.value.code == 2
    assert f"argument --target-rse: expected a number in (0, 1), got {value}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("seeds", [f"0,{2**32}", str(2**63)])
def test_seeds_past_what_kmeans_takes_are_refused(tmp_path, capsys, seeds):
    with pytest.raises(SystemExit) as exit_:
        run_cli(
            ["reproduce", "softvq-mnist", "--quick", f"--seeds={seeds}"]
            + ["--runs-dir", tmp_path / "runs", "--results-dir", tmp_path / "results"],
            capsys,
        )
    assert exit_.value.code == 2
    assert "argument --seeds: seeds must be distinct and in [0, 2^32)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**63), "1.5"])
def test_a_files_seed_is_checked_before_anything_is_encoded(tmp_path, capsys, seed):
    """``compress --seed`` out of range was refused by the coder after the images were
    encoded, without naming the option."""
    from qlatent.cli import main

    args = ["compress", "--checkpoint", tmp_path / "none.pt", "--data", "synthetic-test"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*args, "--seed", seed, "-o", tmp_path / "x.qlc"]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --seed: expected an integer" in err


def _no_data(*args, **kwargs):
    raise AssertionError("the data was read before the config was checked")


@pytest.mark.parametrize(
    ("table", "override", "message"),
    [
        ("lattice-mnist", "model.hidden=[100000,100000]", "would hold .* numbers, more than"),
        ("lattice-mnist", 'bottleneck.args={"bogus": 1}', "unexpected keyword argument 'bogus'"),
        ("softvq-mnist", "model.latent_dim=100000000", "would hold .* numbers, more than"),
        ("softvq-mnist", 'bottleneck.args={"bogus": 1}', "unexpected keyword argument 'bogus'"),
        ("llvq-fashion", "model.hidden=[100000,100000]", "would hold .* numbers, more than"),
        ("llvq-fashion", 'bottleneck.args={"bogus": 1}', "unexpected keyword argument 'bogus'"),
        ("coding-mnist", "hidden=100000", "would hold .* numbers, more than"),
        ("coding-mnist", "num_codes=10000000000", "would hold 400,000,000,000 numbers"),
    ],
)
def test_model_sizes_and_bottleneck_arguments_are_checked_before_the_data(
    tmp_path, capsys, monkeypatch, table, override, message
):
    """A paper table's model too large to build, or a bottleneck argument it does not take, is
    one line before anything is read: the argument was a traceback after the data was loaded
    (and, in softvq-mnist, after the raw-pixel row's minutes of evaluation)."""
    from qlatent.experiments import coding_mnist, lattice_mnist, llvq_fashion, softvq_mnist

    for module in (lattice_mnist, softvq_mnist, llvq_fashion, coding_mnist):
        monkeypatch.setattr(module, "load_data", _no_data)
    err = _refused(tmp_path, capsys, table, "--set", override)
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "key", ["ideal_repeats", "train_rate_repeats", "hard_rate_seeds", "good_hard_rate_seeds"]
)
def test_a_reported_spread_needs_two_estimates(tmp_path, capsys, key):
    """One estimate has no standard deviation: coding-mnist reported an s.e. of 0.0 for it."""
    err = _refused(tmp_path, capsys, "coding-mnist", "--set", f"{key}=1")
    assert f"{key} must be at least 2" in err, err


@pytest.mark.parametrize(
    ("table", "option", "names"),
    [
        ("text-rd", "--models", "lattice,lattice"),
        ("lattice-mnist", "--models", "rect_lattice,gaussian,rect_lattice"),
        ("llvq-fashion", "--schedules", "constant,constant"),
    ],
)
def test_a_row_named_twice_is_refused(tmp_path, capsys, table, option, names):
    """A row named twice was trained and reported twice (under --jobs, by two processes in
    one run folder)."""
    err = _refused(tmp_path, capsys, table, option, names)
    assert "more than once" in err, err
