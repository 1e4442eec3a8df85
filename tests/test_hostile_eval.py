"""Hostile input to the evaluation (``qlatent.eval`` and ``qlatent eval``): one clear line or one
ValueError naming the argument, never a traceback, a NaN in a report or a figure drawn empty.

Each case was found by trying to break the evaluation from outside: a defensive mixture whose
widening factor overflowed float32 (every estimate NaN), a string taken as a pair of numbers, a
run with an epoch at learning rate 0 (its curves ended ``qlatent train`` in a ``KeyError``), a
one-epoch run's empty curves, images of a width no square has, ``--iwae`` for a bottleneck
without a density view (a traceback after the whole evaluation).
"""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from cli_helpers import one_line_error, run_cli
from qlatent.eval import (
    code_usage,
    codelength_report,
    iwae_nll,
    iwae_summary,
    linear_probe_converged,
    reconstruction_grid,
    reconstruction_rows,
    row_hashes,
    training_curves,
)
from qlatent.experiments import custom
from qlatent.models import gated_vae

TINY = """
[data]
name = "{data}"
synthetic_size = {size}
{extra}
[model]
family = "{family}"
hidden = {hidden}
latent_dim = {latent}

[bottleneck]
name = "{name}"

[train]
epochs = {epochs}
batch_size = 10
eval_batch_size = 20
progress = false
{train}
"""


#: what a tiny run takes unless told otherwise
DEFAULTS = {
    **{"name": "lattice", "data": "synthetic", "family": "gated_mlp", "hidden": "[16]"},
    **{"latent": 4, "size": 60, "epochs": 1, "extra": "", "train": "max_steps = 2"},
}


def _train(root, **settings):
    """A tiny run of ``qlatent train`` in ``root`` (``settings`` over :data:`DEFAULTS`); the
    path of its ``best.pt``."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "run.toml"
    config.write_text(TINY.format(**{**DEFAULTS, **settings}))
    custom.train(custom.load_config(config, [f"out_dir={root / 'run'}"]))
    return root / "run" / "best.pt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """best.pt of a lattice, a VQ and a sentence run (trained once for the module)."""
    root = tmp_path_factory.mktemp("runs")
    text = {"data": "synthetic-text", "family": "text_gru", "hidden": "[16, 32]", "latent": 8}
    return {
        "lattice": _train(root / "lattice"),
        "vq": _train(root / "vq", name="vq"),
        "text": _train(root / "text", size=120, **text),
    }


def _tiny_model():
    torch.manual_seed(0)
    return gated_vae("lattice", latent_dim=4, hidden=16, data_dim=12)


X = (torch.rand(6, 12, generator=torch.Generator().manual_seed(0)) < 0.5).float()


# --------------------------------------------------------------------------------- IWAE
@pytest.mark.parametrize("mixture", [(0.5, 1e30), (0.5, 1e-30), (0.5, 1e7)])
def test_a_widening_factor_that_overflows_is_refused(mixture):
    """k = 1e30 (or 1e-30) made every float32 estimate NaN (k = 1e20 gave -inf NLLs)."""
    with pytest.raises(ValueError, match=r"1e-06 <= k <= 1e\+06"):
        iwae_nll(_tiny_model(), X, num_samples=2, progress=False, defensive=mixture)


@pytest.mark.parametrize("mixture", ["09", {0.5: 1, 1: 2}, (False, True), [0.5, "1"]])
def test_a_mixture_that_is_no_pair_of_numbers_is_refused(mixture):
    """A string was iterated ("09" drew from the mixture (0, 9)), a table by its keys, and
    booleans counted as numbers."""
    with pytest.raises(ValueError, match=r"defensive must be a pair \(alpha, k\) of numbers"):
        iwae_nll(_tiny_model(), X, num_samples=2, progress=False, defensive=mixture)


def test_data_of_another_dtype_than_the_model_is_named():
    """float64 data (as ``torch.from_numpy`` gives it) failed in the encoder's first layer with
    "mat1 and mat2 must have the same dtype"."""
    with pytest.raises(ValueError, match="x is torch.float64 but the model computes in"):
        iwae_nll(_tiny_model(), X.double(), num_samples=2, progress=False)


def test_sample_counts_and_chunks_are_bounded():
    """A decoder call of 2^20 samples x 64 images of 784 values asked for 200 GB at once."""
    x = torch.zeros(64, 784)
    model = gated_vae("lattice", latent_dim=4, hidden=8, data_dim=784)
    with pytest.raises(ValueError, match="sample_chunk=1,048,576 with batch_size=100 makes"):
        iwae_nll(model, x, num_samples=2**20, sample_chunk=2**20, progress=False)
    with pytest.raises(ValueError, match="num_samples must be at most 1,048,576"):
        iwae_nll(model, x[:1], num_samples=2**20 + 1, progress=False)


@pytest.mark.parametrize(
    ("nll", "message"),
    [
        (torch.tensor([1.0, math.nan]), r"nll holds 1 non-finite value\(s\)"),
        (torch.tensor([1.0, math.inf, -math.inf]), r"nll holds 2 non-finite value\(s\)"),
        (torch.tensor([1, 2]), "nll must be a floating-point tensor"),
        (torch.tensor([1 + 1j, 2]), "nll must be a floating-point tensor"),
    ],
)
def test_iwae_summary_refuses_what_has_no_mean(nll, message):
    """A NaN or an infinity made the report's mean one; a complex value lost its imaginary
    part with a warning."""
    with pytest.raises(ValueError, match=message):
        iwae_summary(nll)


# --------------------------------------------------------------------------- codelength
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": "1"}, r"seed must be an integer in \[-2\^63, 2\^64\), got '1'"),
        ({"seed": 2**64}, r"seed must be an integer in \[-2\^63, 2\^64\)"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"x": X[:0]}, r"x must be a tensor of shape \(N >= 1, ...\), got \(0, 12\)"),
    ],
)
def test_codelength_report_checks_its_arguments(kwargs, message):
    """A string seed or a zero batch was torch's RuntimeError, no examples a report of NaN."""
    x = kwargs.pop("x", X)
    with pytest.raises(ValueError, match=message):
        codelength_report(_tiny_model(), x, **kwargs)


def test_codelength_report_takes_the_largest_seed():
    """``seed + 1`` of the hard path overflowed ``manual_seed`` at 2^64 - 1."""
    report = codelength_report(_tiny_model(), X, seed=2**64 - 1)
    assert math.isfinite(report.codelength.total)


# -------------------------------------------------------------------------------- usage
def test_code_usage_and_row_hashes_check_what_they_count():
    """Float rows were truncated to integers (0.2 and 0.7 counted as one code); one tensor in
    place of a list was read image by image; a zero batch was torch's RuntimeError."""
    vq = gated_vae("vq", latent_dim=4, hidden=16, data_dim=12)
    with pytest.raises(ValueError, match="rows must be integers"):
        row_hashes(torch.tensor([[0.2, 1.0], [0.7, 1.0]]))
    with pytest.raises(ValueError, match=r"rows must be a 2-D tensor \(N, D\), got \(3,\)"):
        row_hashes(torch.arange(3))
    with pytest.raises(ValueError, match="datasets must be a list of tensors, got Tensor"):
        code_usage(vq, X, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        code_usage(vq, [X], batch_size=0, progress=False)


# --------------------------------------------------------------------------- downstream
FEATURES = np.random.default_rng(0).normal(size=(30, 3))
LABELS = np.arange(30) % 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"Cs": (True,)}, "Cs must be positive finite numbers"),
        ({"Cs": (c for c in [1.0])}, "Cs must be a tuple or list of numbers"),
        ({"val_fraction": "0.5"}, r"val_fraction must lie in \(0, 1\), got '0.5'"),
        ({"seed": "x"}, "seed must be a non-negative integer, got 'x'"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"labels": np.zeros(30, dtype=int)}, "train_labels must hold at least 2 classes"),
    ],
)
def test_converged_probe_checks_its_arguments(kwargs, message):
    """``True`` counted as C = 1; a generator was used up by the check (then "max() arg is an
    empty sequence"); a string fraction or seed was a TypeError from numpy, one class
    sklearn's message naming no argument."""
    labels = kwargs.pop("labels", LABELS)
    with pytest.raises(ValueError, match=message):
        linear_probe_converged(FEATURES, labels, FEATURES, LABELS, **kwargs)


# -------------------------------------------------------------------------------- plots
RECORD = {"epoch": 1, "train_objective": 10.0, "val_objective": 11.0, "train_rate": 3.0,
          "val_rate": 3.1}  # fmt: skip


def _capture(monkeypatch):
    """The figures the plots would save, kept open for inspection."""
    from qlatent.eval import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    return figures


def test_an_epoch_at_learning_rate_zero_is_left_out_of_the_training_curves(tmp_path):
    """Such an epoch records no training values, and the curves failed with
    ``KeyError: 'train_objective'``: ``qlatent train`` with ``lr_decay = 0`` ended in
    "qlatent: error: 'train_objective'" after training, with no summary."""
    best = _train(tmp_path, epochs=2, train="lr_decay = 0.0")
    run = best.parent
    assert (run / "summary.json").is_file() and (run / "training_curves.png").is_file()


def test_one_epoch_curves_draw_their_points(monkeypatch, tmp_path):
    """A curve of one epoch was a line of one point, which matplotlib draws as nothing."""
    figures = _capture(monkeypatch)
    training_curves([RECORD], tmp_path / "curves.png")
    lines = [line for ax in figures[0].axes for line in ax.get_lines()]
    assert len(lines) == 4 and all(line.get_marker() not in (None, "None", "") for line in lines)


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([], "history must be a non-empty list"),
        ([{"epoch": 1}], "history holds no train_objective"),
        ([{"epoch": 1, "val_objective": math.nan}], "history holds no train_objective"),
        ([{**RECORD, "epoch": math.inf}], "history.0.: epoch is inf"),
        ([{**RECORD, "train_objective": "abc"}], "train_objective must be a number, got 'abc'"),
        ([{**RECORD, "val_rate": None}], "val_rate must be a number, got None"),
        ([{**RECORD, "epoch": "1"}], "epoch must be a number, got '1'"),
        ([RECORD, 3], r"history\[1\] must be a table, got int"),
    ],
)
def test_training_curves_refuse_what_they_cannot_draw(tmp_path, history, message):
    """A hostile ``log.jsonl`` or checkpoint history was drawn anyway: an empty figure, a
    string as a category (or a KeyError / TypeError)."""
    with pytest.raises(ValueError, match=message):
        training_curves(history, tmp_path / "curves.png")


def test_a_value_that_is_not_finite_is_a_gap_in_its_curve(monkeypatch, tmp_path):
    """A diverged validation (NaN) leaves a gap; the epochs before it are still drawn."""
    figures = _capture(monkeypatch)
    second = {**RECORD, "epoch": 2, "val_objective": math.nan, "train_rate": math.inf}
    training_curves([RECORD, second], tmp_path / "curves.png")
    points = {
        line.get_label(): len(line.get_xdata()) for ax in figures[0].axes for line in ax.get_lines()
    }
    assert sorted(points.values()) == [1, 1, 2, 2]


@pytest.mark.parametrize(
    ("originals", "message"),
    [
        (torch.rand(0, 784), r"originals holds no image to draw: shape \(0, 784\)"),
        (torch.rand(4, 12), "originals of 12 values per image are no square image"),
        (torch.full((4, 784), math.nan), "originals holds NaN or infinite values"),
        (np.zeros((4, 784)), "originals must be a real 2-D or 3-D tensor of images"),
    ],
)
def test_reconstruction_grid_refuses_what_it_cannot_draw(tmp_path, originals, message):
    """No images were an IndexError, a width no square has a RuntimeError from a reshape (a
    traceback of ``qlatent decompress --png``), NaN a blank figure."""
    with pytest.raises(ValueError, match=message):
        reconstruction_grid(originals, originals, tmp_path / "grid.png")


def test_reconstruction_grid_draws_images_in_their_shape(monkeypatch, tmp_path):
    """(n, H, W) images of H != W were drawn as squares of the wrong side; originals and
    reconstructions of different shapes failed in a reshape."""
    figures = _capture(monkeypatch)
    reconstruction_grid(torch.rand(3, 4, 9), torch.rand(3, 4, 9), tmp_path / "grid.png")
    shapes = {image.get_array().shape for ax in figures[0].axes for image in ax.get_images()}
    assert shapes == {(4, 9)}
    with pytest.raises(ValueError, match=r"reconstructions have shape \(2, 784\)"):
        reconstruction_grid(torch.rand(4, 784), torch.rand(2, 784), tmp_path / "grid.png")


@pytest.mark.parametrize(
    ("rows", "value_range", "message"),
    [
        ({"a": torch.rand(0, 1, 5, 5)}, (0, 1), "row 'a' holds no image to draw"),
        ({"a": torch.rand(3, 2, 5, 5)}, (0, 1), "row 'a' has 2 channels"),
        ({"a": torch.rand(3, 5, 5)}, (0, 1), "row 'a' must be a real 4-D tensor"),
        ({"a": torch.full((3, 1, 5, 5), math.nan)}, (0, 1), "row 'a' holds NaN"),
        ({"a": torch.rand(3, 1, 5, 5)}, (1, 1), "value_range must be finite numbers lo < hi"),
        ({"a": torch.rand(3, 1, 5, 5)}, (math.nan, 1), "value_range must be finite numbers"),
    ],
)
def test_reconstruction_rows_refuse_what_they_cannot_draw(tmp_path, rows, value_range, message):
    """No images failed in matplotlib ("Number of columns must be a positive integer"), two
    channels or three axes were a TypeError / RuntimeError, and an empty value range or NaN
    images drew blank figures."""
    with pytest.raises(ValueError, match=message):
        reconstruction_rows(rows, tmp_path / "rows.png", value_range=value_range)


def test_decompress_draws_a_gated_models_colour_images_in_their_shape(tmp_path, capsys):
    """A gated model of RGB images (flat rows of 3·4·4 values) ended ``decompress --png`` in a
    RuntimeError traceback from the grid's reshape; the figures now take the image shape the
    checkpoint records, and the tensor output keeps the model's flat rows."""
    from qlatent.data.folder import write_image_folder

    folder = tmp_path / "images"
    write_image_folder(torch.rand(20, 3, 4, 4), folder)
    extra = f'folder = "{folder.as_posix()}"\nimage_size = 4\nchannels = 3\nval_size = 5\n'
    best = _train(tmp_path, data="folder", extra=extra + "test_size = 5")
    qlc = tmp_path / "codes.qlc"
    code, _ = run_cli(["compress", "--checkpoint", best, "--data", "checkpoint-test", "-o", qlc],
                      capsys)  # fmt: skip
    assert code == 0
    args = ["decompress", qlc, "--checkpoint", best, "-o", tmp_path / "r.pt"]
    code, err = run_cli([*args, "--png", tmp_path / "r.png"], capsys)
    assert code == 0, err
    assert torch.load(tmp_path / "r.pt").shape == (5, 48)
    assert plt.imread(tmp_path / "r.png").shape[-1] in (3, 4)  # drawn in colour
    for output in ("grid.png", "folder/"):
        code, err = run_cli(
            ["decompress", qlc, "--checkpoint", best, "-o", f"{tmp_path}/{output}"], capsys
        )
        assert code == 0, err
    assert plt.imread(tmp_path / "folder" / sorted(os.listdir(tmp_path / "folder"))[0]).shape[
        :2
    ] == (4, 4)


# ------------------------------------------------------------------------- qlatent eval
@pytest.mark.parametrize(
    ("run", "args", "message"),
    [
        # TypeError "VectorQuantizer has no posterior density": a traceback after the evaluation
        ("vq", ["--iwae", "3"], "needs a bottleneck with a density view"),
        # "x must be a floating-point tensor, got torch.int64", after the evaluation
        ("text", ["--iwae", "3"], "is for image models, not a sentence model"),
        # a standard error of NaN, printed "± nan" and written as NaN into the JSON report
        ("lattice", ["--iwae", "2", "--limit", "1"], "needs at least 2 test images"),
        # the evaluation ran, then "[Errno 17] File exists"
        ("lattice", ["-o", "{checkpoint}/report.json"], "is a file"),
    ],
)
def test_eval_refuses_before_evaluating(runs, capsys, run, args, message):
    checkpoint = runs[run]
    args = [a.format(checkpoint=checkpoint) for a in args]
    code, err = run_cli(["eval", checkpoint, *args], capsys)
    assert code == 2 and one_line_error(err) and message in err, err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit must be a positive integer or None, got 0"),  # a NaN report
        ({"limit": -1}, "limit must be a positive integer or None, got -1"),  # one image less
        ({"iwae_samples": "4"}, "iwae_samples must be an integer, got '4'"),
        ({"iwae_samples": -1}, r"iwae_samples must lie in \[0, 1,048,576\], got -1"),
        ({"iwae_samples": 4, "iwae_defensive": "0.5:1"}, "defensive must be a pair"),
        ({"downstream": "no"}, "downstream must be True or False, got 'no'"),
    ],
)
def test_eval_checkpoint_checks_its_arguments(runs, kwargs, message):
    """Before: limit 0 evaluated no image (every number NaN), -1 dropped the last image, a bad
    ``iwae_samples`` was named as ``num_samples`` after the evaluation, a string mixture was
    "DefensiveProposal.__init__() takes 4 positional arguments but 7 were given", and "no"
    switched the downstream tasks on."""
    with pytest.raises(ValueError, match=message):
        custom.eval_checkpoint(runs["lattice"], progress=False, **kwargs)


def test_evaluate_leaves_out_the_iwae_nll_of_a_bottleneck_without_a_density_view():
    """``evaluate`` gives the IWAE NLL where the bottleneck has a density view: its check
    ``hasattr(neck, "posterior_sample")`` held for every bottleneck (the base class defines
    it, raising TypeError), so a VQ model's evaluation ended in that TypeError."""
    from qlatent.experiments import custom

    cfg = custom.RunConfig(bottleneck=custom.BottleneckConfig("vq", {"num_codes": 4}))
    model = custom.build_model(cfg, (1, 3, 4), 0.25).eval()
    data = {"test": X}
    report = custom.evaluate(model, cfg, data, (1, 3, 4), iwae_samples=3, progress=False)
    assert "iwae" not in report and "hard_path" in report
