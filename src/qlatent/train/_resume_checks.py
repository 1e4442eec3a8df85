"""What a resumed run checks of its checkpoint besides the weights: an optimizer state the
optimizer can step from (:func:`check_optimizer_state`) and the config keys that changed
(:func:`config_changes`, with :data:`RESUME_MAY_CHANGE` and :data:`RESUME_MAY_CHANGE_RUN`, the keys
a resumed run may change). Imported from :mod:`.checkpoint` by the loop, the resume and the
experiments.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError


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
