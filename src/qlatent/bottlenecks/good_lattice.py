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

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._utils import autocast_off, check_finite, plain_tensors, shown_compile, shown_setting
from ..lattices import DirectSum, RectangularLattice, tile
from ..priors import gaussian_cell_log_prob, laplace_cell_log_prob
from ..rng import counter_uniform, draw_key
from . import _lattice_code, _lattice_density
from ._lattice_code import CODE_CELL_WIDTH
from ._lattice_counts import (
    ROW_NUMBERS,
    _draw_counts,
    _sample_count,
    check_block_counts,
    counts_text,
    monte_carlo_counts,
)
from ._lattice_density import (  # noqa: F401  (the Functions, where the documents name them)
    _BalanceWeight,
    _BlockSums,
    _Cells,
    _LaplaceBlockSums,
    _LogSum,
    geometry_tables,
)
from ._lattice_estimate import (
    _block_nsm,
    _cell_moment_values,
    _values_off_meta,
    block_log_pdf,
    cell_points_log_pdf,
    gaussian_log_density,
    grouped_log_density,
    inside_cell,
    log_density_bias,
)
from ._lattice_proposals import box_points, gaussian_tilt, tilted_points
from .base import Bottleneck, BottleneckOutput, Fixed, Setting, check_flag
from .lattice import DITHER_UNRECORDABLE, DITHER_UNTRACEABLE, _check_flags, _positive_log

__all__ = [
    "CODE_CELL_WIDTH",
    "MAX_DIM",
    "ROW_NUMBERS",
    "DitheredGoodLattice",
    "check_block_counts",
    "counts_text",
    "log_density_bias",
    "monte_carlo_counts",
]

#: the most coordinates a good-lattice bottleneck takes: its tables (the coordinates' blocks and,
#: where it is small or the Monte Carlo needs it, a (dim, blocks) matrix) are built from values,
#: also while a model is sized on the meta device
MAX_DIM = 1 << 14


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
            # rectangular blocks (Z in a sum such as E8^3 ⊕ Z^16) have a closed-form density: only
            # the others are estimated by Monte Carlo (:meth:`log_density`)
            if not isinstance(exact_rectangular, bool):
                raise ValueError(
                    f"exact_rectangular must be True or False, got {exact_rectangular!r}"
                )
            self.exact_rectangular = exact_rectangular
            tables = geometry_tables(self.geometry, dim, exact_rectangular)
            self.register_buffer("_unit", tables.unit, persistent=False)
            # the index tables are plain attributes, not buffers (see _INDEX_TABLES)
            self._block_of = tables.block_of
            self.register_buffer("_block_dims", tables.block_dims, persistent=False)
            self.register_buffer("_halfwidth", tables.halfwidth, persistent=False)
            self.register_buffer("_reach", tables.reach, persistent=False)
            self._exact = tables.exact
            self._mc_blocks = tables.mc_blocks
            self._mc_coords = tables.mc_coords
            self._mc_geometry = tables.mc_geometry
            self.register_buffer("_membership", tables.membership, persistent=False)
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
        log_f = grouped_log_density(
            self, v, sigma, scale, log_vol, samples, prior_samples, generator, cap, debias
        )
        return log_f if exact is None else log_f + exact

    def _gaussian_log_density(
        self, v: Tensor, sigma: Tensor, scale: Tensor, log_vol: Tensor, cap: bool
    ) -> Tensor:
        """The Gaussian approximation of log f_{X̂−U}(v) for the blocks :meth:`log_density`
        would estimate by Monte Carlo, summed over them, ``(N,)`` (:func:`gaussian_log_density`
        of :mod:`._lattice_estimate`, with the cells' second moments :meth:`_cell_moments`)."""
        cells = self._mc_cells(v.dtype)
        moment = self._cell_moments(v.dtype, v.device)
        return gaussian_log_density(v, sigma, scale, log_vol, cap, cells, moment, self.prior_name)

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

    # what the estimate reads of the blocks (:mod:`._lattice_density`), the module their first
    # argument
    _mc_cells = _lattice_density.mc_cells
    _membership_of = _lattice_density.membership_of
    _subset_geometry = _lattice_density.subset_geometry

    _box_points = staticmethod(box_points)

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
        """The tilted proposal's draws and log-density under this module's prior
        (:func:`~qlatent.bottlenecks._lattice_proposals.tilted_points`); ``unit``: the blocks'
        unit-volume factors per coordinate (default all blocks')."""
        unit = self._unit if unit is None else unit
        return tilted_points(v, count, key, sigma, scale, membership, unit, self.prior_name)

    _gaussian_tilt = staticmethod(gaussian_tilt)

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
        S)`` (:func:`~._lattice_estimate.cell_points_log_pdf`); ``block_of``: each coordinate's
        block (default all blocks')."""
        block_of = self._block_of if block_of is None else block_of
        return cell_points_log_pdf(self.prior_name, v, w, scale, membership, block_of, scratch)

    def _block_log_pdf(self, t: Tensor, scale: Tensor, membership: Tensor | _BlockSums) -> Tensor:
        """Σ_{i ∈ b} log p_i(t_i) per block under this module's prior, ``(..., m, S)`` ->
        ``(..., blocks, S)`` (:func:`~._lattice_estimate.block_log_pdf`)."""
        return block_log_pdf(self.prior_name, t, scale, membership)

    def _inside_cell(self, t: Tensor, sigma: Tensor, cells: _Cells | None = None) -> Tensor:
        """Whether each block of ``t`` lies in the scaled Voronoi cell, ``(..., m, S)`` ->
        ``(..., blocks, S)`` bool, for the blocks of ``cells`` (default all:
        :meth:`_mc_cells`; :func:`~._lattice_estimate.inside_cell`)."""
        return inside_cell(t, sigma, cells or self._mc_cells(t.dtype))

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
        return _lattice_code.code_model(self, cosets, e8_cosets)

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
