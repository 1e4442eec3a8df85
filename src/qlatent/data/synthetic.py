"""Small synthetic binary images for tests and smoke runs (no download needed)."""

from __future__ import annotations

import torch
from torch import Tensor


def synthetic_binary(
    n: int = 600, dim: int = 784, *, clusters: int = 10, flip: float = 0.05, seed: int = 0
) -> dict[str, Tensor]:
    """Noisy copies of ``clusters`` random binary prototypes, split 4:1:1 into train/val/test.

    Structured enough that an autoencoder's loss drops quickly, small enough for CPU tests.
    """
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
    """
    if n < clusters or dim < 1 or clusters < 2 or not 0 <= flip <= 1:
        raise ValueError("need n >= clusters >= 2, dim >= 1 and flip in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(clusters, dim, generator=g) < 0.3).float()
    labels = torch.arange(n) % clusters  # every class present
    labels = labels[torch.randperm(n, generator=g)]
    flips = (torch.rand(n, dim, generator=g) < flip).float()
    return (prototypes[labels] + flips).remainder(2), labels
