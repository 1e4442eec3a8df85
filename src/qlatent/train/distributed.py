"""torchrun / DistributedDataParallel plumbing, so the training loop reads the same either way.

Under ``torchrun --nproc_per_node=N`` the environment carries ``WORLD_SIZE``/``RANK``; the loop
then joins a process group (gloo on CPU, nccl on CUDA), wraps the model in DDP, shards the data,
and reduces its metrics. Without it everything is a no-op on a world of one. Joining says so on
stderr and gives up after ``QLATENT_DIST_TIMEOUT`` seconds (default 300) with one error line.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from .._utils import terminal_text

#: the environment variable that bounds, in seconds, the wait for the other processes to join
JOIN_TIMEOUT_VARIABLE = "QLATENT_DIST_TIMEOUT"
#: its default: torchrun starts every process within seconds; a missing one fails in 5 minutes
DEFAULT_JOIN_TIMEOUT = 300.0
#: the longest wait it takes (a day)
MAX_JOIN_TIMEOUT = 86400.0


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


def launched_as_main() -> bool:
    """Whether this process is alone or rank 0 of the world torchrun launched, read from the
    environment before :func:`setup` joins it (a ValueError naming a variable :func:`setup`
    would refuse: RANK missing or no integer)."""
    return _environment_int("WORLD_SIZE", "1") <= 1 or _environment_int("RANK", None) == 0


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
    if not dist.is_initialized():
        _join(rank, size, "nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, device)


def _join_timeout() -> float:
    """Seconds to wait for the other processes (:data:`JOIN_TIMEOUT_VARIABLE`, default
    :data:`DEFAULT_JOIN_TIMEOUT`); a ValueError naming the variable for anything but a number
    of seconds in (0, :data:`MAX_JOIN_TIMEOUT`]."""
    text = os.environ.get(JOIN_TIMEOUT_VARIABLE, f"{DEFAULT_JOIN_TIMEOUT:g}")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_JOIN_TIMEOUT:
        raise ValueError(
            f"{JOIN_TIMEOUT_VARIABLE} must be a number of seconds in (0, {MAX_JOIN_TIMEOUT:g}], "
            f"got {text!r}"
        )
    return seconds


def _join(rank: int, size: int, backend: str) -> None:
    """Meet the other processes at MASTER_ADDR:MASTER_PORT and form the process group.

    The wait is announced on stderr and bounded by :func:`_join_timeout`: torch's rendezvous waits
    30 minutes without a word where WORLD_SIZE is set but the other processes never start. The
    bound is the meeting's only; collectives keep torch's default timeout, since the other
    ranks legitimately wait while rank 0 writes a checkpoint."""
    seconds = _join_timeout()
    if not os.environ.get("MASTER_ADDR"):
        raise ValueError("MASTER_ADDR is not set (WORLD_SIZE is): launch with torchrun")
    port = _environment_int("MASTER_PORT", None)
    if not 0 <= port < 65536:
        raise ValueError(f"MASTER_PORT must be a port number in [0, 65535], got {port}")
    where = f"{os.environ['MASTER_ADDR']}:{port}"
    print(
        terminal_text(
            f"waiting up to {seconds:g} s for {size} processes at {where} (rank {rank}) ..."
        ),
        file=sys.stderr,
        flush=True,
    )
    timeout = timedelta(seconds=seconds)
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, size, timeout=timeout))
    except dist.DistError as err:  # a timeout, or a port another program holds
        reason = next(iter(str(err).strip().splitlines()), type(err).__name__)
        raise ValueError(
            f"rank {rank} could not join {size} processes at {where} within {seconds:g} s "
            f"({JOIN_TIMEOUT_VARIABLE} sets it): {reason[:200]}"
        ) from None
    # what init_process_group does with a store it makes itself: later store waits (NCCL's
    # first collective) get the default timeout, and the group's keys a prefix of their own
    store.set_timeout(default_pg_timeout)
    dist.init_process_group(
        backend, store=dist.PrefixStore("default_pg", store), rank=rank, world_size=size
    )


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
