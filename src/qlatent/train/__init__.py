"""Training: one loop, atomic checkpoints, exact resume, torchrun DDP."""

from .checkpoint import CheckpointError, load, load_weights, save_atomic
from .config import TrainConfig
from .loop import FitResult, fit
from .optim import AdamNormGrad, make_optimizer

__all__ = [
    "AdamNormGrad",
    "CheckpointError",
    "FitResult",
    "TrainConfig",
    "fit",
    "load",
    "load_weights",
    "make_optimizer",
    "save_atomic",
]
