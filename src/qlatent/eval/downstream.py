"""Downstream use of learned latents: k-means clustering and a linear probe (t-SNE: ``tsne``).

Paper: H. Wu, M. Flierl, "Vector Quantization-Based Regularization for Autoencoders", AAAI 2020
(arXiv 1905.11062), section "Representation Learning Tasks", Tables 1-2 and Fig. 4. The
protocol, as the paper and its reference notebooks run it (notes, B.2 / B.3)::

    train images ──encoder──> z_e (train) ──────────────┐
    test images  ──encoder──> z_e (test) ──┬─ k-means (10 clusters, 100 inits) ─> ACC, NMI
                                           │                                      (Hungarian)
                                           └─ linear probe fitted on train z_e ─> test accuracy
                                              (Dense d→C + softmax CE, Adam 0.01, batch 128,
                                               30,000 updates)

Clustering accuracy is the best one-to-one matching of cluster ids to labels (Hungarian
algorithm; Xie, Girshick & Farhadi 2016). The paper defines NMI with the arithmetic mean of the
entropies, 2·I / (H(y) + H(ŷ)); its NMI code is not published, and sklearn 0.20/0.21, current in
2019, defaulted to the geometric mean I / sqrt(H(y)·H(ŷ)), so both are reported.

Shape legend: N examples, d feature dimensions, C classes, K clusters.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from ._features import SQUARES_MIN_FEATURE as SQUARES_MIN_FEATURE
from ._features import ArrayLike as ArrayLike
from ._features import (
    _check_features,
    _check_label_pair,
    _check_labels,
    _check_magnitude,
    _check_positive_int,
    _check_tiny,
    _squares_limit,
)
from ._features import _check_num_classes as _check_num_classes
from ._features import _check_splits as _check_splits
from ._features import _to_numpy as _to_numpy
from ._probe import PROBE_CS as PROBE_CS
from ._probe import PROBE_MAX_FEATURE, ProbeScores, linear_probe
from ._probe import ConvergedProbeScores as ConvergedProbeScores
from ._probe import _accuracy as _accuracy
from ._probe import _batch_indices as _batch_indices
from ._probe import _fit_linear as _fit_linear
from ._probe import linear_probe_converged as linear_probe_converged


class KMeansScores(TypedDict):
    """:func:`kmeans_scores`'s result: k-means on ``(N, d)`` features scored against labels.

    ``n_init`` and ``n_clusters`` are the settings the scores were computed with.
    """

    kmeans_acc: float  #: Hungarian-matched clustering accuracy, fraction in [0, 1]
    nmi: float  #: arithmetic-mean NMI (the paper's formula, sklearn ≥ 0.22 default)
    nmi_geometric: float  #: geometric-mean NMI (sklearn 0.20/0.21 default)
    inertia: float  #: k-means objective of the best of the ``n_init`` runs
    n_init: int
    n_clusters: int


class DownstreamReport(KMeansScores, ProbeScores):
    """:func:`downstream_report`'s result: :class:`KMeansScores` of k-means on the test
    features and :class:`ProbeScores` of a probe trained on train and tested on test, in one
    dict (accuracies and NMI are fractions in [0, 1])."""


# ------------------------------------------------------------------------- clustering scores
#: the most cells of :func:`cluster_accuracy`'s dense table (128 MiB of int64; 40,000 distinct
#: labels against 40,000 cluster ids asked for 12 GiB)
MAX_CONTINGENCY_CELLS = 2**24


def cluster_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of examples correct under the best one-to-one map of cluster ids to labels.

    Builds the ``(K, C)`` contingency table ``w[k, c] = #{i : ŷ_i = k, y_i = c}`` over the ids
    that occur and maximises the matched count with the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment``). The table may be rectangular: with K > C clusters
    the K − C unmatched clusters count as wrong, with K < C so do the unmatched classes. Ids need
    not be contiguous or non-negative.

    Args:
        y_true: ``(N,)`` integer class labels.
        y_pred: ``(N,)`` integer cluster ids.

    Raises:
        ValueError: not 1-D integer arrays of the same length N ≥ 1, or more distinct cluster
            ids × distinct labels than :data:`MAX_CONTINGENCY_CELLS`.
    """
    y_true, y_pred = _check_label_pair(y_true, y_pred)
    _, true_ids = np.unique(y_true, return_inverse=True)
    _, pred_ids = np.unique(y_pred, return_inverse=True)
    shape = (int(pred_ids.max()) + 1, int(true_ids.max()) + 1)
    if shape[0] * shape[1] > MAX_CONTINGENCY_CELLS:
        raise ValueError(
            f"{shape[0]:,} cluster ids × {shape[1]:,} labels make a contingency table of more "
            f"than 2^24 ({MAX_CONTINGENCY_CELLS:,}) cells"
        )
    w = np.zeros(shape, dtype=np.int64)
    np.add.at(w, (pred_ids, true_ids), 1)
    rows, cols = linear_sum_assignment(w, maximize=True)
    return float(w[rows, cols].sum() / y_true.size)


def nmi(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Normalised mutual information with both normalisers, ``{"arithmetic", "geometric"}``.

    ``arithmetic`` = 2·I(y; ŷ) / (H(y) + H(ŷ)), the paper's definition and sklearn's default
    since 0.22; ``geometric`` = I(y; ŷ) / sqrt(H(y)·H(ŷ)), the default of sklearn 0.20/0.21.
    Computed by ``sklearn.metrics.normalized_mutual_info_score``; inputs as for
    :func:`cluster_accuracy`.
    """
    y_true, y_pred = _check_label_pair(y_true, y_pred)
    return {
        method: float(normalized_mutual_info_score(y_true, y_pred, average_method=method))
        for method in ("arithmetic", "geometric")
    }


def kmeans_scores(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    n_clusters: int = 10,
    n_init: int = 100,
    seed: int = 0,
) -> KMeansScores:
    """Cluster ``features`` with k-means and score the clusters against ``labels``.

    sklearn ``KMeans(n_clusters, n_init=n_init, random_state=seed)`` (k-means++ seeding, Lloyd
    iterations, the run of lowest inertia kept) on the features in float64; the paper uses 100
    initialisations on the 10,000 MNIST test latents. The notebook left ``random_state`` unset;
    here it is fixed, so a result is reproducible.

    sklearn runs Lloyd's iterations on all OpenMP threads; where other processes keep the cores
    busy, each iteration's barrier waits for a scheduler slice (measured 8x slower on two busy
    cores), and ``with threadpoolctl.threadpool_limits(1, user_api="openmp"):`` around the call
    avoids that. The same holds for :func:`tsne_figure`.

    Features of magnitude beyond sqrt(max / (4·N·d)) of float64 (about 1e150 for 10,000 × 64)
    are refused: past it a squared distance summed over the rows (the inertia, k-means++'s
    seeding weights) can overflow, and sklearn then clustered on infinities with warnings only.
    They are refused rather than rescaled: the clusters would survive a rescaling, but the
    inertia reported next to them could not be represented. So are features that are not all
    zero but whose largest magnitude is below :data:`SQUARES_MIN_FEATURE` (sqrt of float64's
    smallest normal number, about 1.5e-154): their squared distances underflow, and at 1e-170
    k-means clustered at chance without a word.

    Args:
        features: ``(N, d)`` real features (torch or numpy), N ≥ ``n_clusters``.
        labels: ``(N,)`` integer class labels.

    Raises:
        ValueError: bad shapes, non-finite features or features beyond the bounds above,
            non-integer labels, fewer examples than clusters, or a non-positive
            ``n_clusters`` / ``n_init``.
    """
    _check_positive_int("n_clusters", n_clusters)
    _check_positive_int("n_init", n_init)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        # sklearn's own error names its random_state, not this argument
        raise ValueError(f"seed must be an integer in [0, 2^32), got {seed!r}")
    x = _check_features("features", features)
    _check_magnitude("features", x, _squares_limit(x), "the squared distances summed over rows")
    _check_tiny("features", x, "their squared distances")
    y = _check_labels("labels", labels, x.shape[0])
    if x.shape[0] < n_clusters:
        raise ValueError(f"k-means needs at least n_clusters={n_clusters} examples, got {len(x)}")
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(x)
    scores = nmi(y, kmeans.labels_)
    return {
        "kmeans_acc": cluster_accuracy(y, kmeans.labels_),
        "nmi": scores["arithmetic"],
        "nmi_geometric": scores["geometric"],
        "inertia": float(kmeans.inertia_),
        "n_init": n_init,
        "n_clusters": n_clusters,
    }


def downstream_report(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    *,
    n_clusters: int | None = None,
    n_init: int = 100,
    probe_steps: int = 30000,
    seed: int = 0,
    progress: bool = False,
) -> DownstreamReport:
    """The paper's two downstream tasks on one model's features, in one dict.

    Features ``(N, d)`` with integer labels ``(N,)``, for train and test separately.
    :func:`kmeans_scores` on the **test** features (the paper clusters the projected test set)
    and :func:`linear_probe` trained on the train features and scored on the test features.

    ``n_clusters`` defaults to the number of distinct test labels (10 for MNIST). ``progress``
    shows the probe's bar (sklearn's k-means has none). Raises as the two functions do.
    """
    y_test = _check_labels("test_labels", test_labels, None)
    # the probe's bound on the features is the tighter one: checked before k-means runs
    for name, x in (("train_features", train_features), ("test_features", test_features)):
        x = _check_features(name, x)
        _check_magnitude(name, x, PROBE_MAX_FEATURE, "the probe's squared gradients in float32")
    if n_clusters is None:
        n_clusters = int(np.unique(y_test).size)
    clustering = kmeans_scores(
        test_features, test_labels, n_clusters=n_clusters, n_init=n_init, seed=seed
    )
    probe = linear_probe(
        train_features,
        train_labels,
        test_features,
        test_labels,
        steps=probe_steps,
        seed=seed,
        progress=progress,
    )
    return {**clustering, **probe}
