"""Evaluation: two-part codelength vs negative ELBO, plots."""

from .codelength import CodelengthReport, PathEstimate, codelength_report
from .iwae import iwae_nll, iwae_summary
from .plots import reconstruction_grid, training_curves

__all__ = [
    "CodelengthReport",
    "PathEstimate",
    "codelength_report",
    "iwae_nll",
    "iwae_summary",
    "reconstruction_grid",
    "training_curves",
]
