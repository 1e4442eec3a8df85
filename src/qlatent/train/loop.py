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

import dataclasses
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from .._utils import tqdm, write_atomic
from ..losses import RateDistortionLoss, evaluate_objective
from ..results import to_json
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
from .lock import hold
from .optim import make_optimizer

#: torch reads "cuda:01" as no device and wraps "cuda:255" to "cuda"
_DEVICE = re.compile(r"cpu|auto|mps|cuda(:(0|[1-9]\d{0,2}))?")


@dataclass
class TrainConfig:
    """Training hyper-parameters (the constructor arguments are the config).

    Objectives are in nats per example. ValueError, naming the field, for a count that is not
    an integer in range, an ``lr`` outside (0, 1], an ``lr_decay`` outside [0, 1], an unknown
    ``keep``, ``optimizer`` or ``device``, a non-positive ``max_minutes``, a bad ``seed``, or a
    ``progress`` or ``tensorboard`` that is not a bool.
    """

    epochs: int = 20  #: maximum number of epochs
    max_steps: int | None = None  #: stop after this many updates (mid-epoch); None: no limit
    keep: Literal["best", "last"] = "best"  #: weights left in the model (and reloaded) at the end
    batch_size: int = 100
    eval_batch_size: int = 1000
    lr: float = 5e-4
    #: ExponentialLR stepped once per epoch: epoch e trains at lr·lr_decay^(e−1). 0 is the
    #: LL-VQ-VAE reference code's setting: the first epoch alone moves the weights.
    lr_decay: float | None = None
    optimizer: Literal["adam", "adam_fused", "adam_normgrad"] = "adam"
    warmup_epochs: int = 0  #: rate weight β = min(1, epoch / warmup_epochs); 0 means β = 1
    #: per-update annealing of the rate weight, β·t / (t + anneal_steps) at update t (counted
    #: from the run's start): ½ after ``anneal_steps`` updates, → 1 (the lattice paper's text
    #: experiment, appendix A.2: "0.5 is achieved at 100k steps"); None: no annealing
    anneal_steps: int | None = None
    patience: int | None = None  #: stop after more than this many epochs without improvement
    #: stop after the epoch that exceeds this budget of this process's minutes: each resume
    #: starts a new one (the run's recorded ``wall_s`` adds up the time of every process)
    max_minutes: float | None = None
    seed: int = 0
    device: str = "cpu"  #: "cpu", "cuda", "cuda:1", "mps" or "auto"
    progress: bool = True
    #: also write each epoch's record as TensorBoard scalars into ``<out_dir>/tensorboard/``
    #: (needs the optional ``tensorboard`` package: ``pip install qlatent[tensorboard]``)
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name, low in [("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1)]:
            check_count(getattr(self, name), name, low)
        check_count(self.warmup_epochs, "warmup_epochs", 0)
        for name, low in [("max_steps", 1), ("anneal_steps", 1), ("patience", 0)]:
            check_count(getattr(self, name), name, low, optional=True)
        if not (_is_number(self.lr) and 0 < self.lr <= 1):
            # Adam moves every weight by about lr per step: beyond 1 nothing trains
            raise ValueError(f"lr must be a finite number in (0, 1], got {self.lr!r}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(
                "device must be 'cpu', 'cuda', 'cuda:N' (N < 1000, no leading zero), 'mps' or "
                f"'auto', got {self.device!r}"
            )
        decay = self.lr_decay
        if decay is not None and not (_is_number(decay) and 0 <= decay <= 1):
            raise ValueError(f"lr_decay must lie in [0, 1] or be None, got {self.lr_decay!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if self.optimizer not in ("adam", "adam_fused", "adam_normgrad"):
            raise ValueError(
                f"optimizer must be 'adam', 'adam_fused' or 'adam_normgrad', got {self.optimizer!r}"
            )
        for name in ("progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.max_minutes is not None and not (
            _is_number(self.max_minutes) and 0 < self.max_minutes < math.inf
        ):
            raise ValueError(
                f"max_minutes must be a positive number or None, got {self.max_minutes!r}"
            )
        check_seed(self.seed, "seed")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_count(value: Any, name: str, low: int, *, optional: bool = False) -> None:
    """A count of epochs, updates or examples is an integer in [``low``, 2^63) (``optional``:
    or None); ValueError naming ``name`` otherwise (torch indexes in int64: a batch of 2^63
    examples failed after the data was loaded, without naming the key)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**63:
        also = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer in [{low}, 2^63){also}, got {value!r}")


def check_seed(seed: Any, name: str) -> int:
    """A seed torch's generators take: an integer in [−2^63, 2^64) (ValueError naming ``name``
    otherwise, where ``manual_seed`` would fail on overflow without saying which seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"{name} must be an integer in [-2^63, 2^64), got {seed!r}")
    return seed


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
            return _finish(model, state, out_dir, world, cfg.keep, run_config)
        _check_whole_epoch(state, cfg, data["train"].shape[0], world, out_dir / "last.pt")
        if state.epoch >= cfg.epochs:  # a finished run: nothing left to train
            state.stopped = "epochs"
            return _finish(model, state, out_dir, world, cfg.keep, run_config)
    except BaseException:  # a refusal, or a failure writing best.pt: nothing trained yet
        if kept is not None:
            put_back(model, kept)
        _set_rng_state(caller_rng)
        raise
    kept = None  # the copy is not held through training

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
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler))
            if cfg.max_steps is not None:  # the step budget may end this epoch early
                order = order[: (cfg.max_steps - state.step) * cfg.batch_size]
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
    return _finish(model, state, out_dir, world, cfg.keep, run_config)


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


def _saved_epoch(path: Path) -> int:
    """The epoch a ``best.pt`` holds (0 where it holds none: the end of the run names it)."""
    epoch = load(path).get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


def _int64(seed: int) -> int:
    """``seed`` wrapped into int64, the same seed to torch (which reads a seed modulo 2^64): a
    seed near 2^64 plus an epoch number or times a factor overflowed ``manual_seed``."""
    return (seed + 2**63) % 2**64 - 2**63


def _has_training_state(model: nn.Module) -> bool:
    """Whether ``model`` has buffers that a training-mode forward may change (EMA codebooks,
    batch-norm statistics); a code model's counts change only by ``update()``."""
    from ..bottlenecks._code_model import CODE_MODEL_BUFFERS

    return any(
        name.rsplit(".", 1)[-1] not in CODE_MODEL_BUFFERS for name, _ in model.named_buffers()
    )


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) under ``cfg.lr_decay``."""
    return cfg.lr if cfg.lr_decay is None else cfg.lr * cfg.lr_decay ** (epoch - 1)


def anneal_factor(cfg: TrainConfig, step: int) -> float:
    """The annealing factor t / (t + ``anneal_steps``) of update ``step`` (1 without it)."""
    return 1.0 if cfg.anneal_steps is None else step / (step + cfg.anneal_steps)


def _train_epoch(net, model, loss_fn, optimizer, x, order, beta, cfg, world, epoch, step) -> dict:
    """One pass over ``order``, the run's updates ``step + 1, step + 2, …``. At learning rate 0
    no weight can move, so the pass runs the training path without gradients: what the forward
    itself updates (an EMA codebook) still changes, exactly as if Adam had stepped with lr = 0,
    at a third of the cost."""
    net.train()
    frozen = epoch_lr(cfg, epoch) == 0.0
    totals = torch.zeros(4, dtype=torch.float64)  # objective, distortion, rate, count
    # DistributedSampler evens the shards with repeats of the first examples, at the end of each
    # rank's order: they are trained on (every rank takes the same number of updates) but not
    # counted again, so the epoch's metrics are over each example once (41 examples on two
    # ranks reported 42, one of them twice). On a world of one nothing is repeated.
    counted = max(0, math.ceil((x.shape[0] - world.rank) / world.size))
    batches = order.split(cfg.batch_size)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch}/{cfg.epochs}",
        disable=not (cfg.progress and world.is_main),
        leave=False,
        dynamic_ncols=True,
    )
    start = 0  # the position of the batch in ``order``
    for idx in bar:
        xb = x[idx].to(world.device, non_blocking=True)
        step += 1
        # the warm-up factor β (and the annealing) scale the loss's own rate weight λ
        lmbda = beta * anneal_factor(cfg, step) * loss_fn.lmbda
        with torch.set_grad_enabled(not frozen):
            losses = loss_fn(xb, net(xb), model.likelihood, lmbda=lmbda)
        value = losses.loss.item()
        if not math.isfinite(value):
            # before the step: the weights stay finite (the next batch failed on "non-finite
            # input" from the bottleneck, blaming the data)
            raise ValueError(
                f"training diverged: the loss is {value} at update {step} (epoch {epoch}); "
                "lower train.lr or the loss weights, or resume from the last checkpoint"
            )
        if not frozen:
            optimizer.zero_grad(set_to_none=True)
            losses.loss.backward()
            optimizer.step()
        with torch.no_grad():
            rows = min(xb.shape[0], max(0, counted - start))
            objective, distortion, rate = losses.objective, losses.distortion, losses.rate
            if rows < xb.shape[0]:  # the batch holds repeats (only under DDP)
                objective, distortion, rate = objective[:rows], distortion[:rows], rate[:rows]
            totals += torch.stack(
                [
                    objective.sum().double().cpu(),
                    distortion.sum().double().cpu(),
                    rate.sum().double().cpu(),
                    torch.tensor(float(rows), dtype=torch.float64),
                ]
            )
        start += xb.shape[0]
        bar.set_postfix(loss=f"{value:.2f}", refresh=False)
    objective, distortion, rate, count = D.all_reduce_sum(totals, world).tolist()
    return {
        "train_objective": objective / count,
        "train_distortion": distortion / count,
        "train_rate": rate / count,
        "train_examples": int(count),
    }


def _validate(model, loss_fn, x, cfg, world) -> dict:
    """Training-path objective at β = 1 on this rank's shard, summed across ranks: distortion
    plus rate at weight 1 (the negative ELBO), whatever the loss's own rate weight, so the best
    epoch and early stopping follow it."""
    shard = x[world.rank :: world.size]
    t = evaluate_objective(model, loss_fn, shard, batch_size=cfg.eval_batch_size)
    totals = torch.stack(
        [t["distortion"].sum(), t["rate"].sum(), torch.tensor(float(shard.shape[0]))]
    ).double()
    distortion, rate, count = D.all_reduce_sum(totals, world).tolist()
    return {
        "val_objective": (distortion + rate) / count,
        "val_distortion": distortion / count,
        "val_rate": rate / count,
    }


def _bottleneck_summary(model: nn.Module) -> dict[str, float]:
    """Means of vector-valued bottleneck parameters worth watching (e.g. lattice spacing)."""
    summary = {}
    for name in ("spacing", "scale", "variance"):
        value = getattr(model.bottleneck, name, None)
        if isinstance(value, Tensor):
            summary[f"{name}_mean"] = value.detach().mean().item()
    return summary


def check_tensorboard(cfg: TrainConfig) -> None:
    """ValueError where ``cfg.tensorboard`` asks for TensorBoard and the optional ``tensorboard``
    package cannot be imported: checked before a run makes its folder or trains."""
    if cfg.tensorboard:
        _summary_writer()


def _summary_writer() -> type:
    """torch's ``SummaryWriter``, imported only where a run asks for it (an optional package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "train.tensorboard = true needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter


#: the TensorBoard group of each record key that is neither ``train_*`` nor ``val_*``
_BOARD_GROUPS = {
    "beta": "schedule",
    "lr": "schedule",
    "step": "run",
    "best_epoch": "run",
    "wall_s": "run",
}


#: held while a :class:`_Board` sets or restores ``threading.excepthook`` (runs in threads)
_HOOK_LOCK = threading.Lock()


def _live_hook(hook: Callable[[Any], object]) -> Callable[[Any], object]:
    """``hook`` without the hooks of the boards that ended while a later board's was set: such
    a board left its own in place (not the hook then, it could not restore the one before), so
    the later board's restoring it kept a board's hook as the process's for good."""
    while getattr(hook, "__func__", None) is _Board._thread_error and (
        hook.__self__.threads_before is None
    ):
        hook = hook.__self__.hook_before
    return hook


class _Board:
    """Each epoch's record (as in ``log.jsonl``) as TensorBoard scalars at step ``epoch``, in
    ``folder`` (None: nothing is written or removed; ``write`` False: nothing is written).
    Its numbers only (no bools, strings or the epoch itself), under the tags
    ``train/objective``, ``train/distortion``, ``train/rate``, ``train/examples``;
    ``val/objective``, ``val/distortion``, ``val/rate``; ``schedule/beta``, ``schedule/lr``;
    ``run/step``, ``run/best_epoch``, ``run/wall_s``; and ``bottleneck/<name>`` for the
    bottleneck's statistics (``spacing_mean`` ...).

    The writer is made at the first record, and a call that trains nothing writes nothing. It
    is opened with ``purge_step = first_epoch`` (the first epoch this call trains): TensorBoard
    then drops the events an interrupted process wrote for that epoch and later ones, and a
    resumed run's curves show each epoch once. Every record is flushed before its checkpoint is
    written; the writer is closed when the block ends, however it ends. Where the block raises
    before a checkpoint followed the first record, this call's event file is removed (and the
    folder, where the writer made it and left it empty): a start that fails before its first
    checkpoint leaves the folder as it was. The first checkpoint of a new run
    (``first_epoch`` 1; :meth:`kept`) removes the event files of the run it replaces, with
    TensorBoard on or off: their curves were shown as this folder's. A file that cannot be
    written is an OSError naming the folder, and only that: the writer's own thread, which
    meets the error first, does not print it as well (:meth:`_thread_error`)."""

    def __init__(self, folder: Path | None, *, first_epoch: int, write: bool = True) -> None:
        self.folder, self.first_epoch, self.on = folder, first_epoch, write
        self.writer, self.file, self.made, self.checkpointed = None, None, False, False
        self.threads_before: set[threading.Thread] | None = None  # while the hook is set
        self.hook_before: Callable[[Any], object] = threading.excepthook

    def __enter__(self) -> _Board:
        return self

    def __exit__(self, failed: type | None, *exc: object) -> None:
        try:
            self._close(failed)
        finally:
            self._unhook()

    def _close(self, failed: type | None) -> None:
        if self.writer is None:
            return
        try:
            with self._named():
                self.writer.close()  # raises the writer thread's error again
        except OSError:
            if failed is None:  # else the block's own error goes on
                raise
        finally:
            if failed is not None and not self.checkpointed:
                with suppress(OSError):
                    self.file.unlink(missing_ok=True)
                    if self.made:
                        self.folder.rmdir()

    def write(self, record: dict[str, Any]) -> None:
        if self.folder is None or not self.on:
            return
        with self._named():
            if self.writer is None:
                self.made = not self.folder.is_dir()
                before = self._event_files()
                self._hook()
                self.writer = _summary_writer()(str(self.folder), purge_step=self.first_epoch)
                (self.file,) = set(self._event_files()) - set(before)
            for key, value in record.items():
                if key == "epoch" or not _is_number(value):
                    continue
                group, _, name = key.partition("_")
                if group not in ("train", "val"):
                    group, name = _BOARD_GROUPS.get(key, "bottleneck"), key
                self.writer.add_scalar(f"{group}/{name}", value, global_step=record["epoch"])
            self.writer.flush()

    @contextmanager
    def _named(self) -> Iterator[None]:
        """An OSError named with the folder: the writer's thread raises the bare error
        ("[Errno 28] No space left on device"), or one naming its file as bytes."""
        try:
            yield
        except OSError as err:
            if err.errno is None:
                raise
            raise OSError(
                err.errno, f"cannot write the TensorBoard events in {self.folder}: {err.strerror}"
            ) from None

    def _hook(self) -> None:
        with _HOOK_LOCK:
            if self.threads_before is None:  # (set once, where a writer failed to start too)
                self.threads_before = set(threading.enumerate())
                self.hook_before, threading.excepthook = threading.excepthook, self._thread_error

    def _thread_error(self, args: Any) -> None:
        """``threading.excepthook`` while this block has a writer. The writer's thread keeps
        its error and raises it again to this block at the next flush or close, where
        :meth:`_named` makes it the run's one error; printed by the thread too, it would be
        a second report with a traceback. Errors of every other thread go on as before."""
        kept = issubclass(args.exc_type, Exception)  # what the writer keeps for the block
        if not (kept and args.thread in self._writer_threads()):
            self.hook_before(args)

    def _writer_threads(self) -> list[threading.Thread]:
        """The threads of TensorBoard's writer started since :meth:`_hook`."""
        if self.threads_before is None:
            return []
        return [
            t
            for t in threading.enumerate()
            if t not in self.threads_before and type(t).__module__.startswith("tensorboard.")
        ]

    def _unhook(self) -> None:
        if self.threads_before is None:
            return
        for thread in self._writer_threads():  # stopped by close, or ending on its error
            thread.join(timeout=1.0)
        with _HOOK_LOCK:
            if threading.excepthook == self._thread_error:  # else someone set a hook since
                threading.excepthook = _live_hook(self.hook_before)
            self.threads_before = None

    def kept(self) -> None:
        """A checkpoint was written: the events so far are the run's. At a new run's first,
        the event files of the run it replaces are removed (only those, not other files)."""
        if self.folder is not None and not self.checkpointed and self.first_epoch == 1:
            for path in self._event_files():
                if path != self.file:
                    path.unlink(missing_ok=True)
            if self.writer is None:
                with suppress(OSError):  # a folder that holds no other file
                    self.folder.rmdir()
        self.checkpointed = True

    def _event_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        paths = self.folder.glob("events.out.tfevents.*")
        return [p for p in paths if p.is_file() or p.is_symlink()]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


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
    ``model``'s weights as they were (:func:`~.checkpoint.weights_copy`), for :func:`_fit` to put
    back when a later check refuses the run."""
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


def _set_rng_state(state: dict[str, Any]) -> None:
    """The global random state :func:`_rng_state` took, put back."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


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
