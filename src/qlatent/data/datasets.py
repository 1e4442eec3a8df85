"""MNIST, FashionMNIST and a fixed-seed binarized MNIST as plain torch tensors.

``load_mnist`` / ``load_fashion_mnist`` return ``(images, labels)``: ``uint8`` images of shape
``(N, 28, 28)`` and ``int64`` labels of shape ``(N,)``, with ``N = 60000`` for ``"train"`` and
``10000`` for ``"test"``. The files come from :mod:`qlatent.data.sources` and are checked by
SHA-256 before use.

Binarized MNIST (:func:`binarized_mnist`)
-----------------------------------------
A single stochastic binarization, drawn once with a fixed seed and then frozen:

* every pixel is an independent ``Bernoulli(grey / 255)`` draw, ``x = (u < grey / 255)`` with
  ``u`` uniform on ``[0, 1)`` from ``numpy.random.default_rng``;
* ``BINARIZATION_SEED = 777``. The 60,000 MNIST training images are binarized together, in file
  order, by ``default_rng(777).random((60000, 784))`` (drawn in row blocks, which yields exactly the
  same numbers as that one call); the 10,000 test images use a second generator
  ``default_rng(778)`` (``BINARIZATION_SEED + 1``);
* splits: ``"train"`` = the first 50,000 training images, ``"val"`` = the last 10,000 training
  images, ``"test"`` = the 10,000 test images; each is a ``float32`` tensor of shape ``(N, 784)``
  with values in ``{0, 1}``.

This is *not* the static binarized MNIST of Larochelle & Murray (2011), which fixed its own
random draw and is distributed as separate files: likelihoods computed here are comparable in kind
with published numbers on that benchmark, but not bit-for-bit.

The result is cached as ``binarized-mnist-seed777.npz`` (bit-packed with ``numpy.packbits``) under
the qlatent cache folder. The cache records the seed, shapes, the hashes of the source files and a
SHA-256 of its own content. It is read as untrusted input: the file's size, then each entry's npy
header (dtype, shape, byte count) are checked against what :func:`_save_cache` writes *before*
anything is allocated, and no entry is ever unpickled. A cache that fails any check is rebuilt,
with a warning naming the file and the reason: it holds nothing that cannot be recomputed from the
verified MNIST files in a few seconds, and it is written atomically into qlatent's own cache
folder, never over a file the user named (nor over something there that is not a regular file).

A folder of MNIST files the user names (``data_dir``, else ``$QLATENT_DATA``) is verified even
when the cache can serve: damaged or partial files there are the same error with a cache as
without one. Files that verify are bit-identical to those the cache was built from (the cache is
keyed by their SHA-256, ``source``), so the cache still serves.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from qlatent._utils import terminal_text
from qlatent.data.idx import read_idx
from qlatent.data.sources import FILES, SHA256, cache_dir, dataset_files, user_files

__all__ = [
    "BINARIZATION_SEED",
    "binarize",
    "binarize_splits",
    "binarized_mnist",
    "binarized_mnist_cache_path",
    "load_fashion_mnist",
    "load_mnist",
]

BINARIZATION_SEED = 777
N_TRAIN_IMAGES = 60_000
N_TEST_IMAGES = 10_000
N_VAL = 10_000
IMAGE_SIZE = 28 * 28
_SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1
#: a block of :func:`binarize`'s draw holds at most this many rows and this many values (32 MiB
#: of float64 draws): by rows alone, a block of 4096 large images was gigabytes
_ROWS_PER_BLOCK = 4096
_VALUES_PER_BLOCK = 1 << 22

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- raw datasets


def _load(
    name: str, split: str, data_dir: PathLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    files = dataset_files(name, data_dir, download=download)
    images = read_idx(files[FILES[(split, "images")]])
    labels = read_idx(files[FILES[(split, "labels")]])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{name} {split} images have shape {images.shape}, {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{name} {split}: {labels.shape} labels for {images.shape[0]} images")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    split: str, data_dir: PathLike | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` (``"train"`` or ``"test"``) as ``(uint8 (N,28,28), int64 (N,))``.

    N is 60,000 for ``"train"`` and 10,000 for ``"test"``. The files are found or fetched by
    :func:`qlatent.data.fetch` (``download``) and checked against their SHA-256. Raises
    ValueError for another ``split``, :class:`~qlatent.data.DataNotFoundError` or
    :class:`~qlatent.data.ChecksumError` for missing or damaged files.
    """
    return _load("mnist", split, data_dir, download)


def load_fashion_mnist(
    split: str, data_dir: PathLike | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """FashionMNIST ``split`` (``"train"`` or ``"test"``) as ``(uint8 (N,28,28), int64 (N,))``.

    Sizes, sources and errors as :func:`load_mnist`.
    """
    return _load("fashion-mnist", split, data_dir, download)


# --------------------------------------------------------------------------- binarization


def _check_seed(seed: int) -> None:
    """ValueError unless ``seed`` is an integer NumPy seeds with (``None`` would draw a fresh,
    unrepeatable binarization)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def binarize(images: torch.Tensor | np.ndarray, seed: int) -> torch.Tensor:
    """One stochastic binarization of ``uint8`` images, flattened to ``float32 (N, H*W)``.

    Pixel ``j`` of image ``i`` is ``u[i, j] < grey / 255`` where ``u`` is
    ``np.random.default_rng(seed).random((N, H*W))``. The draw is made in row blocks to bound
    memory (at most :data:`_ROWS_PER_BLOCK` rows and :data:`_VALUES_PER_BLOCK` values, a wide
    row split across blocks); the numbers are the same as with one call.

    ``images``: ``(N, *image)`` uint8 (tensor or array). Raises TypeError for another dtype,
    ValueError for a 0-d array or a ``seed`` that is not a non-negative integer.
    """
    _check_seed(seed)
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"binarize expects uint8 images, got {array.dtype}")
    if array.ndim < 1:
        raise ValueError("binarize expects a batch of images")
    flat = array.reshape(array.shape[0], math.prod(array.shape[1:]))  # an empty batch too
    # the draw fills ``u`` in C order, one number per pixel: blocks of the flat pixels in order
    # draw the same numbers as one call of shape ``flat.shape``
    pixels = flat.reshape(-1)
    step = max(1, min(_ROWS_PER_BLOCK * flat.shape[1], _VALUES_PER_BLOCK))
    rng = np.random.default_rng(seed)
    out = np.empty(pixels.shape, dtype=np.float32)
    for start in range(0, pixels.size, step):
        block = pixels[start : start + step]
        out[start : start + block.size] = rng.random(block.size) < block / 255.0
    return torch.from_numpy(out.reshape(flat.shape))


def binarize_splits(
    train_images: torch.Tensor | np.ndarray,
    test_images: torch.Tensor | np.ndarray,
    seed: int = BINARIZATION_SEED,
    n_val: int = N_VAL,
) -> dict[str, torch.Tensor]:
    """Binarize the training images with ``seed`` and the test images with ``seed + 1``.

    The last ``n_val`` binarized training images form ``"val"``, the rest ``"train"``.
    Returns ``{"train": (N_train − n_val, H*W), "val": (n_val, H*W), "test": (N_test, H*W)}``
    float32 tensors of 0s and 1s. Raises ValueError for a bad ``seed`` or ``n_val``, or an
    ``n_val`` that leaves no training image; errors of :func:`binarize` otherwise.
    """
    _check_seed(seed)
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 0:
        raise ValueError(f"n_val must be a non-negative integer, got {n_val!r}")
    n_train = len(train_images) - n_val
    if n_train <= 0:
        raise ValueError(f"{len(train_images)} training images cannot give {n_val} for val")
    trainval = binarize(train_images, seed)
    return {
        "train": trainval[:n_train].clone(),
        "val": trainval[n_train:].clone(),
        "test": binarize(test_images, seed + 1),
    }


# --------------------------------------------------------------------------- cached binarized MNIST


def binarized_mnist_cache_path(seed: int = BINARIZATION_SEED) -> Path:
    """Where :func:`binarized_mnist` keeps its packed result."""
    _check_seed(seed)  # a string would name another file, "../x" one outside the cache
    return cache_dir("mnist") / f"binarized-mnist-seed{seed}.npz"


def _source_key() -> str:
    table = SHA256["mnist"]
    return hashlib.sha256("".join(table[f] for f in FILES.values()).encode()).hexdigest()


def _content_digest(packed: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for split in _SPLITS:
        digest.update(split.encode())
        digest.update(np.ascontiguousarray(packed[split]).tobytes())
    return digest.hexdigest()


def _expected_shapes() -> list[tuple[int, int]]:
    rows = (N_TRAIN_IMAGES - N_VAL, N_VAL, N_TEST_IMAGES)
    return [(n, IMAGE_SIZE) for n in rows]


def _cache_layout() -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each entry of the cache file with the dtype and shape :func:`_save_cache` writes it with."""
    layout = {
        split: (np.dtype(np.uint8), (rows, (cols + 7) // 8))
        for split, (rows, cols) in zip(_SPLITS, _expected_shapes(), strict=True)
    }
    int64, digest = np.dtype(np.int64), np.dtype("U64")  # a SHA-256 in hex: 64 characters
    layout |= {"shapes": (int64, (len(_SPLITS), 2)), "seed": (int64, ()), "version": (int64, ())}
    layout |= {"source": (digest, ()), "digest": (digest, ())}
    return layout


#: what a cache file may hold besides its entries' data (npy headers, zip records)
_CACHE_OVERHEAD = 1 << 16


def _cache_size_limit() -> int:
    layout = _cache_layout().values()
    return sum(dtype.itemsize * math.prod(shape) for dtype, shape in layout) + _CACHE_OVERHEAD


def _read_entry(
    archive: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    """The entry ``name`` of the cache, once its npy header announces ``dtype`` and ``shape``
    (the header is read alone, so nothing is allocated for a size the file only claims)."""
    try:
        info = archive.getinfo(f"{name}.npy")
    except KeyError:
        raise ValueError(f"no entry {name!r}") from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ValueError(f"{name}: compressed or encrypted (the cache stores its entries plain)")
    with archive.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"format version {version}, not 1.0 or 2.0")
        except ValueError as exc:
            raise ValueError(f"{name}: not an npy header ({' '.join(str(exc).split())})") from None
        got_shape, fortran_order, got_dtype = header
        if got_dtype != dtype or tuple(got_shape) != shape or fortran_order:
            raise ValueError(
                f"{name}: {got_dtype} of shape {tuple(got_shape)}"
                f"{' (Fortran order)' if fortran_order else ''}, expected {dtype} of shape {shape}"
            )
        size = dtype.itemsize * math.prod(shape)
        if info.file_size != fh.tell() + size:
            raise ValueError(f"{name}: {info.file_size:,} bytes, not a header and {size:,} bytes")
        data = fh.read(size)
    if len(data) != size:
        raise ValueError(f"{name}: {len(data):,} bytes of data, expected {size:,}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _save_cache(path: Path, splits: Mapping[str, torch.Tensor], seed: int) -> None:
    packed = {s: np.packbits(splits[s].numpy().astype(np.uint8), axis=1) for s in _SPLITS}
    if path.exists() and not path.is_file():
        # a folder, a pipe or a device: the rename below would replace it
        raise OSError(f"{path} is not a regular file; it is left as it is")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                **packed,
                shapes=np.array([splits[s].shape for s in _SPLITS], dtype=np.int64),
                seed=np.int64(seed),
                version=np.int64(_CACHE_VERSION),
                source=np.array(_source_key()),
                digest=np.array(_content_digest(packed)),
            )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _load_cache(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """Read and check the cache; raise ``ValueError`` saying what is wrong.

    Untrusted input: the file's size and every entry's npy header are checked against
    :func:`_cache_layout` before its data is read, and nothing is unpickled."""
    layout = _cache_layout()
    try:
        size, limit = path.stat().st_size, _cache_size_limit()
        if size > limit:
            raise ValueError(f"{size:,} bytes, more than the {limit:,} of a cache")
        with zipfile.ZipFile(path) as archive:
            unexpected = sorted(set(archive.namelist()) - {f"{key}.npy" for key in layout})
            if unexpected:
                raise ValueError(f"unexpected entries {unexpected[:5]}")
            fields = {
                key: _read_entry(archive, key, dtype, shape)
                for key, (dtype, shape) in layout.items()
            }
    except (OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        # NotImplementedError: zip features that the zipfile module does not read
        raise ValueError(f"unreadable ({exc})") from exc
    if int(fields["version"]) != _CACHE_VERSION or int(fields["seed"]) != seed:
        raise ValueError("written by another version or for another seed")
    if str(fields["source"]) != _source_key():
        raise ValueError("built from other source files")
    if str(fields["digest"]) != _content_digest(fields):
        raise ValueError("content checksum mismatch")
    shapes = [tuple(int(v) for v in row) for row in fields["shapes"]]
    if shapes != _expected_shapes():
        raise ValueError(f"unexpected shapes {shapes}")
    out = {}
    for split, (_, cols) in zip(_SPLITS, shapes, strict=True):
        bits = np.unpackbits(fields[split], axis=1, count=cols)  # shape checked with the header
        out[split] = torch.from_numpy(bits.astype(np.float32))
    return out


def binarized_mnist(
    data_dir: PathLike | None = None, *, download: bool = True, cache: bool = True
) -> dict[str, torch.Tensor]:
    """Fixed-seed binarized MNIST: ``{"train": (50000,784), "val": (10000,784), "test": ...}``.

    See the module docstring for the exact recipe. With ``cache=True`` the result is read from (or
    written to) :func:`binarized_mnist_cache_path`; a damaged cache is rebuilt with a warning.

    Raises:
        ChecksumError, DataNotFoundError: the folder ``data_dir`` (else ``$QLATENT_DATA``) holds
            damaged or only some of the MNIST files, whether or not the cache could serve.
    """
    seed = BINARIZATION_SEED
    path = binarized_mnist_cache_path(seed)
    if cache and path.is_file():
        # a folder the user names is checked even though the cache serves: its damaged files
        # are an error here as they are without a cache (a verified folder holds the very bytes
        # the cache was built from)
        user_files("mnist", data_dir)
        try:
            return _load_cache(path, seed)
        except ValueError as exc:
            warnings.warn(
                terminal_text(f"{path}: damaged cache ({exc}); rebuilding it"), stacklevel=2
            )
    train_images, _ = load_mnist("train", data_dir, download=download)
    test_images, _ = load_mnist("test", data_dir, download=download)
    splits = binarize_splits(train_images, test_images, seed, n_val=N_VAL)
    if cache:
        try:
            _save_cache(path, splits, seed)
        except OSError as exc:
            warnings.warn(terminal_text(f"could not write the cache {path}: {exc}"), stacklevel=2)
    return splits
