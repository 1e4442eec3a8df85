"""The data of a ``qlatent train CONFIG`` run: image splits (:func:`load_data`, an image folder's
recorded split, :func:`folder_split`), the synthetic text language and the text splits
(:func:`load_text_data`), class labels for the downstream tasks (:func:`load_labels`).
:mod:`~qlatent.experiments.custom` re-exports every name; the LL-VQ table splits a folder the
same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._utils import expanded
from ..data import DataError
from ._custom_config import TEXT_DATA, DataConfig, RunConfig


def load_data(
    cfg: DataConfig, data_dir: str | None = None, *, progress: bool = True
) -> dict[str, Tensor]:
    """``train`` / ``val`` / ``test`` images ``(N, C, H, W)`` in [0, 1], float32 (``progress``:
    a bar while an image folder is read)."""
    from ..data import binarized_mnist, load_fashion_mnist, load_mnist
    from ..data.folder import load_image_folder

    if cfg.name == "binarized-mnist":
        splits = binarized_mnist(data_dir)
        return {k: v.view(-1, 1, 28, 28) for k, v in splits.items()}
    if cfg.name in ("mnist", "fashion-mnist"):
        loader = load_mnist if cfg.name == "mnist" else load_fashion_mnist
        train = loader("train", data_dir)[0].unsqueeze(1).float() / 255.0
        test = loader("test", data_dir)[0].unsqueeze(1).float() / 255.0
        return _split(train, cfg.val_size, 0, cfg.split_seed) | {"test": test}
    if cfg.name == "folder":
        images = load_image_folder(
            cfg.folder, size=cfg.image_size, channels=cfg.channels, progress=progress
        )
        images = images + 0.5
        return _split(images, cfg.val_size, cfg.test_size, cfg.split_seed)
    # synthetic: smooth blobs (low-resolution noise upsampled), learnable in a few steps
    from ..data.sources import check_fits

    check_fits(
        cfg.synthetic_size * cfg.channels * 28 * 28,
        4,
        f"{cfg.synthetic_size:,} synthetic images of {cfg.channels} × 28 × 28 float32",
        "data.synthetic_size",
    )
    g = torch.Generator().manual_seed(cfg.split_seed)
    low = torch.rand(cfg.synthetic_size, cfg.channels, 7, 7, generator=g)
    images = torch.nn.functional.interpolate(low, size=28, mode="bilinear").clamp(0, 1)
    n = cfg.synthetic_size
    return _split(images, max(1, n // 6), max(1, n // 6), cfg.split_seed)


def load_split(
    cfg: DataConfig, split: str, limit: int | None = None, data_dir: str | None = None
) -> Tensor:
    """The images of one split, ``(N, C, H, W)`` as :func:`load_data` gives them, or its first
    ``limit``: of an image folder only those files are decoded (the split is drawn from the file
    list alone), so coding a few test images of a large folder does not read all of it."""
    if cfg.name != "folder":
        images = load_data(cfg, data_dir)[split]
        return images if limit is None else images[:limit]
    from ..data.folder import image_files, load_image_folder

    n = len(image_files(cfg.folder))
    index = _split_indices(n, cfg.val_size, cfg.test_size, cfg.split_seed)
    chosen = index[split] if limit is None else index[split][:limit]
    images = load_image_folder(
        cfg.folder, size=cfg.image_size, channels=cfg.channels, indices=chosen.tolist()
    )
    return images + 0.5


def _split(images: Tensor, val: int, test: int, seed: int) -> dict[str, Tensor]:
    return {k: images[v] for k, v in _split_indices(images.shape[0], val, test, seed).items()}


def _split_indices(n: int, val: int, test: int, seed: int) -> dict[str, Tensor]:
    if val + test >= n:
        raise ValueError(
            f"cannot hold out {val} validation and {test} test images from {n} "
            "(data.val_size, data.test_size)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = {"val": order[:val], "train": order[val + test :]}
    if test:
        parts["test"] = order[val : val + test]
    return parts


def folder_split(cfg: DataConfig) -> str:
    """SHA-256 of the files of ``cfg.folder`` as :func:`load_data` splits them: each split's
    files, in split order, by their path under the folder. ``cfg`` is this schema's data
    section or the LL-VQ table's (:mod:`~qlatent.experiments.llvq_fashion`), which split a
    folder the same way.

    A run on a folder records it (``derived.folder_split``): the split is a permutation of the
    sorted file list, drawn again whenever the folder is read, so one image added, removed or
    renamed re-draws every split, and the test images of the new split are mostly the run's
    training images. Only the file names are read (what the split depends on), no image: a
    folder moved, or its images re-encoded under the same names, still matches."""
    from ..data.folder import image_files

    root, files = expanded(cfg.folder), image_files(cfg.folder)
    index = _split_indices(len(files), cfg.val_size, cfg.test_size, cfg.split_seed)
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        digest.update(split.encode())
        for i in index[split].tolist():
            digest.update(b"\0" + os.fsencode(files[i].relative_to(root)))
    return digest.hexdigest()


def check_folder_split(cfg: DataConfig, derived: dict[str, Any]) -> None:
    """DataError unless ``cfg.folder`` still splits into the files the run recorded
    (:func:`folder_split`); nothing for other data, whose splits their seeds fix, nor for a run
    that recorded none."""
    recorded = derived.get("folder_split") if isinstance(derived, dict) else None
    if cfg.name == "folder" and recorded is not None and folder_split(cfg) != recorded:
        raise DataError(
            f"the image folder {cfg.folder} no longer holds the images it was trained on (files "
            "added, removed or renamed since): its splits would be drawn anew, the test images "
            "mostly the run's training images"
        )


def checkpoint_data(cfg: DataConfig, derived: Any) -> DataConfig:
    """The data section of a checkpoint's run, to read its data again (``eval``, ``compress
    --data checkpoint-*``, ``update``): a folder the config names by a relative path is read
    from where the run found it (``derived.folder_path``, absolute), so that the checkpoint
    needs nothing else from any working folder; where that folder is gone, the configured path
    as given. DataError unless the folder still splits as the run recorded
    (:func:`check_folder_split`)."""
    if cfg.name == "folder" and isinstance(derived, dict) and cfg.folder:
        recorded = derived.get("folder_path")
        try:
            found = isinstance(recorded, str) and Path(recorded).is_dir()
            relative = not expanded(cfg.folder).is_absolute()
        except (OSError, ValueError):  # a recorded path that names nothing this system has
            found = False
        if found and relative:
            cfg = dataclasses.replace(cfg, folder=recorded)
    check_folder_split(cfg, derived if isinstance(derived, dict) else {})
    return cfg


#: the synthetic sentences' words: subject, verb, object, place (a small regular language)
_SUBJECTS = ("the cat", "a dog", "the old man", "my sister", "the bird", "a child")
_VERBS = ("sees", "likes", "follows", "paints", "finds", "hears")
_OBJECTS = ("the ball", "a red house", "the river", "some bread", "the moon", "a green tree")
_PLACES = ("", "in the park", "at night", "near the sea", "every day")


_LANGUAGE = (_SUBJECTS, _VERBS, _OBJECTS, _PLACES)
#: the sentences of that language: 6 · 6 · 6 · 5
SYNTHETIC_SENTENCES = math.prod(map(len, _LANGUAGE))


def _synthetic_sentence(index: int) -> list[str]:
    """Sentence ``index`` (0 … :data:`SYNTHETIC_SENTENCES` − 1) of the synthetic language, its
    words then ".": the index read as one digit per part of the sentence."""
    words = []
    for part in _LANGUAGE:
        index, k = divmod(index, len(part))
        words += part[k].split()
    return words + ["."]


def _synthetic_text(n: int, seed: int) -> dict[str, list[list[str]]]:
    """``n`` distinct sentences of a small regular language, drawn by ``seed`` and split 4:1:1
    (tests and smoke runs). No sentence is in two splits: drawn with replacement, a third of
    the test sentences of 600 were training sentences too. ValueError naming
    ``data.synthetic_size`` past the language's :data:`SYNTHETIC_SENTENCES`."""
    from ..data.sources import check_fits

    # about 0.6 KB a sentence as a Python list of word strings
    check_fits(n, 640, f"{n:,} synthetic sentences", "data.synthetic_size")
    if n > SYNTHETIC_SENTENCES:
        raise ValueError(
            f"data.synthetic_size must be at most {SYNTHETIC_SENTENCES:,} for synthetic-text "
            f"(the sentences of its language, each in one split), got {n:,}"
        )
    order = torch.randperm(SYNTHETIC_SENTENCES, generator=torch.Generator().manual_seed(seed))
    lines = [_synthetic_sentence(k) for k in order[:n].tolist()]
    cut = max(1, n // 6)
    return {"val": lines[:cut], "test": lines[cut : 2 * cut], "train": lines[2 * cut :]}


def load_text_data(cfg: DataConfig, data_dir: str | None = None, *, words: list[str] | None = None):
    """``(splits, vocabulary)``: ``train`` / ``val`` / ``test`` as ``(N, max_tokens + 1)``
    int64 token ids (words, EOS, PAD) of the sentences of at most ``max_tokens`` words, and the
    :class:`~qlatent.data.text.Vocabulary` of the ``vocab_size`` most frequent training words
    (or of ``words``, a saved one)."""
    from ..data.sources import check_fits
    from ..data.text import MAX_TOKENS, Vocabulary, load_text

    if cfg.name == "text-en":
        splits = load_text(data_dir)
    else:
        splits = _synthetic_text(cfg.synthetic_size, cfg.split_seed)
    splits = {k: [s for s in v if len(s) <= cfg.max_tokens] for k, v in splits.items()}
    count = sum(map(len, splits.values()))
    check_fits(
        count * (cfg.max_tokens + 1),
        8,
        f"{count:,} sentences of {cfg.max_tokens:,} tokens as int64 ids",
        "the most tokens per sentence (data.max_tokens)",
    )
    if cfg.max_tokens > MAX_TOKENS:  # every sentence is padded to it: minutes of padding
        raise DataError(
            f"data.max_tokens must be at most {MAX_TOKENS} (no text dataset here has longer "
            f"sentences; more only pads them), got {cfg.max_tokens:,}"
        )
    for name, sentences in splits.items():
        if not sentences:
            raise DataError(
                f"the {name} split has no sentence of at most data.max_tokens = "
                f"{cfg.max_tokens} words"
            )
    if words is None:
        vocab = Vocabulary.build(splits["train"], cfg.vocab_size)
    else:
        vocab = Vocabulary(words)
    return {k: vocab.encode(v, cfg.max_tokens) for k, v in splits.items()}, vocab


def load_labels(cfg: DataConfig, data_dir: str | None = None) -> dict[str, Tensor]:
    """The class labels of :func:`load_data`'s splits, in the same order (MNIST, FashionMNIST
    and binarized MNIST); ValueError for data without labels."""
    from ..data import load_fashion_mnist, load_mnist
    from ..data.datasets import N_VAL

    if cfg.name in ("folder", "synthetic", *TEXT_DATA):
        raise ValueError(f"data.name = {cfg.name!r} has no class labels for the downstream tasks")
    loader = load_fashion_mnist if cfg.name == "fashion-mnist" else load_mnist
    train, test = loader("train", data_dir)[1], loader("test", data_dir)[1]
    if cfg.name == "binarized-mnist":  # the last N_VAL training images are its validation set
        return {"train": train[:-N_VAL], "val": train[-N_VAL:], "test": test}
    index = _split_indices(train.shape[0], cfg.val_size, 0, cfg.split_seed)
    return {k: train[v] for k, v in index.items()} | {"test": test}


def prepare(cfg: RunConfig, images: dict[str, Tensor]) -> dict[str, Tensor]:
    """The images as the model family takes them: flattened for the MLPs."""
    if cfg.model.family == "conv":
        return images
    return {k: v.flatten(1) for k, v in images.items()}
