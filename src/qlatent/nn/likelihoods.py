"""Likelihoods p(x | y_hat): the decoder outputs their parameters, these score the data."""

from __future__ import annotations

from abc import ABC, abstractmethod

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
