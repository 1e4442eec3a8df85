"""The linear probes of :mod:`~qlatent.eval.downstream` and their results.

:func:`linear_probe` is the reference notebook's fixed-budget probe (one Dense d→C layer with
softmax cross-entropy, Adam 0.01, batch 128, 30,000 updates, seeded and CPU-only);
:func:`linear_probe_converged` fits the same model, multinomial logistic regression, to
convergence with scikit-learn's L-BFGS and a validated L2 strength. :mod:`~qlatent.eval.downstream`
re-exports every name; its :func:`~qlatent.eval.downstream.downstream_report` and the
experiments read them there.

Shape legend: N examples, d feature dimensions, C classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from .._utils import tqdm
from ._features import (
    ArrayLike,
    _check_magnitude,
    _check_num_classes,
    _check_positive_int,
    _check_splits,
    _check_tiny,
    _squares_limit,
)


class ProbeScores(TypedDict):
    """:func:`linear_probe`'s result: a d→C softmax classifier's accuracies and its settings
    (``steps`` Adam updates at learning rate ``lr`` on batches of ``batch_size``)."""

    linear_acc: float  #: test accuracy, fraction in [0, 1]
    train_acc: float  #: accuracy on the training features after the last update
    steps: int
    lr: float
    batch_size: int
    num_classes: int


#: the largest feature magnitude :func:`linear_probe` takes (its docstring says why)
PROBE_MAX_FEATURE = 2.0**60


def linear_probe(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    *,
    steps: int = 30000,
    batch_size: int = 128,
    lr: float = 0.01,
    num_classes: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ProbeScores:
    """Test accuracy of one fully connected layer d → C trained on frozen features.

    The reference notebook's recipe (notes, B.3): ``Dense(C)`` logits (Glorot-uniform weights,
    zero bias, as Keras initialises them) with softmax cross-entropy, Adam (lr 0.01, β = (0.9,
    0.999)) for ``steps`` updates of ``batch_size`` examples. The features are used as given,
    without standardisation, as in the notebook. Batches are consecutive slices of a stream of
    permutations of the training set, a fresh permutation per pass (a batch may straddle two
    passes), so every example is seen once per pass.

    Everything random (initial weights, permutations) comes from one CPU ``torch.Generator``
    seeded with ``seed``, so a call is exactly reproducible; torch's global generator is not
    touched. Runs on the CPU in float32 with one OpenMP thread (a limit on the calling thread
    only, lifted on return: the tensors are too small to gain from more), and trains also inside
    ``torch.no_grad`` or ``torch.inference_mode``. 30,000 updates on 60,000 × 64 features took
    17-20 s on two CPU cores shared with other jobs.

    Features of magnitude beyond :data:`PROBE_MAX_FEATURE` (2^60 ≈ 1.2e18) are refused: a
    gradient is as large as the features, and Adam squares it in float32 (largest 3.4e38 ≈
    2^128), so past about 2^64 its second moment is infinite and the weights stop moving (at
    1e20 accuracy fell, at 1e40, infinite in float32, the probe stayed at chance). They are
    refused rather than rescaled: the recipe uses the features as given, and a rescaling
    would change what it measures.

    Args:
        train_features, test_features: ``(N_train, d)`` and ``(N_test, d)`` real features.
        train_labels, test_labels: ``(N_train,)`` and ``(N_test,)`` integer labels in [0, C).
        num_classes: C; default: 1 + the largest label of either split.
        progress: show a tqdm bar over updates.

    Raises:
        ValueError: bad shapes, non-finite features or features beyond the bound above,
            feature dimensions that differ between the splits, labels that are not integers
            in [0, C), non-positive ``steps`` / ``batch_size`` / ``lr``.
    """
    from .._size import MAX_MODEL_NUMBERS
    from ..train.loop import check_seed

    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    if isinstance(lr, bool) or not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    check_seed(seed, "seed")  # manual_seed failed with "expected a long, but got str"
    x_train, y_train, x_test, y_test = _check_splits(
        train_features, train_labels, test_features, test_labels
    )
    for name, x in (("train_features", x_train), ("test_features", x_test)):
        _check_magnitude(name, x, PROBE_MAX_FEATURE, "the probe's squared gradients in float32")
    num_classes = _check_num_classes(num_classes, y_train, y_test)
    if num_classes * x_train.shape[1] > MAX_MODEL_NUMBERS:  # the probe's d x C weights
        raise ValueError(
            f"num_classes={num_classes:,} makes a probe of more than {MAX_MODEL_NUMBERS:,} weights"
        )
    if batch_size * x_train.shape[1] > MAX_MODEL_NUMBERS:  # one batch of features
        raise ValueError(
            f"batch_size={batch_size:,} makes batches of more than {MAX_MODEL_NUMBERS:,} numbers"
        )

    # a caller's no_grad / inference_mode would leave nothing to train
    with torch.inference_mode(False), torch.enable_grad():
        # copies (torch.tensor), not views (from_numpy): a caller's read-only array (np.load's
        # mmap_mode="r", np.frombuffer, broadcast_to) made torch warn that it is not writable
        x_train_t = torch.tensor(x_train, dtype=torch.float32)
        y_train_t = torch.tensor(y_train)
        probe = _fit_linear(
            x_train_t, y_train_t, num_classes, steps, batch_size, lr, seed, progress
        )
    with torch.no_grad():
        train_acc = _accuracy(probe, x_train_t, y_train_t)
        x_test_t, y_test_t = torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test)
        test_acc = _accuracy(probe, x_test_t, y_test_t)
    return {
        "linear_acc": test_acc,
        "train_acc": train_acc,
        "steps": steps,
        "lr": float(lr),
        "batch_size": batch_size,
        "num_classes": num_classes,
    }


class ConvergedProbeScores(TypedDict):
    """:func:`linear_probe_converged`'s result: the refit classifier's accuracies, the inverse L2
    strength chosen on the validation split, and whether its L-BFGS refit converged."""

    linear_acc: float  #: test accuracy of the refit model, fraction in [0, 1]
    train_acc: float  #: its accuracy on all training features
    C: float  #: the chosen inverse L2 strength
    val_acc: dict[str, float]  #: validation accuracy per candidate C (keys: repr of C)
    iterations: int  #: L-BFGS iterations of the refit
    converged: bool  #: whether the refit stopped on its tolerance, not on ``max_iter``


#: inverse L2 strengths the converged probe chooses among (on standardized features)
PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def linear_probe_converged(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    *,
    Cs: tuple[float, ...] = PROBE_CS,
    val_fraction: float = 1 / 6,
    max_iter: int = 2000,
    seed: int = 0,
) -> ConvergedProbeScores:
    """A linear probe trained to convergence, next to the notebook's fixed-budget one.

    Multinomial logistic regression (softmax on one linear layer, as :func:`linear_probe`)
    fitted with L-BFGS to its tolerance by scikit-learn, on features standardized with the
    fitting set's mean and deviation. The inverse L2 strength C is chosen among ``Cs`` by
    accuracy on a held-out ``val_fraction`` of the training features (a seeded random split);
    the chosen C is refit on all training features and scored once on the test features.

    Features of magnitude beyond sqrt(max / (4·N·d)) of float64 are refused, as by
    :func:`kmeans_scores`: the standardization's sums of squares overflow past it (at 1e160
    every probability was NaN and the probe scored chance with warnings only); a rescaling
    would not change the standardized features, but there is no such data to rescale. Features
    not all zero whose largest magnitude is below :data:`SQUARES_MIN_FEATURE` (about 1.5e-154)
    are refused too: their variances underflow, and at 1e-200 the probe scored chance.

    Raises ValueError as :func:`linear_probe` does, for an empty ``Cs`` or one that is not a
    positive finite number, a ``val_fraction`` outside (0, 1), a ``seed`` that is not a
    non-negative integer, features beyond the bounds above, and training labels whose fitting
    split holds one class only.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(Cs, str) or not isinstance(Cs, tuple | list | np.ndarray):
        # an iterator was used up by this check: its C's never reached the search
        raise ValueError(f"Cs must be a tuple or list of numbers, got {Cs!r}")
    if len(Cs) == 0 or any(
        isinstance(c, bool) or not (isinstance(c, int | float) and 0 < c < math.inf) for c in Cs
    ):
        raise ValueError(f"Cs must be positive finite numbers, got {Cs!r}")
    if isinstance(val_fraction, bool) or not (
        isinstance(val_fraction, int | float) and 0 < val_fraction < 1
    ):
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    _check_positive_int("max_iter", max_iter)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        # numpy's own errors named no argument ("expected non-negative integer")
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    x_train, y_train, x_test, y_test = _check_splits(
        train_features, train_labels, test_features, test_labels
    )
    for name, x in (("train_features", x_train), ("test_features", x_test)):
        _check_magnitude(name, x, _squares_limit(x), "the standardization's sums of squares")
        _check_tiny(name, x, "their variances")
    held = np.random.default_rng(seed).permutation(x_train.shape[0])
    n_val = max(1, round(val_fraction * x_train.shape[0]))
    val, fit = held[:n_val], held[n_val:]
    if fit.size == 0:
        raise ValueError("too few training features to hold out a validation split")
    classes = np.unique(y_train[fit])
    if classes.size < 2:  # sklearn: "This solver needs samples of at least 2 classes"
        raise ValueError(
            f"train_labels must hold at least 2 classes outside the validation split, got only "
            f"{classes[0]} in {fit.size} example(s)"
        )

    def model(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))

    val_acc = {}
    for c in Cs:
        val_acc[repr(float(c))] = float(
            model(c).fit(x_train[fit], y_train[fit]).score(x_train[val], y_train[val])
        )
    best = max(Cs, key=lambda c: val_acc[repr(float(c))])  # ties: the first (strongest L2)
    final = model(best).fit(x_train, y_train)
    iterations = int(np.max(final[-1].n_iter_))
    return {
        "linear_acc": float(final.score(x_test, y_test)),
        "train_acc": float(final.score(x_train, y_train)),
        "C": float(best),
        "val_acc": val_acc,
        "iterations": iterations,
        "converged": iterations < max_iter,
    }


# --------------------------------------------------------------------------------- helpers
def _fit_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
) -> nn.Linear:
    """Softmax regression ``(N, d) -> (N, C)`` fitted by Adam on seeded minibatches."""
    generator = torch.Generator().manual_seed(seed)
    # skip_init: nn.Linear's own initialisation would draw from torch's global generator
    probe = nn.utils.skip_init(nn.Linear, x.shape[1], num_classes)
    with torch.no_grad():
        nn.init.xavier_uniform_(probe.weight, generator=generator)
        probe.bias.zero_()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    with (
        # every tensor of an update is ~10^4 numbers: a second OpenMP thread only adds a barrier
        # per op, and where another process keeps the cores busy each barrier waits for a
        # scheduler slice (measured 27x slower on two busy cores). One thread, in this calling
        # thread only and restored on exit, also makes training independent of the core count.
        threadpool_limits(limits=1, user_api="openmp"),
        tqdm(
            total=steps, desc="linear probe", disable=not progress, leave=False, dynamic_ncols=True
        ) as bar,
    ):
        for index in _batch_indices(x.shape[0], batch_size, steps, generator):
            loss = F.cross_entropy(probe(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
    return probe


def _batch_indices(
    n: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """``steps`` index batches ``(batch_size,)`` cut from a stream of fresh permutations of n."""
    stream = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if stream.numel() < batch_size:  # the permutations drawn one after another, joined once
            more = -(-(batch_size - stream.numel()) // n)
            stream = torch.cat(
                [stream, *(torch.randperm(n, generator=generator) for _ in range(more))]
            )
        yield stream[:batch_size]
        stream = stream[batch_size:]


def _accuracy(probe: nn.Module, x: Tensor, y: Tensor) -> float:
    return (probe(x).argmax(-1) == y).double().mean().item()
