"""What makes a run resumable exactly: the training state beyond weights and optimizer
(:class:`_State`), the per-epoch ``last.pt`` with every rank's RNG state (:func:`_checkpoint`),
``best.pt``, and the checked way back from them (:func:`_restore`, :func:`_restore_best`) with
the checks a continued run must pass before it trains. Used by :mod:`.loop`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as D
from .checkpoint import (
    RESUME_MAY_CHANGE,
    RESUME_MAY_CHANGE_RUN,
    CheckpointError,
    check_optimizer_state,
    config_changes,
    load,
    load_weights,
    put_back,
    save_atomic,
    weights_copy,
)
from .config import TrainConfig


@dataclass
class _State:
    """Everything beyond weights and optimizer that a resumed run needs."""

    epoch: int = 0
    step: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    wall_s: float = 0.0
    stopped: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """The global random state :func:`_rng_state` took, put back."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoint(path, model, optimizer, state, cfg, run_config, world) -> None:
    rng = D.all_gather_objects(_rng_state(), world)  # every rank's stream, for exact resume
    if not world.is_main:
        return
    save_atomic(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "train_config": dataclasses.asdict(cfg),
            "run_config": run_config,
            "state": dataclasses.asdict(state),
            "rng": rng,
            "world_size": world.size,
        },
        path,
    )


def _restore(path, model, optimizer, cfg, run_config, world) -> tuple[_State, dict[str, Tensor]]:
    """Continue from ``path``: refused (CheckpointError naming the file) when it is damaged,
    holds another architecture, or was written with a config that differs in anything but
    :data:`~.checkpoint.RESUME_MAY_CHANGE` (train) and
    :data:`~.checkpoint.RESUME_MAY_CHANGE_RUN` (run) — a different lr, batch size, seed or
    dataset would silently make a run that neither config describes.

    Every check is made before ``model`` and the global random state are touched; a refusal
    while the weights load puts ``model``'s back. Returns the saved training state and
    ``model``'s weights as they were (:func:`~.checkpoint.weights_copy`), for
    :func:`~.loop._fit` to put back when a later check refuses the run."""
    ckpt = load(path, map_location=world.device)
    missing = {"model", "optimizer", "state", "rng", "world_size"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (no {sorted(missing)})")
    for key in ("train_config", "run_config"):
        if not isinstance(ckpt.get(key), dict | None):
            raise CheckpointError(f"{path} holds a {key} that is no table")
    if isinstance(ckpt["world_size"], bool) or not isinstance(ckpt["world_size"], int):
        raise CheckpointError(f"{path} holds a world_size that is no integer")
    changes = config_changes(ckpt.get("train_config"), dataclasses.asdict(cfg), RESUME_MAY_CHANGE)
    changes += config_changes(ckpt.get("run_config"), run_config, RESUME_MAY_CHANGE_RUN)
    if changes:
        raise CheckpointError(
            f"{path} was written with a different config ({'; '.join(changes)}): restore it, "
            "or start a fresh run in another folder"
        )
    if ckpt["world_size"] != world.size:
        raise CheckpointError(
            f"{path} was written by {ckpt['world_size']} process(es); resume with the same number "
            f"(now {world.size}) to continue exactly"
        )
    try:  # the saved random and training states, checked before anything is applied
        rng = ckpt["rng"][world.rank]
        # a number or a string in place of a state failed on ``.cpu()`` with a traceback
        if not isinstance(rng, dict) or not all(
            isinstance(s, torch.Tensor) for s in [rng.get("torch"), *rng.get("cuda", [])]
        ):
            raise ValueError(f"the RNG state of rank {world.rank} is not a table of tensors")
        torch.Generator().set_state(rng["torch"].cpu())  # refused here, before it is applied
        state = _checked_state(_State(**ckpt["state"]))
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{path} holds an unusable training state ({err})") from None
    kept = weights_copy(model)
    try:
        # load_state_dict copies every weight it can before it raises (missing keys, other
        # shapes, a bottleneck built with other arguments): the rest is refused with the model
        # half-loaded, so its weights as they were are put back. The weights come before the
        # optimizer, whose check would otherwise name a shape where "a different model" is
        # the reason.
        load_weights(model, ckpt["model"], path, keep=False)
        check_optimizer_state(ckpt["optimizer"], optimizer, path)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])  # fit's own optimizer, not the caller's
            torch.set_rng_state(rng["torch"].cpu())
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{path} holds an unusable training state ({err})") from None
    except BaseException:
        put_back(model, kept)
        raise
    return state, kept


def _checked_state(state: _State) -> _State:
    """``state`` if every field has the type and range a run writes; ValueError naming the
    first that does not (a resumed loop would fail on it with a traceback, or go on wrongly)."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    for name in ("epoch", "step", "best_epoch", "bad_epochs"):
        value = getattr(state, name)
        if not (number(value) and isinstance(value, int) and 0 <= value < 2**62):
            raise ValueError(f"state.{name} must be a non-negative integer, got {value!r}")
    if not number(state.best_val) or math.isnan(state.best_val):
        raise ValueError(f"state.best_val must be a number, got {state.best_val!r}")
    if not (number(state.wall_s) and 0 <= state.wall_s < math.inf):
        raise ValueError(f"state.wall_s must be a time in seconds, got {state.wall_s!r}")
    if not isinstance(state.stopped, str):
        raise ValueError(f"state.stopped must be a string, got {state.stopped!r}")
    if not isinstance(state.history, list) or not all(isinstance(r, dict) for r in state.history):
        raise ValueError("state.history must be a list of records (tables)")
    json.dumps(state.history)  # the log is written from it: TypeError for what JSON cannot hold
    if len(state.history) != state.epoch:
        raise ValueError(
            f"state.history holds {len(state.history)} records for {state.epoch} epochs"
        )
    return state


def _ended_before_training(
    state: _State, cfg: TrainConfig, data: dict[str, Tensor], world, path: Path
) -> bool:
    """Whether the run is over before another epoch (``state.stopped`` then says why): a
    resumed one that has reached a cap of ``cfg`` or trained its every epoch. CheckpointError
    naming ``path`` (its ``last.pt``) where it would train on from an epoch it ended part-way
    (:func:`_check_whole_epoch`)."""
    # a cap the run has already reached ends it before another epoch: one whose stop was
    # recorded as the time budget (checked first), or a patience or step budget lowered on
    # resume. The loop would train once more: an empty batch (loss NaN, "training diverged")
    # where the step budget was met, a negative slice (most of an epoch) where it was passed.
    # A stop the checkpoint records is taken again from this config's caps, which a resume may
    # raise: the recorded stop alone ended the run at once, reporting fewer updates or epochs
    # than the config asks for, where the uninterrupted run with those caps trained on.
    if cfg.patience is not None and state.bad_epochs > cfg.patience:
        state.stopped = "early_stopping"
    elif cfg.max_steps is not None and state.step >= cfg.max_steps:
        state.stopped = "max_steps"
    elif state.stopped in ("early_stopping", "max_steps"):
        state.stopped = ""
    if state.stopped in ("early_stopping", "max_steps"):
        return True
    _check_whole_epoch(state, cfg, data["train"].shape[0], world, path)
    if state.epoch >= cfg.epochs:  # a finished run: nothing left to train
        state.stopped = "epochs"
        return True
    return False


def _check_whole_epoch(state: _State, cfg: TrainConfig, examples: int, world, path) -> None:
    """CheckpointError naming ``path`` where a run that trains on (its step budget raised on
    resume) ended its last epoch part-way: the uninterrupted run would finish that epoch, the
    resumed one starts the next epoch's order, a run that neither config describes."""
    if not state.history:
        return
    per_epoch = math.ceil(math.ceil(examples / world.size) / cfg.batch_size)
    before = state.history[-2].get("step") if len(state.history) > 1 else 0
    if isinstance(before, bool) or not isinstance(before, int):
        return  # a history without step counts (an older checkpoint): nothing to compare
    taken = state.step - before
    if taken < per_epoch:
        raise CheckpointError(
            f"{path} ended epoch {state.epoch} after {taken} of its {per_epoch} updates (the "
            f"step budget then, {state.step} updates in all): a run resumed from it cannot "
            "finish that epoch; keep max_steps at that budget, or start a fresh run"
        )


def _save_best(path: Path, model: nn.Module, epoch: int, run_config) -> None:
    save_atomic({"model": model.state_dict(), "epoch": epoch, "run_config": run_config}, path)


def _restore_best(path: Path, model: nn.Module, state: _State, run_config, world) -> None:
    """Check ``best.pt`` on resume. It is written after ``last.pt``, so a run interrupted
    between the two writes left it missing (at the first epoch) or at an older best epoch while
    ``last.pt`` already counts its own epoch the best: those weights are ``last.pt``'s, just
    restored into ``model``, and ``best.pt`` is written again from them. Where the best epoch is
    an earlier one, a missing ``best.pt`` is a CheckpointError: the last weights would have
    been kept and reported as the best epoch's."""
    if state.best_epoch == state.epoch:
        if world.is_main and (not path.is_file() or _saved_epoch(path) < state.best_epoch):
            _save_best(path, model, state.epoch, run_config)
        return
    if not path.exists():
        raise CheckpointError(
            f"{path} is missing: the run in {path.parent} needs its best epoch "
            f"({state.best_epoch}); restore it, or start a fresh run"
        )


def _saved_epoch(path: Path) -> int:
    """The epoch a ``best.pt`` holds (0 where it holds none: the end of the run names it)."""
    epoch = load(path).get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
