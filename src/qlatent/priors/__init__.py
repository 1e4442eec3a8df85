"""Priors seen through a lattice cell: densities and exact code probabilities."""

from .laplace import laplace_cell_log_prob, laplace_cell_nll

__all__ = ["laplace_cell_log_prob", "laplace_cell_nll"]
