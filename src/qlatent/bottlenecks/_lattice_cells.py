"""The blocks a good lattice's Monte-Carlo density estimates (:mod:`.good_lattice`), and the sums
over each block's coordinates; read by :mod:`._lattice_density`'s Functions, by
:mod:`._lattice_estimate` and :mod:`._lattice_proposals`.

- :class:`_Cells` — the blocks whose density is estimated, as the estimate reads them.
- :class:`_BlockSums` — Σ over each block's coordinates, by a product with the ``(m, blocks)`` 0/1
  matrix or, for many blocks of one size, by a reshape.
- :func:`geometry_tables` — the tables a good lattice keeps of its blocks; :func:`mc_cells`,
  :func:`membership_of`, :func:`subset_geometry` — the blocks its estimate reads from them, all
  or a subset (the bottleneck's methods ``_mc_cells``, ``_membership_of``, ``_subset_geometry``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .._utils import plain_tensors
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
