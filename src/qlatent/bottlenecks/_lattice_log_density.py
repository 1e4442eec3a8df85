"""The log-density of a good lattice's X̂ − U (:mod:`.good_lattice`) and its density view.

:func:`log_density` (checked) and :func:`unchecked_log_density` (the paths') give
:class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice`'s log f̂_{X̂−U}(v) per row: the
closed form of the rectangular blocks, and for the others the Monte-Carlo estimate of
:mod:`._lattice_estimate` (from the cell points :func:`mc_points` and the prior's draws
:func:`prior_points`) or the Gaussian approximation (:func:`gaussian_approximation`, with the
cells' second moments :func:`cell_moments`). :func:`posterior_sample` and :func:`log_prior`
are the density view IWAE reads. The module is their first argument; the class takes them as
its methods of the same names (with a leading underscore where private).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .._utils import autocast_off, check_finite, plain_tensors
from ..priors import gaussian_cell_log_prob, laplace_cell_log_prob
from ..rng import counter_uniform, draw_key
from ._constructor_values import check_flag
from ._lattice_counts import _sample_count
from ._lattice_estimate import (
    _cell_moment_values,
    _values_off_meta,
    gaussian_log_density,
    grouped_log_density,
)

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice


def mc_points(neck: DitheredGoodLattice, samples: int, generator, dtype, device) -> Tensor:
    """``(S, m)`` antithetic Voronoi points w (base units; halves are negatives)."""
    half = neck._unit_dither(samples // 2, generator, dtype, device)
    return torch.cat([half, -half])


def prior_points(neck: DitheredGoodLattice, samples: int, generator, dtype, device) -> Tensor:
    """``(S, m)`` draws of X̂ from the prior (inverse CDF of counter-based uniforms)."""
    r = counter_uniform(draw_key(generator, device), (samples, neck.dim), torch.float64)
    r = r + 2.0**-25  # the midpoints of the 2^-24 grid: never 0 or 1
    if neck.prior_name == "laplace":
        eps = -torch.sign(r - 0.5) * torch.log1p(-2.0 * (r - 0.5).abs())
    else:
        eps = torch.special.ndtri(r)
    return eps.to(dtype) * neck.scale.to(dtype)


@autocast_off
def log_density(
    neck: DitheredGoodLattice,
    v: Tensor,
    samples: int,
    prior_samples: int | Sequence[int] = 0,
    generator=None,
    *,
    cap: bool = True,
    debias: bool = False,
    density: Literal["monte_carlo", "gaussian"] | None = None,
) -> Tensor:
    """Monte-Carlo ``log f̂_{X̂−U}(v)`` per row, ``(N, m)`` -> ``(N,)``.

    Rectangular blocks take their closed form (the prior's mass on the box, per coordinate;
    unless ``exact_rectangular=False``) and are left out of everything below, draws
    included. Per other block, P = P(X̂_b ∈ v_b + P0_b) is estimated by multiple importance
    sampling with the balance heuristic (Veach & Guibas 1995) from ``samples`` points
    uniform on the cell (x = v + w) and ``prior_samples`` draws x from the proposal q (kept
    when K(x − v) = 0, i.e. x in the cell): P̂ = Σ_x 1[x ∈ cell] p(x) / (S_u/V + S_q·q(x)),
    unbiased. With
    ``proposal="prior"`` q = p; with ``"box"`` q = p restricted to the box v ± h around the
    cell (h the cell's half-width per coordinate), q = p/Z_v with Z_v = P(X̂ ∈ box); with
    ``"tilted"`` q ∝ p·g, g a Gaussian around v with the cell's size (:meth:`_tilted_points`).
    Every proposal's draws x0 and density q0 are those at the current values (v0, σ0, b0),
    held fixed; the points used are x = v + D(x0 − v0), D = diag(σ/σ0), whose value is x0
    but which move with the cell as v and σ do, with density q0(v0 + D⁻¹(x − v))/|D|. The
    estimate is then unbiased at every (v, σ, b) near the current one and its indicator
    1[x − v ∈ cell] does not change with them, so its gradient is the gradient of P: with
    the draws held fixed instead, the cell's boundary sweeping over them is a surface term
    the gradient misses (on the trained E8^5 Table-1 model with the box proposal, P̂'s
    block-scale gradients up to 4× those of uniform cell points alone:
    ``examples/proposal-gradients.py``; tested against the closed form on Z blocks and
    against uniform cell points alone on A2 and E8).
    Uniform points alone fail when the prior is peaked inside the cell (a coordinate the model
    switched off); prior draws alone fail when it is flat; the mixture is good at both.
    f̂ = P̂/V, with P̂ capped at 1 per block (a probability), which only moves it toward the
    truth (``cap=False`` returns the unbiased estimate of P itself).

    ``debias=True`` adds the second-order (delta-method) correction to each block's log:
    E[log P̂] ≈ log P − Var(P̂)/(2P²), so log P̂ + V̂ar(P̂)/(2P̂²) is biased by O(1/S²) instead of
    O(1/S). The variance is estimated from the terms themselves: antithetic pairs count as
    one independent unit, the proposal's draws as one each (see :class:`_LogSum`).
    The corrected density is no longer an unbiased estimate of f, so :meth:`log_prior`
    (IWAE) never uses it.

    ``prior_samples`` may give one count per block (all blocks, rectangular ones included):
    the blocks with equal counts are estimated together, each group on its own draws (its
    own key per chunk of rows; the cell points and the prior's shared draws are drawn once
    for every coordinate, a group taking its first S_b of the latter), so each block's
    estimate is the one S_b draws for that block alone would give, and no group forms
    another's draws (at ``leech_gl_lattice``'s [32, 1024] the Leech block's 24 coordinates
    draw 32, not 1024).

    ``density``: ``"gaussian"`` gives every block above the Gaussian approximation instead
    (:meth:`_gaussian_log_density`; no points drawn, the counts and ``debias`` unused);
    ``None`` (default) the module's own ``density`` setting.

    The counts are checked as the constructor's (``samples`` even, both within what one key
    of the counter-based generator draws per row), and ``v`` must be finite rows of ``dim``.
    """
    if not isinstance(v, Tensor) or not v.is_floating_point():
        what = v.dtype if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"v must be a floating-point tensor, got {what}")
    if v.dim() != 2 or v.shape[1] != neck.dim:
        raise ValueError(f"v must have shape (N, {neck.dim}), got {tuple(v.shape)}")
    check_finite("v", v)
    samples = _sample_count(samples, "samples", neck.dim)
    prior_samples = neck._check_draw_counts(prior_samples, "prior_samples")
    cap, debias = check_flag(cap, "cap"), check_flag(debias, "debias")
    if density is not None:
        density = neck._check_density(density, "density")
    return neck._log_density(
        v, samples, prior_samples, generator, cap=cap, debias=debias, density=density
    )


def unchecked_log_density(
    neck: DitheredGoodLattice,
    v: Tensor,
    samples: int,
    prior_samples: int | Sequence[int],
    generator,
    *,
    cap: bool = True,
    debias: bool = False,
    density: str | None = None,
) -> Tensor:
    """:meth:`log_density` without its checks, for the paths, whose values are checked."""
    sigma = neck._coordinate_scale().to(v.dtype)
    scale = neck.scale.to(v.dtype)
    log_vol = neck._block_log_volume().to(v.dtype)
    exact = None
    if neck._mc_geometry is not neck.geometry:  # rectangular blocks: the closed form
        e = neck._exact
        width = 2 * neck._halfwidth[e].to(v.dtype) * sigma[e]
        cell = laplace_cell_log_prob if neck.prior_name == "laplace" else gaussian_cell_log_prob
        exact = (cell(v[:, e], width, scale[e]) - torch.log(width)).sum(-1)
        if neck._mc_geometry is None:
            return exact
    if (neck.density if density is None else density) == "gaussian":
        log_f = neck._gaussian_log_density(v, sigma, scale, log_vol, cap)
        return log_f if exact is None else log_f + exact
    log_f = grouped_log_density(
        neck, v, sigma, scale, log_vol, samples, prior_samples, generator, cap, debias
    )
    return log_f if exact is None else log_f + exact


def gaussian_approximation(
    neck: DitheredGoodLattice, v: Tensor, sigma: Tensor, scale: Tensor, log_vol: Tensor, cap: bool
) -> Tensor:
    """The Gaussian approximation of log f_{X̂−U}(v) for the blocks :meth:`log_density`
    would estimate by Monte Carlo, summed over them, ``(N,)`` (:func:`gaussian_log_density`
    of :mod:`._lattice_estimate`, with the cells' second moments :meth:`_cell_moments`)."""
    cells = neck._mc_cells(v.dtype)
    moment = neck._cell_moments(v.dtype, v.device)
    return gaussian_log_density(v, sigma, scale, log_vol, cap, cells, moment, neck.prior_name)


def cell_moments(neck: DitheredGoodLattice, dtype: torch.dtype, device) -> Tensor:
    """M_i, the base block's second moment of its cell per dimension at each coordinate,
    ``(m,)``: G(Λ_b)·V_b^{2/n_b} (:func:`_block_nsm`), exact per coordinate for the cells
    whose second-moment tensor is a multiple of the identity (A2, D4, E8, Λ16, Λ24, and
    every block of ``tile``'s names); a rectangular block's own Δ_i²/12. Plain numbers
    (:func:`_cell_moment_values`), so that a traced or exported forward forms them as
    constants: made with a module built with ``density="gaussian"``, else here at first use
    (a family without a literature G estimates it then, once per process)."""
    values = neck.__dict__.get("_moment_values")
    if values is None:
        with plain_tensors(), _values_off_meta():
            values = neck._moment_values = _cell_moment_values(neck.geometry)
    return torch.tensor(values, dtype=dtype, device=device)


@autocast_off
def posterior_sample(neck: DitheredGoodLattice, y: Tensor, num_samples: int, *, generator=None):
    """``y_hat = y − u`` with u uniform over the Voronoi cell: q = f_U = 1/V.

    ``y``: ``(B, m)`` -> ``z``: ``(S, B, m)``, ``log_q``: ``(S, B)`` (the constant −log V).
    q is zero outside the cell around y, so IWAE with it bounds the likelihood's integral
    over that cell only (see :func:`qlatent.eval.iwae_nll`).
    """
    neck._check_density_input(y, num_samples, generator)
    y = y.to(neck.log_spacing.dtype)
    n = num_samples * y.shape[0]
    u = neck._unit_dither(n, generator, y.dtype, y.device) * neck._coordinate_scale()
    z = y - u.view(num_samples, *y.shape)
    return z, (-neck.log_volume()).expand(num_samples, y.shape[0])


@autocast_off
def log_prior(neck: DitheredGoodLattice, z: Tensor) -> Tensor:
    """Monte-Carlo ``log f̂_{X̂−U}(z)`` with ``eval_samples`` points: ``(S, B, m)`` -> ``(S, B)``.

    f̂ is an unbiased estimate of the density (before the cap at 1/V, which only lowers it),
    so inside IWAE the importance weights stay unbiased or low and the IWAE estimate is
    still a lower bound on log p(x) in expectation; it is looser than with the exact density.
    The points come from torch's default generator. Under ``density="gaussian"`` it is the
    Gaussian approximation instead (no points), and the IWAE value no bound.
    """
    neck._check_prior_input(z)
    # contiguous rows: a reshape of a column-major z was a column-major view (as to_rows)
    flat = z.reshape(-1, neck.dim).contiguous().to(neck.log_spacing.dtype)
    log_f = neck._log_density(flat, neck.eval_samples, neck.eval_prior_samples, None)
    return log_f.view(z.shape[:-1])
