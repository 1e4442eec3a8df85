"""Likelihoods p(x | y_hat): the decoder outputs their parameters, these score the data."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch.nn.functional as F
from torch import Tensor


class Likelihood(ABC):
    """Negative log-likelihood per example, summed over every non-batch axis (nats)."""

    @abstractmethod
    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        """``(B,)`` -log p(x | params)."""

    @abstractmethod
    def mean(self, params: Tensor) -> Tensor:
        """E[x | params], e.g. for reconstructions."""


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the decoder outputs logits.

    Computed from logits (``binary_cross_entropy_with_logits``), which is exact where the
    reference code clamps probabilities to [1e-5, 1 - 1e-5].
    """

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        if x.shape != params.shape:
            raise ValueError(f"data shape {tuple(x.shape)} != logits shape {tuple(params.shape)}")
        bce = F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return bce.reshape(x.shape[0], -1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return params.sigmoid()


class SquaredError(Likelihood):
    """Squared error scaled by the data variance, ``Σ (x̂ − x)² / var(x)``, per example.

    This is −log p(x | x̂) of a Gaussian with variance var(x)/2, up to a constant, and D times the
    normalised MSE ``mean((x̂ − x)²) / var(x)`` that the Soft VQ-VAE reference code minimises.
    With ``link="sigmoid"`` the decoder outputs logits and x̂ = sigmoid(logits) (images in [0, 1]).
    """

    def __init__(self, *, variance: float = 1.0, link: Literal["identity", "sigmoid"] = "identity"):
        if not variance > 0:
            raise ValueError(f"variance must be positive, got {variance!r}")
        if link not in ("identity", "sigmoid"):
            raise ValueError(f"link must be 'identity' or 'sigmoid', got {link!r}")
        self.variance, self.link = float(variance), link

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        if x.shape != params.shape:
            raise ValueError(f"data shape {tuple(x.shape)} != output shape {tuple(params.shape)}")
        return (self.mean(params) - x).square().reshape(x.shape[0], -1).sum(1) / self.variance

    def mean(self, params: Tensor) -> Tensor:
        return params.sigmoid() if self.link == "sigmoid" else params
