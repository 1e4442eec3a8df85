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

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .._utils import shown_compile, shown_setting
from ..lattices import DirectSum, tile
from . import (
    _lattice_cells,
    _lattice_checks,
    _lattice_code,
    _lattice_dither,
    _lattice_log_density,
    _lattice_module,
    _lattice_proposals,
    _lattice_scales,
)
from ._lattice_cells import _BlockSums, _Cells, geometry_tables
from ._lattice_checks import MAX_DIM
from ._lattice_code import CODE_CELL_WIDTH
from ._lattice_counts import ROW_NUMBERS, check_block_counts, counts_text, monte_carlo_counts
from ._lattice_density import (  # noqa: F401  (the Functions, where the documents name them)
    _BalanceWeight,
    _LaplaceBlockSums,
    _LogSum,
)
from ._lattice_estimate import (
    _cell_moment_values,
    _values_off_meta,
    block_log_pdf,
    cell_points_log_pdf,
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
        _lattice_checks.check_arguments(dim, prior, proposal, spacing_per, scale_per)
        self.prior_name = prior
        self.spacing_per = spacing_per
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
            self.exact_rectangular = check_flag(exact_rectangular, "exact_rectangular")
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
    # the geometry's index tables, plain attributes read through properties
    # (:data:`~._lattice_module.INDEX_TABLES`), and how the module is unpickled and moved: the
    # functions of :mod:`._lattice_module`, the module their first argument
    _INDEX_TABLES = _lattice_module.INDEX_TABLES
    _block_of = _lattice_module.index_table("_block_of")
    _exact = _lattice_module.index_table("_exact")
    _mc_blocks = _lattice_module.index_table("_mc_blocks")
    _mc_coords = _lattice_module.index_table("_mc_coords")
    __setstate__ = _lattice_module.set_state
    _apply = _lattice_module.apply

    # ------------------------------------------------------ Monte-Carlo settings
    # the settings' checks (:class:`~.base.Setting`): the functions of :mod:`._lattice_checks`
    # named alike, the module their first argument
    _check_samples = _lattice_checks.check_samples
    _check_draw_counts = _lattice_checks.check_draw_counts
    _check_density = _lattice_checks.check_density
    _check_proposal = _lattice_checks.check_proposal

    # ------------------------------------------------------------- parameters
    # the learned scales and the scaled cells' volumes: the functions of :mod:`._lattice_scales`
    # named alike, the module their first argument
    spacing = property(_lattice_scales.spacing)
    block_spacing = property(_lattice_scales.block_spacing)
    scale = property(_lattice_scales.scale)
    _coordinate_scale = _lattice_scales.coordinate_scale
    _per_coordinate = _lattice_scales.per_coordinate
    _block_log_volume = _lattice_scales.block_log_volume
    log_volume = _lattice_scales.log_volume
    shaping_gap = _lattice_scales.shaping_gap

    # ---------------------------------------------------------------- density
    # log f̂_{X̂−U} (checked, and the paths' own), its draws, the Gaussian approximation and
    # the density view: the functions of :mod:`._lattice_log_density`, the module their first
    # argument
    _mc_points = _lattice_log_density.mc_points
    _prior_points = _lattice_log_density.prior_points
    log_density = _lattice_log_density.log_density
    _log_density = _lattice_log_density.unchecked_log_density
    _gaussian_log_density = _lattice_log_density.gaussian_approximation
    _cell_moments = _lattice_log_density.cell_moments
    posterior_sample = _lattice_log_density.posterior_sample
    log_prior = _lattice_log_density.log_prior

    # what the estimate reads of the blocks (:mod:`._lattice_cells`), the module their first
    # argument
    _mc_cells = _lattice_cells.mc_cells
    _membership_of = _lattice_cells.membership_of
    _subset_geometry = _lattice_cells.subset_geometry

    _box_points = staticmethod(box_points)

    # the proposal's draws and a proposal set for a while (:mod:`._lattice_proposals`), the
    # module their first argument
    _proposal_points = _lattice_proposals.proposal_points
    proposal_set_to = _lattice_proposals.proposal_set_to

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

    # the dither and the hard path: the functions of :mod:`._lattice_dither` named alike, the
    # module their first argument
    _unit_dither = _lattice_dither.unit_dither
    _hard_dither = _lattice_dither.hard_dither
    _coordinates = _lattice_dither.coordinates
    _reconstruct = _lattice_dither.reconstruct
    _quantize_rows = _lattice_dither.quantize_rows
    _dequantize_rows = _lattice_dither.dequantize_rows

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
