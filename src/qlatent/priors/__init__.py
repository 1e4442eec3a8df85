"""Priors seen through a lattice cell: densities and exact code probabilities."""

from .gaussian import gaussian_cell_log_prob
from .laplace import (
    cell_constants,
    cell_log_prob_from_constants,
    cell_nll_and_derivatives,
    cell_nll_no_grad,
    cell_terms_in_place,
    laplace_cell_log_prob,
    laplace_cell_nll,
)

__all__ = [
    "cell_constants",
    "cell_log_prob_from_constants",
    "cell_nll_and_derivatives",
    "cell_nll_no_grad",
    "cell_terms_in_place",
    "gaussian_cell_log_prob",
    "laplace_cell_log_prob",
    "laplace_cell_nll",
]
