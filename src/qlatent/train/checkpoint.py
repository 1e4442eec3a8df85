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

Every refusal is a :class:`CheckpointError` (a ``ValueError``) that names the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

#: the key under which the digest is stored
DIGEST_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and the reason."""


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) over a checkpoint's contents: the structure, every key and scalar, and
    every tensor's dtype, shape and bytes, in a fixed order. Raises TypeError for anything
    :func:`load` could not read back."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}|".encode())
            for key in sorted(x, key=repr):
                h.update(f"K{key!r}|".encode())
                walk(x[key])
        elif isinstance(x, list | tuple):
            h.update(f"{type(x).__name__[0]}{len(x)}|".encode())
            for item in x:
                walk(item)
        elif x is None or isinstance(x, bool | int | float | str):
            h.update(f"S{x!r}|".encode())
        elif isinstance(x, torch.dtype | torch.device | torch.Size):
            h.update(f"X{x!r}|".encode())
        else:
            raise TypeError(f"a checkpoint holds plain data only, not {type(x).__name__}")

    walk(obj)
    return h.hexdigest()


def _remove_stale(path: Path) -> None:
    """Temporary files of ``path`` left by a writer that was killed mid-write."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (a dict of plain data and tensors) to ``path`` atomically, with its digest."""
    path = Path(path)
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != DIGEST_KEY}
        obj[DIGEST_KEY] = content_digest(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's dict, read as data and checked against its digest.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for one that is not
    a checkpoint (empty, truncated, text, code), is damaged (digest mismatch) or is not a dict.
    """
    path = Path(path)
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
        except TypeError as err:
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
    """Refuse a tensor that claims more elements than its storage holds (a crafted size or a
    zero stride): copying or using it would allocate from numbers in the file."""
    if isinstance(obj, torch.Tensor):
        needed = obj.numel() * obj.element_size()
        overlapping = any(st < 1 for st, n in zip(obj.stride(), obj.shape, strict=True) if n > 1)
        if needed > obj.untyped_storage().nbytes() or overlapping:
            raise CheckpointError(
                f"{path} holds a tensor of shape {tuple(obj.shape)} that its stored data "
                f"({obj.untyped_storage().nbytes():,} bytes) cannot fill"
            )
    elif isinstance(obj, dict):
        for value in obj.values():
            _check_tensors(value, path)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _check_tensors(value, path)


def load_weights(module: torch.nn.Module, state: Any, path: str | Path) -> None:
    """``module.load_state_dict(state)`` with one clear error naming ``path`` when the
    checkpoint holds a different architecture (missing, unexpected or differently shaped
    weights)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no model weights")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:4]) if len(lines) > 1 else (lines[0] if lines else "")
        raise CheckpointError(
            f"{path} holds weights of a different model ({detail[:400]})"
        ) from None


#: train-config keys a resumed run may change: caps and presentation, not the training itself
RESUME_MAY_CHANGE = frozenset(
    {"epochs", "max_steps", "max_minutes", "patience", "progress", "device", "eval_batch_size"}
)
#: run-config sections a resumed run may change: evaluation and output, after training
RESUME_MAY_CHANGE_RUN = frozenset({"eval", "eval_seed", "out_dir", "train"})


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(
    saved: dict[str, Any] | None, current: dict[str, Any] | None, allowed: frozenset[str]
) -> list[str]:
    """``key: saved → current`` for every key whose value differs, except those whose first
    component is in ``allowed``; a key that only one side records (an older checkpoint, a new
    option) is not a difference."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return []
    a, b = _flatten(saved), _flatten(current)
    return [
        f"{key}: {a[key]!r} → {b[key]!r}"
        for key in sorted(a.keys() & b.keys())
        if key.split(".", 1)[0] not in allowed and a[key] != b[key]
    ]
