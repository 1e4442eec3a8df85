"""One epoch's passes of the training loop: the minibatch updates over the epoch's order
(:func:`_train_epoch`) and the validation objective (:func:`_validate`), each summed across
ranks, and the bottleneck statistics an epoch's record adds. Used by :mod:`.loop`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from .._utils import tqdm
from ..losses import evaluate_objective
from . import distributed as D
from .config import TrainConfig, anneal_factor, epoch_lr


def _has_training_state(model: nn.Module) -> bool:
    """Whether ``model`` has buffers that a training-mode forward may change (EMA codebooks,
    batch-norm statistics); a code model's counts change only by ``update()``."""
    from ..bottlenecks._code_model import CODE_MODEL_BUFFERS

    return any(
        name.rsplit(".", 1)[-1] not in CODE_MODEL_BUFFERS for name, _ in model.named_buffers()
    )


def _epoch_order(sampler: DistributedSampler, epoch: int, step: int, cfg: TrainConfig) -> Tensor:
    """This rank's examples of ``epoch`` in training order (a function of the seed and
    ``epoch`` only), cut where the step budget ends the epoch early (``step`` updates taken)."""
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    if cfg.max_steps is not None:  # the step budget may end this epoch early
        order = order[: (cfg.max_steps - step) * cfg.batch_size]
    return order


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
