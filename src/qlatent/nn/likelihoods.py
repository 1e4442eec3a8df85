"""Likelihoods p(x | y_hat): the decoder outputs their parameters, these score the data."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import recording_graph

#: the smallest and the largest variance :class:`SquaredError` takes (written out: 1 / 1e-30
#: is 9.999999999999999e29 in float64, which refused the documented end 1e30)
MIN_VARIANCE, MAX_VARIANCE = 1e-30, 1e30


def _check_pair(x: Tensor, params: Tensor, what: str) -> None:
    """ValueError unless ``x`` is data of ``params``' shape, with a batch axis."""
    if x.shape != params.shape:
        raise ValueError(f"data shape {tuple(x.shape)} != {what} shape {tuple(params.shape)}")
    if x.dim() < 1:
        raise ValueError("data must have a batch axis (B, ...), got a scalar")


def _per_example(values: Tensor) -> Tensor:
    """``(B, ...)`` → ``(B,)`` sums over every non-batch axis (an empty batch too)."""
    return values.reshape(values.shape[0], math.prod(values.shape[1:])).sum(1)


class Likelihood(ABC):
    """Negative log-likelihood per example, summed over every non-batch axis (nats).

    ``nll(x, params)``: data ``x`` and decoder output ``params`` of one shape ``(B, ...)`` →
    ``(B,)`` nats per example (not averaged, not bits). ``mean(params)``: E[x | params], shaped
    like ``params``. ``nll`` raises ValueError for shapes that differ or data without a batch
    axis.
    """

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
        _check_pair(x, params, "logits")
        if not x.is_floating_point():
            raise ValueError(f"Bernoulli data must be floating-point, got {x.dtype}")
        if recording_graph():
            # the check as an assertion of the exported program: export cannot read values back
            # to Python (it failed here: "Could not guard on data-dependent expression")
            data = x.detach()
            torch._assert_async(
                ((data >= 0) & (data <= 1)).all(), "Bernoulli data must lie in [0, 1]"
            )
        elif x.numel():  # out of [0, 1] (or NaN), the "likelihood" would go negative without a word
            lo, hi = torch.aminmax(x.detach())
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"Bernoulli data must lie in [0, 1], got values in [{lo}, {hi}]")
        # in the promoted dtype: the op computes in the data's dtype, so half-precision data
        # gave a float16 NLL (inf past 65504 nats) and float32 data cut float64 logits to float32
        dtype = torch.promote_types(x.dtype, params.dtype)
        bce = F.binary_cross_entropy_with_logits(params.to(dtype), x.to(dtype), reduction="none")
        return _per_example(bce)

    def mean(self, params: Tensor) -> Tensor:
        return params.sigmoid()


class SquaredError(Likelihood):
    """Squared error scaled by the data variance, ``Σ (x̂ − x)² / var(x)``, per example.

    This is −log p(x | x̂) of a Gaussian with variance var(x)/2, up to a constant, and D times the
    normalised MSE ``mean((x̂ − x)²) / var(x)`` that the Soft VQ-VAE reference code minimises.
    With ``link="sigmoid"`` the decoder outputs logits and x̂ = sigmoid(logits) (images in [0, 1]).
    ``nll(x, params)``: ``(B, ...)`` twice → ``(B,)``.

    Raises ValueError for a ``variance`` outside [1e-30, 1e30] (or not a number), a ``link``
    other than the two, or (in ``nll``) shapes that differ.
    """

    def __init__(self, *, variance: float = 1.0, link: Literal["identity", "sigmoid"] = "identity"):
        # an infinite variance made every loss 0, a subnormal one every loss infinite
        if (
            isinstance(variance, bool)
            or not isinstance(variance, (int, float))
            or not MIN_VARIANCE <= variance <= MAX_VARIANCE
        ):
            raise ValueError(
                f"variance must be a number in [{MIN_VARIANCE:g}, {MAX_VARIANCE:g}], "
                f"got {variance!r}"
            )
        if link not in ("identity", "sigmoid"):
            raise ValueError(f"link must be 'identity' or 'sigmoid', got {link!r}")
        self.variance, self.link = float(variance), link

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        _check_pair(x, params, "output")
        return _per_example((self.mean(params) - x).square()) / self.variance

    def mean(self, params: Tensor) -> Tensor:
        return params.sigmoid() if self.link == "sigmoid" else params
