"""Gaussian lattice VAE: a hypothetical good high-dimensional lattice, modelled by its dither.

Paper: L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), section 3.3.1 and the
"Gaussian lattice VAE" of section 4 (Table 1).

    y = μ ──┬─ training:  y_hat = μ + σ ⊙ ε,  ε ~ N(0, I)
            ├─ eval:      y_hat = μ
            └─ rate = KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_i (μ_i² + σ_i² − 1 − log σ_i²)
    σ² = exp(log σ²): one learned (m,) vector, the same for every input (the lattice's, not x's)

Why this models a lattice: the dither U of a lattice Λ is uniform over its Voronoi cell, with
second moment σ²_Λ = G(Λ)·V^{2/m} per dimension (G the normalized second moment). Against a
Gaussian of that variance, KL(U_m ‖ N(0, σ²_Λ I)) = ½ log(2πe·G(Λ)) per dimension (eq. 12), which
goes to 0 for good lattices as m grows (G → 1/(2πe), eqs. 11, 13). So a good high-dimensional
lattice acts as additive Gaussian noise whose variance the lattice fixes and only the mean depends
on x (eq. 14). A rectangular lattice (G = 1/12) is ½ log(2πe/12) ≈ 0.176 nats per dimension away
from that Gaussian (≈ 7.06 nats at m = 40): the cost eq. 12 assigns to the cell's shape.

Shapes: input ``(B, m)`` or ``(B, m, *spatial)`` (μ, code dimension on axis 1); ``y_hat`` has the
same shape; ``rate`` is ``(B,)`` nats. No discrete code (``quantize`` raises ``TypeError``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import BOTTLENECKS
from .gaussian import DiagonalGaussian


@BOTTLENECKS.register("gaussian_lattice")
class GaussianLattice(DiagonalGaussian):
    """Posterior N(μ(x), diag σ²) with σ² a learned vector, not a function of x; prior N(0, I).

    Args:
        dim: code dimension m (the input is μ, ``in_dim = m``).
        init_logvar: initial log σ² for every dimension. The default 0 (σ² = 1, the prior's
            variance) is where the Gaussian VAE's freshly initialised log-variance head starts, so
            both models begin level; there the rate's gradient in log σ² is ½(σ² − 1) = 0, and
            the reconstruction term alone shrinks σ² to the noise level the decoder tolerates.
        learn_variance: whether log σ² is trained; False keeps σ² = exp(init_logvar) fixed.

    Computation happens in the parameters' dtype (``.double()`` the module for float64); inputs
    are cast to it.

    ``y`` ``(B, dim[, *spatial])`` -> ``y_hat`` of the same shape, ``rate`` ``(B,)`` in nats per
    example. Raises ValueError for an ``init_logvar`` that is not a finite number in [−30, 30],
    a ``learn_variance`` that is not a bool, and bad input as :class:`~.base.Bottleneck`.
    """

    LOG_PARAMETERS = ("logvar",)

    def __init__(self, *, dim: int, init_logvar: float = 0.0, learn_variance: bool = True) -> None:
        super().__init__(dim=dim)
        if (
            isinstance(init_logvar, bool)
            or not isinstance(init_logvar, int | float)
            or not math.isfinite(init_logvar)
        ):
            raise ValueError(f"init_logvar must be a finite number, got {init_logvar!r}")
        if not -30.0 <= init_logvar <= 30.0:  # as gaussian_dither: exp stays finite in float32
            raise ValueError(f"init_logvar must lie in [-30, 30], got {init_logvar!r}")
        if not isinstance(learn_variance, bool):
            raise ValueError(f"learn_variance must be a bool, got {learn_variance!r}")
        self.logvar = nn.Parameter(
            torch.full((dim,), float(init_logvar)), requires_grad=learn_variance
        )

    @property
    def variance(self) -> Tensor:
        """σ², shape ``(m,)``."""
        return self.logvar.exp()

    def _posterior(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y.to(self.logvar.dtype), self.logvar

    def extra_repr(self) -> str:
        return f"dim={self.dim}, learn_variance={self.logvar.requires_grad}"
