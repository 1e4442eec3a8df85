"""Evaluation: two-part codelength vs negative ELBO, plots."""

from .codelength import CodelengthReport, PathEstimate, codelength_report
from .plots import reconstruction_grid, training_curves

__all__ = [
    "CodelengthReport",
    "PathEstimate",
    "codelength_report",
    "reconstruction_grid",
    "training_curves",
]
