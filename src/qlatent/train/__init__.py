"""Training: one loop, atomic checkpoints, exact resume, torchrun DDP."""

from .checkpoint import load, save_atomic
from .loop import FitResult, TrainConfig, fit
from .optim import AdamNormGrad, make_optimizer

__all__ = [
    "AdamNormGrad",
    "FitResult",
    "TrainConfig",
    "fit",
    "load",
    "make_optimizer",
    "save_atomic",
]
