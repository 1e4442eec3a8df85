"""The log-density estimate of a good lattice (:mod:`.good_lattice`), step by step.

:func:`grouped_log_density` is the Monte-Carlo part of
:meth:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice.log_density`, its blocks grouped by
their count of proposal draws; :func:`estimated_log_density` that part for one group of blocks,
in chunks of rows: the prior's log-density at the cell points (:func:`cell_points_log_pdf`) and
at the proposal's draws (:func:`block_log_pdf`), the cell test of the draws (:func:`inside_cell`),
the balance heuristic's terms and their log-sum (:mod:`._lattice_density`).
:func:`gaussian_log_density` is ``density="gaussian"``'s closed form, from the cells' second
moments (:func:`_cell_moment_values`, with G(Λ) of each block from :func:`_block_nsm`).
:func:`log_density_bias` measures the estimate's bias at given counts against a large-count
reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._utils import plain_tensors, recording_graph
from ..lattices import LITERATURE_NSM, DirectSum, RectangularLattice
from ..rng import draw_key
from ._lattice_cells import _BlockSums, _Cells
from ._lattice_density import _balance_weight, _laplace_block_sums, _log_sum

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice

#: G(Λ) of the blocks without a literature value, by name, estimated once per process
_ESTIMATED_NSM: dict[str, float] = {}

#: elements of the (rows, samples, m) tensor evaluated at once in the density estimate
_DENSITY_CHUNK = 1 << 22


def _block_nsm(block) -> float:
    """G(Λ) of a block: the literature value (:data:`qlatent.lattices.LITERATURE_NSM`) or, for
    other blocks, the Monte-Carlo :meth:`~qlatent.lattices.Lattice.nsm` (200,000 float64 cell
    points, seed 0; relative standard error about 0.3%), estimated once per name."""
    known = LITERATURE_NSM.get(block.name.lower())
    if known is not None:
        return known
    if block.name not in _ESTIMATED_NSM:
        with plain_tensors(), _values_off_meta():
            _ESTIMATED_NSM[block.name] = float(block.nsm())
    return _ESTIMATED_NSM[block.name]


def _cell_moment_values(geometry: DirectSum) -> tuple[float, ...]:
    """Each coordinate's M_i of :meth:`DitheredGoodLattice._cell_moments`, as Python floats."""
    values: list[float] = []
    for block in geometry.blocks:
        if isinstance(block, RectangularLattice):
            values += (block.spacing.double().square() / 12.0).tolist()
        else:
            size = math.exp(2.0 * float(block.log_volume) / block.dim)
            values += [_block_nsm(block) * size] * block.dim
    return tuple(values)


@contextmanager
def _values_off_meta() -> Iterator[None]:
    """The CPU as the default device where the meta device is (tables built from values)."""
    if torch.get_default_device().type != "meta":
        yield
        return
    with torch.device("cpu"):
        yield


def grouped_log_density(
    neck: DitheredGoodLattice,
    v: Tensor,
    sigma: Tensor,
    scale: Tensor,
    log_vol: Tensor,
    samples: int,
    prior_samples: int | Sequence[int],
    generator,
    cap: bool,
    debias: bool,
) -> Tensor:
    """:meth:`DitheredGoodLattice.log_density`'s Monte-Carlo part for all the blocks it
    estimates, summed over them ``(N,)``: the blocks grouped by their count of proposal draws
    (one group unless ``prior_samples`` gives one per block that differ), the cell points and the
    prior's shared draws drawn once for all, and each group's :func:`estimated_log_density`.
    ``neck``: the bottleneck, whose ``_mc_cells``, ``_mc_points`` and ``_prior_points`` give the
    blocks and the draws."""
    cells = neck._mc_cells(v.dtype)
    groups = [(prior_samples, cells)]  # (draw count, the blocks it is for)
    if isinstance(prior_samples, (list, tuple)):
        per_block = torch.tensor(prior_samples, dtype=torch.int64)
        if cells.blocks is not None:
            per_block = per_block[cells.blocks.cpu()]
        counts = per_block.tolist()
        distinct = sorted(set(counts))
        groups = [(distinct[0] if distinct else 0, cells)]
        if len(distinct) > 1:  # each group of blocks with one count on its own draws
            groups = [
                (c, neck._mc_cells(v.dtype, tuple(i for i, k in enumerate(counts) if k == c)))
                for c in distinct
            ]
    # the cell points and the prior's shared draws are drawn once for every coordinate (a
    # group takes its coordinates and, of the prior's, its first draws: the same numbers)
    w = neck._mc_points(samples, generator, v.dtype, v.device)
    most = max(count for count, _ in groups)
    shared = None
    if most and neck.proposal == "prior":
        shared = neck._prior_points(most, generator, v.dtype, v.device)
    log_f = None
    for count, group in groups:
        part = estimated_log_density(
            neck,
            v,
            sigma,
            scale,
            log_vol,
            w,
            shared,
            samples,
            count,
            group,
            generator,
            cap,
            debias,
        )
        log_f = part if log_f is None else log_f + part
    return log_f


def estimated_log_density(
    neck: DitheredGoodLattice,
    v: Tensor,
    sigma: Tensor,
    scale: Tensor,
    log_vol: Tensor,
    w: Tensor,
    shared: Tensor | None,
    samples: int,
    prior_samples: int,
    cells: _Cells,
    generator,
    cap: bool,
    debias: bool,
) -> Tensor:
    """:meth:`DitheredGoodLattice.log_density`'s Monte-Carlo part for the blocks of ``cells``,
    ``prior_samples`` proposal draws each, summed over those blocks ``(N,)``: ``v``, ``sigma``,
    ``scale`` over all coordinates, ``log_vol`` over all blocks, ``w`` the ``(S_u, m)`` cell
    points and ``shared`` the prior's ``(S_q', m)`` draws (S_q' ≥ S_q; ``None`` unless the
    proposal is the prior), both drawn for every coordinate. ``neck``: the bottleneck, whose
    prior, proposal and per-chunk steps (its methods ``_cell_points_log_pdf``,
    ``_proposal_points``, ``_block_log_pdf``, ``_inside_cell``) are used."""
    if cells.coords is not None:
        v, sigma, scale = v[:, cells.coords], sigma[cells.coords], scale[cells.coords]
        log_vol = log_vol[cells.blocks]
        w = w[:, cells.coords]
    sums = cells.sums
    log_vol = log_vol.unsqueeze(1)  # (blocks, 1)
    # the samples run along the last, contiguous dimension: (N, m, S) points, (N, blocks, S)
    # log-terms, so the block sums are one batched matrix product and every reduction over
    # the samples and every broadcast of a per-block constant stays contiguous. w is copied
    # to (m, S_u) for that: as a transposed view, every (N, m, S) tensor formed from it is
    # laid out samples-first and each block sum strides across memory (the hard path of
    # E8^128 ran at half E8^8's speed per value)
    w = (w * sigma).T.contiguous()
    x = None
    if prior_samples and shared is not None:
        x = shared[:prior_samples]
        if cells.coords is not None:
            x = x[:, cells.coords]
    # log of the balance-heuristic denominator's uniform part, S_u / V_b
    log_uniform = math.log(samples) - log_vol
    log_count = math.log(max(prior_samples, 1))
    # the draws move with the cell (docstring): q0's argument is constant along the map, so
    # log q(x) = log q0(x0) − log|D|, only the second term with a gradient
    stretch = (sigma / sigma.detach()).unsqueeze(1)  # D: ones, with the cell's gradient
    log_det = sums.points(torch.log(stretch))  # (blocks, 1): log|D| per block, 0 in value
    # the proposal's part of the denominator, S_q·q(x), as log q0 + (log S_q − log|D|)
    shift = log_count - log_det
    scale0 = scale.detach()
    laplace = neck.prior_name == "laplace"
    chunks, scratch = _row_chunks(v, w, scale, samples, prior_samples, x, laplace)
    parts = []
    for chunk in chunks:
        vc = v[chunk]
        v0 = vc.detach().unsqueeze(2)  # (N, m, 1)
        log_p = neck._cell_points_log_pdf(vc, w, scale, sums, cells.block_of, scratch)
        if prior_samples:
            key = None if x is not None else draw_key(generator, v.device)  # one per chunk
            x0, log_q0 = neck._proposal_points(
                vc.detach(), prior_samples, x, key, sigma.detach(), scale0, cells
            )
            x0 = x0.transpose(1, 2)  # (N, m, S_q)
            # x0 + (v − v0) + (D − 1)(x0 − v0): x0 exactly in value
            xc = x0 + (vc.unsqueeze(2) - v0) + (stretch - 1.0) * (x0 - v0)
            # only the tilted proposal's density reads the cell points themselves
            tu = v0 + w.detach() if neck.proposal == "tilted" else None
            log_qu = log_q0(tu, log_p.detach())  # log q0 at the cell points
            log_px = neck._block_log_pdf(xc, scale, sums)
            log_qx = log_q0(x0, log_px.detach())
            inside = neck._inside_cell(xc - vc.unsqueeze(2), sigma, cells)
            weight = _balance_weight(log_px, log_uniform, log_qx, shift)
            terms = [
                _balance_weight(log_p, log_uniform, log_qu, shift),
                weight.masked_fill(~inside, -math.inf),
            ]
        else:
            terms = [log_p - log_uniform]
        # (N, blocks): log P̂_b, with debias + ½·V̂ar(P̂_b)/P̂_b²
        log_sum = _log_sum(torch.cat(terms, 2), samples, debias)
        parts.append((torch.clamp(log_sum, max=0.0) if cap else log_sum) - log_vol.T)
    log_f = torch.cat(parts) if parts else v.new_zeros(0, sums.count)
    return log_f.sum(-1)


def _row_chunks(
    v: Tensor,
    w: Tensor,
    scale: Tensor,
    samples: int,
    prior_samples: int,
    x: Tensor | None,
    laplace: bool,
) -> tuple[Iterable[slice], Tensor | None]:
    """The slices of ``v``'s rows :func:`estimated_log_density` takes at once, at most
    :data:`_DENSITY_CHUNK` elements of its ``(rows, m, S)`` tensors each, and the buffer for the
    chunks' cell points (``None`` where there is none); ``w`` the ``(m, S_u)`` cell points,
    ``x`` the prior's shared draws (``None``: each chunk draws its own), ``laplace`` whether the
    prior is the Laplace one."""
    rows_per_chunk = max(1, _DENSITY_CHUNK // ((samples + prior_samples) * v.shape[1]))
    # where nothing is differentiated (the hard path, IWAE), the chunks' (rows, m, S_u) cell
    # points v + w go into one buffer: a fresh one per chunk is mapped and faulted in again
    # under glibc's defaults whenever other allocations in between moved the heap
    recorded = torch.is_grad_enabled() and any(x.requires_grad for x in (v, w, scale))
    scratch = None
    exporting = recording_graph()
    if exporting:
        # one chunk of every row: a Python loop over the rows fixed a dynamic batch size at
        # the example's. Each chunk draws its own proposal key, so the program holds to a
        # batch of one chunk there (a larger one would take other draws than the module)
        chunks = [slice(None)]
        if prior_samples and x is None:
            torch._check(v.shape[0] <= rows_per_chunk)
    else:
        chunks = (slice(i, i + rows_per_chunk) for i in range(0, v.shape[0], rows_per_chunk))
    if not (recorded or exporting) and laplace and v.shape[0] > rows_per_chunk:
        scratch = v.new_empty(rows_per_chunk, *w.shape)
    return chunks, scratch


def gaussian_log_density(
    v: Tensor,
    sigma: Tensor,
    scale: Tensor,
    log_vol: Tensor,
    cap: bool,
    cells: _Cells,
    moment: Tensor,
    prior_name: str,
) -> Tensor:
    """The Gaussian approximation of log f_{X̂−U}(v) for the blocks of ``cells``, those
    :meth:`DitheredGoodLattice.log_density` would estimate by Monte Carlo, summed over them,
    ``(N,)``: X̂ − U taken as the Gaussian of its variance per coordinate (the two are
    independent and U is centred),

        log f̃_b(v) = Σ_{i ∈ b} log N(v_i; 0, σ²_X̂,i + σ²_Λ,i)

    with σ²_X̂,i the prior's variance (Laplace 2b_i², Gaussian b_i²) and σ²_Λ,i = σ_i²·M_i
    the scaled cell's second moment along coordinate i, σ_i from
    :meth:`DitheredGoodLattice._coordinate_scale` and M_i the base block's second moment per
    dimension, G(Λ_b)·V_b^{2/n_b} (``moment``, :meth:`DitheredGoodLattice._cell_moments`).
    ``v``, ``sigma``, ``scale``, ``moment`` over all coordinates, ``log_vol`` over all blocks;
    ``prior_name``: ``"laplace"`` or ``"gaussian"``; ``cap``: each block's f̃_b·V_b capped at 1,
    as the Monte-Carlo estimate (a Gaussian narrower than the cell exceeds the density's largest
    value, 1/V_b)."""
    if cells.coords is not None:
        v, sigma, scale = v[:, cells.coords], sigma[cells.coords], scale[cells.coords]
        moment, log_vol = moment[cells.coords], log_vol[cells.blocks]
    prior = scale.square() * (2.0 if prior_name == "laplace" else 1.0)
    var = prior + sigma.square() * moment  # (m,)
    log_n = -0.5 * (v.square() / var + torch.log(var) + math.log(2 * math.pi))
    log_f = cells.sums.rows(log_n)  # (N, blocks)
    if cap:  # log P̃_b = log f̃_b + log V_b at most 0
        log_f = torch.clamp(log_f + log_vol, max=0.0) - log_vol
    return log_f.sum(-1)


def cell_points_log_pdf(
    prior_name: str,
    v: Tensor,
    w: Tensor,
    scale: Tensor,
    membership: Tensor | _BlockSums,
    block_of: Tensor,
    scratch: Tensor | None = None,
) -> Tensor:
    """:func:`block_log_pdf` of the points v + w, ``(N, m)`` and ``(m, S)`` -> ``(N, blocks,
    S)``, without forming them twice: under the Laplace prior a hand-written backward
    (:class:`_LaplaceBlockSums`) takes the place of autograd's through the broadcast sum,
    |·| and the batched product, which cost several times the forward. ``membership``: the
    ``(m, blocks)`` 0/1 matrix or the blocks' :class:`_BlockSums`; ``block_of``: each
    coordinate's block among them; ``scratch``: a buffer of at least N rows for v + w where
    nothing is differentiated (Laplace prior)."""
    sums = _BlockSums.of(membership)
    if prior_name != "laplace":
        return gaussian_cell_points_log_pdf(v, w, scale, sums)
    const = sums.totals(torch.log(2 * scale))
    block_of = block_of.to(v.device)
    return -_laplace_block_sums(v, w, 1.0 / scale, sums, block_of, scratch) - const


def gaussian_cell_points_log_pdf(
    v: Tensor, w: Tensor, scale: Tensor, membership: Tensor | _BlockSums
) -> Tensor:
    """The Gaussian prior's :func:`block_log_pdf` of v + w with the square expanded,
    Σ_{i ∈ b} (v_i + w_is)²/τ_i² = Σ v_i²/τ_i² + 2 Σ (v_i/τ_i²) w_is + Σ w_is²/τ_i²: a row term,
    a sample term and one matrix product against w spread over the blocks (``(m, blocks·S)``,
    zero outside each coordinate's block), so no ``(N, m, S)`` tensor is formed, forward or
    backward. The expansion loses a few float ulps of the largest squared term against
    forming v + w, far below the Monte-Carlo error. With many blocks of one size the cross
    term is one small product per block (``(N, k)`` by ``(k, S)``), not a spread of w."""
    sums = _BlockSums.of(membership)
    n, m, samples = v.shape[0], w.shape[0], w.shape[1]
    precision = 1.0 / scale.square()  # (m,)
    a = v * precision  # (N, m)
    rows = sums.rows(v * a)  # (N, blocks)
    cols = sums.points(w.square(), precision)  # (blocks, S)
    if sums.size is None:
        membership = sums.matrix
        spread = (w.unsqueeze(1) * membership.unsqueeze(2)).reshape(m, -1)  # (m, blocks·S)
        cross = (a @ spread).view(n, sums.count, samples)  # (N, blocks, S)
    else:
        k = sums.size  # (blocks, N, k) @ (blocks, k, S)
        cross = (a.view(n, -1, k).transpose(0, 1) @ w.view(-1, k, samples)).transpose(0, 1)
    const = sums.totals(torch.log(scale) + 0.5 * math.log(2 * math.pi))
    return -0.5 * (rows.unsqueeze(2) + cols) - cross - const


def block_log_pdf(
    prior_name: str, t: Tensor, scale: Tensor, membership: Tensor | _BlockSums
) -> Tensor:
    """Σ_{i ∈ b} log p_i(t_i) per block, ``(..., m, S)`` -> ``(..., blocks, S)``: the
    per-coordinate scales are folded into the block-sum matrix, so the full-size work is one
    elementwise pass (|t| or t²) and one (batched) matrix product (with many blocks of one
    size, :class:`_BlockSums`' reshape). ``membership``: the ``(m, blocks)`` 0/1 matrix or
    the blocks' :class:`_BlockSums`."""
    sums = _BlockSums.of(membership)
    if prior_name == "laplace":
        const = sums.totals(torch.log(2 * scale))
        return -sums.points(t.abs(), 1.0 / scale, temporary=True) - const
    const = sums.totals(torch.log(scale) + 0.5 * math.log(2 * math.pi))
    return -0.5 * sums.points(t.square(), 1.0 / scale.square(), temporary=True) - const


def inside_cell(t: Tensor, sigma: Tensor, cells: _Cells) -> Tensor:
    """Whether each block of ``t`` lies in the scaled Voronoi cell: ``(..., m, S)`` ->
    ``(..., blocks, S)`` bool (K_Λ(t) = 0 block by block), for the blocks of ``cells``. A block
    is decoded only where it lies within its lattice's
    :attr:`~qlatent.lattices.Lattice.cell_bound` of the origin: farther, it is outside without
    that (the proposal's draws mostly are, in 16 and 24 dimensions)."""
    with torch.no_grad():  # (detached: a bool has no tangent for forward mode either)
        base = t.detach().transpose(-1, -2) / sigma.detach()  # (..., S, m), base units
        flat = base.reshape(-1, base.shape[-1])
        near = cells.sums.rows(flat.square()) <= cells.reach  # (rows, blocks)
        inside = torch.zeros_like(near)
        first = 0
        for lattice, count, start in cells.geometry.runs:
            pieces = flat[:, start : start + count * lattice.dim].reshape(-1, lattice.dim)
            if recording_graph():
                # torch.export cannot size a tensor by a count of rows (nonzero): every
                # block is decoded, those out of reach stay outside (the same answer)
                hit = (lattice.closest_point(pieces) == 0).all(1)
                hit &= near[:, first : first + count].reshape(-1)
                inside[:, first : first + count] = hit.view(-1, count)
                first += count
                continue
            candidates = near[:, first : first + count].reshape(-1).nonzero().squeeze(1)
            if candidates.numel():
                k = lattice.closest_point(pieces.index_select(0, candidates))
                hit = torch.zeros(pieces.shape[0], dtype=torch.bool, device=t.device)
                hit[candidates] = (k == 0).all(1)
                inside[:, first : first + count] = hit.view(-1, count)
            first += count
        return inside.view(*base.shape[:-1], -1).transpose(-1, -2)


def log_density_bias(
    bottleneck: DitheredGoodLattice,
    v: Tensor,
    samples: tuple[int, int],
    reference: tuple[int, int] = (16384, 4096),
    *,
    repeats: int = 4,
    seed: int = 0,
    debias: bool = False,
    reference_proposal: str | None = None,
) -> dict[str, float]:
    """Bias of the Monte-Carlo ``log f̂`` at ``samples = (S_u, S_p)`` against ``reference``.

    Returns the mean over rows and ``repeats`` draws of ``log f̂_S(v) − log f̂_ref(v)`` in nats
    per row (negative: the rate is overestimated by that much), with its standard error over
    rows; ``v``: ``(N, m)`` points where the density is used (a trained model's ``y_hat``).
    ``debias`` applies the delta-method correction to the estimate at ``samples`` (the
    reference, at far larger counts, is left as it is). ``reference_proposal`` draws the
    reference's proposal points from another proposal than the bottleneck's own (e.g.
    ``"tilted"`` for a ``"box"`` bottleneck, whose own reference is itself biased in 24
    dimensions); the estimate under test always uses the bottleneck's. Under
    ``density="gaussian"`` the estimate is the bottleneck's Gaussian approximation (``samples``
    and ``debias`` unused) and the reference still the Monte-Carlo estimate: the result is the
    approximation's bias.
    """
    gen = torch.Generator().manual_seed(seed)
    own = bottleneck.proposal
    with torch.no_grad():
        with bottleneck.proposal_set_to(reference_proposal):
            ref = bottleneck.log_density(v, *reference, gen, density="monte_carlo")
        reps = [
            bottleneck.log_density(v, *samples, gen, debias=debias) - ref for _ in range(repeats)
        ]
    diff = torch.stack(reps).mean(0)
    return {
        "samples": list(samples),
        "reference_samples": list(reference),
        "reference_proposal": reference_proposal or own,
        "bias_nats": diff.mean().item(),
        "bias_se": (diff.std() / math.sqrt(diff.numel())).item() if diff.numel() > 1 else 0.0,
        "debias": debias,
    }
