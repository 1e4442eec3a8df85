"""Laplace prior seen through a dithered rectangular cell (lattice paper, section 4).

For X̂ ~ Laplace(0, b) and U ~ Unif(-Δ/2, Δ/2), the probability of the cell around η,

    P(η) = Δ · f_{X̂-U}(η) = F(η + Δ/2) - F(η - Δ/2),

is both the hard path's ``P(Ẑ = z | U = u)`` (at η = z - u) and, inside Theorem 1's
``log f_U(u) - log f_{X̂-U}(x - u) = -log P(x - u)``, the training path's rate. With a = |η|/b and
h = Δ/(2b) the closed form is ``1 - e^{-h} cosh a`` for a < h and ``e^{-a} sinh h`` for a ≥ h.
Both branches are one formula: with t = min(a, h),

    log P = -(a - t) + log(1 - e^{-h} cosh t),
    1 - e^{-h} cosh t = -expm1(-h) - ½ e^{t-h} expm1(-t)²,

in which every exponent is ≤ 0 and the subtraction loses at most a factor two of relative
precision (the result is never below half of its first term). So log P is finite, ≤ 0 and
accurate for |η|/b up to the float range, and its gradient is defined everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor


def laplace_cell_log_prob(eta: Tensor, spacing: Tensor, scale: Tensor) -> Tensor:
    """log P(X̂ ∈ η + [-Δ/2, Δ/2)) for X̂ ~ Laplace(0, b), elementwise.

    Args:
        eta: ``(..., m)`` cell centres relative to the dither (``x - u`` or ``z - u``).
        spacing: ``(m,)`` cell widths Δ > 0 (broadcast against ``eta``).
        scale: ``(m,)`` Laplace scales b > 0.

    Returns:
        ``(..., m)`` log-probabilities, each ≤ 0.
    """
    return cell_log_prob_from_constants(eta, *cell_constants(spacing, scale))


def laplace_cell_nll(eta: Tensor, spacing: Tensor, scale: Tensor) -> Tensor:
    """``-laplace_cell_log_prob``: the per-coordinate rate in nats (≥ 0)."""
    return -laplace_cell_log_prob(eta, spacing, scale)


def cell_constants(spacing: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-dimension constants ``(1/b, h = Δ/2b, -expm1(-h))``, computed once per call.

    Split from the elementwise part so that a fused kernel does not recompute them per element.
    """
    inv_scale = scale.reciprocal()
    h = 0.5 * spacing * inv_scale
    return inv_scale, h, -torch.expm1(-h)


def cell_log_prob_from_constants(eta: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """The elementwise part of :func:`laplace_cell_log_prob` given :func:`cell_constants`."""
    a = eta.abs() * inv_scale
    t = torch.minimum(a, h)
    inner = c - 0.5 * torch.exp(t - h) * torch.expm1(-t).square()
    return torch.log(inner) - (a - t)
