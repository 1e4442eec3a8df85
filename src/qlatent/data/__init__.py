"""Datasets for qlatent: MNIST and FashionMNIST with verified checksums, binarized MNIST.

* :func:`fetch` / :func:`locate` - find or obtain the IDX files (see :mod:`qlatent.data.sources`
  for the order in which sources are tried);
* :func:`load_mnist` / :func:`load_fashion_mnist` - ``(uint8 images, int64 labels)`` tensors;
* :func:`binarized_mnist` - a single fixed-seed (``BINARIZATION_SEED = 777``) stochastic
  binarization with a 50k / 10k / 10k train / val / test split (see
  :mod:`qlatent.data.datasets`);
* :func:`read_idx` - the IDX reader.
"""

from qlatent.data.datasets import (
    BINARIZATION_SEED,
    binarize,
    binarize_splits,
    binarized_mnist,
    load_fashion_mnist,
    load_mnist,
)
from qlatent.data.idx import read_idx, write_idx
from qlatent.data.sources import (
    ChecksumError,
    DataError,
    DataNotFoundError,
    cache_dir,
    dataset_files,
    fetch,
    how_to_get,
    locate,
)
from qlatent.data.synthetic import synthetic_binary, synthetic_labelled

__all__ = [
    "synthetic_binary",
    "synthetic_labelled",
    "BINARIZATION_SEED",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "binarize",
    "binarize_splits",
    "binarized_mnist",
    "cache_dir",
    "dataset_files",
    "fetch",
    "how_to_get",
    "load_fashion_mnist",
    "load_mnist",
    "locate",
    "read_idx",
    "write_idx",
]
