"""The sums behind the Monte-Carlo density of a good lattice (:mod:`.good_lattice`).

- :class:`_Cells` — the blocks whose density is estimated, as the estimate reads them.
- :class:`_BlockSums` — Σ over each block's coordinates, by a product with the ``(m, blocks)`` 0/1
  matrix or, for many blocks of one size, by a reshape.
- :func:`geometry_tables` — the tables a good lattice keeps of its blocks; :func:`mc_cells`,
  :func:`membership_of`, :func:`subset_geometry` — the blocks its estimate reads from them, all
  or a subset (the bottleneck's methods ``_mc_cells``, ``_membership_of``, ``_subset_geometry``).
- :class:`_LaplaceBlockSums`, :class:`_BalanceWeight`, :class:`_LogSum` — the estimate's
  full-size steps as autograd Functions with closed-form backwards (first derivatives, and
  forward mode), called through :func:`_laplace_block_sums`, :func:`_balance_weight` and
  :func:`_log_sum` by :mod:`._lattice_estimate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .._utils import (
    anchor,
    apply_function,
    first_order,
    forward_tangent,
    plain_tensors,
    recording_graph,
    save_for_first_order,
    saved_for_first_order,
    with_plain_twin,
)
from ..lattices import DirectSum, RectangularLattice

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice


class _Cells(NamedTuple):
    """The blocks whose density is estimated by Monte Carlo, as :meth:`DitheredGoodLattice.
    log_density` reads them: their coordinates and blocks among all (``None``: all of them), the
    0/1 block-sum matrix ``(m', blocks')`` (``None`` where their sums are reshapes, which do not
    read it), each coordinate's block among them, the cells' half-widths and unit-volume factors
    per coordinate, the squared bound on ‖u‖ over each block's cell ``(blocks',)`` (inf where
    unknown), and the direct sum of those blocks."""

    coords: Tensor | None
    blocks: Tensor | None
    membership: Tensor | None
    block_of: Tensor
    halfwidth: Tensor
    unit: Tensor
    reach: Tensor
    geometry: DirectSum

    @property
    def sums(self) -> _BlockSums:
        """Sums over each of these blocks' coordinates (:class:`_BlockSums`)."""
        return _BlockSums.of(self.membership, self.geometry, len(self.reach))


#: blocks beyond which a direct sum of blocks of one size sums over each block's coordinates by
#: a reshape, not by a product with the (m, blocks) 0/1 matrix, whose cost per value grows with
#: the number of blocks (E8^512 spent 42% of a training step in those products); up to it the
#: product stays, one pass, and every configured row (A2^20 has the most blocks) keeps its
#: numbers bit for bit
_RESHAPE_BLOCKS = 32


#: runs of equal blocks up to which :meth:`_BlockSums.spread_` broadcasts run by run (E8^5 has
#: one, Λ24 ⊕ Λ16 two); beyond, a block's rows are copied out to its coordinates
_SPREAD_RUNS = 4


class _BlockSums:
    """Σ over the coordinates of each block, weighted or not: over the last dimension of ``(...,
    m)`` (:meth:`rows`) or the one before the samples of ``(..., m, S)`` (:meth:`points`), to
    ``blocks`` values. A product with the ``(m, blocks)`` 0/1 matrix ``matrix``, or, with
    ``size`` (every block has that many coordinates, in order), a reshape and a sum, which needs
    no matrix (``None``; ``count`` blocks). ``runs``: where known, the blocks as ``(size, count)``
    runs of consecutive blocks of one size, in order."""

    def __init__(
        self,
        matrix: Tensor | None,
        size: int | None = None,
        count: int | None = None,
        runs: tuple[tuple[int, int], ...] | None = None,
    ):
        if matrix is None and (size is None or count is None):
            raise ValueError("block sums without a matrix need the blocks' size and count")
        self.matrix = matrix
        self.size = size
        self.count = matrix.shape[1] if matrix is not None else count
        self.runs = runs

    @staticmethod
    def reshape_size(geometry: DirectSum | None) -> int | None:
        """The blocks' common size where ``geometry`` has more than :data:`_RESHAPE_BLOCKS` of
        them, all of one size (their sums are reshapes); otherwise ``None``."""
        if geometry is None or len(geometry.blocks) <= _RESHAPE_BLOCKS:
            return None
        dims = {block.dim for block in geometry.blocks}
        return dims.pop() if len(dims) == 1 else None

    @classmethod
    def of(
        cls,
        membership: Tensor | _BlockSums | None,
        geometry: DirectSum | None = None,
        count: int | None = None,
    ) -> _BlockSums:
        """``membership`` as block sums: a :class:`_BlockSums` as it is; a matrix (or ``None``,
        with ``count``) by reshapes where ``geometry`` has more than :data:`_RESHAPE_BLOCKS`
        blocks of one size."""
        if isinstance(membership, _BlockSums):
            return membership
        runs = None if geometry is None else tuple((b.dim, n) for b, n, _ in geometry.runs)
        return cls(membership, cls.reshape_size(geometry), count, runs)

    def to(self, dtype: torch.dtype) -> _BlockSums:
        """The same sums with the matrix (if any) in ``dtype``."""
        matrix = None if self.matrix is None else self.matrix.to(dtype)
        return _BlockSums(matrix, self.size, self.count, self.runs)

    @property
    def spreads(self) -> bool:
        """Whether :meth:`spread_` can run: the runs are known and at most :data:`_SPREAD_RUNS`."""
        return self.runs is not None and len(self.runs) <= _SPREAD_RUNS

    def spread_(self, t: Tensor, g: Tensor) -> Tensor:
        """``t`` ``(..., m, S)`` times each coordinate's block's row of ``g`` ``(..., blocks, S)``,
        in place, by broadcasting over the runs of equal blocks (no copy of ``g`` out to the
        coordinates); only where :attr:`spreads`."""
        if not self.spreads:
            raise ValueError("the blocks' runs are unknown or too many to spread over")
        coord = block = 0
        for size, count in self.runs:
            part = t[..., coord : coord + size * count, :].unflatten(-2, (count, size))
            part.mul_(g[..., block : block + count, :].unsqueeze(-2))
            coord, block = coord + size * count, block + count
        return t

    def totals(self, x: Tensor) -> Tensor:
        """Σ_{i ∈ b} x_i of one value per coordinate, ``(m,)`` -> ``(blocks, 1)``."""
        if self.size is None:
            return (self.matrix.T @ x).unsqueeze(1)
        return x.reshape(-1, self.size).sum(-1, keepdim=True)

    def rows(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """Σ_{i ∈ b} weight_i·x_i, ``(..., m)`` -> ``(..., blocks)``."""
        if self.size is None:
            return x @ (self.matrix if weight is None else self.matrix * weight.unsqueeze(1))
        x = x if weight is None else x * weight
        return x.unflatten(-1, (-1, self.size)).sum(-1)

    def points(self, t: Tensor, weight: Tensor | None = None, *, temporary: bool = False) -> Tensor:
        """Σ_{i ∈ b} weight_i·t_is, ``(..., m, S)`` -> ``(..., blocks, S)``. ``temporary``: ``t``
        is the caller's scratch, which the reshape may weight in place where autograd does not
        record it (grad disabled, as in an autograd Function's forward, or nothing requiring it):
        a full-size buffer fewer."""
        if self.size is None:
            matrix = self.matrix if weight is None else self.matrix * weight.unsqueeze(1)
            return matrix.T @ t
        if weight is not None:
            recorded = torch.is_grad_enabled() and (t.requires_grad or weight.requires_grad)
            scratch = temporary and not recorded
            t = t.mul_(weight.unsqueeze(1)) if scratch else t * weight.unsqueeze(1)
        return t.unflatten(-2, (-1, self.size)).sum(-2)


#: entries up to which the (m, blocks) membership matrix is kept when the Monte Carlo does not
#: need it whole (16 MiB of float32: every good lattice of up to 2048 coordinates keeps it)
_DENSE_MEMBERSHIP = 1 << 22


class _Tables(NamedTuple):
    """The tables of a good lattice's geometry (:func:`geometry_tables`), float32 or int64/bool:
    per coordinate the unit-volume factor, block, half-width, and whether its density has a
    closed form; per block its dimension and squared cell bound; the blocks and coordinates
    estimated by Monte Carlo, the direct sum of those blocks (``None``: none), and the
    ``(m, blocks)`` 0/1 membership matrix (``None`` where it is not kept)."""

    unit: Tensor
    block_of: Tensor
    block_dims: Tensor
    halfwidth: Tensor
    reach: Tensor
    exact: Tensor
    mc_blocks: Tensor
    mc_coords: Tensor
    mc_geometry: DirectSum | None
    membership: Tensor | None


def geometry_tables(geometry: DirectSum, dim: int, exact_rectangular: bool) -> _Tables:
    """The tables :class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice` keeps of
    ``geometry`` of ``dim`` coordinates; with ``exact_rectangular`` its rectangular blocks take
    their closed form."""
    blocks = geometry.blocks
    sizes = torch.tensor([b.dim for b in blocks])
    # unit-volume normalization of each block: c_b = V_b^{-1/n_b}
    unit = torch.stack([(-b.log_volume / b.dim).exp() for b in blocks]).to(torch.float32)
    block_of = torch.arange(len(blocks)).repeat_interleave(sizes)
    halfwidth = torch.cat([torch.as_tensor(b.cell_halfwidth).expand(b.dim) for b in blocks])
    # a point of a block farther than this from the origin is outside its cell (1e-4 of
    # slack for the decoder's rounding): the proposal draws that far are not decoded
    bounds = [b.cell_bound for b in blocks]
    reach = [math.inf if r is None else (r * (1 + 1e-4)) ** 2 for r in bounds]
    # float32 as every table, whatever the caller's default dtype: one built under
    # torch.set_default_dtype(torch.float64) is the one built in float32
    reach = torch.tensor(reach, dtype=torch.float32)
    exact = torch.tensor([exact_rectangular and isinstance(b, RectangularLattice) for b in blocks])
    exact_coords = exact.repeat_interleave(sizes)
    mc_blocks = (~exact).nonzero().flatten()
    mc_coords = (~exact_coords).nonzero().flatten()
    estimated = [b for b, e in zip(blocks, exact.tolist(), strict=True) if not e]
    every = len(estimated) == len(blocks)
    mc_geometry = geometry if every else DirectSum(estimated) if estimated else None
    # the (m, blocks) 0/1 matrix of per-block sums, where it is small or the Monte Carlo
    # sums over all blocks by products with it; otherwise block sums are index_add's or
    # reshapes (Z^16384's matrix would take 1 GiB, E8^2048's 128 MiB)
    products = every and _BlockSums.reshape_size(geometry) is None
    if products or dim * len(blocks) <= _DENSE_MEMBERSHIP:
        membership = torch.zeros(dim, len(blocks), dtype=torch.float32)
        membership[torch.arange(dim), block_of] = 1.0
    else:
        membership = None
    return _Tables(
        unit.repeat_interleave(sizes),
        block_of,
        sizes.to(torch.float32),
        halfwidth.to(torch.float32),
        reach,
        exact_coords,
        mc_blocks,
        mc_coords,
        mc_geometry,
        membership,
    )


def mc_cells(neck: DitheredGoodLattice, dtype, subset: tuple[int, ...] | None = None) -> _Cells:
    """The blocks :meth:`~.good_lattice.DitheredGoodLattice.log_density` estimates by Monte
    Carlo (all but the rectangular), or the ``subset`` of them at those positions among them."""
    if subset is not None:
        every = torch.arange(len(neck.geometry.blocks), device=neck._block_of.device)
        estimated = every if neck._mc_geometry is neck.geometry else neck._mc_blocks
        blocks = estimated[list(subset)]
        coords = torch.isin(neck._block_of, blocks).nonzero().flatten()
        geometry = neck._subset_geometry(tuple(blocks.tolist()))
        membership, block_of = neck._membership_of(coords, blocks, geometry)
        return _Cells(
            coords,
            blocks,
            None if membership is None else membership.to(dtype),
            block_of,
            neck._halfwidth[coords].to(dtype),
            neck._unit[coords],
            neck._reach[blocks].to(dtype),
            geometry,
        )
    if neck._mc_geometry is neck.geometry:
        coords = blocks = None
        membership, block_of = neck._membership, neck._block_of
        if _BlockSums.reshape_size(neck.geometry) is not None:
            membership = None  # reshapes: not copied to dtype on every call
        halfwidth, unit, reach = neck._halfwidth, neck._unit, neck._reach
    else:
        coords, blocks = neck._mc_coords, neck._mc_blocks
        membership, block_of = neck._membership_of(coords, blocks, neck._mc_geometry)
        halfwidth, unit = neck._halfwidth[coords], neck._unit[coords]
        reach = neck._reach[blocks]
    return _Cells(
        coords,
        blocks,
        None if membership is None else membership.to(dtype),
        block_of,
        halfwidth.to(dtype),
        unit,
        reach.to(dtype),
        neck._mc_geometry,
    )


def membership_of(
    neck: DitheredGoodLattice, coords: Tensor, blocks: Tensor, geometry: DirectSum
) -> tuple[Tensor | None, Tensor]:
    """``(len(coords), len(blocks))`` float32: 1 where coordinate ``coords[i]`` lies in block
    ``blocks[j]`` (the rows and columns of the full membership matrix, without forming it),
    or ``None`` where ``geometry``, the direct sum of those blocks, sums by reshapes; and
    each coordinate's position among ``blocks`` (ascending, as all callers give them)."""
    owner = neck._block_of[coords]
    block_of = torch.searchsorted(blocks, owner)
    if _BlockSums.reshape_size(geometry) is not None:
        return None, block_of
    return (owner.unsqueeze(1) == blocks).to(torch.float32), block_of


def subset_geometry(neck: DitheredGoodLattice, blocks: tuple[int, ...]) -> DirectSum:
    """The direct sum of the blocks at these positions (cached: its runs decode together)."""
    cache = neck.__dict__.setdefault("_subset_geometries", {})
    if blocks not in cache:
        with plain_tensors():
            cache[blocks] = DirectSum([neck.geometry.blocks[b] for b in blocks])
    return cache[blocks]


@with_plain_twin
class _LaplaceBlockSums(torch.autograd.Function):
    """Σ_{i ∈ b} c_i·|v_ni + w_is| per block: ``v`` ``(N, m)``, ``w`` ``(m, S)``, ``c`` ``(m,)``
    (the inverse prior scales), ``sums`` the blocks' :class:`_BlockSums` (or their ``(m,
    blocks)`` 0/1 matrix), ``block_of`` ``(m,)`` each coordinate's block -> ``(N, blocks, S)``.
    ``scratch``: optional, at least ``(N, m, S)``, where v + w is formed when no input needs a
    gradient (its contents are overwritten).

    The backward, with t = v + w, G the upstream gradient ``(N, blocks, S)`` and H its rows
    copied out to the coordinates, H_nis = G_{n,b(i),s}·sgn(t_nis):

        ∂/∂v_ni = c_i Σ_s H_nis,   ∂/∂w_is = c_i Σ_n H_nis,   ∂/∂c_i = Σ_{n,s} H_nis·t_nis

    (H·t = G·|t|): a row gather, two elementwise passes and three reductions, where autograd
    went through the broadcast sum, |t| and a block-sum product whose inner dimension is the
    number of blocks (slow for both 2 and 19 blocks). First derivatives only; forward mode
    (``jvp``) as Σ_{i ∈ b} c_i·sgn(t_nis)·(v̇_ni + ẇ_is) + ċ_i·|t_nis|.
    """

    outputs = 1  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(
        v: Tensor,
        w: Tensor,
        c: Tensor,
        sums: _BlockSums | Tensor,
        block_of: Tensor,
        scratch: Tensor | None,
        derivatives: bool,
    ):
        sums = _BlockSums.of(sums)
        if derivatives:  # an input of the first three needs a gradient: t = v + w is kept
            t = v.unsqueeze(2) + w
            return sums.points(t.abs(), c, temporary=True), t, anchor(v)
        # nothing to differentiate (the hard path, IWAE): |t| in place, in ``scratch``
        out = None if scratch is None else scratch[: v.shape[0]]
        t = torch.add(v.unsqueeze(2), w, out=out).abs_()
        return sums.points(t, c, temporary=True), None, anchor(v)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, _, c, sums, block_of, _, _ = inputs
        _, t, kept = output
        save_for_first_order(ctx, kept, (t, c, block_of), (t,), (*inputs[:3], block_of))
        ctx.sums = _BlockSums.of(sums)

    @staticmethod
    @first_order
    def backward(ctx, grad: Tensor, *_):
        t, c, block_of = saved_for_first_order(ctx)
        # H = G_b(i)·sgn(t): the signs' buffer weighted in place run by run, where the runs are
        # known, rather than G copied out to the coordinates and a second full-size buffer
        if ctx.sums.spreads:
            h = ctx.sums.spread_(t.sgn(), grad)
        else:
            h = grad.index_select(1, block_of).mul_(t.sgn())
        grad_v = h.sum(2).mul_(c) if ctx.needs_input_grad[0] else None
        grad_w = h.sum(0).mul_(c.unsqueeze(1)) if ctx.needs_input_grad[1] else None
        grad_c = h.mul_(t).sum((0, 2)) if ctx.needs_input_grad[2] else None
        return grad_v, grad_w, grad_c, None, None, None, None

    @staticmethod
    def jvp(ctx, t_v, t_w, t_c, *_):
        v, w, c, block_of = ctx.saved_tensors
        t = v.unsqueeze(2) + w
        moved = forward_tangent((torch.ones_like(t), _unsqueeze(t_v, 2)), (torch.ones_like(t), t_w))
        terms = forward_tangent((t.sgn() * c.unsqueeze(1), moved), (t.abs(), _unsqueeze(t_c, 1)))
        # summed by block through the saved ``block_of``: the block sums' matrix is no saved
        # tensor, and under nested transforms it may belong to another level than this one's
        blocks = t.new_zeros(t.shape[0], ctx.sums.count, t.shape[2])
        return blocks.index_add(1, block_of, terms), None, anchor(v)


def _unsqueeze(t: Tensor | None, dim: int) -> Tensor | None:
    return None if t is None else t.unsqueeze(dim)


def _laplace_block_sums(
    v: Tensor,
    w: Tensor,
    c: Tensor,
    sums: _BlockSums | Tensor,
    block_of: Tensor,
    scratch: Tensor | None = None,
) -> Tensor:
    """:class:`_LaplaceBlockSums` of these arguments, ``(N, blocks, S)``."""
    derivatives = v.requires_grad or w.requires_grad or c.requires_grad
    return apply_function(_LaplaceBlockSums, v, w, c, sums, block_of, scratch, derivatives)[0]


@with_plain_twin
class _BalanceWeight(torch.autograd.Function):
    """The balance heuristic's log-term of one point, log p − log(S_u/V + S_q·q), from
    ``log_p`` ``(N, blocks, S)``, ``log_uniform`` = log(S_u/V) ``(blocks, 1)``, ``log_q0``
    ``(N, blocks, S)`` (the proposal's log-density, without gradient in the density) and ``shift`` =
    log S_q − log|D| ``(blocks, 1)`` -> ``(N, blocks, S)``, with a closed-form backward.

    With d = log_q0 + shift − log_uniform, the term is log p − log_uniform − log(1 + e^d), so

        ∂/∂log p = 1,   ∂/∂log_uniform = −σ(−d),   ∂/∂shift = −σ(d)

    and the two per-block gradients are sums over rows and points of G·σ(d) and of G: one
    ``sigmoid`` and one reduction in the backward, where autograd through ``logaddexp``, the
    shift's broadcast sum and the difference formed two exponentials, a negation and three
    reductions over the full size. Forward mode (``jvp``) from the same three derivatives.
    """

    outputs = 1  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(log_p: Tensor, log_uniform: Tensor, log_q0: Tensor, shift: Tensor):
        d = log_q0 + (shift - log_uniform)
        # log(1 + e^d) as log1p(exp(d)), d clamped to where e^d is a normal number: below, e^d
        # counts as the smallest (exp leaves its vectorized path for smaller results, many
        # times slower on them); above, log(1 + e^d) = d to the rounding. Timed apart on a
        # trained E8^5 model's terms, 40% of them below the range, in half the time of
        # ``logaddexp(d, 0)``
        info = torch.finfo(d.dtype)
        low, high = math.log(info.tiny) + 1.0, math.log(info.max) - 1.0
        softplus = d.clamp(min=low, max=high).exp_().log1p_()
        # (always under torch.export, which cannot branch on a value: it adds zeros there)
        if d.numel() and (recording_graph() or bool(d.amax() > high)):
            softplus.add_((d - high).clamp_(min=0.0))
        return torch.sub(log_p, softplus).sub_(log_uniform), d, anchor(d)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, log_uniform, _, shift = inputs
        _, d, kept = output
        save_for_first_order(ctx, kept, (d,), (d,), (d,))
        ctx.shapes = log_uniform.shape, shift.shape

    @staticmethod
    @first_order
    def backward(ctx, grad: Tensor, *_):
        (d,) = saved_for_first_order(ctx)
        uniform_shape, shift_shape = ctx.shapes
        grad_uniform = grad_q0 = grad_shift = None
        if any(ctx.needs_input_grad[1:]):
            q_part = torch.sigmoid(d).mul_(grad)  # G·σ(d)
            if ctx.needs_input_grad[1]:
                grad_uniform = q_part.sum_to_size(uniform_shape) - grad.sum_to_size(uniform_shape)
            if ctx.needs_input_grad[3]:
                grad_shift = -q_part.sum_to_size(shift_shape)
            if ctx.needs_input_grad[2]:  # not in the density, whose proposal has no gradient
                grad_q0 = q_part.neg_()
        return grad, grad_uniform, grad_q0, grad_shift

    @staticmethod
    def jvp(ctx, t_log_p, t_uniform, t_q0, t_shift):
        (d,) = ctx.saved_tensors
        q_part = torch.sigmoid(d)
        tangent = forward_tangent(
            (torch.ones_like(d), t_log_p),
            (q_part - 1.0, t_uniform),
            (-q_part, t_q0),
            (-q_part, t_shift),
        )
        return tangent, None, anchor(d)


def _balance_weight(log_p: Tensor, log_uniform: Tensor, log_q0: Tensor, shift: Tensor) -> Tensor:
    """:class:`_BalanceWeight` of these arguments, ``(N, blocks, S)``."""
    return apply_function(_BalanceWeight, log_p, log_uniform, log_q0, shift)[0]


@with_plain_twin
class _LogSum(torch.autograd.Function):
    """log P̂ = log Σ_k exp(t_k) over the last dim of ``terms`` ``(N, blocks, samples + draws)``
    -> ``(N, blocks)``, plus, with ``debias``, the delta-method correction ½·V̂ar(P̂)/P̂², the
    variance estimated from the terms themselves: the first ``samples`` come from antithetic cell
    points (point k and k + samples/2 are a pair w, −w, so a pair's sum is one independent unit),
    the rest from independent proposal draws (one unit each). A closed-form backward.

    With ω_k = exp(t_k − log P̂) and the units a_j of each group (pair sums; single draws), the
    correction is V = Σ_groups n/(n − 1)·Σ_j (a_j − ā)². Since ∂V/∂ω_k = g_k =
    2n/(n − 1)·(a_j(k) − ā) and ∂ω_k/∂t_l = ω_k(δ_kl − ω_l),

        ∂(log P̂ + V/2)/∂t_l = ω_l·(1 + g_l/2 − Σ_k g_k ω_k / 2) = ω_l·(1 + g_l/2 − V)

    (Σ_k g_k ω_k = Σ_j g_j a_j = 2V, the centred units summing to zero). The forward forms the
    exponentials once, for the sum and for ω; the backward is two elementwise passes over ω,
    where autograd through ``logsumexp`` and the variance took about eight, each with its own
    ``exp`` or temporary. log P̂ is ``torch.logsumexp``'s own formula (the maximum, the sum of
    exp(t − max), its log plus the maximum) but for terms more than about 63 (float32) or 684
    (float64) nats below the largest, which count as that far below it: their share of the sum
    is below the rounding of its largest term, and their ω, which is below it too, is kept
    above the smallest normal number. Forward mode (``jvp``): Σ_l of the backward's factor of
    t_l times ṫ_l.
    """

    outputs = 1  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(terms: Tensor, samples: int, debias: bool):
        peak = terms.amax(2, keepdim=True)
        empty = peak == -math.inf  # every term −inf: P̂ = 0, log P̂ = −inf and ω = 0
        peak = torch.where(torch.isfinite(peak), peak, 0.0)
        # exp(t − max) no lower than e^floor: ``exp`` leaves its vectorized path for results
        # below the dtype's smallest normal number (many times slower on them), and
        # terms that far below the largest change no sum (K·e^floor ≪ the rounding of 1).
        # float16's smallest normal number is too large for that (24 nats above it is above
        # the largest term: every term counted as the largest, and every rate was 0), so
        # there the floor is 24 nats below its rounding of 1, where exp gives 0
        info = torch.finfo(terms.dtype)
        floor = min(math.log(info.tiny) + 24.0, math.log(info.eps) - 24.0)
        omega = torch.sub(terms, peak).clamp_(min=floor).exp_()
        total = omega.sum(2, keepdim=True)
        log_sum = total.log().add_(peak).squeeze(2)
        omega.div_(total)
        if recording_graph() or bool(empty.any()):  # (export: no value to branch on)
            log_sum.masked_fill_(empty.squeeze(2), -math.inf)
            omega.masked_fill_(empty, 0.0)
        slopes = []
        if debias:
            half = samples // 2
            variance, pair_slope = _group_slopes(omega[..., :half] + omega[..., half:samples])
            slopes.append(pair_slope)
            if terms.shape[2] > samples:
                draw_variance, draw_slope = _group_slopes(omega[..., samples:])
                variance = variance + draw_variance
                slopes.append(draw_slope)
            log_sum = log_sum + 0.5 * variance
            return log_sum, omega, variance, *slopes, anchor(terms)
        return log_sum, omega, anchor(terms)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, *factors, kept = output  # ω, and with debias the variance and the groups' slopes
        save_for_first_order(ctx, kept, factors, factors, factors)
        ctx.samples = inputs[1]

    @staticmethod
    @first_order
    def backward(ctx, grad: Tensor, *_):
        return _LogSum.gradient(saved_for_first_order(ctx), ctx.samples, grad), None, None

    @staticmethod
    def jvp(ctx, t_terms, *_):
        omega = ctx.saved_tensors[0]
        ones = omega.new_ones(omega.shape[:2])
        tangent = (_LogSum.gradient(ctx.saved_tensors, ctx.samples, ones) * t_terms).sum(2)
        return tangent, *(None,) * len(ctx.saved_tensors), anchor(omega)

    @staticmethod
    def gradient(saved: Sequence[Tensor], samples: int, grad: Tensor) -> Tensor:
        """∂L/∂terms ``(N, blocks, K)`` from the saved factors and ``grad`` = ∂L/∂log P̂
        ``(N, blocks)``."""
        omega, *rest = saved
        grad = grad.unsqueeze(2)
        if not rest:
            return omega * grad
        variance, pair_slope, *draw_slope = rest
        out = omega * (grad * (1.0 - variance.unsqueeze(2)))
        half_grad = 0.5 * grad
        half = samples // 2
        weight = pair_slope * half_grad  # one factor for both points of a pair
        out[..., :half].addcmul_(omega[..., :half], weight)
        out[..., half:samples].addcmul_(omega[..., half:samples], weight)
        if draw_slope:
            out[..., samples:].addcmul_(omega[..., samples:], draw_slope[0] * half_grad)
        return out


def _log_sum(terms: Tensor, samples: int, debias: bool) -> Tensor:
    """:class:`_LogSum` of these arguments: log P̂ ``(N, blocks)``."""
    return apply_function(_LogSum, terms, samples, debias)[0]


def _group_slopes(units: Tensor) -> tuple[Tensor, Tensor]:
    """The unbiased estimate n/(n − 1)·Σ_j (a_j − ā)² of the variance of the sum of the n units
    of ``units`` ``(N, blocks, n)``, over the last dim, and its derivative with respect to each
    unit, 2n/(n − 1)·(a_j − ā) ``(N, blocks, n)`` (zeros when n < 2: a group of one unit adds 0)."""
    n = units.shape[2]
    if n < 2:
        return units.new_zeros(units.shape[:2]), torch.zeros_like(units)
    centred = units - units.mean(2, keepdim=True)
    variance = centred.square().sum(2) * (n / (n - 1))
    return variance, centred.mul_(2 * n / (n - 1))
