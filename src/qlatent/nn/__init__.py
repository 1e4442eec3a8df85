"""Encoders, decoders and likelihoods."""

from .gated import GatedDense, gated_mlp, he_init_
from .likelihoods import Bernoulli, Likelihood

__all__ = ["Bernoulli", "GatedDense", "Likelihood", "gated_mlp", "he_init_"]
