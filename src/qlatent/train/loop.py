"""One readable training loop: epochs of minibatch steps, validation, early stopping,
atomic per-epoch checkpoints with exact resume, a progress bar, a JSON-lines log and, optionally,
TensorBoard scalars (``TrainConfig.tensorboard``; see :class:`_Board`).

The same function runs as a single process or under ``torchrun --nproc_per_node=N``
(DistributedDataParallel): rank 0 writes checkpoints and logs, metrics are summed across ranks.

Exact resume: the data order of epoch e is a function of (seed, e) only, and the checkpoint holds
weights, optimizer state, step, history and every rank's RNG state, so an interrupted run
continued from its last checkpoint produces the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from .._utils import write_atomic
from ..losses import RateDistortionLoss
from ..results import to_json
from . import distributed as D
from ._board import _Board
from ._board import _summary_writer as _summary_writer
from ._board import check_tensorboard as check_tensorboard
from ._epoch import (
    _bottleneck_summary,
    _epoch_order,
    _has_training_state,
    _train_epoch,
    _validate,
)
from ._resume import (
    _checkpoint,
    _ended_before_training,
    _restore,
    _restore_best,
    _rng_state,
    _save_best,
    _set_rng_state,
    _State,
)
from .checkpoint import (
    RESUME_MAY_CHANGE,
    RESUME_MAY_CHANGE_RUN,
    CheckpointError,
    config_changes,
    load,
    load_weights,
    put_back,
)
from .config import TrainConfig, _int64, anneal_factor, epoch_lr
from .config import check_count as check_count
from .config import check_seed as check_seed
from .lock import hold
from .optim import make_optimizer


@dataclass
class FitResult:
    """What :func:`fit` returns. ``history``: one dict per epoch run (a resumed run's earlier
    ones included), with keys such as ``epoch``, ``step``, ``beta``, ``lr``,
    ``train_objective``, ``train_distortion``, ``train_rate``, ``val_objective``,
    ``val_distortion``, ``val_rate`` (nats per example), ``best_epoch`` and ``wall_s``;
    ``best_val`` is the lowest ``val_objective``; ``wall_s`` the run's seconds, over every
    process that trained it; ``out_dir`` the folder of ``last.pt``, ``best.pt`` and
    ``log.jsonl``."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val: float
    stopped: str  #: "epochs", "max_steps", "early_stopping" or "time_budget"
    wall_s: float
    out_dir: Path
    #: whether this process is rank 0, the one that evaluates and reports under torchrun
    is_main: bool = True

    def summary(self) -> dict[str, Any]:
        """Epochs run, best epoch, why training stopped and its wall time, for a summary JSON."""
        return {
            "epochs": len(self.history),
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "wall_s": self.wall_s,
        }


def fit(
    model: nn.Module,
    data: dict[str, Tensor],
    cfg: TrainConfig,
    *,
    out_dir: str | Path,
    loss_fn: RateDistortionLoss | None = None,
    run_config: dict[str, Any] | None = None,
    resume: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    results: tuple[str, ...] = (),
) -> FitResult:
    """Train ``model`` (an :class:`~qlatent.models.Autoencoder`) on ``data["train"]``.

    Validation on ``data["val"]`` is the training-path objective at β = 1 (the negative ELBO);
    the best epoch's weights are kept in ``best.pt`` and loaded back into ``model`` at the end
    (``cfg.keep = "last"`` leaves the final weights instead, for protocols that evaluate after a
    fixed number of updates). ``cfg.max_steps`` ends training mid-epoch after that many updates;
    that last partial epoch is validated and checkpointed like any other.
    ``run_config`` (the resolved experiment config) is stored in every checkpoint. With
    ``resume=True`` an existing ``out_dir/last.pt`` is continued. ``data``: ``"train"`` and
    ``"val"`` tensors ``(N, ...)`` of examples. ``out_dir`` receives ``last.pt``, ``best.pt`` and
    the per-epoch log ``log.jsonl``; ``on_epoch_end`` is called with each epoch's record.
    ``results``: the names of the files the caller writes into ``out_dir`` after training (a
    summary, figures); they are removed with the first checkpoint this call writes, which
    replaces the run they describe (see :func:`_drop_results`).

    With ``cfg.tensorboard`` rank 0 also writes every epoch's record as TensorBoard scalars
    into ``out_dir/tensorboard/`` (:class:`_Board`).

    Raises ValueError for an empty or file ``out_dir``, for ``cfg.tensorboard`` without the
    tensorboard package (before anything is made), and when the loss becomes non-finite
    ("training diverged"), and :class:`CheckpointError` for a checkpoint that cannot be resumed
    with this config.
    """
    if not str(out_dir).strip():  # before Path, which reads "" as ".": the current folder
        raise ValueError("the output folder must be named (out_dir is empty)")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output folder {out_dir} is a file")
    check_tensorboard(cfg)
    world = D.setup(cfg.device)
    # rank 0 writes the folder; a second process training into it is refused here
    with hold(out_dir) if world.is_main else nullcontext():
        return _fit(
            model, data, cfg, world, out_dir, loss_fn, run_config, resume, on_epoch_end, results
        )


def _fit(
    model: nn.Module,
    data: dict[str, Tensor],
    cfg: TrainConfig,
    world: D.World,
    out_dir: Path,
    loss_fn: RateDistortionLoss | None,
    run_config: dict[str, Any] | None,
    resume: bool,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    results: tuple[str, ...],
) -> FitResult:
    """:func:`fit` once its arguments are checked and its process has joined the world."""
    loss_fn = loss_fn or RateDistortionLoss()
    model.to(world.device)
    optimizer = make_optimizer(model.parameters(), name=cfg.optimizer, lr=cfg.lr)
    state, kept = _State(), None
    # a refused resume leaves the caller's weights and random state as they were (a notebook
    # that caught the CheckpointError went on with the checkpoint's weights, or part of them)
    caller_rng = _rng_state()
    torch.manual_seed(_int64(cfg.seed * 1009 + world.rank))  # the dither stream; per rank
    try:
        if resume and (out_dir / "last.pt").exists():
            state, kept = _restore(out_dir / "last.pt", model, optimizer, cfg, run_config, world)
            if cfg.keep == "best" and state.best_epoch:
                _restore_best(out_dir / "best.pt", model, state, run_config, world)
        if _ended_before_training(state, cfg, data, world, out_dir / "last.pt"):
            return _finish(model, state, out_dir, world, cfg.keep, run_config)
    except BaseException:  # a refusal, or a failure writing best.pt: nothing trained yet
        if kept is not None:
            put_back(model, kept)
        _set_rng_state(caller_rng)
        raise
    kept = None  # the copy is not held through training
    _train(
        model,
        data,
        cfg,
        world,
        out_dir,
        loss_fn,
        optimizer,
        state,
        run_config,
        results,
        on_epoch_end,
    )
    return _finish(model, state, out_dir, world, cfg.keep, run_config)


def _train(
    model, data, cfg, world, out_dir, loss_fn, optimizer, state, run_config, results, on_epoch_end
) -> None:
    """The epochs after ``state.epoch``, each trained, validated, written as TensorBoard
    scalars, checkpointed and logged, until one of them ends the run (``state.stopped``);
    ``state`` is brought up to the last of them."""
    net = DistributedDataParallel(model) if world.distributed else model
    x_train, x_val = data["train"], data["val"]
    sampler = DistributedSampler(
        range(x_train.shape[0]), num_replicas=world.size, rank=world.rank, seed=_int64(cfg.seed)
    )
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if state.history:  # a crash may have left one more line than the checkpoint holds
            # (a new run's log comes with its first checkpoint: a start that fails before it
            # leaves the folder as it was, a --fresh start's older run's log included)
            _rewrite_log(out_dir / "log.jsonl", state.history)
    state.stopped = ""
    started = time.perf_counter() - state.wall_s
    run_start = time.perf_counter()

    # rank 0's TensorBoard events from the first epoch this call trains on: those a crash left
    # beyond the last checkpoint are dropped by TensorBoard (purge_step)
    events = out_dir / "tensorboard" if world.is_main else None
    with _Board(events, first_epoch=state.epoch + 1, write=cfg.tensorboard) as board:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            beta = min(1.0, epoch / cfg.warmup_epochs) if cfg.warmup_epochs else 1.0
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr(cfg, epoch)
            order = _epoch_order(sampler, epoch, state.step, cfg)
            if epoch_lr(cfg, epoch) == 0.0 and not _has_training_state(model):
                # at lr 0 a model without buffers cannot change: skip the pass, count its steps
                train = {"train_skipped": True}
            else:
                train = _train_epoch(
                    net,
                    model,
                    loss_fn,
                    optimizer,
                    x_train,
                    order,
                    beta,
                    cfg,
                    world,
                    epoch,
                    state.step,
                )
            state.step += math.ceil(order.numel() / cfg.batch_size)
            beta *= anneal_factor(cfg, state.step)  # the weight of the epoch's last update

            val = _validate(model, loss_fn, x_val, cfg, world)
            record, improved = _record(model, state, cfg, epoch, beta, train, val, started)
            _stop_after(state, cfg, epoch, world, run_start)
            board.write(record)  # before the checkpoint: a crash between them is purged
            _checkpoint(out_dir / "last.pt", model, optimizer, state, cfg, run_config, world)
            if improved and world.is_main:  # after last.pt, which then holds these weights too
                _save_best(out_dir / "best.pt", model, epoch, run_config)
            board.kept()
            if world.is_main:
                _rewrite_log(out_dir / "log.jsonl", state.history)
                _drop_results(out_dir, results)
                results = ()  # once: the files written next are this run's
            if on_epoch_end is not None:
                on_epoch_end(record)
            if state.stopped:
                break


def _record(model, state: _State, cfg, epoch, beta, train, val, started) -> tuple[dict, bool]:
    """The record of ``epoch`` (a line of ``log.jsonl``), appended to ``state.history``, and
    whether its validation objective is the best so far; ``state``'s best epoch, epochs
    without improvement, epoch and time are brought up to it. ``started``: the
    ``perf_counter`` time at which the run (over every process) would have started."""
    record = {
        "epoch": epoch,
        "step": state.step,
        "beta": beta,
        "lr": epoch_lr(cfg, epoch),
        **train,
        **val,
    }
    improved = val["val_objective"] < state.best_val
    if improved:
        state.best_val, state.best_epoch, state.bad_epochs = val["val_objective"], epoch, 0
    else:
        # as in the reference code, nothing counts against patience during warm-up, the
        # epochs at β < 1: epoch warmup_epochs trains at β = 1 and counts
        state.bad_epochs = 0 if epoch < cfg.warmup_epochs else state.bad_epochs + 1
    record["best_epoch"] = state.best_epoch
    record["wall_s"] = round(time.perf_counter() - started, 3)
    record.update(_bottleneck_summary(model))
    state.epoch, state.wall_s = epoch, record["wall_s"]
    state.history.append(record)
    return record, improved


def _stop_after(state: _State, cfg: TrainConfig, epoch: int, world, run_start: float) -> None:
    """Set ``state.stopped`` where ``epoch`` ends the run: patience run out, this process's
    time budget spent (counted from ``run_start``, rank 0 deciding for all), the step budget
    met, or the last epoch trained."""
    if cfg.patience is not None and state.bad_epochs > cfg.patience:
        state.stopped = "early_stopping"
    elif cfg.max_minutes is not None:
        over = (time.perf_counter() - run_start) / 60 > cfg.max_minutes
        if D.broadcast_object(over, world):  # every rank takes rank 0's decision
            state.stopped = "time_budget"
    if cfg.max_steps is not None and state.step >= cfg.max_steps and not state.stopped:
        state.stopped = "max_steps"
    if epoch == cfg.epochs and not state.stopped:
        state.stopped = "epochs"


def _drop_results(out_dir: Path, names: tuple[str, ...]) -> None:
    """Remove the files ``names`` from ``out_dir``, once the first checkpoint of a call has been
    written: a summary and figures of the run it replaced (``--fresh``, or a folder whose
    checkpoints were removed) or of its earlier config (a finished run trained on) were left
    beside the new checkpoints by a run stopped before its own, and by a run that writes no such
    file (a text run's reconstructions). Before that checkpoint the folder is left as it was.
    Only these names go, each file unlinked (a link itself, not what it names)."""
    for name in names:
        path = out_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)


def _rewrite_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The log holds exactly the checkpointed epochs (a crash may have left one more line):
    written whole and atomically after every epoch, so a symlink or a pipe put at its path is
    replaced or refused, never written through. Strict JSON, as every results file: a value
    that was not finite is null."""
    write_atomic(path, "".join(to_json(record) + "\n" for record in history).encode())


def _finish(model, state: _State, out_dir: Path, world, keep: str, run_config) -> FitResult:
    best = out_dir / "best.pt"
    _held = None  # referenced until the teardown (D.wait_for_all)
    if keep == "best":
        # rank 0 writes best.pt after the last epoch's checkpoint: every rank waits for it before
        # looking. (Looking first, rank 1 found no file after a one-epoch run and left, its own
        # last weights kept, while rank 0 waited for it and failed.)
        _held = D.wait_for_all(world)
    if keep == "best" and best.exists():
        ckpt = load(best, map_location=world.device)
        saved = ckpt.get("run_config")
        changes = config_changes(saved, run_config, RESUME_MAY_CHANGE_RUN)
        if isinstance(saved, dict) and isinstance(run_config, dict):
            changes += config_changes(
                saved.get("train"), run_config.get("train"), RESUME_MAY_CHANGE
            )
        if ckpt.get("epoch") != state.best_epoch or changes:
            # another run's file (or an older epoch's) would be kept and reported as this one's
            raise CheckpointError(
                f"{best} does not hold this run's best epoch ({state.best_epoch}; it holds "
                f"epoch {ckpt.get('epoch')!r}{' of another config' if changes else ''}): "
                "restore it, or start a fresh run"
            )
        load_weights(model, ckpt.get("model"), best)
    D.teardown(world)
    return FitResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_val=state.best_val,
        stopped=state.stopped,
        wall_s=state.wall_s,
        out_dir=out_dir,
        is_main=world.is_main,
    )
