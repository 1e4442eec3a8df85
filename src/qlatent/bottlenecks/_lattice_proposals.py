"""The proposals of a good lattice's Monte-Carlo density (:mod:`.good_lattice`).

Draws of X̂ near each row's v, for the multiple importance sampling of
:meth:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice.log_density`, with the function that
gives their log-density: :func:`box_points` (the Laplace prior restricted to the cell's bounding
box, ``proposal="box"``) and :func:`tilted_points` (the prior tilted by a Gaussian of the cell's
size, ``proposal="tilted"``; :func:`gaussian_tilt` under the Gaussian prior). All from the
counter-based generator (``qlatent.rng``) with the key handed in. :func:`proposal_points` picks
the module's own proposal and :func:`proposal_set_to` sets another for a while (the module
their first argument; the class's ``_proposal_points`` and ``proposal_set_to``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..priors import laplace_cell_log_prob
from ..rng import counter_uniform
from ._lattice_cells import _BlockSums, _Cells

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice

#: the tilted proposal's Gaussian width in units of the cell's size √(V^{2/n}/12) per coordinate
_TILT = 1.0


def box_points(
    v: Tensor, count: int, key: Tensor, halfwidth: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    """``count`` draws per row of the Laplace prior restricted to the box v ± h, ``(N,
    count, m)``, and the log-probability of the box per coordinate, ``(N, m)``.

    Inverse CDF of the truncated Laplace, written so that nothing cancels in either tail:
    on an interval [a, c] ⊂ [0, ∞) x = a − b·log1p(−r·(1 − e^{−(c−a)/b})) (mirrored for
    c ≤ 0); across 0 the CDF itself is used. Uniforms come from the counter-based generator
    with ``key``."""
    n, m = v.shape
    r = counter_uniform(key, (n, count, m), torch.float64)
    # midpoints of the 2^-24 grid, never 0 or 1 in float64; float32 rounds the last one,
    # 1 − 2^-25, up to 1, where log1p(−r·tail) below is −∞ once tail = 1 (a box far wider
    # than the prior): finite in the branch taken, but 0·∞ = NaN in the other's gradient
    r = (r + 2.0**-25).to(device=v.device, dtype=v.dtype)
    r = r.clamp(max=1.0 - torch.finfo(v.dtype).eps / 2)
    vv = v.unsqueeze(1)
    a, c, b = vv - halfwidth, vv + halfwidth, scale
    width = c - a
    tail = -torch.expm1(-width / b)  # 1 − e^{−(c−a)/b}
    spread = b * torch.log1p(-r * tail)  # b·log(1 − r·tail), for both one-sided cases
    right = a - spread  # interval in [0, ∞)
    left = c + spread  # mirrored: interval in (−∞, 0]
    low = 0.5 * torch.exp(torch.clamp(a, max=0.0) / b)  # F(a) for a < 0
    high_tail = 0.5 * torch.exp(-torch.clamp(c, min=0.0) / b)  # 1 − F(c) for c > 0
    mass = 1.0 - low - high_tail  # F(c) − F(a)
    # the branch not taken must stay finite too, or where() would pass NaN gradients
    tiny = torch.finfo(v.dtype).tiny
    u = (low + r * mass).clamp(min=tiny)
    upper = (high_tail + (1.0 - r) * mass).clamp(min=tiny, max=0.5)  # 1 − u, no cancellation
    # u < ½ as a 0/1 factor, not a where(): torch.where on a condition as unpredictable as
    # this one costs a mispredicted branch per element on the CPU (timed apart on 128k
    # float32 values: 0.85 ms, against 0.12 on a regular one). Both sides are finite, so the
    # products pick one exactly (a zero's sign aside)
    below = (0.5 - u).sign_().clamp_(min=0.0)
    across = b * torch.log(2.0 * u) * below + (-b * torch.log(2.0 * upper)) * (1.0 - below)
    x = torch.where(a >= 0, right, torch.where(c <= 0, left, across))
    log_z = laplace_cell_log_prob(v, 2.0 * halfwidth, scale)
    return x, log_z


def tilted_points(
    v: Tensor,
    count: int,
    key: Tensor,
    sigma: Tensor,
    scale: Tensor,
    membership: Tensor | _BlockSums,
    unit: Tensor,
    prior: str,
):
    """``count`` draws per row from q_v(x) ∝ p(x)·exp(−‖x − v‖²/(2τ²)), ``(N, count, m)``, and
    the function t ↦ log q_v(t) per block, ``(N, m, S)`` -> ``(N, blocks, S)``, all at the
    values given (no gradient: :meth:`DitheredGoodLattice.log_density` moves the draws with the
    cell).

    τ_i = :data:`_TILT`·s_i/√12, s_i the scaled cell's size V^{1/n} at coordinate i: the
    root second moment of a cube of the cell's volume (a good lattice's cell has 0.89–0.98
    of it). Per coordinate the Laplace prior times the Gaussian is two
    truncated Gaussians, N(v ∓ τ²/b, τ²) on x ≥ 0 and x ≤ 0: a side is drawn by its mass,
    then the point by the inverse CDF, in float64 (past 30 standard deviations of
    truncation, where that side holds almost none of q's mass unless τ ≫ b, the tail by
    its Rayleigh approximation, whose density is within 1/30² of the exact one). The
    Gaussian prior N(0, b²) times the Gaussian is one Gaussian (:func:`gaussian_tilt`).
    ``unit``: the blocks' unit-volume factors per coordinate; ``prior``: ``"laplace"`` or
    ``"gaussian"``; ``membership``: the blocks' ``(m, blocks)`` 0/1 matrix or their
    :class:`_BlockSums`."""
    n, m = v.shape
    sums = _BlockSums.of(membership)
    f64 = torch.float64
    mu = v.detach().to(f64).unsqueeze(1)  # (N, 1, m)
    b = scale.detach().to(f64)
    tau = (_TILT / math.sqrt(12.0)) * (sigma.detach().to(f64) / unit.to(f64))
    if prior == "gaussian":
        return gaussian_tilt(v, mu, b, tau, count, key, sums)
    shift = tau.square() / b
    alpha_pos = (shift - mu) / tau  # side x ≥ 0: N(mu − τ²/b, τ²) truncated at 0
    alpha_neg = (shift + mu) / tau  # side x ≤ 0, mirrored
    tail_pos = torch.special.log_ndtr(-alpha_pos)  # (N, 1, m): log P(Z ≥ α) per side
    tail_neg = torch.special.log_ndtr(-alpha_neg)
    mass_pos = -mu / b + tail_pos
    mass_neg = mu / b + tail_neg
    log_mass = torch.logaddexp(mass_pos, mass_neg)
    r = counter_uniform(key, (n, count, 2 * m), f64).to(v.device)
    r.add_(2.0**-25)  # midpoints of the 2^-24 grid: never 0 or 1
    positive = torch.log(r[..., :m]) < mass_pos - log_mass
    alpha = torch.where(positive, alpha_pos, alpha_neg)
    tail = torch.log1p(-r[..., m:])  # log(1 − r'): the standard truncated normal on [α, ∞)
    # log P(Z ≥ α) of each draw's side, picked from the two per row and coordinate rather
    # than formed again for every draw (log_ndtr is a quarter of the sampler's time)
    exact = -torch.special.ndtri(torch.exp(tail + torch.where(positive, tail_pos, tail_neg)))
    far = torch.sqrt(alpha.clamp(min=0.0).square() - 2.0 * tail)
    z = torch.where(alpha > 30.0, far, exact)
    x = torch.where(positive, (mu - shift) + tau * z, (mu + shift) - tau * z)
    # log q(x) = −|x|/b − (x − v)²/(2τ²) − log C per coordinate, with C = ∫ e^{−|x|/b}·g:
    # the Gaussian's τ√(2π), e^{τ²/(2b²)} and the two sides' masses
    log_c = log_mass + tau.square() / (2 * b.square()) + torch.log(tau)
    sums64 = sums.to(f64)
    log_c_blocks = sums64.rows(log_c + 0.5 * math.log(2 * math.pi))  # (N, 1, blocks)
    dtype = v.dtype
    abs_weight = (1.0 / b).to(dtype)  # (m,): 1/b_i and 1/(2τ_i²), formed in float64
    tilt_weight = (1.0 / (2 * tau.square())).to(dtype)
    sums = sums.to(dtype)
    log_c_blocks = log_c_blocks.transpose(1, 2).to(dtype)  # (N, blocks, 1)
    center = v.unsqueeze(2)  # (N, m, 1)

    def log_q(t: Tensor, _log_p: Tensor, shift: Tensor | float = 0.0) -> Tensor:
        return (
            -sums.points(t.abs(), abs_weight, temporary=True)
            - sums.points((t - center).square(), tilt_weight, temporary=True)
            - (log_c_blocks - shift)
        )

    return x.to(dtype), log_q


def gaussian_tilt(
    v: Tensor,
    mu: Tensor,
    b: Tensor,
    tau: Tensor,
    count: int,
    key: Tensor,
    membership: Tensor | _BlockSums,
):
    """:func:`tilted_points` under the Gaussian prior: N(0, b²)·N(v, τ²) ∝ N(c, s²) with
    1/s² = 1/b² + 1/τ² and c = s²·v/τ², per coordinate, drawn by the inverse CDF of
    counter-based uniforms in float64 (``mu``: v in float64, ``(N, 1, m)``)."""
    sums = _BlockSums.of(membership)
    n, m = v.shape
    f64 = torch.float64
    var = 1.0 / (1.0 / b.square() + 1.0 / tau.square())  # (m,)
    center = mu * (var / tau.square())  # (N, 1, m)
    r = counter_uniform(key, (n, count, m), f64).to(v.device)
    r.add_(2.0**-25)  # midpoints of the 2^-24 grid: never 0 or 1
    # in place (the same numbers as center + sd·quantile): each temporary is (N, S, m) float64
    x = torch.special.ndtri(r).mul_(var.sqrt()).add_(center)
    dtype = v.dtype
    # log q(t) = −Σ (t − c)²/(2s²) − Σ (log s + ½·log 2π) over a block's coordinates
    square_weight = (1.0 / (2 * var)).to(dtype)  # (m,), formed in float64
    sums64 = sums.to(f64)
    log_c = sums64.rows(0.5 * torch.log(var) + 0.5 * math.log(2 * math.pi))
    log_c = log_c.unsqueeze(1).to(dtype)  # (blocks, 1)
    center = center.transpose(1, 2).to(dtype)  # (N, m, 1)
    sums = sums.to(dtype)

    def log_q(t: Tensor, _log_p: Tensor, shift: Tensor | float = 0.0) -> Tensor:
        return -sums.points((t - center).square(), square_weight, temporary=True) - (log_c - shift)

    return x.to(dtype), log_q


def proposal_points(
    neck: DitheredGoodLattice,
    v: Tensor,
    count: int,
    shared: Tensor | None,
    key,
    sigma: Tensor,
    scale: Tensor,
    cells: _Cells | None = None,
) -> tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]:
    """The proposal at the current values of ``v`` (``(N, m)``), ``sigma`` and ``scale``, all
    without gradient: ``count`` draws x0 per row, ``(N, count, m)`` (the prior's are the
    ``shared`` ones drawn once per call, ``(1, count, m)``), and the density t, log p(t) ↦
    log q0(t) + shift per block, ``(N, m, S)``, ``(N, blocks, S)``, ``(blocks, 1)`` ->
    ``(N, blocks, S)``, samples last, the shift (default 0) added in the same pass (log p(t)
    passed in, at the same values, for the prior and the box, whose q0 is p up to a
    normalizer and which do not read t: it may be None). ``cells``: the blocks they are
    for (default all: :meth:`_mc_cells`)."""
    if neck.proposal == "prior":
        return shared.detach().unsqueeze(0), lambda t, log_p, shift=0.0: log_p + shift
    cells = cells or neck._mc_cells(v.dtype)
    sums = cells.sums  # its matrix in v's dtype: cells come from _mc_cells(v.dtype)
    if neck.proposal == "tilted":
        return neck._tilted_points(v, count, key, sigma, scale, sums, cells.unit)
    halfwidth = cells.halfwidth.to(v.dtype) * sigma
    x0, log_z = neck._box_points(v, count, key, halfwidth, scale)
    log_z = sums.rows(log_z).unsqueeze(2)  # (N, blocks, 1): log P(X̂ ∈ box)
    return x0, lambda t, log_p, shift=0.0: log_p + (shift - log_z)


@contextmanager
def proposal_set_to(neck: DitheredGoodLattice, proposal: str | None) -> Iterator[None]:
    """Use ``proposal`` for the proposal draws inside the block (``None``: keep the own), e.g.
    the tilted one for a large-S reference of a box bottleneck."""
    own = neck.proposal
    neck.proposal = own if proposal is None else proposal  # checked as it is assigned
    try:
        yield
    finally:
        neck.proposal = own
