"""Downstream evaluation (``qlatent.eval.downstream``): clustering scores, linear probe, t-SNE.

Checked: Hungarian accuracy is 1 for any relabelling, matches hand-computed optima where the
per-cluster majority vote is not one-to-one, and handles more or fewer clusters than classes;
both NMI normalisers match a numpy computation from entropies; k-means finds well-separated
blobs exactly and is near chance on noise; the probe separates separable data, is reproducible
from its seed and leaves torch's global state alone; the report clusters the test split; the
t-SNE figures are real PNGs; bad input is rejected.
"""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from qlatent.eval import (
    cluster_accuracy,
    downstream_report,
    kmeans_scores,
    linear_probe,
    linear_probe_converged,
    nmi,
    tsne_figure,
    tsne_grid,
)


def labels_from_counts(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` whose contingency table ``w[pred, true]`` is the given counts."""
    pred, true = np.nonzero(w)
    counts = w[pred, true]
    return np.repeat(true, counts), np.repeat(pred, counts)


def blobs(n_per: int, classes: int, dim: int, *, spread: float, seed: int):
    """``(classes·n_per, dim)`` Gaussian blobs (unit noise) around centres of scale ``spread``."""
    rng = np.random.default_rng(seed)
    centres = spread * rng.standard_normal((classes, dim))
    y = rng.permutation(np.repeat(np.arange(classes), n_per))
    return centres[y] + rng.standard_normal((y.size, dim)), y


# majority vote maps clusters 0 and 1 both to class 0 (8 of 11); one-to-one the best is
# 1 -> 0, 0 -> 1, 2 -> 2 with 3 + 2 + 2 = 7
W_SQUARE = np.array([[3, 2, 0], [3, 0, 0], [0, 1, 2]])
# three clusters, two classes: 0 -> 0 and 1 -> 1 match 4 + 3 of 10; cluster 2 stays unmatched
W_WIDE = np.array([[4, 0], [0, 3], [1, 2]])


# ------------------------------------------------------------------------- cluster accuracy
def test_cluster_accuracy_is_one_for_any_relabelling():
    y = np.random.default_rng(0).integers(0, 10, size=200)
    relabel = np.array([7, 42, -1, 3, 0, 9, 11, 5, 8, 100])  # not contiguous, one negative
    assert cluster_accuracy(y, relabel[y]) == 1.0
    assert cluster_accuracy(torch.from_numpy(y), torch.from_numpy(relabel[y])) == 1.0


def test_cluster_accuracy_hand_computed_optimum_is_one_to_one():
    y_true, y_pred = labels_from_counts(W_SQUARE)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(7 / 11, abs=1e-15)


def test_cluster_accuracy_rectangular_both_ways():
    y_true, y_pred = labels_from_counts(W_WIDE)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(
        0.7, abs=1e-15
    )  # 3 clusters, 2 classes
    assert cluster_accuracy(y_pred, y_true) == pytest.approx(
        0.7, abs=1e-15
    )  # 2 clusters, 3 classes


def test_nmi_matches_entropies_computed_by_hand():
    y_true, y_pred = labels_from_counts(W_SQUARE)
    p = W_SQUARE / W_SQUARE.sum()
    p_pred, p_true = p.sum(1), p.sum(0)
    h_pred = -(p_pred * np.log(p_pred)).sum()
    h_true = -(p_true * np.log(p_true)).sum()
    nz = p > 0
    mutual = (p[nz] * np.log(p[nz] / np.outer(p_pred, p_true)[nz])).sum()

    scores = nmi(y_true, y_pred)
    assert scores["arithmetic"] == pytest.approx(2 * mutual / (h_true + h_pred), rel=1e-12)
    assert scores["geometric"] == pytest.approx(mutual / math.sqrt(h_true * h_pred), rel=1e-12)
    assert scores["geometric"] > scores["arithmetic"]  # AM ≥ GM, strict as H(y) ≠ H(ŷ) here


# ------------------------------------------------------------------------------- k-means
def test_kmeans_recovers_separated_blobs_and_not_noise():
    x, y = blobs(30, 10, 8, spread=20.0, seed=1)
    scores = kmeans_scores(torch.from_numpy(x).float(), y, n_init=3)
    assert scores["kmeans_acc"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert scores["nmi_geometric"] == pytest.approx(1.0, abs=1e-12)
    assert (scores["n_init"], scores["n_clusters"]) == (3, 10)

    noise = np.random.default_rng(2).standard_normal(x.shape)
    chance = kmeans_scores(noise, y, n_init=3)
    assert chance["kmeans_acc"] < 0.3
    assert chance["nmi"] < 0.2


def test_kmeans_is_reproducible_from_its_seed():
    x, y = blobs(20, 5, 4, spread=1.5, seed=3)  # overlapping: the result depends on the starts
    assert kmeans_scores(x, y, n_clusters=5, n_init=2, seed=4) == kmeans_scores(
        x, y, n_clusters=5, n_init=2, seed=4
    )


# --------------------------------------------------------------------------- linear probe
def test_linear_probe_separates_separable_data():
    x, y = blobs(60, 10, 8, spread=6.0, seed=5)
    result = linear_probe(x[:400], y[:400], x[400:], y[400:], steps=300)
    assert result["linear_acc"] > 0.95
    assert result["train_acc"] > 0.95
    assert result["num_classes"] == 10
    assert (result["steps"], result["batch_size"], result["lr"]) == (300, 128, 0.01)


def test_converged_probe_chooses_l2_on_validation_and_refits():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # overlapping blobs in many dimensions: regularisation matters
    x, y = blobs(40, 4, 60, spread=0.35, seed=2)
    result = linear_probe_converged(x[:120], y[:120], x[120:], y[120:], Cs=(0.001, 1.0), seed=3)
    assert set(result["val_acc"]) == {"0.001", "1.0"}
    chosen = max((0.001, 1.0), key=lambda c: result["val_acc"][repr(c)])
    assert result["C"] == chosen and result["converged"]
    # the score is that of the chosen C refit on all training features
    refit = make_pipeline(StandardScaler(), LogisticRegression(C=chosen, max_iter=2000))
    refit.fit(x[:120], y[:120])
    assert result["linear_acc"] == refit.score(x[120:], y[120:])
    assert result == linear_probe_converged(
        x[:120], y[:120], x[120:], y[120:], Cs=(0.001, 1.0), seed=3
    )
    with pytest.raises(ValueError, match="Cs"):
        linear_probe_converged(x, y, x, y, Cs=(0.0,))
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe_converged(x, y, x, y, val_fraction=1.0)


def test_linear_probe_reproducible_and_leaves_global_state_alone():
    x, y = blobs(300, 4, 6, spread=0.7, seed=6)  # overlapping classes: accuracy well below 1
    x_t = torch.from_numpy(x).float()
    y_t = torch.from_numpy(y)
    rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
    with torch.inference_mode():  # the probe trains even where the caller disabled autograd
        first = linear_probe(x_t[:900], y_t[:900], x_t[900:], y_t[900:], steps=60, batch_size=32)
    again = linear_probe(x[:900], y[:900], x[900:], y[900:], steps=60, batch_size=32)
    other = linear_probe(x[:900], y[:900], x[900:], y[900:], steps=60, batch_size=32, seed=1)
    assert first == again
    assert first["train_acc"] != other["train_acc"]
    assert 0.4 < first["train_acc"] < 0.95
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads


def test_report_clusters_the_test_split():
    # train features are noise (the probe cannot learn), test features are separated blobs
    x_test, y_test = blobs(20, 10, 8, spread=20.0, seed=7)
    rng = np.random.default_rng(8)
    x_train, y_train = rng.standard_normal((200, 8)), rng.integers(0, 10, size=200)
    report = downstream_report(x_train, y_train, x_test, y_test, n_init=2, probe_steps=50)
    assert report["kmeans_acc"] == 1.0
    assert report["n_clusters"] == 10
    assert report["linear_acc"] < 0.5
    assert {"nmi", "nmi_geometric", "train_acc", "inertia"} <= report.keys()


# ----------------------------------------------------------------------------------- t-SNE
def test_tsne_figure_and_grid_write_pngs(tmp_path):
    x, y = blobs(6, 10, 5, spread=5.0, seed=9)
    # one OpenMP thread: on a busy two-core machine each of t-SNE's 1000 iterations would
    # otherwise wait at a barrier for a scheduler slice (30 s instead of 1 s for this test)
    with threadpool_limits(limits=1, user_api="openmp"):
        single = tsne_figure(x, y, tmp_path / "one.png", title="blobs", perplexity=10)
        grid = tsne_grid(
            {"a": x, "b": torch.from_numpy(x[:, :3])},
            y,
            tmp_path / "sub" / "grid.png",
            max_points=40,
            perplexity=10,
        )
    for path in (single, grid):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(single).shape[:2]
    grid_height, grid_width = matplotlib.image.imread(grid).shape[:2]
    assert grid_height == height
    assert grid_width > 1.5 * width  # two panels side by side, one legend


_DEGENERATE = {
    "constant": "np.zeros((60, 8))",
    "one point off": "np.r_[np.full((1, 8), 1 + 1e-6), np.ones((59, 8))]",
    "denormal": "np.random.default_rng(0).standard_normal((60, 8)) * 1e-310",
    "huge": "np.random.default_rng(0).standard_normal((60, 8)) * 1e300",
    "one constant column": "np.zeros((60, 1))",
}


def test_tsne_of_collapsed_or_extreme_features_draws_a_figure(tmp_path):
    """Features an encoder collapsed to a constant made sklearn's PCA start NaN and the
    process die of a segmentation fault; extreme magnitudes overflowed its distances. Run in a
    child process, so that a crash fails this test (naming the case) instead of ending the run."""
    import subprocess
    import sys

    lines = [
        "import numpy as np",
        "from threadpoolctl import threadpool_limits",
        "from qlatent.eval import tsne_figure",
        "threadpool_limits(limits=1, user_api='openmp')",
    ]
    for case, features in _DEGENERATE.items():
        png = str(tmp_path / f"{case}.png")
        lines += [
            f"print({case!r}, flush=True)",
            f"tsne_figure({features}, np.arange(60) % 3, {png!r}, perplexity=10)",
        ]
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True)
    reached = done.stdout.split("\n")[-2] if done.stdout else "the start"
    assert done.returncode == 0, f"failed at {reached}: {done.stderr[-400:]}"
    assert "Warning" not in done.stderr
    for case in _DEGENERATE:
        assert (tmp_path / f"{case}.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------ bad input
X = np.zeros((20, 3))
Y = np.arange(20) % 4


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cluster_accuracy(Y, Y[:-1]), "19 entries"),
        (lambda: cluster_accuracy(Y.astype(float), Y), "integer dtype"),
        (lambda: nmi(Y.reshape(4, 5), Y), "1-D"),
        (lambda: cluster_accuracy([0, 1], [0, 1]), "torch.Tensor or numpy"),
        (lambda: kmeans_scores(X[:, 0], Y, n_init=1), r"shape \(N, d\)"),
        (lambda: kmeans_scores(np.where(Y[:, None] == 1, np.nan, X), Y), "5 non-finite"),
        (lambda: kmeans_scores(np.full((20, 3), np.inf), Y), "non-finite"),
        (lambda: kmeans_scores(X[:5], Y[:5], n_clusters=10), "at least n_clusters=10"),
        (lambda: kmeans_scores(X, Y, n_init=0), "n_init"),
        (lambda: linear_probe(X, Y, X[:, :2], Y, steps=1), "differ in dimension"),
        (lambda: linear_probe(X, Y - 1, X, Y, steps=1), r"\[0, num_classes=4\)"),
        (lambda: linear_probe(X, Y, X, Y, steps=1, num_classes=3), r"\[0, 3\]"),
        (lambda: linear_probe(X, Y, X, Y, steps=0), "steps"),
        (lambda: linear_probe(X, Y, X, Y, steps=1, lr=-1.0), "lr"),
        (lambda: tsne_figure(X, Y, "unused.png"), "perplexity=30"),
        (lambda: tsne_grid({"a": X, "b": X[:10]}, Y, "unused.png"), "same N"),
        (lambda: tsne_grid({}, Y, "unused.png"), "empty"),
    ],
)
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
