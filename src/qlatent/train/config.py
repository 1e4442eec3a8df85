"""The training hyper-parameters (:class:`TrainConfig`), the checks of counts and seeds that
other configs share (:func:`check_count`, :func:`check_seed`), and the schedules the training
loop reads from them (:func:`epoch_lr`, :func:`anneal_factor`). Used by :mod:`.loop` and by the
experiments' and evaluations' own configs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

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


def _int64(seed: int) -> int:
    """``seed`` wrapped into int64, the same seed to torch (which reads a seed modulo 2^64): a
    seed near 2^64 plus an epoch number or times a factor overflowed ``manual_seed``."""
    return (seed + 2**63) % 2**64 - 2**63


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) under ``cfg.lr_decay``."""
    return cfg.lr if cfg.lr_decay is None else cfg.lr * cfg.lr_decay ** (epoch - 1)


def anneal_factor(cfg: TrainConfig, step: int) -> float:
    """The annealing factor t / (t + ``anneal_steps``) of update ``step`` (1 without it)."""
    return 1.0 if cfg.anneal_steps is None else step / (step + cfg.anneal_steps)
