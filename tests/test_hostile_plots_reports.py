"""Hostile input to the figures and reports the library writes: each checked against what it
claims to show, by reading the drawn data back from the matplotlib figure.

Each case was found by trying to break the figures and files from outside: a run of one epoch
drawn on ticks at epochs 0.94 ... 1.06 (and, in the paper's Figure 3, drawn as nothing at all),
a validation epoch that diverged drawn as a line across it as though it had the value between
its neighbours, a sentence model's curves labelled "nats per image", and markdown tables and
recorded figures written through a link into the file it names (and not atomically).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from qlatent.eval import plots, training_curves
from qlatent.experiments import custom, lattice_mnist, lattice_vae, llvq_fashion

RECORD = {"epoch": 1, "train_objective": 10.0, "val_objective": 11.0, "train_rate": 3.0,
          "val_rate": 3.1}  # fmt: skip


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots save, kept open for inspection (closed afterwards)."""
    kept = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: kept.append(fig) or Path(path))
    yield kept
    for fig in kept:
        plt.close(fig)


def _visible_ticks(ax) -> list[float]:
    """The x ticks matplotlib draws inside the axes' limits."""
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if low <= t <= high]


def _segments(line) -> list[tuple[float, float]]:
    """The (x0, x1) of every stretch of ``line`` drawn between two consecutive points."""
    xs, ys = line.get_xdata(), line.get_ydata()
    return [
        (float(xs[i]), float(xs[i + 1]))
        for i in range(len(xs) - 1)
        if math.isfinite(ys[i]) and math.isfinite(ys[i + 1])
    ]


# ------------------------------------------------------------------------- training curves
def test_a_one_epoch_run_is_drawn_on_whole_epochs(figures, tmp_path):
    """One epoch was drawn on ticks 0.94, 0.96, ... 1.06: epochs no run has."""
    training_curves([RECORD], tmp_path / "curves.png")
    for ax in figures[0].axes:
        ticks = _visible_ticks(ax)
        assert ticks == [1.0], ticks
        assert ax.get_xlabel() == "epoch"


def test_a_long_run_is_drawn_on_whole_epochs_with_every_epoch(figures, tmp_path):
    history = [{**RECORD, "epoch": e, "val_objective": 11.0 - e / 1e3} for e in range(1, 2001)]
    training_curves(history, tmp_path / "curves.png")
    ax = figures[0].axes[0]
    assert all(float(t).is_integer() for t in _visible_ticks(ax))
    val = next(line for line in ax.get_lines() if line.get_label().startswith("validation"))
    assert list(val.get_xdata()) == list(range(1, 2001))
    assert list(val.get_ydata()) == [r["val_objective"] for r in history]


def test_a_diverged_epoch_inside_a_curve_is_a_gap_not_a_line_across_it(figures, tmp_path):
    """Epoch 3's NaN validation was dropped and its neighbours joined: the figure showed a value
    at epoch 3 that never existed. Every drawn stretch must join consecutive epochs."""
    values = {1: 11.0, 2: 10.0, 3: math.nan, 4: math.inf, 5: 8.0, 6: 7.5, 7: math.nan}
    history = [{**RECORD, "epoch": e, "val_objective": v} for e, v in values.items()]
    training_curves(history, tmp_path / "curves.png")
    val = next(line for line in figures[0].axes[0].get_lines() if "validation" in line.get_label())
    assert _segments(val) == [(1.0, 2.0), (5.0, 6.0)]
    drawn = {x: y for x, y in zip(val.get_xdata(), val.get_ydata(), strict=True) if y == y}
    assert drawn == {e: v for e, v in values.items() if math.isfinite(v)}
    assert val.get_marker() not in (None, "None", "")  # epochs 1-2 and 5-6: points too


def test_a_sentence_model_has_its_curves_in_nats_per_sentence(figures, tmp_path):
    """A text run's objective is nats per sentence (as ``qlatent eval`` reports it); its curves
    said "nats per image"."""
    training_curves([RECORD], tmp_path / "curves.png", unit="sentence")
    assert [ax.get_ylabel() for ax in figures[0].axes] == [
        "nats per sentence",
        "rate (nats per sentence)",
    ]
    with pytest.raises(ValueError, match="unit must name what a value is per"):
        training_curves([RECORD], tmp_path / "curves.png", unit="")


TEXT_RUN = """
[data]
name = "synthetic-text"
synthetic_size = 60
[model]
family = "text_gru"
hidden = [8, 16]
latent_dim = 4
[bottleneck]
name = "lattice"
[train]
epochs = 1
max_steps = 1
batch_size = 20
eval_batch_size = 20
progress = false
"""


def test_a_text_run_writes_its_curves_per_sentence(figures, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(TEXT_RUN)
    summary = custom.train(custom.load_config(config, [f"out_dir={tmp_path / 'run'}"]))
    assert "sentences" in summary["test"]
    assert figures[0].axes[0].get_ylabel() == "nats per sentence"
    curve = figures[0].axes[0].get_lines()[1]  # validation, against the history recorded
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in log]
    assert list(curve.get_ydata()) == [r["val_objective"] for r in history]


# ------------------------------------------------------------------- lattice-mnist figures
def _row(curve: list[float]) -> dict:
    return {"val_neg_elbo_curve": curve, "best_epoch": 1}


def test_figure_3_draws_a_row_of_one_epoch(figures, tmp_path):
    """A row of one epoch was a line of one point, drawn as nothing (only its best-epoch line),
    and so was an epoch between two that were not finite."""
    lattice_mnist.figure_3(
        {"rect_lattice": _row([95.0]), "e8_lattice": _row([94.0, None, 93.0, None, 92.5, 92.0])},
        tmp_path / "fig3.png",
    )
    ax = figures[0].axes[0]
    one, gappy = (line for line in ax.get_lines() if not line.get_label().startswith("_"))
    assert list(one.get_xdata()) == [1] and list(one.get_ydata()) == [95.0]
    assert one.get_marker() not in (None, "None", "") and list(one.get_markevery()) == [0]
    assert gappy.get_marker() not in (None, "None", "")
    assert list(gappy.get_markevery()) == [0, 2]  # the epochs 1 and 3 that no line reaches
    assert _segments(gappy) == [(5.0, 6.0)]
    assert _visible_ticks(ax) and all(float(t).is_integer() for t in _visible_ticks(ax))


def test_figure_3_leaves_ordinary_curves_as_lines(figures, tmp_path):
    curve = [100.0 - i for i in range(12)]
    lattice_mnist.figure_3({"rect_lattice": _row(curve)}, tmp_path / "fig3.png")
    line = figures[0].axes[0].get_lines()[0]
    assert line.get_marker() in (None, "None", "")
    assert list(line.get_ydata()) == curve


def test_the_gain_figure_draws_a_run_of_one_epoch(figures, tmp_path):
    models = {"rect_lattice": _row([120.0, 119.0]), "e8_lattice": _row([117.5])}
    lattice_mnist.figure_gain(models, tmp_path / "gain.png")
    ax = figures[0].axes[0]
    line = next(line for line in ax.get_lines() if line.get_label() == lattice_mnist.LABELS[
        "e8_lattice"])  # fmt: skip
    assert list(line.get_ydata()) == [-2.5]
    assert line.get_marker() not in (None, "None", "")
    assert _visible_ticks(ax) == [1.0]


# --------------------------------------------------------------------------------- files
def test_no_figure_is_left_open_by_the_plots(tmp_path):
    """A sweep draws many figures: each must be closed once saved (matplotlib warns past 20
    open, and the memory of every one drawn is held)."""
    before = set(plt.get_fignums())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training_curves([RECORD], tmp_path / "c.png")
        plots.reconstruction_grid(torch.rand(3, 16), torch.rand(3, 16), tmp_path / "g.png")
        plots.reconstruction_rows({"a": torch.rand(2, 1, 4, 4)}, tmp_path / "r.png")
        lattice_mnist.figure_3({"rect_lattice": _row([95.0])}, tmp_path / "f3.png")
    assert set(plt.get_fignums()) == before


def _llvq_row() -> dict:
    return {"test_mse": 0.01, "unique_codes_trainval": 5, "unique_codes_test": 4,
            "quantizer_params": 10, "wall_s": 1.0, "total_vectors": 4 * 196}  # fmt: skip


def test_the_llvq_table_is_written_atomically_not_through_a_link(monkeypatch, tmp_path):
    """The markdown table was ``Path.write_text``: through a link at its name it overwrote the
    file the link names (and it was written in place, in the locale's encoding)."""
    results = tmp_path / "results"
    results.mkdir()
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    (results / "llvq-fashion-quick.md").symlink_to(notes)
    images = {k: torch.rand(2, 1, 28, 28) - 0.5 for k in ("train", "val", "test")}
    monkeypatch.setattr(llvq_fashion, "load_data", lambda cfg, data_dir=None: images)
    monkeypatch.setattr(
        llvq_fashion, "run_row", lambda name, *args, **kw: (_llvq_row(), images["test"])
    )
    payload = llvq_fashion.reproduce(
        quick=True, models=["ll_vq"], schedules=["constant"], results_dir=results,
        runs_dir=tmp_path / "runs",
    )  # fmt: skip
    assert notes.read_text() == "my notes\n"
    table = results / "llvq-fashion-quick.md"
    assert not table.is_symlink()
    assert table.read_bytes() == (llvq_fashion.markdown_table(payload) + "\n").encode("utf-8")
    assert not list(results.glob(".*.tmp"))


def test_recording_the_demo_copies_atomically_not_through_a_link(monkeypatch, tmp_path):
    """``qlatent demo --record`` copied with ``shutil.copyfile``: a link in results/ had the
    file it names overwritten, and a copy stopped midway left a truncated figure."""
    run = tmp_path / "run"
    run.mkdir()
    files = {"summary.json": b"{}\n", "reconstructions.png": b"\x89PNG r", "training_curves.png":
             b"\x89PNG c"}  # fmt: skip
    for name, data in files.items():
        (run / name).write_bytes(data)
    results = tmp_path / "results"
    results.mkdir()
    figure = tmp_path / "my-figure.png"
    figure.write_bytes(b"mine")
    (results / "demo-training-curves.png").symlink_to(figure)
    monkeypatch.setattr(lattice_vae, "RESULTS_DIR", results)
    cfg = lattice_vae.LatticeVAEConfig(out_dir=str(run))
    written = lattice_vae.record(cfg, "demo")
    assert figure.read_bytes() == b"mine"
    assert [p.read_bytes() for p in written] == list(files.values())
    assert not any(p.is_symlink() for p in written)
