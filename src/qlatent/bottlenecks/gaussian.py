"""Gaussian VAE bottleneck: reparameterised posterior N(μ(x), diag σ²(x)), prior N(0, I).

Papers: D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes" (arXiv 1312.6114); the
"Gaussian VAE" of L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), section 4.

    y = [μ | log σ²] ──clip log σ² to [logvar_min, logvar_max]      (Hardtanh(-6, 2), VampPrior)
      │
      ├─ training:  y_hat = μ + σ ⊙ ε,  ε ~ N(0, I)                 (reparameterisation trick)
      ├─ eval:      y_hat = μ
      └─ rate = KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_i (μ_i² + σ_i² − 1 − log σ_i²)    (both paths)

Shapes: input ``(B, 2m)`` or ``(B, 2m, *spatial)``: on axis 1 the first ``m`` channels are μ and
the last ``m`` are log σ² (the encoder's last Linear outputs 2m); ``y_hat`` is ``(B, m, *spatial)``;
``rate`` is ``(B,)`` nats. There is no discrete code (``quantize`` raises ``TypeError``).

The VampPrior reference code, which the lattice paper adapted, trains with the single-sample
Monte-Carlo KL ``log q(z|x) − log p(z)`` at the sampled z. It has the same expectation as the
analytic KL used here; the analytic form has lower variance and is never negative (the contract
requires rate ≥ 0). ``posterior_sample`` / ``log_prior`` give the densities for importance-sampled
likelihood.

This module also holds what ``gaussian_lattice`` shares: the normal log-densities, the KL to
N(0, I), the noise draw, and :class:`DiagonalGaussian`, the paths of any N(μ, diag σ²) posterior.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor

from .._utils import check_torch_generator
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, Setting

LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------ maths (elementwise)
def log_normal(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, σ²) per element, σ² = exp(logvar), with the −½ log 2π constant."""
    return -0.5 * (LOG_2PI + logvar + (z - mean).square() * torch.exp(-logvar))


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, 1) per element."""
    return -0.5 * (LOG_2PI + z.square())


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²) per element; never negative.

    ``σ² − 1 − log σ²`` is computed as ``expm1(log σ²) − log σ²``, accurate near σ² = 1 where the
    plain form cancels; the clamp only removes rounding below zero.
    """
    return 0.5 * (mean.square() + (torch.expm1(logvar) - logvar).clamp_min(0))


def standard_normal_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """ε ~ N(0, I) from ``generator`` (drawn on its device, then moved), or torch's default RNG."""
    check_torch_generator(generator, "Gaussian noise")
    if generator is None:  # (``randn``'s generator overload took no dynamic batch size)
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


# --------------------------------------------------------------- the shared paths
class DiagonalGaussian(Bottleneck):
    """Paths shared by every posterior N(μ, diag σ²) with prior N(0, I).

    Subclasses say where μ and log σ² come from (:meth:`_posterior`); training, eval, the rate and
    the density view are written here once.
    """

    discrete = False

    @abstractmethod
    def _posterior(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``(N, in_dim)`` -> ``(μ, log σ²)``: ``(N, m)`` and ``(N, m)`` or ``(m,)``."""

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        mean, logvar = self._posterior(y)
        if self.training:
            eps = standard_normal_noise(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            y_hat = mean + torch.exp(0.5 * logvar) * eps
        else:
            y_hat = mean
        rate = kl_to_standard_normal(mean, logvar).sum(-1)
        stats = {"mean_variance": logvar.detach().exp().mean()}
        return BottleneckOutput(y_hat, rate, mean.new_zeros(()), None, stats)

    @torch.no_grad()
    def kl_per_dimension(self, y: Tensor) -> Tensor:
        """KL(N(μ_i, σ_i²) ‖ N(0, 1)) of every latent dimension, ``(B, in_dim)`` -> ``(B, m)``
        nats (the rate, before its sum over dimensions): which dimensions carry information."""
        self._check_density_input(y, 1)
        return kl_to_standard_normal(*self._posterior(self._cast(y)))

    def posterior_sample(
        self, y: Tensor, num_samples: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``z = μ + σ ⊙ ε`` and ``log_q = Σ_i log N(z_i; μ_i, σ_i²)``.

        ``y``: ``(B, in_dim)`` -> ``z``: ``(S, B, m)``, ``log_q``: ``(S, B)``.
        """
        self._check_density_input(y, num_samples, generator)
        # in the dtype ``forward`` computes in: a bfloat16 log_q was off by 0.3 nats at m = 64
        # contiguous rows: a sum over a column-major row adds in another order (to_rows)
        mean, logvar = self._posterior(self._cast(y).contiguous())
        eps = standard_normal_noise(
            (num_samples, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype
        )
        z = mean + torch.exp(0.5 * logvar) * eps
        return z, log_normal(z, mean, logvar).sum(-1)

    def log_prior(self, z: Tensor) -> Tensor:
        """``Σ_i log N(z_i; 0, 1)``: ``(S, B, m)`` -> ``(S, B)``."""
        self._check_prior_input(z)
        # at least float32, as ``forward``: a float16 sum of m terms rounds to 1/16 nat and less
        z = z.to(torch.promote_types(z.dtype, torch.float32)).contiguous()  # row order, as to_rows
        return log_standard_normal(z).sum(-1)


def _optional_bound(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    return float(value)


# ------------------------------------------------------------------ the bottleneck
@BOTTLENECKS.register("gaussian")
class GaussianVAE(DiagonalGaussian):
    """Gaussian VAE: the encoder predicts μ and log σ²; posterior N(μ, diag σ²), prior N(0, I).

    Args:
        dim: code dimension m; the input has ``in_dim = 2m`` channels on axis 1 (μ, then log σ²).
        logvar_min: lower clip of log σ² (the VampPrior code's Hardtanh(-6, 2)); None: no clip.
        logvar_max: upper clip of log σ²; None: no clip. Clipped entries get zero gradient.

    Computation happens in the input's dtype, at least float32 (there are no parameters):
    float32 and float64 inputs are computed and returned as they come, float16 and bfloat16
    ones in float32 (their ``y_hat`` and ``rate`` are float32).

    ``y`` ``(B, 2·dim[, *spatial])`` -> ``y_hat`` ``(B, dim[, *spatial])`` (a sample on the
    training path, μ in eval mode), ``rate`` ``(B,)`` = KL(q ‖ N(0, I)) in nats per example; no
    discrete hard path. Raises ValueError for a bound that is not a finite number or None, or
    ``logvar_min > logvar_max``, and bad input as :class:`~.base.Bottleneck`.
    """

    input_layout = "2·dim: μ, then log σ², as the encoder's last layer outputs"
    logvar_min = Setting(_optional_bound)
    logvar_max = Setting(_optional_bound)

    def __init__(
        self,
        *,
        dim: int,
        logvar_min: float | None = -6.0,
        logvar_max: float | None = 2.0,
    ) -> None:
        # a bad ``dim`` is reported by the base class, so do not double it unless it is an int
        super().__init__(dim=dim, in_dim=2 * dim if isinstance(dim, int) else None)
        self.logvar_min = logvar_min
        self.logvar_max = logvar_max
        if (
            self.logvar_min is not None
            and self.logvar_max is not None
            and self.logvar_min > self.logvar_max
        ):
            raise ValueError(
                f"logvar_min must not exceed logvar_max, got {logvar_min!r} > {logvar_max!r}"
            )

    def _posterior(self, y: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = y[:, : self.dim], y[:, self.dim :]
        if self.logvar_min is not None or self.logvar_max is not None:
            logvar = torch.clamp(logvar, self.logvar_min, self.logvar_max)
        return mean, logvar

    def extra_repr(self) -> str:
        return f"dim={self.dim}, logvar_min={self.logvar_min}, logvar_max={self.logvar_max}"
