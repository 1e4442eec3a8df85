"""The checks of :mod:`~qlatent.eval.downstream`'s inputs (:data:`ArrayLike`: torch or numpy):
``(N, d)`` real features as float64 (:func:`_check_features`), integer labels as int64
(:func:`_check_labels`), both splits together (:func:`_check_splits`), the magnitude bounds past
which sums of squares overflow or underflow (:func:`_check_magnitude`, :func:`_check_tiny`,
:data:`SQUARES_MIN_FEATURE`), the class count and positive integer settings.
:mod:`~qlatent.eval.downstream` re-exports every name; ``tsne`` reads them there, the linear
probes (``_probe``) here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _check_splits(
    train_features: Any, train_labels: Any, test_features: Any, test_labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both splits' features and labels checked, and their feature dimensions equal."""
    x_train = _check_features("train_features", train_features)
    x_test = _check_features("test_features", test_features)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"train_features and test_features differ in dimension: "
            f"{x_train.shape[1]} vs {x_test.shape[1]}"
        )
    y_train = _check_labels("train_labels", train_labels, x_train.shape[0])
    y_test = _check_labels("test_labels", test_labels, x_test.shape[0])
    return x_train, y_train, x_test, y_test


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _check_features(name: str, features: Any) -> np.ndarray:
    """``(N, d)`` real, finite features as a float64 array (N, d ≥ 1)."""
    x = _to_numpy(name, features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, d) with N, d >= 1, got {x.shape}")
    if x.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers (int or float), got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")
    return x


def _squares_limit(x: np.ndarray) -> float:
    """The largest magnitude for which every sum over the rows of squared differences of two
    rows, ≤ N·d·(2·max|x|)², stays finite in float64."""
    return math.sqrt(np.finfo(np.float64).max / (4 * x.shape[0] * x.shape[1]))


#: the smallest largest-magnitude of features that are not all zero which :func:`kmeans_scores`
#: and :func:`linear_probe_converged` take: below it every square is subnormal in float64
SQUARES_MIN_FEATURE = math.sqrt(np.finfo(np.float64).tiny)


def _check_tiny(name: str, x: np.ndarray, underflow: str) -> None:
    """ValueError if ``x`` is not all zero but its largest |x| is below
    :data:`SQUARES_MIN_FEATURE`, where ``underflow`` would underflow."""
    peak = max(float(x.max()), -float(x.min()))
    if 0 < peak < SQUARES_MIN_FEATURE:
        raise ValueError(
            f"{name} reach only magnitude {peak:.3g}, below {SQUARES_MIN_FEATURE:.3g} ({underflow} "
            "would underflow): scale them up first"
        )


def _check_magnitude(name: str, x: np.ndarray, limit: float, overflows: str) -> None:
    """ValueError if the largest |x| passes ``limit``, where ``overflows`` would overflow."""
    peak = max(float(x.max()), -float(x.min()))
    if peak > limit:
        raise ValueError(
            f"{name} reach magnitude {peak:.3g}, beyond {limit:.3g} ({overflows} would "
            "overflow): scale them down first"
        )


def _check_labels(name: str, labels: Any, n: int | None, other: str = "the features") -> np.ndarray:
    """``(n,)`` integer labels as an int64 array (any length ≥ 1 when n is None)."""
    y = _to_numpy(name, labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {y.dtype}")
    if n is not None and y.size != n:
        raise ValueError(f"{name} has {y.size} entries but {other} has {n}")
    return y.astype(np.int64, copy=False)


def _check_label_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y_true = _check_labels("y_true", y_true, None)
    return y_true, _check_labels("y_pred", y_pred, y_true.size, other="y_true")


def _check_num_classes(num_classes: int | None, *labels: np.ndarray) -> int:
    low = min(int(y.min()) for y in labels)
    high = max(int(y.max()) for y in labels)
    if num_classes is None:
        num_classes = high + 1
    _check_positive_int("num_classes", num_classes)
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}), got values in [{low}, {high}]"
        )
    return num_classes


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
