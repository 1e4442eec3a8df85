"""Small synthetic binary images for tests and smoke runs (no download needed)."""

from __future__ import annotations

import torch
from torch import Tensor

from .sources import check_fits


def _check(n, dim: int, clusters: int, flip: float, seed: int) -> None:
    """ValueError naming the argument that is not what the generators take, and DataError for
    sizes past this machine's memory, before anything is drawn."""
    for name, value in (("n", n), ("dim", dim), ("clusters", clusters), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must lie in torch's range [-2^63, 2^64), got {seed}")
    if isinstance(flip, bool) or not isinstance(flip, int | float):
        raise ValueError(f"flip must be a number in [0, 1], got {flip!r}")
    rows = max(n, clusters)
    if rows > 0 and dim > 0:
        check_fits(rows * dim, 4, f"{rows:,} × {dim:,} float32 values", "n, clusters and dim")


def synthetic_binary(
    n: int = 600, dim: int = 784, *, clusters: int = 10, flip: float = 0.05, seed: int = 0
) -> dict[str, Tensor]:
    """Noisy copies of ``clusters`` random binary prototypes, split 4:1:1 into train/val/test.

    Structured enough that an autoencoder's loss drops quickly, small enough for CPU tests.
    Returns ``{"train", "val", "test"}`` float32 ``(n_split, dim)`` tensors of 0s and 1s, with
    ``n // 6`` rows each in val and test. Raises ValueError unless ``n >= 6``, ``dim >= 1``,
    ``clusters >= 1`` and ``flip`` in [0, 1], or for arguments of the wrong type.
    """
    _check(n, dim, clusters, flip, seed)
    if n < 6 or dim < 1 or clusters < 1 or not 0 <= flip <= 1:
        raise ValueError("need n >= 6, dim >= 1, clusters >= 1 and flip in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(clusters, dim, generator=g) < 0.3).float()
    labels = torch.randint(clusters, (n,), generator=g)
    flips = (torch.rand(n, dim, generator=g) < flip).float()
    x = (prototypes[labels] + flips).remainder(2)
    n_val = n_test = n // 6
    n_train = n - n_val - n_test
    return {
        "train": x[:n_train],
        "val": x[n_train : n_train + n_val],
        "test": x[n_train + n_val :],
    }


def synthetic_labelled(
    n: int = 600, dim: int = 784, *, clusters: int = 10, flip: float = 0.05, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(x, labels)``: ``n`` noisy copies of ``clusters`` binary prototypes, labelled by prototype.

    The labelled stand-in for MNIST in tests of clustering and linear-probe pipelines.
    ``x`` is float32 ``(n, dim)`` of 0s and 1s, ``labels`` int64 ``(n,)`` with every class
    present. Raises ValueError unless ``n >= clusters >= 2``, ``dim >= 1`` and ``flip`` in
    [0, 1], or for arguments of the wrong type.
    """
    _check(n, dim, clusters, flip, seed)
    if n < clusters or dim < 1 or clusters < 2 or not 0 <= flip <= 1:
        raise ValueError("need n >= clusters >= 2, dim >= 1 and flip in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(clusters, dim, generator=g) < 0.3).float()
    labels = torch.arange(n) % clusters  # every class present
    labels = labels[torch.randperm(n, generator=g)]
    flips = (torch.rand(n, dim, generator=g) < flip).float()
    return (prototypes[labels] + flips).remainder(2), labels
