"""A model's weights from a checkpoint: :func:`check_state_dict` and :func:`check_weight_kinds`
refuse what the model cannot take, and :func:`load_weights` loads the rest, putting the model's
own weights back (:func:`weights_copy`, :func:`put_back`) when ``load_state_dict`` refuses them
half-way. Its names are imported from :mod:`.checkpoint` (or :mod:`qlatent.train`) wherever a
model is loaded from a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError


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
