"""Encoders, decoders and likelihoods."""

from .gated import GatedDense, gated_mlp, he_init_
from .likelihoods import Bernoulli, Likelihood, SquaredError
from .mlp import relu_mlp

__all__ = [
    "Bernoulli",
    "GatedDense",
    "Likelihood",
    "SquaredError",
    "gated_mlp",
    "he_init_",
    "relu_mlp",
]
