"""Dithered quantization with a good lattice (A_n, D_n, D_n*, E8, Λ16, Λ24 and direct sums).

Paper: L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), sections 2-4 and eq.
(12): a rectangular cell wastes ½·log(2πe·G(Z)) ≈ 0.1765 nats per dimension against an ideal
high-dimensional lattice; good lattices close part of that gap. Same two paths as the rectangular
bottleneck (``qlatent.bottlenecks.lattice``), on a direct sum of scaled blocks s_b·Λ_b:

    training                                   hard path
    y ──(−u)── y_hat = y − u                   y ──(+u)── K_Λ ── z ──(−u)── y_hat = z − u
       u ~ Unif(Voronoi cell P0)                                  │ indices: z's coordinates
    rate = log f_U(u) − log f̂_{X̂−U}(y_hat)    rate = −log V − log f̂_{X̂−U}(y_hat)

Theorem 1's density f_{X̂−U}(v) = E_{w ~ Unif(P0)} f_X̂(v + w) has no closed form for a
non-rectangular cell. With a prior that factorizes over coordinates it factorizes over blocks, and
each block's factor is estimated by Monte Carlo over ``samples`` Voronoi-cell points (antithetic
pairs w, −w, shared by the rows of a call):

    f̂_b(v) = (1/S) Σ_s Π_{i ∈ b} f_i(v_i + w_{s,i})       (unbiased for f_b(v))

A rectangular block (Z in E8^3 ⊕ Z^16) needs no estimate: its cell is a box and its factor is
Π_i [F_i(v_i + σ_i/2) − F_i(v_i − σ_i/2)]/σ_i, computed exactly (no bias, no Monte-Carlo cost).

The log of an unbiased estimate is biased low by about Var/(2S·f²) per block (Jensen), so the
rate is biased high by O(1/S); :func:`log_density_bias` measures it against a large-S reference,
and ``debias=True`` removes its leading term (the delta method: + V̂ar(P̂)/(2P̂²) per block).
The estimate is capped at the largest value the density can take, 1/V (a probability ≤ 1), which
keeps the rate ≥ 0 and only moves the estimate toward the truth.

``density="gaussian"`` replaces the estimate by the cheaper, biased approximation of DESIGN.md
§3.1, X̂ − U ≈ N(0, σ²_X̂ + σ²_Λ) per coordinate, in closed form (no Monte-Carlo points; its
bias is stated with the argument).

Shapes: input ``(B, m)`` or ``(B, m, *spatial)``; ``indices`` int64 lattice coordinates, same
shape; ``rate`` ``(B,)`` nats. The dither and the Monte-Carlo points are common randomness drawn
from the counter-based generator (``qlatent.rng``) with keys from the ``generator`` handed in.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from .._utils import (
    anchor,
    apply_function,
    autocast_off,
    check_finite,
    first_order,
    forward_tangent,
    plain_tensors,
    recording_graph,
    save_for_first_order,
    saved_for_first_order,
    shown_compile,
    shown_setting,
    with_plain_twin,
)
from ..lattices import LITERATURE_NSM, DirectSum, RectangularLattice, tile
from ..priors import gaussian_cell_log_prob, laplace_cell_log_prob
from ..rng import counter_uniform, draw_key
from .base import Bottleneck, BottleneckOutput, Fixed, Setting, check_flag
from .lattice import DITHER_UNRECORDABLE, DITHER_UNTRACEABLE, _check_flags, _positive_log

#: the cell width w of the coset code model of Λ16 and Λ24, in their integer coordinates
#: (:class:`qlatent.coding.models._GluedBlock`): the widths that gave the shortest files on the
#: first 200 and 300 training images of the Table-1 Λ24 ⊕ Λ16 model, among 1.0–2.0 (Λ16) and
#: 1.6–2.4 (Λ24); a first look at 200 test images (Λ24, 1.0–4.0) pointed the same way
CODE_CELL_WIDTH = {"BW16": 1.25, "Leech": 2.0}

#: the tilted proposal's Gaussian width in units of the cell's size √(V^{2/n}/12) per coordinate
_TILT = 1.0

#: G(Λ) of the blocks without a literature value, by name, estimated once per process
_ESTIMATED_NSM: dict[str, float] = {}

#: elements of the (rows, samples, m) tensor evaluated at once in the density estimate
_DENSITY_CHUNK = 1 << 22


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


def monte_carlo_counts(text: str) -> tuple[int, int | tuple[int, ...]]:
    """``"S_u,S_q"`` (cell points, proposal draws, as given on a command line) -> ``(S_u, S_q)``,
    or ``"S_u,S_q1:S_q2:..."`` (one draw count per block, as ``prior_samples=[...]``) ->
    ``(S_u, (S_q1, S_q2, ...))``; an ``argparse`` type: ``argparse.ArgumentTypeError``
    (argparse prints its message) unless S_u is even and >= 2 (antithetic pairs) and every
    S_q >= 0."""
    cells, sep, draws = str(text).partition(",")
    try:
        count = int(cells)
        per_block = tuple(int(d) for d in draws.split(":")) if sep else ()
    except ValueError:
        per_block = ()
    if not per_block:
        raise argparse.ArgumentTypeError(
            f"expected S_u,S_q or S_u,S_q1:S_q2 (integers), got {text!r}"
        )
    if count < 2 or count % 2 or min(per_block) < 0:
        raise argparse.ArgumentTypeError(f"S_u must be even and >= 2, S_q >= 0, got {text!r}")
    return count, per_block[0] if len(per_block) == 1 else per_block


def counts_text(counts: tuple[int, int | tuple[int, ...]]) -> str:
    """The command-line form of :func:`monte_carlo_counts`' pair, ``"S_u,S_q"`` or
    ``"S_u,S_q1:S_q2"``."""
    cells, draws = counts
    return f"{cells},{':'.join(map(str, draws)) if isinstance(draws, tuple) else draws}"


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


def check_block_counts(pairs: Sequence[tuple[int, int | tuple[int, ...]]], blocks: int) -> None:
    """ValueError unless every pair of :func:`monte_carlo_counts` that gives one draw count per
    block gives ``blocks`` of them."""
    for pair in pairs:
        if isinstance(pair[1], tuple) and len(pair[1]) != blocks:
            raise ValueError(f"counts {counts_text(pair)} name {len(pair[1])} blocks, not {blocks}")


#: the most numbers (count · dim) one row's Monte-Carlo estimate may form per kind of draw.
#: One row is the smallest chunk of :meth:`DitheredGoodLattice.log_density`, and its
#: temporaries came to about 19 bytes per number: one row at this limit peaked at 2.6 GB (E8)
#: and 2.7 GB (Λ24), both kinds of draw at the limit, no gradient; at the generator's limit
#: (below), the only one before, it would be tens of GB
ROW_NUMBERS = 1 << 26


def _count_limit(dim: int) -> int:
    """The largest Monte-Carlo count per row: one row's draws (up to 2·dim numbers each, the
    tilted proposal's) must fit the 2^31 counters of one key of :func:`counter_uniform`, and
    the row's estimate at most :data:`ROW_NUMBERS` numbers per kind of draw."""
    return min((2**31 - 1) // (2 * dim), ROW_NUMBERS // dim)


def _sample_count(value, name: str, dim: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer >= 2 (antithetic pairs), got {value!r}")
    return _within_limit(value, name, dim)


def _count(value, name: str, dim: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return _within_limit(value, name, dim)


def _within_limit(value: int, name: str, dim: int) -> int:
    if value > _count_limit(dim):
        raise ValueError(
            f"{name} = {value} is more draws per row than one row's estimate may hold at dim "
            f"{dim}: at most {_count_limit(dim):,} ({ROW_NUMBERS:,} numbers, and within a key "
            "of the counter-based generator)"
        )
    return value


def _draw_counts(value, name: str, blocks: int, dim: int) -> int | tuple[int, ...]:
    """A proposal-draw count: one non-negative integer for every block, or one per block."""
    if isinstance(value, (list, tuple)):
        if len(value) != blocks:
            raise ValueError(f"{name} gives {len(value)} counts for {blocks} blocks: {value!r}")
        counts = tuple(_count(v, name, dim) for v in value)
        return counts[0] if len(set(counts)) == 1 else counts
    return _count(value, name, dim)


#: the most coordinates a good-lattice bottleneck takes: its tables (the coordinates' blocks and,
#: where it is small or the Monte Carlo needs it, a (dim, blocks) matrix) are built from values,
#: also while a model is sized on the meta device
MAX_DIM = 1 << 14
#: entries up to which the (m, blocks) membership matrix is kept when the Monte Carlo does not
#: need it whole (16 MiB of float32: every good lattice of up to 2048 coordinates keeps it)
_DENSE_MEMBERSHIP = 1 << 22


@contextmanager
def _values_off_meta() -> Iterator[None]:
    """The CPU as the default device where the meta device is (tables built from values)."""
    if torch.get_default_device().type != "meta":
        yield
        return
    with torch.device("cpu"):
        yield


class DitheredGoodLattice(Bottleneck):
    """Dithered lattice quantizer on a direct sum of good lattices, Monte-Carlo Theorem-1 rate.

    Built by ``build("lattice", dim=40, lattice="e8")`` (E8^5) or ``lattice=["leech", "bw16"]``
    (Λ24 ⊕ Λ16); names as in :func:`qlatent.lattices.tile`.

    Args:
        dim: code dimension m.
        lattice: one block name repeated to fill ``dim``, or a list of block names.
        prior: distribution of X̂, factorized over coordinates: ``"laplace"`` (scale b_i) or
            ``"gaussian"`` (standard deviation b_i).
        init_spacing: initial cell size of every block, as V_b^{1/n_b} (the analogue of Δ: each
            block is scaled to this volume per dimension).
        spacing_per: ``"block"`` (one learnable scale per block: the lattice s_b·Λ_b) or
            ``"coordinate"`` (one per coordinate: the lattice diag(s)·Λ, whose cell is the base
            cell stretched along the axes). A scale per coordinate lets a single coordinate be
            switched off as the rectangular lattice does (its cell grows along that axis while
            the prior there shrinks) at the price of a stretched, less round cell. (In the
            Table-1 runs training did not use that freedom: the scales stayed within 0.78–1.54
            and the rows ended as the block-scaled ones; docs/good-lattices-in-table-1.md,
            "A scale per coordinate".)
        init_scale: initial prior scale b_i.
        scale_per: ``"coordinate"`` (one learnable prior scale b_i per coordinate) or
            ``"block"`` (one per block, shared by its coordinates: a block's prior is then
            isotropic, so the model can switch off a whole block but not one coordinate inside
            it; a one-dimensional block such as Z keeps a scale of its own either way).
        learn_spacing / learn_scale: whether the block scales / prior scales are trained
            (log-parametrized).
        samples: Monte-Carlo points uniform on the cell for the training-path rate (even:
            antithetic pairs).
        prior_samples: draws of X̂ for the same estimate (multiple importance sampling; each
            costs a closest-point decode per row of each block it lands within that block's
            cell bound of, :attr:`qlatent.lattices.Lattice.cell_bound`; farther, it is outside);
            one count for every block, or a list with one per block (e.g. ``[32, 1024]`` for Λ24
            ⊕ Λ16: a block whose cell the draws rarely hit can take many where the Leech block's
            decodes stay few; each block's estimate uses its own first draws).
        eval_samples / eval_prior_samples: the same two counts for the hard path and for
            :meth:`log_prior` (IWAE).
        proposal: where the second kind of points comes from: ``"prior"``, X̂ itself (shared by
            the rows of a call); ``"box"``, X̂ restricted to the cell's bounding box around
            each row's v (drawn per row; Laplace prior only), which puts more of them in the
            cell when the prior is comparable to the cell; or ``"tilted"``, X̂ tilted by a
            Gaussian around v with the cell's size (drawn per row; either prior), whose draws
            land in the cell far more often than the box's or the prior's in 16 and 24
            dimensions.
        debias: add the delta-method correction V̂ar(P̂)/(2P̂²) to each block's log-density in the
            rates of both paths (:meth:`log_density`), which takes the log's Jensen bias from
            O(1/S) to O(1/S²) at the cost of one more pass over the Monte-Carlo terms. IWAE
            (:meth:`log_prior`) keeps the uncorrected, unbiased density.
        density: the density f_{X̂−U} of the non-rectangular blocks in the rates of both paths
            and in :meth:`log_prior`: ``"monte_carlo"`` (the estimate above) or ``"gaussian"``,
            the cheap approximation X̂ − U ≈ N(0, σ²_X̂ + σ²_Λ) per coordinate (DESIGN.md §3.1;
            :meth:`_gaussian_log_density`): the prior's variance plus the scaled cell's second
            moment, in closed form, with no Monte-Carlo points drawn (the four counts,
            ``proposal`` and ``debias`` then go unused). Rectangular blocks keep their exact
            closed form. The approximation is biased: with it the rate is no longer Theorem 1's
            exact expectation, and the IWAE value is no bound on the true model's log p(x).
            Measured bias (``examples/gaussian-density-bias.py``: dim 40, unit cell size, every
            prior scale b, v = the training path's y_hat of y drawn from the prior, 100 rows,
            against a (8192, 1024) tilted, debiased Monte-Carlo reference), the mean of
            log f̃ − log f̂ in nats per coordinate at b = 0.1 / 0.3 / 1 / 3 / 10 cell sizes:
            E8^5, Laplace prior −0.015 / −0.019 / −0.058 / −0.069 / −0.071; Gaussian prior
            −0.032 / −0.001 / 0.000 / 0.000 / 0.000; Λ24 ⊕ Λ16, Laplace −0.005 / −0.020 /
            −0.060 / −0.070 / −0.071; Gaussian −0.013 / 0.000 / 0.000 / 0.000 / 0.000 (s.e.
            up to 0.007 per coordinate, the Laplace rows' largest). Negative: the rate is higher
            by that much: about 2.8 nats per 40-dimensional row under a Laplace prior wider than
            the cell, where the Gaussian misses the prior's own shape (−½·log(π/e) per
            coordinate). Close for a Gaussian prior at least ~0.3 cells wide, then; not for the
            Laplace prior of the Table-1 models.
        compile: decode the Leech and E8 blocks with their decoders fused by ``torch.compile``
            (:class:`qlatent.lattices.LeechLattice`, :class:`qlatent.lattices.GossetLattice`):
            compiled on first use, then about 2.5× (Leech) and 5× (E8) as fast; the other blocks
            are unchanged.
        exact_rectangular: give rectangular blocks (Z) their closed-form density instead of the
            Monte-Carlo estimate (``False``: estimate every block alike, as the recorded E8^3 ⊕
            Z^16 rows were trained; the estimator's own checks against the closed form use it).

    The bias of the log-density estimate at given counts is measured by
    :func:`log_density_bias`; report it with any result. The Monte-Carlo settings (the four
    counts, ``proposal``, ``debias``) and ``density`` may be changed after construction; each
    assignment is checked as the constructor checks it. None of them changes the dither, the
    hard path's points, the code model or the files.
    """

    LOG_PARAMETERS = ("log_spacing", "log_scale")

    samples = Setting("_check_samples")
    eval_samples = Setting("_check_samples")
    prior_samples = Setting("_check_draw_counts")
    eval_prior_samples = Setting("_check_draw_counts")
    proposal = Setting("_check_proposal")
    debias = Setting(check_flag)
    density = Setting("_check_density")
    # the blocks, their decoders and the parameters' shapes are built from these
    lattice_spec = Fixed("lattice")
    prior_name = Fixed("prior")
    spacing_per = Fixed()
    scale_per = Fixed()
    exact_rectangular = Fixed()
    compile = Fixed()
    # the rate's estimate of a rectangular block (closed form or Monte Carlo) leaves the
    # weights' meaning alone: weights move between the two
    _FREE_OF_WEIGHTS = frozenset({"compile", "exact_rectangular"})
    # the rates' Monte-Carlo estimates (training path, hard path, IWAE) read these; the hard
    # path's dither is drawn before them and its points, the code model and the files do not
    _FREE_OF_CODE = {
        "samples": 128,
        "prior_samples": 32,
        "eval_samples": 1024,
        "eval_prior_samples": 64,
        "proposal": "prior",
        "debias": False,
        "density": "monte_carlo",
        "exact_rectangular": True,
    }
    _UNTRACEABLE = {"training": DITHER_UNTRACEABLE, "eval": DITHER_UNTRACEABLE}
    _UNRECORDABLE = DITHER_UNRECORDABLE

    def __init__(
        self,
        *,
        dim: int,
        lattice: str | Sequence[str] = "e8",
        prior: Literal["laplace", "gaussian"] = "laplace",
        init_spacing: float = 1.0,
        init_scale: float = 1.0,
        learn_spacing: bool = True,
        learn_scale: bool = True,
        samples: int = 128,
        prior_samples: int | Sequence[int] = 32,
        eval_samples: int = 1024,
        eval_prior_samples: int | Sequence[int] = 64,
        proposal: Literal["prior", "box", "tilted"] = "prior",
        spacing_per: Literal["block", "coordinate"] = "block",
        scale_per: Literal["coordinate", "block"] = "coordinate",
        debias: bool = False,
        density: Literal["monte_carlo", "gaussian"] = "monte_carlo",
        compile: bool = False,
        exact_rectangular: bool = True,
    ) -> None:
        super().__init__(dim=dim)
        if dim > MAX_DIM:
            raise ValueError(f"dim must be at most {MAX_DIM} for a good lattice, got {dim}")
        if prior not in ("laplace", "gaussian"):
            raise ValueError(f"prior must be 'laplace' or 'gaussian', got {prior!r}")
        self.prior_name = prior
        self._check_proposal(proposal, "proposal")
        if spacing_per not in ("block", "coordinate"):
            raise ValueError(f"spacing_per must be 'block' or 'coordinate', got {spacing_per!r}")
        self.spacing_per = spacing_per
        if scale_per not in ("coordinate", "block"):
            raise ValueError(f"scale_per must be 'coordinate' or 'block', got {scale_per!r}")
        self.scale_per = scale_per
        self.debias = debias
        self.density = density
        self.proposal = proposal
        self.lattice_spec = list(lattice) if isinstance(lattice, list | tuple) else lattice
        _check_flags(learn_spacing=learn_spacing, learn_scale=learn_scale, compile=compile)
        self.compile = compile
        # the decoders' and the sums' tables are computed from values: on the meta device (a
        # model sized before it is built) they are formed on the CPU
        with _values_off_meta():
            self.geometry: DirectSum = tile(lattice, dim, compile=compile)
            # density="gaussian" reads them in the forward, which a trace or an export may be
            # the first to run; otherwise they are made at first use (:meth:`_cell_moments`)
            gaussian = density == "gaussian"
            self._moment_values = _cell_moment_values(self.geometry) if gaussian else None
            self.samples = samples
            self.eval_samples = eval_samples
            blocks = self.geometry.blocks
            self.prior_samples = prior_samples
            self.eval_prior_samples = eval_prior_samples
            sizes = torch.tensor([b.dim for b in blocks])
            # unit-volume normalization of each block: c_b = V_b^{-1/n_b}
            unit = torch.stack([(-b.log_volume / b.dim).exp() for b in blocks]).to(torch.float32)
            self.register_buffer("_unit", unit.repeat_interleave(sizes), persistent=False)
            # the index tables are plain attributes, not buffers (see _INDEX_TABLES)
            self._block_of = torch.arange(len(blocks)).repeat_interleave(sizes)
            self.register_buffer("_block_dims", sizes.to(torch.float32), persistent=False)
            halfwidth = torch.cat([torch.as_tensor(b.cell_halfwidth).expand(b.dim) for b in blocks])
            self.register_buffer("_halfwidth", halfwidth.to(torch.float32), persistent=False)
            # a point of a block farther than this from the origin is outside its cell (1e-4 of
            # slack for the decoder's rounding): the proposal draws that far are not decoded
            bounds = [b.cell_bound for b in blocks]
            reach = [math.inf if r is None else (r * (1 + 1e-4)) ** 2 for r in bounds]
            # float32 as every table, whatever the caller's default dtype: one built under
            # torch.set_default_dtype(torch.float64) is the one built in float32
            reach = torch.tensor(reach, dtype=torch.float32)
            self.register_buffer("_reach", reach, persistent=False)
            # rectangular blocks (Z in a sum such as E8^3 ⊕ Z^16) have a closed-form density: only
            # the others are estimated by Monte Carlo (:meth:`log_density`)
            if not isinstance(exact_rectangular, bool):
                raise ValueError(
                    f"exact_rectangular must be True or False, got {exact_rectangular!r}"
                )
            self.exact_rectangular = exact_rectangular
            exact = torch.tensor(
                [exact_rectangular and isinstance(b, RectangularLattice) for b in blocks]
            )
            self._exact = exact.repeat_interleave(sizes)
            self._mc_blocks = (~exact).nonzero().flatten()
            self._mc_coords = (~self._exact).nonzero().flatten()
            estimated = [b for b, e in zip(blocks, exact.tolist(), strict=True) if not e]
            every = len(estimated) == len(blocks)
            self._mc_geometry = (
                self.geometry if every else DirectSum(estimated) if estimated else None
            )
            # the (m, blocks) 0/1 matrix of per-block sums, where it is small or the Monte Carlo
            # sums over all blocks by products with it; otherwise block sums are index_add's or
            # reshapes (Z^16384's matrix would take 1 GiB, E8^2048's 128 MiB)
            products = every and _BlockSums.reshape_size(self.geometry) is None
            if products or dim * len(blocks) <= _DENSE_MEMBERSHIP:
                membership = torch.zeros(dim, len(blocks), dtype=torch.float32)
                membership[torch.arange(dim), self._block_of] = 1.0
            else:
                membership = None
            self.register_buffer("_membership", membership, persistent=False)
        self.log_spacing = nn.Parameter(
            torch.full(
                (dim if spacing_per == "coordinate" else len(blocks),),
                _positive_log(init_spacing, "init_spacing"),
            ),
            requires_grad=learn_spacing,
        )
        self.log_scale = nn.Parameter(
            torch.full(
                (dim if scale_per == "coordinate" else len(blocks),),
                _positive_log(init_scale, "init_scale"),
            ),
            requires_grad=learn_scale,
        )

    # ------------------------------------------------------------- module mechanics
    #: the geometry's integer and bool tables (which coordinate is in which block, which blocks
    #: have a closed-form density): plain tensor attributes rather than buffers, since what
    #: treats every buffer as a number to average or update (``AveragedModel(use_buffers=True)``)
    #: turned them into other indices without a word (an EMA step of 0.9·3 + 0.1·3 stored 2)
    _INDEX_TABLES = ("_block_of", "_exact", "_mc_blocks", "_mc_coords")

    def _index_table(name: str) -> property:  # noqa: N805 (a class-body helper, deleted below)
        """The index table ``name`` on the device of the module's buffers. ``nn.DataParallel``
        gives each replica its buffers on the replica's device and a shallow copy of the
        module's plain attributes, so a replica on a second GPU indexed its buffers with the
        first GPU's tables: the tables follow ``_unit`` there, moved once per replica."""

        def get(self: DitheredGoodLattice) -> Tensor:
            tables = self.__dict__["_index_tables"]
            device = self._unit.device
            if tables[name].device != device:
                tables = {key: table.to(device) for key, table in tables.items()}
                self.__dict__["_index_tables"] = tables  # this module's (a replica's) own
            return tables[name]

        def put(self: DitheredGoodLattice, table: Tensor) -> None:
            self.__dict__.setdefault("_index_tables", {})[name] = table

        return property(get, put, doc=f"index table {name} (see _INDEX_TABLES)")

    _block_of = _index_table("_block_of")
    _exact = _index_table("_exact")
    _mc_blocks = _index_table("_mc_blocks")
    _mc_coords = _index_table("_mc_coords")
    del _index_table

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A whole module pickled before the index tables lived in ``_index_tables`` held them
        as plain attributes, or earlier as buffers: they move there; one pickled before
        ``density`` existed gets its default, the Monte-Carlo estimate it had."""
        super().__setstate__(state)
        self.__dict__.setdefault("density", "monte_carlo")
        if "_index_tables" not in self.__dict__:
            for name in self._INDEX_TABLES:
                table = self.__dict__.pop(name, None)
                if table is None:
                    table = self._buffers.pop(name)
                    self._non_persistent_buffers_set.discard(name)
                setattr(self, name, table)

    def _apply(self, fn, recurse: bool = True):
        """Converts the parameters as any module does, but only moves the tables: they are not
        saved, so ``to_empty`` (the meta-device init pattern ``with torch.device("meta"): ...;
        to_empty(); load_state_dict()``) left them uninitialised for good (NaN errors, index
        errors), and ``half()`` rounded them (another lattice after ``.half().float()``, whose
        files a model loaded from the same weights could not decode). Tables stay off the meta
        device, as when built there, so they are never lost. The tables are the non-persistent
        buffers and the index tables (:attr:`_INDEX_TABLES`): constants of the geometry, kept in
        the dtypes they were built in, the index tables on the float tables' device."""
        tables = {name: self._buffers.get(name) for name in self._non_persistent_buffers_set}
        super()._apply(fn, recurse)
        for name, table in tables.items():
            moved = self._buffers.get(name)
            if table is not None and moved is not None:
                device = table.device if moved.is_meta else moved.device
                self._buffers[name] = table.to(device)
        device = self._unit.device
        for name in self._INDEX_TABLES:
            setattr(self, name, getattr(self, name).to(device))
        return self

    # ------------------------------------------------------ Monte-Carlo settings
    def _check_samples(self, value, name: str) -> int:
        return _sample_count(value, name, self.dim)

    def _check_draw_counts(self, value, name: str) -> int | tuple[int, ...]:
        return _draw_counts(value, name, len(self.geometry.blocks), self.dim)

    def _check_density(self, value, name: str) -> str:
        if not isinstance(value, str) or value not in ("monte_carlo", "gaussian"):
            raise ValueError(f"{name} must be 'monte_carlo' or 'gaussian', got {value!r}")
        return value

    def _check_proposal(self, value, name: str) -> str:
        if value not in ("prior", "box", "tilted"):
            raise ValueError(f"{name} must be 'prior', 'box' or 'tilted', got {value!r}")
        if value == "box" and self.prior_name != "laplace":
            raise ValueError(f"{name}={value!r} needs the Laplace prior")
        return value

    # ------------------------------------------------------------- parameters
    @property
    def spacing(self) -> Tensor:
        """The learned scales: per block as V_b^{1/n_b}, shape ``(blocks,)``, or per coordinate,
        shape ``(m,)`` (``spacing_per="coordinate"``)."""
        return self.log_spacing.exp()

    @property
    def block_spacing(self) -> Tensor:
        """Each scaled block's cell size V_b^{1/n_b}, shape ``(blocks,)``."""
        return (self._block_log_volume() / self._block_dims.to(self.log_spacing.dtype)).exp()

    @property
    def scale(self) -> Tensor:
        """Prior scales b per coordinate, shape ``(m,)`` (with ``scale_per="block"`` each block's
        one scale, repeated over its coordinates)."""
        scale = self.log_scale.exp()
        return scale if self.scale_per == "coordinate" else self._per_coordinate(scale)

    def _coordinate_scale(self) -> Tensor:
        """σ_i: the factor from the base lattice to the scaled one, per coordinate ``(m,)``."""
        spacing = self.spacing
        if self.spacing_per == "block":
            spacing = self._per_coordinate(spacing)
        return spacing * self._unit.to(self.log_spacing.dtype)

    def _per_coordinate(self, per_block: Tensor) -> Tensor:
        """A ``(blocks,)`` tensor repeated over each block's coordinates, ``(m,)``. One block is
        expanded rather than indexed: the backward of indexing a one-element tensor (a scatter
        into it) failed to compile in torch's CPU code generator ("InductorError:
        AssertionError"), so a model holding an E8 or Leech bottleneck of one block could not
        be trained under ``torch.compile``."""
        if per_block.shape[0] == 1:
            return per_block.expand(self._block_of.shape[0])
        return per_block[self._block_of]

    def _block_log_volume(self) -> Tensor:
        """log V_b of each scaled block, ``(blocks,)``: n_b log s_b, or Σ_{i ∈ b} log s_i with a
        scale per coordinate (each base block has unit volume)."""
        if self.spacing_per == "block":
            return self._block_dims.to(self.log_spacing.dtype) * self.log_spacing
        if self._membership is not None:  # the rounding every trained row has had
            return self.log_spacing @ self._membership.to(self.log_spacing.dtype)
        blocks = self.log_spacing.new_zeros(len(self.geometry.blocks))
        return blocks.index_add(0, self._block_of, self.log_spacing)

    def log_volume(self) -> Tensor:
        """log V of the scaled cell, Σ_b log V_b."""
        return self._block_log_volume().sum()

    def shaping_gap(self) -> Tensor:
        """KL(U ‖ N(0, Σ_U)) in nats per code vector, a 0-d float64 tensor: what the cell's
        shape costs against an ideal lattice's Gaussian-like cell (lattice paper, eq. 12),
        Σ_b n_b·½·log(2πe·G(Λ_b)) over the blocks (E8^5 4.05, Λ24 ⊕ Λ16 2.63, Z^40 7.06 nats;
        G as :data:`qlatent.lattices.LITERATURE_NSM` gives it, else estimated once). The KL is
        unchanged by any linear map of the cell, so the learned scales, per block or per
        coordinate, leave it as it is. A lattice VAE ends at least this far above the
        Gaussian-lattice VAE, all else equal."""
        gap = 0.0
        for block in self.geometry.blocks:
            g = 1 / 12 if isinstance(block, RectangularLattice) else _block_nsm(block)
            gap += block.dim * 0.5 * math.log(2 * math.pi * math.e * g)
        return torch.tensor(gap, dtype=torch.float64, device="cpu")  # a number, not a weight

    # ------------------------------------------------------------------ dither
    def _unit_dither(self, n: int, generator, dtype, device=None) -> Tensor:
        """``(n, m)`` points uniform over the base lattice's Voronoi cell (counter-based draws
        on the fundamental parallelepiped, reduced modulo the lattice), made on ``device``
        (default the CPU). The draws are the same bits on every device and the basis product
        is exact in float64 (``FixedLattice.points_from_unit``), but the reduction modulo the
        lattice runs in the draws' dtype, and MPS has no float64: the hard path's dither, which
        a decoder must regenerate bit for bit, is always made on the CPU."""
        r = counter_uniform(draw_key(generator, device), (n, self.dim), dtype)
        y = self.geometry.points_from_unit(r)
        return y - self.geometry.dither_point(y)

    def _mc_points(self, samples: int, generator, dtype, device) -> Tensor:
        """``(S, m)`` antithetic Voronoi points w (base units; halves are negatives)."""
        half = self._unit_dither(samples // 2, generator, dtype, device)
        return torch.cat([half, -half])

    # ---------------------------------------------------------------- density
    def _prior_points(self, samples: int, generator, dtype, device) -> Tensor:
        """``(S, m)`` draws of X̂ from the prior (inverse CDF of counter-based uniforms)."""
        r = counter_uniform(draw_key(generator, device), (samples, self.dim), torch.float64)
        r = r + 2.0**-25  # the midpoints of the 2^-24 grid: never 0 or 1
        if self.prior_name == "laplace":
            eps = -torch.sign(r - 0.5) * torch.log1p(-2.0 * (r - 0.5).abs())
        else:
            eps = torch.special.ndtri(r)
        return eps.to(dtype) * self.scale.to(dtype)

    @autocast_off
    def log_density(
        self,
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
        if v.dim() != 2 or v.shape[1] != self.dim:
            raise ValueError(f"v must have shape (N, {self.dim}), got {tuple(v.shape)}")
        check_finite("v", v)
        samples = _sample_count(samples, "samples", self.dim)
        prior_samples = self._check_draw_counts(prior_samples, "prior_samples")
        cap, debias = check_flag(cap, "cap"), check_flag(debias, "debias")
        if density is not None:
            density = self._check_density(density, "density")
        return self._log_density(
            v, samples, prior_samples, generator, cap=cap, debias=debias, density=density
        )

    def _log_density(
        self,
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
        sigma = self._coordinate_scale().to(v.dtype)
        scale = self.scale.to(v.dtype)
        log_vol = self._block_log_volume().to(v.dtype)
        exact = None
        if self._mc_geometry is not self.geometry:  # rectangular blocks: the closed form
            e = self._exact
            width = 2 * self._halfwidth[e].to(v.dtype) * sigma[e]
            cell = laplace_cell_log_prob if self.prior_name == "laplace" else gaussian_cell_log_prob
            exact = (cell(v[:, e], width, scale[e]) - torch.log(width)).sum(-1)
            if self._mc_geometry is None:
                return exact
        if (self.density if density is None else density) == "gaussian":
            log_f = self._gaussian_log_density(v, sigma, scale, log_vol, cap)
            return log_f if exact is None else log_f + exact
        cells = self._mc_cells(v.dtype)
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
                    (c, self._mc_cells(v.dtype, tuple(i for i, k in enumerate(counts) if k == c)))
                    for c in distinct
                ]
        # the cell points and the prior's shared draws are drawn once for every coordinate (a
        # group takes its coordinates and, of the prior's, its first draws: the same numbers)
        w = self._mc_points(samples, generator, v.dtype, v.device)
        most = max(count for count, _ in groups)
        shared = None
        if most and self.proposal == "prior":
            shared = self._prior_points(most, generator, v.dtype, v.device)
        log_f = None
        for count, group in groups:
            part = self._estimated_log_density(
                v, sigma, scale, log_vol, w, shared, samples, count, group, generator, cap, debias
            )
            log_f = part if log_f is None else log_f + part
        return log_f if exact is None else log_f + exact

    def _estimated_log_density(
        self,
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
        """:meth:`log_density`'s Monte-Carlo part for the blocks of ``cells``, ``prior_samples``
        proposal draws each, summed over those blocks ``(N,)``: ``v``, ``sigma``, ``scale`` over
        all coordinates, ``log_vol`` over all blocks, ``w`` the ``(S_u, m)`` cell points and
        ``shared`` the prior's ``(S_q', m)`` draws (S_q' ≥ S_q; ``None`` unless the proposal is
        the prior), both drawn for every coordinate."""
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
        if (
            not (recorded or exporting)
            and self.prior_name == "laplace"
            and v.shape[0] > rows_per_chunk
        ):
            scratch = v.new_empty(rows_per_chunk, *w.shape)
        parts = []
        for chunk in chunks:
            vc = v[chunk]
            v0 = vc.detach().unsqueeze(2)  # (N, m, 1)
            log_p = self._cell_points_log_pdf(vc, w, scale, sums, cells.block_of, scratch)
            if prior_samples:
                key = None if x is not None else draw_key(generator, v.device)  # one per chunk
                x0, log_q0 = self._proposal_points(
                    vc.detach(), prior_samples, x, key, sigma.detach(), scale0, cells
                )
                x0 = x0.transpose(1, 2)  # (N, m, S_q)
                # x0 + (v − v0) + (D − 1)(x0 − v0): x0 exactly in value
                xc = x0 + (vc.unsqueeze(2) - v0) + (stretch - 1.0) * (x0 - v0)
                # only the tilted proposal's density reads the cell points themselves
                tu = v0 + w.detach() if self.proposal == "tilted" else None
                log_qu = log_q0(tu, log_p.detach())  # log q0 at the cell points
                log_px = self._block_log_pdf(xc, scale, sums)
                log_qx = log_q0(x0, log_px.detach())
                inside = self._inside_cell(xc - vc.unsqueeze(2), sigma, cells)
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

    def _gaussian_log_density(
        self, v: Tensor, sigma: Tensor, scale: Tensor, log_vol: Tensor, cap: bool
    ) -> Tensor:
        """The Gaussian approximation of log f_{X̂−U}(v) for the blocks :meth:`log_density`
        would estimate by Monte Carlo, summed over them, ``(N,)``: X̂ − U taken as the Gaussian
        of its variance per coordinate (the two are independent and U is centred),

            log f̃_b(v) = Σ_{i ∈ b} log N(v_i; 0, σ²_X̂,i + σ²_Λ,i)

        with σ²_X̂,i the prior's variance (Laplace 2b_i², Gaussian b_i²) and σ²_Λ,i = σ_i²·M_i
        the scaled cell's second moment along coordinate i, σ_i from :meth:`_coordinate_scale`
        and M_i the base block's second moment per dimension, G(Λ_b)·V_b^{2/n_b}
        (:meth:`_cell_moments`). ``v``, ``sigma``, ``scale`` over all coordinates, ``log_vol``
        over all blocks; ``cap``: each block's f̃_b·V_b capped at 1, as the Monte-Carlo estimate
        (a Gaussian narrower than the cell exceeds the density's largest value, 1/V_b)."""
        cells = self._mc_cells(v.dtype)
        moment = self._cell_moments(v.dtype, v.device)
        if cells.coords is not None:
            v, sigma, scale = v[:, cells.coords], sigma[cells.coords], scale[cells.coords]
            moment, log_vol = moment[cells.coords], log_vol[cells.blocks]
        prior = scale.square() * (2.0 if self.prior_name == "laplace" else 1.0)
        var = prior + sigma.square() * moment  # (m,)
        log_n = -0.5 * (v.square() / var + torch.log(var) + math.log(2 * math.pi))
        log_f = cells.sums.rows(log_n)  # (N, blocks)
        if cap:  # log P̃_b = log f̃_b + log V_b at most 0
            log_f = torch.clamp(log_f + log_vol, max=0.0) - log_vol
        return log_f.sum(-1)

    def _cell_moments(self, dtype: torch.dtype, device) -> Tensor:
        """M_i, the base block's second moment of its cell per dimension at each coordinate,
        ``(m,)``: G(Λ_b)·V_b^{2/n_b} (:func:`_block_nsm`), exact per coordinate for the cells
        whose second-moment tensor is a multiple of the identity (A2, D4, E8, Λ16, Λ24, and
        every block of ``tile``'s names); a rectangular block's own Δ_i²/12. Plain numbers
        (:func:`_cell_moment_values`), so that a traced or exported forward forms them as
        constants: made with a module built with ``density="gaussian"``, else here at first use
        (a family without a literature G estimates it then, once per process)."""
        values = self.__dict__.get("_moment_values")
        if values is None:
            with plain_tensors(), _values_off_meta():
                values = self._moment_values = _cell_moment_values(self.geometry)
        return torch.tensor(values, dtype=dtype, device=device)

    def _mc_cells(self, dtype, subset: tuple[int, ...] | None = None) -> _Cells:
        """The blocks :meth:`log_density` estimates by Monte Carlo (all but the rectangular), or
        the ``subset`` of them at those positions among them."""
        if subset is not None:
            every = torch.arange(len(self.geometry.blocks), device=self._block_of.device)
            estimated = every if self._mc_geometry is self.geometry else self._mc_blocks
            blocks = estimated[list(subset)]
            coords = torch.isin(self._block_of, blocks).nonzero().flatten()
            geometry = self._subset_geometry(tuple(blocks.tolist()))
            membership, block_of = self._membership_of(coords, blocks, geometry)
            return _Cells(
                coords,
                blocks,
                None if membership is None else membership.to(dtype),
                block_of,
                self._halfwidth[coords].to(dtype),
                self._unit[coords],
                self._reach[blocks].to(dtype),
                geometry,
            )
        if self._mc_geometry is self.geometry:
            coords = blocks = None
            membership, block_of = self._membership, self._block_of
            if _BlockSums.reshape_size(self.geometry) is not None:
                membership = None  # reshapes: not copied to dtype on every call
            halfwidth, unit, reach = self._halfwidth, self._unit, self._reach
        else:
            coords, blocks = self._mc_coords, self._mc_blocks
            membership, block_of = self._membership_of(coords, blocks, self._mc_geometry)
            halfwidth, unit = self._halfwidth[coords], self._unit[coords]
            reach = self._reach[blocks]
        return _Cells(
            coords,
            blocks,
            None if membership is None else membership.to(dtype),
            block_of,
            halfwidth.to(dtype),
            unit,
            reach.to(dtype),
            self._mc_geometry,
        )

    def _membership_of(
        self, coords: Tensor, blocks: Tensor, geometry: DirectSum
    ) -> tuple[Tensor | None, Tensor]:
        """``(len(coords), len(blocks))`` float32: 1 where coordinate ``coords[i]`` lies in block
        ``blocks[j]`` (the rows and columns of the full membership matrix, without forming it),
        or ``None`` where ``geometry``, the direct sum of those blocks, sums by reshapes; and
        each coordinate's position among ``blocks`` (ascending, as all callers give them)."""
        owner = self._block_of[coords]
        block_of = torch.searchsorted(blocks, owner)
        if _BlockSums.reshape_size(geometry) is not None:
            return None, block_of
        return (owner.unsqueeze(1) == blocks).to(torch.float32), block_of

    def _subset_geometry(self, blocks: tuple[int, ...]) -> DirectSum:
        """The direct sum of the blocks at these positions (cached: its runs decode together)."""
        cache = self.__dict__.setdefault("_subset_geometries", {})
        if blocks not in cache:
            with plain_tensors():
                cache[blocks] = DirectSum([self.geometry.blocks[b] for b in blocks])
        return cache[blocks]

    def _box_points(
        self, v: Tensor, count: int, key: Tensor, halfwidth: Tensor, scale: Tensor
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

    def _proposal_points(
        self,
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
        if self.proposal == "prior":
            return shared.detach().unsqueeze(0), lambda t, log_p, shift=0.0: log_p + shift
        cells = cells or self._mc_cells(v.dtype)
        sums = cells.sums  # its matrix in v's dtype: cells come from _mc_cells(v.dtype)
        if self.proposal == "tilted":
            return self._tilted_points(v, count, key, sigma, scale, sums, cells.unit)
        halfwidth = cells.halfwidth.to(v.dtype) * sigma
        x0, log_z = self._box_points(v, count, key, halfwidth, scale)
        log_z = sums.rows(log_z).unsqueeze(2)  # (N, blocks, 1): log P(X̂ ∈ box)
        return x0, lambda t, log_p, shift=0.0: log_p + (shift - log_z)

    @contextmanager
    def proposal_set_to(self, proposal: str | None) -> Iterator[None]:
        """Use ``proposal`` for the proposal draws inside the block (``None``: keep the own), e.g.
        the tilted one for a large-S reference of a box bottleneck."""
        own = self.proposal
        self.proposal = own if proposal is None else proposal  # checked as it is assigned
        try:
            yield
        finally:
            self.proposal = own

    def _tilted_points(
        self,
        v: Tensor,
        count: int,
        key: Tensor,
        sigma: Tensor,
        scale: Tensor,
        membership: Tensor | _BlockSums,
        unit: Tensor | None = None,
    ):
        """``count`` draws per row from q_v(x) ∝ p(x)·exp(−‖x − v‖²/(2τ²)), ``(N, count, m)``, and
        the function t ↦ log q_v(t) per block, ``(N, m, S)`` -> ``(N, blocks, S)``, all at the
        values given (no gradient: :meth:`log_density` moves the draws with the cell).

        τ_i = :data:`_TILT`·s_i/√12, s_i the scaled cell's size V^{1/n} at coordinate i: the
        root second moment of a cube of the cell's volume (a good lattice's cell has 0.89–0.98
        of it). Per coordinate the Laplace prior times the Gaussian is two
        truncated Gaussians, N(v ∓ τ²/b, τ²) on x ≥ 0 and x ≤ 0: a side is drawn by its mass,
        then the point by the inverse CDF, in float64 (past 30 standard deviations of
        truncation, where that side holds almost none of q's mass unless τ ≫ b, the tail by
        its Rayleigh approximation, whose density is within 1/30² of the exact one). The
        Gaussian prior N(0, b²) times the Gaussian is one Gaussian (:meth:`_gaussian_tilt`).
        ``unit``: the blocks' unit-volume factors per coordinate (default all blocks');
        ``membership``: the blocks' ``(m, blocks)`` 0/1 matrix or their :class:`_BlockSums`."""
        n, m = v.shape
        sums = _BlockSums.of(membership)
        f64 = torch.float64
        mu = v.detach().to(f64).unsqueeze(1)  # (N, 1, m)
        b = scale.detach().to(f64)
        unit = self._unit if unit is None else unit
        tau = (_TILT / math.sqrt(12.0)) * (sigma.detach().to(f64) / unit.to(f64))
        if self.prior_name == "gaussian":
            return self._gaussian_tilt(v, mu, b, tau, count, key, sums)
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

    @staticmethod
    def _gaussian_tilt(
        v: Tensor,
        mu: Tensor,
        b: Tensor,
        tau: Tensor,
        count: int,
        key: Tensor,
        membership: Tensor | _BlockSums,
    ):
        """:meth:`_tilted_points` under the Gaussian prior: N(0, b²)·N(v, τ²) ∝ N(c, s²) with
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
            return -sums.points((t - center).square(), square_weight, temporary=True) - (
                log_c - shift
            )

        return x.to(dtype), log_q

    def _cell_points_log_pdf(
        self,
        v: Tensor,
        w: Tensor,
        scale: Tensor,
        membership: Tensor | _BlockSums,
        block_of: Tensor | None = None,
        scratch: Tensor | None = None,
    ) -> Tensor:
        """:meth:`_block_log_pdf` of the points v + w, ``(N, m)`` and ``(m, S)`` -> ``(N, blocks,
        S)``, without forming them twice: under the Laplace prior a hand-written backward
        (:class:`_LaplaceBlockSums`) takes the place of autograd's through the broadcast sum,
        |·| and the batched product, which cost several times the forward. ``membership``: the
        ``(m, blocks)`` 0/1 matrix or the blocks' :class:`_BlockSums`; ``scratch``: a buffer of
        at least N rows for v + w where nothing is differentiated (Laplace prior)."""
        sums = _BlockSums.of(membership)
        if self.prior_name != "laplace":
            return self._gaussian_cell_points_log_pdf(v, w, scale, sums)
        const = sums.totals(torch.log(2 * scale))
        block_of = (self._block_of if block_of is None else block_of).to(v.device)
        return -_laplace_block_sums(v, w, 1.0 / scale, sums, block_of, scratch) - const

    @staticmethod
    def _gaussian_cell_points_log_pdf(
        v: Tensor, w: Tensor, scale: Tensor, membership: Tensor | _BlockSums
    ) -> Tensor:
        """The Gaussian prior's :meth:`_block_log_pdf` of v + w with the square expanded,
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

    def _block_log_pdf(self, t: Tensor, scale: Tensor, membership: Tensor | _BlockSums) -> Tensor:
        """Σ_{i ∈ b} log p_i(t_i) per block, ``(..., m, S)`` -> ``(..., blocks, S)``: the
        per-coordinate scales are folded into the block-sum matrix, so the full-size work is one
        elementwise pass (|t| or t²) and one (batched) matrix product (with many blocks of one
        size, :class:`_BlockSums`' reshape). ``membership``: the ``(m, blocks)`` 0/1 matrix or
        the blocks' :class:`_BlockSums`."""
        sums = _BlockSums.of(membership)
        if self.prior_name == "laplace":
            const = sums.totals(torch.log(2 * scale))
            return -sums.points(t.abs(), 1.0 / scale, temporary=True) - const
        const = sums.totals(torch.log(scale) + 0.5 * math.log(2 * math.pi))
        return -0.5 * sums.points(t.square(), 1.0 / scale.square(), temporary=True) - const

    def _inside_cell(
        self,
        t: Tensor,
        sigma: Tensor,
        cells: _Cells | None = None,
    ) -> Tensor:
        """Whether each block of ``t`` lies in the scaled Voronoi cell: ``(..., m, S)`` ->
        ``(..., blocks, S)`` bool (K_Λ(t) = 0 block by block), for the blocks of ``cells``
        (default all). A block is decoded only where it lies within its lattice's
        :attr:`~qlatent.lattices.Lattice.cell_bound` of the origin: farther, it is outside
        without that (the proposal's draws mostly are, in 16 and 24 dimensions)."""
        cells = cells or self._mc_cells(t.dtype)
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

    # ------------------------------------------------------------------ paths
    def _forward_rows(self, y: Tensor, generator) -> BottleneckOutput:
        y = y.to(self.log_spacing.dtype)
        log_v = self.log_volume()
        if self.training:
            u = self._unit_dither(y.shape[0], generator, y.dtype, y.device)
            y_hat = y - u * self._coordinate_scale()
            rate = -log_v - self._log_density(
                y_hat, self.samples, self.prior_samples, generator, debias=self.debias
            )
            indices = None
        else:
            u = self._hard_dither(y.shape[0], generator, y.device, y.dtype)
            indices = self._coordinates(y, u)
            y_hat = self._reconstruct(indices, u)
            rate = -log_v - self._log_density(
                y_hat, self.eval_samples, self.eval_prior_samples, generator, debias=self.debias
            )
        stats = {"spacing": self.spacing.detach(), "scale": self.scale.detach()}
        return BottleneckOutput(y_hat, rate, y.new_zeros(()), indices, stats)

    def _hard_dither(self, n: int, generator, device, dtype) -> Tensor:
        return self._unit_dither(n, generator, dtype).to(device) * self._coordinate_scale()

    def _coordinates(self, y: Tensor, u: Tensor) -> Tensor:
        """Integer coordinates of z = K_Λ(y + u) in the base blocks' bases. (Integers have no
        derivative: x is detached, so that forward mode does not meet the decoders' ``out=``
        kernels, which it refused.)"""
        x = ((y + u) / self._coordinate_scale()).detach()
        return self.geometry.coordinates(self.geometry.closest_point(x))

    def _reconstruct(self, indices: Tensor, u: Tensor) -> Tensor:
        sigma = self._coordinate_scale()
        return self.geometry.points(indices).to(sigma.dtype) * sigma - u

    def _quantize_rows(self, y: Tensor, generator) -> Tensor:
        y = y.to(self.log_spacing.dtype)
        return self._coordinates(y, self._hard_dither(y.shape[0], generator, y.device, y.dtype))

    def _dequantize_rows(self, indices: Tensor, generator) -> Tensor:
        dtype, device = self.log_spacing.dtype, self.log_spacing.device
        u = self._hard_dither(indices.shape[0], generator, device, dtype)
        return self._reconstruct(indices.to(device), u)

    # ------------------------------------------------------------------ files
    def code_model(self, *, cosets: bool = True, e8_cosets: str = "errors"):
        """The lattice point block by block (:class:`qlatent.coding.models.GoodLattice`):
        E8 by its two cosets of D8, the coset's probability from the rounding errors
        (``e8_cosets="half"``: the product model's, files of kinds 4 and 5); Λ16 and Λ24 by their
        cosets of 2·D16 and 4·D24 with the cell widths of :data:`CODE_CELL_WIDTH`
        (``cosets=False``: in a triangular basis, the code model of files of kind 4); every
        other block coordinate by coordinate in a triangular basis. Under a Gaussian prior
        E8 blocks are coded by their cosets with Gaussian cells, the coset's probability from
        the rounding errors (container kind 8; ``e8_cosets="triangular"``: in a triangular
        basis, the model of files of kind 7), every other block in a triangular basis, each
        coordinate with the Gaussian's mass on its interval; a Z block is then coded with the
        exact cell probabilities of the hard path."""
        from ..coding.models import GoodLattice
        from ..lattices import GossetLattice, triangular_basis
        from ..rng import SeedKeys

        gaussian = self.prior_name == "gaussian"
        blocks, start = [], 0
        for block in self.geometry.blocks:
            basis = block.generator_matrix.T.to(torch.float64)
            e8 = isinstance(block, GossetLattice)
            if gaussian and not (e8 and e8_cosets != "triangular"):
                blocks.append((start, "triangular", triangular_basis(basis)))
            elif e8:  # coded by its two cosets of D8
                blocks.append((start, "e8", (basis,)))
            elif cosets and block.name in CODE_CELL_WIDTH:
                residues, parities, step = block.glue()
                args = (basis, residues.numpy(), parities.numpy(), step)
                blocks.append((start, "glued", (*args, CODE_CELL_WIDTH[block.name])))
            else:
                blocks.append((start, "triangular", triangular_basis(basis)))
            start += block.dim
        dtype = self.log_spacing.dtype
        return GoodLattice(
            blocks=blocks,
            sigma=self._coordinate_scale().detach().cpu().double().numpy(),
            scale=self.scale.detach().cpu().double().numpy(),
            dtype=dtype,
            dither=lambda n, seed: self._hard_dither(n, SeedKeys(seed), "cpu", dtype).detach(),
            coordinates=lambda rows, u: self._coordinates(rows, u),
            reconstruct=lambda k, u: self._reconstruct(k, u),
            e8_cosets=e8_cosets,
            prior=self.prior_name,
        )

    def code_model_for(self, kind: int):
        """The code model of a file of container kind ``kind`` (None if this bottleneck has
        none): files of kind 4 coded Λ16 and Λ24 in a triangular basis, files of kinds 4 and 5
        gave E8's cosets the product model's probabilities, and under a Gaussian prior files of
        kind 7 coded E8 in a triangular basis; all still decode."""
        from ..coding.container import (
            MODEL_GAUSSIAN_LATTICE,
            MODEL_GLUED_LATTICE,
            MODEL_GOOD_LATTICE,
        )

        if kind == MODEL_GAUSSIAN_LATTICE and self.prior_name == "gaussian":
            return self.code_model(e8_cosets="triangular")
        if kind == MODEL_GOOD_LATTICE:
            return self.code_model(cosets=False, e8_cosets="half")
        if kind == MODEL_GLUED_LATTICE:
            return self.code_model(e8_cosets="half")
        return None

    # ----------------------------------------------------------- density view
    @autocast_off
    def posterior_sample(self, y: Tensor, num_samples: int, *, generator=None):
        """``y_hat = y − u`` with u uniform over the Voronoi cell: q = f_U = 1/V.

        ``y``: ``(B, m)`` -> ``z``: ``(S, B, m)``, ``log_q``: ``(S, B)`` (the constant −log V).
        q is zero outside the cell around y, so IWAE with it bounds the likelihood's integral
        over that cell only (see :func:`qlatent.eval.iwae_nll`).
        """
        self._check_density_input(y, num_samples, generator)
        y = y.to(self.log_spacing.dtype)
        n = num_samples * y.shape[0]
        u = self._unit_dither(n, generator, y.dtype, y.device) * self._coordinate_scale()
        z = y - u.view(num_samples, *y.shape)
        return z, (-self.log_volume()).expand(num_samples, y.shape[0])

    @autocast_off
    def log_prior(self, z: Tensor) -> Tensor:
        """Monte-Carlo ``log f̂_{X̂−U}(z)`` with ``eval_samples`` points: ``(S, B, m)`` -> ``(S, B)``.

        f̂ is an unbiased estimate of the density (before the cap at 1/V, which only lowers it),
        so inside IWAE the importance weights stay unbiased or low and the IWAE estimate is
        still a lower bound on log p(x) in expectation; it is looser than with the exact density.
        The points come from torch's default generator. Under ``density="gaussian"`` it is the
        Gaussian approximation instead (no points), and the IWAE value no bound.
        """
        self._check_prior_input(z)
        # contiguous rows: a reshape of a column-major z was a column-major view (as to_rows)
        flat = z.reshape(-1, self.dim).contiguous().to(self.log_spacing.dtype)
        log_f = self._log_density(flat, self.eval_samples, self.eval_prior_samples, None)
        return log_f.view(z.shape[:-1])

    def extra_repr(self) -> str:
        def shown(name: str):
            return shown_setting(self, name)

        return (
            f"dim={self.dim}, lattice={self.geometry.name!r}, prior={self.prior_name!r}, "
            f"samples={shown('samples')}, prior_samples={shown('prior_samples')}, "
            f"eval_samples={shown('eval_samples')}, "
            f"eval_prior_samples={shown('eval_prior_samples')}, "
            f"proposal={shown('proposal')!r}, spacing_per={self.spacing_per!r}, "
            f"scale_per={self.scale_per!r}, debias={shown('debias')}, "
            f"compile={shown_compile(self.compile)}, "
            f"exact_rectangular={shown('exact_rectangular')}"
            # shown only away from its default: the repr every module printed before it
            # existed, which the digests of files (and the golden bitstreams) are taken over
            + (f", density={shown('density')!r}" if shown("density") != "monte_carlo" else "")
        )


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
