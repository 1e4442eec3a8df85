"""Checkpoints as data: atomic writes, a digest of the contents, loading without unpickling code.

- **Atomic**: :func:`save_atomic` writes to a temporary file in the same folder and renames it over
  the target (``os.replace`` is atomic on POSIX), so a crash mid-write leaves the previous
  checkpoint intact. A temporary file left by a killed writer is removed by the next write.
- **Data, not code**: :func:`load` reads with ``torch.load(..., weights_only=True)``: tensors,
  numbers, strings and containers of them only; a checkpoint that embeds code is refused before
  anything in it runs. Configs are therefore stored as plain dicts.
- **Checked**: every checkpoint carries a SHA-256 over all it holds (:func:`content_digest`,
  under the key ``"sha256"``); a flipped byte in the weights, the optimizer state or the history
  makes :func:`load` refuse the file. The digest guards against damage, not forgery: anyone can
  recompute it. Checkpoints written before the digest existed load without the check.
- **Bounded**: what was read is walked without recursion, and refused before anything else
  walks it when it nests deeper than :data:`MAX_DEPTH`, holds more than :data:`MAX_NODES`
  values along all paths (shared references cannot make a small file a huge walk), or holds a
  tensor that is not dense, that its stored data cannot fill or whose elements share memory.
  Model weights must be tensors under names, real and finite (:func:`check_state_dict`).

Every refusal is a :class:`CheckpointError` (a ``ValueError``) that names the file.

The checks of a checkpoint's model weights and the loading of them (:func:`load_weights`) are in
:mod:`._model_weights`, those of its optimizer state and config in :mod:`._resume_checks`; their
names are importable from here too.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from .._utils import check_parent, replacing

#: the key under which the digest is stored
DIGEST_KEY = "sha256"
#: deepest nesting of containers a checkpoint may hold (this project's have a handful of levels)
MAX_DEPTH = 64
#: most values (containers, keys, scalars, tensors) a checkpoint may hold, counted along every
#: path: a container reached twice counts twice, so shared references cannot multiply the work
MAX_NODES = 1 << 21


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and the reason (a ValueError)."""


def content_digest(obj: Any, *, max_nodes: int | None = None) -> str:
    """SHA-256 (hex) over a checkpoint's contents: the structure, every key and scalar, and
    every tensor's dtype, shape and bytes, in a fixed order. Raises TypeError for anything
    :func:`load` could not read back, and ValueError past ``max_nodes`` values visited (default
    :data:`MAX_NODES`; a value reached twice counts twice).

    Iterative, not recursive: the digest of a deeply nested object needs no deep stack."""
    h = hashlib.sha256()
    limit = MAX_NODES if max_nodes is None else max_nodes
    visited = 0
    # what is left to do, last first: (True, bytes to hash) or (False, an object to walk)
    todo: list[tuple[bool, Any]] = [(False, obj)]
    while todo:
        raw, x = todo.pop()
        if raw:
            h.update(x)
            continue
        visited += 1
        if visited > limit:
            raise ValueError(f"it holds more than {limit:,} values, unlike any checkpoint")
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}|".encode())
            items: list[tuple[bool, Any]] = []
            for key in sorted(x, key=repr):
                items += [(True, f"K{key!r}|".encode()), (False, x[key])]
            todo.extend(reversed(items))
        elif isinstance(x, list | tuple):
            h.update(f"{type(x).__name__[0]}{len(x)}|".encode())
            todo.extend((False, item) for item in reversed(x))
        elif x is None or isinstance(x, bool | int | float | str):
            h.update(f"S{x!r}|".encode())
        elif isinstance(x, torch.dtype | torch.device | torch.Size):
            h.update(f"X{x!r}|".encode())
        else:
            raise TypeError(f"a checkpoint holds plain data only, not {type(x).__name__}")
    return h.hexdigest()


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (a dict of plain data and tensors, stored with its digest, or one tensor)
    to ``path`` atomically. Checked before anything is written: ``obj`` must be what
    :func:`load` reads back (plain data, nested at most :data:`MAX_DEPTH` deep, dense tensors;
    TypeError or :class:`CheckpointError` otherwise: a file nested too deeply was written, then
    refused by every load), and ``path`` no folder, device or pipe (ValueError: a folder failed
    in the rename after the whole write, and a device would have been replaced by a file) nor
    under a regular file (ValueError naming both)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ValueError(f"refusing to write the checkpoint {path}: it is {kind}")
    check_parent(path, "the checkpoint")
    _check_tensors(obj, path)
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != DIGEST_KEY}
        obj[DIGEST_KEY] = content_digest(obj)
    else:
        content_digest(obj)  # the same walk: plain data only (not stored)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temporary file of this writer's own, locked until renamed: the temporary files of
    # killed writers are removed first, another writer's in progress no longer (its rename
    # failed); readable by the owner only, as mkstemp made it
    try:
        with replacing(path, mode=0o600, sweep=True) as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:
        # a full disk or a file-size limit, named with the file: the bare "[Errno 28] No space
        # left on device" said neither what was written nor where (torch's zip writer, closed
        # after a write failed, replaces that OSError with its own RuntimeError)
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError) or cause.errno is None:
            raise
        raise OSError(
            cause.errno, f"cannot write the checkpoint {path}: {cause.strerror}"
        ) from None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's dict, read as data and checked against its digest.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for one that is not
    a checkpoint (a folder or another non-file, empty, truncated, text, code), is damaged
    (digest mismatch) or is not a dict.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder was "no checkpoint at" it
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise CheckpointError(f"{path} is {kind}, not a checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty, not a checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds: say which, briefly
        raise CheckpointError(f"{path} is not a readable checkpoint ({_reason(err)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    _check_tensors(obj, path)
    if DIGEST_KEY in obj:
        stored = obj.pop(DIGEST_KEY)
        try:
            actual = content_digest(obj)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: {err}") from None
        if stored != actual:
            raise CheckpointError(
                f"{path} is damaged: its contents do not match the digest stored with them"
            )
    return obj


def _reason(err: Exception) -> str:
    """One short line for why ``torch.load(weights_only=True)`` failed."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if match:  # not a pickle of plain data: refused, since loading it could run code
        reason = re.sub(r" was not an allowed global.*| Please use .*", "", match.group(1))
        return f"not tensors and plain data only: {reason.strip()[:200]}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def _check_tensors(obj: Any, path: Path) -> None:
    """Walk a loaded object (iteratively, keys included) and refuse what using it would choke
    on: nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_NODES` values along all
    paths (a small file whose containers share references can describe 2^60 of them), a tensor
    that is not dense (sparse, MKL-DNN or nested: no storage to check or copy), a tensor
    that claims more elements than its storage holds (a crafted size: copying or using it
    would allocate from numbers in the file), and one whose elements share memory (a zero or
    overlapping stride, which no checkpoint written here holds: :func:`save_atomic` refuses
    it too)."""
    visited = 0
    todo: list[tuple[Any, int]] = [(obj, 1)]
    while todo:
        x, depth = todo.pop()
        visited += 1
        if visited > MAX_NODES:
            raise CheckpointError(
                f"{path} holds more than {MAX_NODES:,} values (containers, keys, numbers, "
                "tensors), unlike any checkpoint"
            )
        if isinstance(x, torch.Tensor):
            _check_tensor(x, path)
            continue
        if isinstance(x, dict):
            children = [*x.keys(), *x.values()]
        elif isinstance(x, list | tuple):
            children = list(x)
        else:
            continue
        if depth >= MAX_DEPTH and children:
            raise CheckpointError(
                f"{path} nests containers more than {MAX_DEPTH} levels deep, unlike any checkpoint"
            )
        todo.extend((child, depth + 1) for child in children)


def _check_tensor(t: torch.Tensor, path: Path) -> None:
    """One tensor of :func:`_check_tensors`: dense, and no larger than its storage."""
    if t.is_nested or t.layout != torch.strided:
        kind = "nested" if t.is_nested else str(t.layout).removeprefix("torch.")
        raise CheckpointError(
            f"{path} holds a {kind} tensor of shape {tuple(t.shape)}: only dense (strided) "
            "tensors are read"
        )
    needed = t.numel() * t.element_size()
    if needed > t.untyped_storage().nbytes():
        raise CheckpointError(
            f"{path} holds a tensor of shape {tuple(t.shape)} that its stored data "
            f"({t.untyped_storage().nbytes():,} bytes) cannot fill"
        )
    if _overlaps(t):
        raise CheckpointError(
            f"{path} holds a tensor of shape {tuple(t.shape)} and strides {t.stride()} whose "
            "elements share memory (an expanded or overlapping view): only tensors that store "
            "each element once are read"
        )


def _overlaps(t: torch.Tensor) -> bool:
    """Whether ``t``'s shape and strides reach one stored element twice: a zero stride, or
    strides that do not nest (each, in increasing order, at least the span of those below it).
    Slices, transposes and permutations of a dense tensor nest; ``expand``, ``unfold`` and
    ``as_strided`` make the others, and an optimizer moment of that layout was stepped in place
    without a word, its elements overwriting each other."""
    if t.numel() == 0:
        return False
    span = 1  # the elements, counted in strides, that the dimensions seen so far cover
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape, strict=True) if n > 1):
        if stride < span:
            return True
        span += stride * (size - 1)
    return False


# the checks of what a checkpoint holds against the model, the optimizer and the config it is
# loaded into: imported last, as those modules import this one's CheckpointError
from ._model_weights import (  # noqa: E402, F401
    check_state_dict,
    check_weight_kinds,
    load_weights,
    put_back,
    weights_copy,
)
from ._resume_checks import (  # noqa: E402, F401
    RESUME_MAY_CHANGE,
    RESUME_MAY_CHANGE_RUN,
    check_optimizer_state,
    config_changes,
)
