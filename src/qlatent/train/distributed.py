"""torchrun / DistributedDataParallel plumbing, so the training loop reads the same either way.

Under ``torchrun --nproc_per_node=N`` the environment carries ``WORLD_SIZE``/``RANK``; the loop
then joins a process group (gloo on CPU, nccl on CUDA), wraps the model in DDP, shards the data,
and reduces its metrics. Without it everything is a no-op on a world of one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when present; an unavailable CUDA request is an error, as is a
    CUDA device number the machine does not have (torch wraps ``cuda:255`` to ``cuda``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    if kind == "cuda" and index and not 0 <= int(index) < torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"device {name!r} requested but this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available on this machine")
    return torch.device(name)


def _environment_int(name: str, default: str | None) -> int:
    """The integer in environment variable ``name`` (torchrun's), or ``default``; a ValueError
    naming the variable when it is missing without a default or is no integer."""
    text = os.environ.get(name, default)
    if text is None:
        raise ValueError(f"{name} is not set (WORLD_SIZE is): launch with torchrun")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def setup(device_name: str) -> World:
    """Join the process group if launched by torchrun; return this process's place in it."""
    size = _environment_int("WORLD_SIZE", "1")
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {size}")
    device = resolve_device(device_name)
    if size == 1:
        return World(0, 1, device)
    rank = _environment_int("RANK", None)
    if not 0 <= rank < size:  # a rank no other process waits for would wait for ever
        raise ValueError(f"RANK must lie in [0, WORLD_SIZE = {size}), got {rank}")
    if device.type == "cuda":
        local, count = _environment_int("LOCAL_RANK", "0"), torch.cuda.device_count()
        if not 0 <= local < count:
            raise ValueError(f"LOCAL_RANK must lie in [0, {count}) (CUDA devices), got {local}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if "MASTER_PORT" in os.environ:
        port = _environment_int("MASTER_PORT", None)
        if not 0 <= port < 65536:
            raise ValueError(f"MASTER_PORT must be a port number in [0, 65535], got {port}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, device)


def wait_for_all(world: World) -> torch.Tensor | None:
    """Returns once every rank has called it: an all_reduce of one number, whose tensor the
    caller keeps referenced until :func:`teardown` (``None`` on a world of one).

    Not ``dist.barrier()``: gloo's barrier holds on to the collectives still in flight when it is
    issued and lets go of them from its worker thread once it completes. Where that drops the last
    reference to a tensor made in Python, the worker takes the GIL, which ProcessGroupGloo's
    destructor holds while it joins that worker (pytorch/pytorch#56297): a teardown right after
    the barrier hung that way (rank 1 of the two-process torchrun test, once). An all_reduce holds
    only its own tensor, which stays referenced here."""
    if not world.distributed:
        return None
    token = torch.zeros(1, device=world.device)
    dist.all_reduce(token)
    return token


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        # first a moment without the GIL, for gloo's workers to let go of what they still hold of
        # finished collectives (which may take the GIL; see wait_for_all) before the destructor
        # joins them while holding it
        time.sleep(0.05)
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor of metric totals across ranks (identity on a world of one)."""
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj, world: World) -> list:
    """Every rank's ``obj``, in rank order."""
    if not world.distributed:
        return [obj]
    out: list = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
