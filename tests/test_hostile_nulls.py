"""Readers of results files under null: ``write_json`` writes NaN and the infinities as null, and
every script that reads such a file back treats null as the NaN it stands for (no TypeError on
arithmetic, formatting or comparison with None), shows it as missing, and reads finite values as
before."""

from __future__ import annotations

import importlib.util
import json
import math
import runpy
import sys
from pathlib import Path

import pytest

from qlatent.results import MISSING, number, write_json

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_number_reads_null_as_nan_and_refuses_what_is_no_number():
    assert math.isnan(number(None))
    assert number(3) == 3.0 and isinstance(number(3), float) and number(-0.5) == -0.5
    for bad in (True, "1.0", [1.0], {"v": 1.0}):
        with pytest.raises(TypeError, match="is no number"):
            number(bad)


def test_lattice_plugin_plot_draws_rows_with_null(tmp_path):
    """A row whose paired s.e. (one image: NaN) and gap (a diverged model) are null is drawn
    without its bar, beside the finite rows read as before."""
    plot = _load("lattice-plugin-plot")
    rows = [
        {
            "layout": "E8^5",
            "minus_gaussian_lattice": 3.2,
            "minus_gaussian_lattice_se": NAN,
            "ideal_lattice_gap_theory": 4.05,
        },
        {
            "layout": "Leech",
            "minus_gaussian_lattice": INF,
            "minus_gaussian_lattice_se": 0.1,
            "ideal_lattice_gap_theory": 3.2,
        },
    ]
    path = write_json({"rows": rows}, tmp_path / "plugin.json")
    assert json.loads(path.read_text())["rows"][0]["minus_gaussian_lattice_se"] is None
    loaded = plot.load_rows([path])
    assert loaded[0]["gap"] == 3.2 and math.isnan(loaded[0]["se"]) and loaded[0]["theory"] == 4.05
    assert math.isnan(loaded[1]["gap"]) and loaded[1]["se"] == 0.1
    plot.plot(loaded, tmp_path / "plugin.png")
    assert (tmp_path / "plugin.png").stat().st_size > 0
    bad = tmp_path / "text.json"
    bad.write_text(json.dumps({"rows": [{**rows[1], "minus_gaussian_lattice": "3.2"}]}))
    with pytest.raises(SystemExit, match="not a lattice-plugin.py result"):
        plot.load_rows([bad])


def test_lattice_mnist_curves_skips_null_epochs_for_the_best(tmp_path, monkeypatch):
    """Epochs written as null are NaN in the curve and never its best; a curve without a finite
    epoch has a NaN best and no best epoch, and the figure and its JSON are still written."""
    curves = _load("lattice-mnist-curves")
    models = {
        "a": {"val_neg_elbo_curve": [NAN, 99.0, INF, 97.0, 98.0]},
        "s": {"val_neg_elbo_curve": [NAN, NAN]},
    }
    write_json({"models": models}, tmp_path / "r1.json")
    got = curves.read_row(str(tmp_path / "r{seed}.json"), 1, "a")
    assert got["best"] == 97.0 and got["best_epoch"] == 4
    assert math.isnan(got["curve"][0]) and math.isnan(got["curve"][2])
    empty = curves.read_row(str(tmp_path / "r{seed}.json"), 1, "s")
    assert math.isnan(empty["best"]) and empty["best_epoch"] is None
    template = str(tmp_path / "r{seed}.json")
    argv = ["x", "--seeds", "1", "--run", f"a={template}:a", "--start", f"{template}:s"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "c.png")])
    curves.main()
    assert (tmp_path / "c.png").stat().st_size > 0
    record = json.loads((tmp_path / "c.json").read_text())["seeds"]["1"]
    assert record["a"]["best"] == 97.0 and record["a"]["best_epoch"] == 4
    assert record["start"]["best"] is None and record["start"]["best_epoch"] is None


def test_lattice_mnist_gain_draws_curves_with_null_epochs(tmp_path, monkeypatch):
    """The gain figure of a table whose validation curves hold null epochs is drawn (the
    differences there NaN, a gap in the line)."""
    models = {
        "rect_lattice": {"val_neg_elbo_curve": [100.0, NAN, 98.0, 97.5]},
        "e8_lattice": {"val_neg_elbo_curve": [99.0, 98.0, INF, 96.0]},
    }
    source = write_json({"models": models}, tmp_path / "lattice-mnist.json")
    target = tmp_path / "gain.png"
    monkeypatch.setattr(sys, "argv", ["lattice-mnist-gain.py", str(source), str(target)])
    runpy.run_path(str(ROOT / "examples" / "lattice-mnist-gain.py"), run_name="__main__")
    assert target.stat().st_size > 0


def test_seed_spread_reads_null_metrics_as_missing(tmp_path, monkeypatch, capsys):
    """A metric written as null at one seed (a diverged run's −ELBO) makes that metric's mean and
    sd null and is shown as missing; the other metrics, and the paired gaps at the seeds where
    both are finite, read as before."""

    def row(nll, elbo):
        start = {"row": "s", "checkpoint_epoch": 200}
        return {"test_nll_iwae1000": nll, "test_neg_elbo": elbo, "init_from": start}

    start = {"models": {"s": {"test_nll_iwae1000": 89.5, "test_neg_elbo": 95.0, "best_epoch": 200}}}
    files = {
        "table.json": {"models": {"a": row(94.0, 99.0), "b": {"test_neg_elbo": NAN}}},
        "seed.json": {"models": {"a": row(95.0, INF)}},
        "start.json": start,
    }
    for name, payload in files.items():
        write_json(payload, tmp_path / name)
    argv = ["lattice-mnist-seeds.py", "--row", "a", "--table", str(tmp_path / "table.json")]
    argv += ["--seed-results", f"2021={tmp_path / 'seed.json'}", "--out", str(tmp_path / "out")]
    argv += ["--starts", *(f"{s}={tmp_path / 'start.json'}" for s in (2020, 2021))]
    monkeypatch.setattr(sys, "argv", argv)
    _load("lattice-mnist-seeds").main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    nll = summary["spread"]["test_nll_iwae1000"]
    assert nll["mean"] == 94.5 and nll["sd"] == pytest.approx(math.sqrt(0.5))
    elbo = summary["spread"]["test_neg_elbo"]
    assert elbo["values"] == {"2020": 99.0, "2021": None}
    assert elbo["mean"] is None and elbo["sd"] is None
    assert elbo["others"]["b"] == {"value": None, "minus_mean": None, "in_sd": None}
    paired = summary["paired"]["metrics"]
    assert paired["test_nll_iwae1000"]["minus_start"] == {
        "2020": pytest.approx(4.5),
        "2021": pytest.approx(5.5),
    }
    assert paired["test_neg_elbo"]["minus_start"] == {"2020": 4.0, "2021": None}
    assert paired["test_neg_elbo"]["mean"] is None and paired["test_neg_elbo"]["sd"] is None
    out = capsys.readouterr().out
    assert f"test_neg_elbo: 99.00, {MISSING} -> {MISSING} ± {MISSING}" in out
    assert "test_nll_iwae1000: 94.00, 95.00 -> 94.50 ± 0.71" in out


def _proposal_file(path: Path, values: dict, **settings) -> str:
    """A file as ``iwae-proposal-support.py`` writes it (row -> proposal -> IWAE NLL)."""
    rows = {
        row: {"checkpoint_epoch": 200, "proposals": {p: {"iwae_nll": v} for p, v in props.items()}}
        for row, props in values.items()
    }
    base = {"runs": "/r", "split": "test", "images": 4, "iwae_samples": 10}
    return str(write_json({"reference": "gl", "rows": rows, **base, **settings}, path))


def test_proposal_support_summary_reads_null_nll(tmp_path, monkeypatch, capsys):
    """An IWAE NLL written as null (an infinity: a proposal that misses the posterior's support)
    gives null means and spreads where it enters, is never the proposal chosen on validation,
    and is shown as missing; the finite readings are summarized as before."""
    summary = _load("iwae-proposal-support-summary")
    seeds = {
        2021: {"gl": {"own": 88.0, "0.5:1": 87.8}, "e8": {"own": INF, "0.5:1": 89.0}},
        2022: {"gl": {"own": 88.2, "0.5:1": 88.0}, "e8": {"own": 91.7, "0.5:1": 89.4}},
    }
    files = {
        s: summary.read(Path(_proposal_file(tmp_path / f"{s}.json", v))) for s, v in seeds.items()
    }
    val = summary.read(
        Path(
            _proposal_file(
                tmp_path / "val.json", {"gl": {"own": 90.0}, "e8": {"own": NAN, "0.5:1": 91.0}}
            )
        )
    )
    assert summary.chosen(val) == {"gl": "own", "e8": "0.5:1"}
    out = summary.summarize(files, val)
    e8 = out["rows"]["e8"]
    assert math.isnan(e8["own"]["iwae_nll"]["mean"]) and math.isnan(e8["own"]["iwae_nll"]["sd"])
    assert e8["0.5:1"]["iwae_nll"]["mean"] == pytest.approx(89.2)
    assert e8["0.5:1"]["minus_reference"]["values"] == pytest.approx([1.2, 1.4])
    assert out["minus_reference_chosen"]["e8"]["values"] == pytest.approx([1.0, 1.2])
    argv = ["x", "--seeds", *(f"{s}={tmp_path / f'{s}.json'}" for s in seeds)]
    argv += ["--select", str(tmp_path / "val.json"), "--out", str(tmp_path / "summary.json")]
    monkeypatch.setattr(sys, "argv", argv)
    summary.main()
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["rows"]["e8"]["own"]["iwae_nll"] == {
        "values": [None, 91.7],
        "mean": None,
        "sd": None,
    }
    assert f"e8 own: {MISSING}, minus_reference {MISSING} ± {MISSING}" in capsys.readouterr().out


def test_proposal_support_summary_joins_readings_with_null(tmp_path):
    """Two readings of one row and proposal agree where both are null and differ where only one
    is."""
    summary = _load("iwae-proposal-support-summary")
    a = _proposal_file(tmp_path / "a.json", {"gl": {"own": 88.0}, "e8": {"own": INF}})
    b = _proposal_file(tmp_path / "b.json", {"gl": {"own": 88.0}, "e8": {"own": NAN}})
    c = _proposal_file(tmp_path / "c.json", {"gl": {"own": 88.0}, "e8": {"own": 91.0}})
    joined = summary.read_all(f"{a},{b}", "seed 1")
    assert math.isnan(joined["rows"]["e8"]["proposals"]["own"]["iwae_nll"])
    with pytest.raises(SystemExit, match="e8 under own differs between its files"):
        summary.read_all(f"{a},{c}", "seed 1")


def test_the_training_log_is_strict_json_with_null_for_a_value_that_was_not_finite(tmp_path):
    """log.jsonl was written with Python's ``NaN``, which other JSON readers refuse."""
    from qlatent.train.loop import _rewrite_log

    path = tmp_path / "log.jsonl"
    _rewrite_log(path, [{"epoch": 1, "val_objective": 100.5}, {"epoch": 2, "val_objective": NAN}])

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    rows = [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
    assert [r["val_objective"] for r in rows] == [100.5, None]


def test_lattice_mnist_long_takes_the_best_epoch_among_the_finite_ones():
    """``min`` with a NaN (or a comparison with None) in the log picked a wrong epoch or failed."""
    long = _load("lattice-mnist-long")
    rows = [
        {"epoch": e, "val_objective": v, "val_rate": 1.0, "val_distortion": 2.0}
        for e, v in ((1, 101.0), (2, None), (3, 100.0), (4, NAN))
    ]
    assert long._best(rows)["epoch"] == 3
    with pytest.raises(SystemExit, match="without a finite validation value"):
        long._best([{**rows[1]}, {**rows[3]}])
