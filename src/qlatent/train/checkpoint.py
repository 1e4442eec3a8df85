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
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
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


def check_state_dict(state: Any, path: str | Path) -> dict[str, Any]:
    """``state`` if it is a model's state dict fit to load: a dict of real tensors whose keys
    are names and whose floating-point values are finite; :class:`CheckpointError` naming
    ``path`` and the key otherwise."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no model weights")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"{path}: its model weights hold a key {repr(key)[:60]} "
                f"({type(key).__name__}) that is not a name"
            )
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: its model weight {key} is a {type(value).__name__}, not a tensor"
            )
        if value.is_complex():  # loading it into a real weight would drop its imaginary part
            raise CheckpointError(f"{path}: the weight {key} is complex ({value.dtype})")
        if value.is_floating_point():
            bad = int(value.numel() - torch.isfinite(value).sum())
            if bad:
                raise CheckpointError(
                    f"{path}: the weight {key} holds {bad:,} non-finite value(s) (NaN or infinity)"
                )
    return state


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "boolean"
    return "floating-point" if dtype.is_floating_point else "integer"


def check_weight_kinds(state: dict[str, Any], own: dict[str, Any], path: str | Path) -> None:
    """:class:`CheckpointError` naming ``path`` and the key where a saved tensor is of another
    kind (floating-point, integer, boolean) than the model's tensor of that name: ``copy_``
    would round 0.7 to 0 in a count buffer or turn a 0/1 mask into weights without a word.
    Floating-point widths may differ (a model saved in half precision loads into float32)."""
    for key, value in state.items():
        mine = own.get(key)
        if isinstance(mine, torch.Tensor) and _kind(value.dtype) != _kind(mine.dtype):
            raise CheckpointError(
                f"{path}: the weight {key} is {_kind(value.dtype)} ({value.dtype}) where the "
                f"model holds {_kind(mine.dtype)} values ({mine.dtype})"
            )


def load_weights(
    module: torch.nn.Module, state: Any, path: str | Path, *, keep: bool = True
) -> None:
    """``module.load_state_dict(state)`` with one clear error naming ``path`` when the
    checkpoint holds a different architecture (missing, unexpected or differently shaped
    weights), keys that are not names, non-finite values (:func:`check_state_dict`), weights of
    another dtype kind (:func:`check_weight_kinds`) or buffers the module refuses (a counted
    code model inconsistent with its bottleneck). That error is a :class:`CheckpointError`.

    ``load_state_dict`` copies every weight it can before it raises, so a refused checkpoint
    would leave ``module`` half-loaded: with ``keep`` (the default) its weights are copied first
    (:func:`weights_copy`) and put back on refusal. ``keep=False`` skips the copy for a caller
    that keeps its own."""
    check_state_dict(state, path)
    check_weight_kinds(state, module.state_dict(), path)
    kept = weights_copy(module) if keep else None
    try:
        _load_state(module, state, path)
    except BaseException:
        if kept is not None:
            put_back(module, kept)
        raise


def weights_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict copied to the CPU, to put back with :func:`put_back`."""
    own = module.state_dict()
    kept = type(own)((name, t.detach().to("cpu", copy=True)) for name, t in own.items())
    if hasattr(own, "_metadata"):  # the versions and arguments the modules check on load
        kept._metadata = own._metadata
    return kept


def put_back(module: torch.nn.Module, kept: dict[str, torch.Tensor]) -> None:
    """``module``'s weights (and buffers) as :func:`weights_copy` took them, in place: the
    caller's parameters stay the same objects."""
    module.load_state_dict(kept)


def _load_state(module: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``module.load_state_dict(state)``, its refusals as one :class:`CheckpointError`."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:4]) if len(lines) > 1 else (lines[0] if lines else "")
        raise CheckpointError(
            f"{path} holds weights of a different model ({detail[:400]})"
        ) from None
    except ValueError as err:  # a buffer whose contents the module refuses, named in err
        raise CheckpointError(f"{path}: {err}") from None


def _like(saved: Any, fresh: Any) -> bool:
    """Whether a saved optimizer hyperparameter has the form of the fresh optimizer's: a
    finite number for a number, a flag for a flag, a tuple of as many for a tuple."""
    if isinstance(fresh, bool) or fresh is None:
        return saved is None or isinstance(saved, bool)
    if isinstance(fresh, int | float):
        # finite as a float: NaN compares false, and an infinite weight decay or beta turned
        # the weights into NaN at the first step (``saved == saved`` let it through)
        number = isinstance(saved, int | float) and not isinstance(saved, bool)
        return number and abs(saved) <= sys.float_info.max
    if isinstance(fresh, tuple | list):
        return (
            isinstance(saved, tuple | list)
            and len(saved) == len(fresh)
            and all(_like(a, b) for a, b in zip(saved, fresh, strict=True))
        )
    return type(saved) is type(fresh)


def check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """:class:`CheckpointError` naming ``path`` unless ``saved`` is a state ``optimizer`` can
    load and step from: as many groups of as many parameters, hyperparameters of the same form,
    and per parameter a finite scalar ``step`` and finite floating-point moments of the
    parameter's shape (second moments non-negative). ``Optimizer.load_state_dict`` checks only
    the group sizes: a moment of another shape failed at the next step with a traceback, and a
    negative second moment turned the weights into NaN."""
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{path} holds no optimizer state")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]):
        raise CheckpointError(f"{path}: its optimizer state holds other parameter groups")
    shapes: dict[int, torch.Size] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for group, mine in zip(groups, fresh["param_groups"], strict=True):
        ids = group.get("params") if isinstance(group, dict) else None
        if not isinstance(ids, list) or len(ids) != len(mine["params"]):
            raise CheckpointError(f"{path}: its optimizer state holds other parameter groups")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or i in shapes:
                raise CheckpointError(f"{path}: its optimizer state holds other parameter groups")
            shapes[i] = params[len(shapes)].shape  # saved ids map to parameters in order
        for key, value in mine.items():
            if key not in ("params", "lr") and not _like(group.get(key), value):
                raise CheckpointError(
                    f"{path}: the optimizer's {key} is {repr(group.get(key))[:60]}, "
                    f"not of the form of {value!r}"
                )
    for index, entry in saved["state"].items():
        if index not in shapes or not isinstance(entry, dict):
            raise CheckpointError(
                f"{path}: its optimizer state names parameter {repr(index)[:40]}, "
                "which no group holds"
            )
        for key, value in entry.items():
            where = f"{path}: the optimizer's {key} of parameter {index}"
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise CheckpointError(f"{where} is not a floating-point tensor")
            if key != "step" and value.shape != shapes[index]:
                raise CheckpointError(
                    f"{where} has shape {list(value.shape)}, the parameter {list(shapes[index])}"
                )
            if key == "step" and value.numel() != 1:
                raise CheckpointError(f"{where} is not a single number")
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{where} holds non-finite values")
            if (key == "step" or key.endswith("exp_avg_sq")) and bool((value < 0).any()):
                raise CheckpointError(f"{where} holds negative values")


#: train-config keys a resumed run may change: caps and presentation, not the training itself
RESUME_MAY_CHANGE = frozenset(
    {
        "epochs",
        "max_steps",
        "max_minutes",
        "patience",
        "progress",
        "tensorboard",
        "device",
        "eval_batch_size",
    }
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
