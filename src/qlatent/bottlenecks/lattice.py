"""Dithered lattice bottleneck trained with dithered SGD.

Paper: L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), sections 3-4.

    training (Fig. 2 right)                      hard path (Fig. 2 left)
    x ──(−)── y_hat = x − u                      x ──(+u)── K_Λ ── z ──(−u)── y_hat = z − u
         u ~ Unif(P0)                                             │
    rate = log f_U(u) − log f_{X̂−U}(x − u)       indices = k with z = B k
         (Theorem 1, eq. 9)                      rate = −log P(Ẑ = z | U = u)

By the crypto lemma (y_hat, rate) has the same law on both paths, so the training objective is the
expected codelength of the discrete representation. With the rectangular lattice Λ = diag(Δ) Z^m and
a Laplace(0, b) prior on X̂, both rates are ``-Σ_i log P_i(y_hat_i)`` with ``P_i`` the Laplace
probability of the cell of width Δ_i around ``y_hat_i`` (see ``qlatent.priors.laplace``).

Shapes: input ``(B, m)`` or ``(B, m, *spatial)`` with the code dimension on axis 1; ``indices`` are
int64 lattice coordinates of the same shape; ``rate`` is ``(B,)`` nats.

The dither is common randomness. On both paths one 32-bit key is drawn per call from the
``generator`` handed in (a CPU generator; torch's default one when None) and the dither itself
comes from the counter-based integer generator in ``qlatent.rng``, so a decoder that knows the seed
regenerates it bit for bit on any machine. On the training path it is computed inside the same
(optionally ``torch.compile``-fused) kernel as ``y_hat`` and the rate.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .._utils import (
    COMPILED_DTYPES,
    apply_function,
    compiled_or_plain,
    forward_mode_possible,
    recording_graph,
)
from ..lattices import RectangularLattice
from ..lattices.base import check_coordinates, check_reach
from ..priors import cell_constants, cell_nll_no_grad, laplace_cell_nll
from ..rng import counter_uniform, draw_key
from ._lattice_kernels import (
    _BlockedTrainingPath,
    _compiled_hard_kernel,
    _compiled_kernel,
    _from_uniform,
    _FusedTrainingPath,
    _hard_kernel,
    _training_blocks,
    _training_kernel,
)
from ._lattice_kernels import _gradient_factors as _gradient_factors
from ._lattice_kernels import _gradient_factors_in_place as _gradient_factors_in_place
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, Fixed, Setting, check_flag


def dithered_training_path(
    y: Tensor, r: Tensor, spacing: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    """Training path from uniform draws ``r ∈ [0, 1)``: ``(y_hat, rate per row)``.

    ``u = (r − ½) Δ`` is uniform over the rectangular cell; ``y_hat = y − u``;
    ``rate = −Σ_i log(Δ_i f_{X̂−U}(y_hat)_i)`` (Theorem 1 with f_U = 1/V, V = Π Δ_i).
    """
    return _from_uniform(y, r, spacing, *cell_constants(spacing, scale))


#: elements per block of rows on the eager paths (2 MB of float32 per temporary): measured, a
#: whole 1M-row input runs 5–8× slower per row than 8k-row blocks, whose Python overhead is small
_BLOCK_ELEMENTS = 1 << 19
#: the same on an accelerator, where blocks only bound the temporaries' memory (256 MB of
#: float32 each) since every block costs kernel launches: on an H200, 2^19-element blocks ran
#: the eager paths at a few M rows/s whatever the input size, launch-bound
_BLOCK_ELEMENTS_ACCELERATOR = 1 << 26


def _block_rows(dim: int, device: torch.device) -> int:
    budget = _BLOCK_ELEMENTS if device.type == "cpu" else _BLOCK_ELEMENTS_ACCELERATOR
    return max(1, budget // dim)


def _positive_log(value: float, name: str) -> float:
    # float32 parameters hold the logarithm: beyond [1e-30, 1e30] the spacing or scale would
    # not survive exp (1e300 gave an infinite scale and NaN rates), as the configs check
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1e-30 <= value <= 1e30:
        raise ValueError(f"{name} must be a finite positive number in [1e-30, 1e30], got {value!r}")
    return math.log(value)


def _check_flags(**flags: object) -> None:
    """Switches are True or False: ``requires_grad`` takes nothing else, and a truthy string
    would have switched ``compile`` on without a word."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")


@BOTTLENECKS.register("lattice")
def dithered_lattice(*, dim: int, lattice="rectangular", **kwargs) -> Bottleneck:
    """The dithered lattice bottleneck on any lattice.

    ``lattice="rectangular"`` (the paper's, per-dimension spacing Δ_i, exact closed-form rate):
    :class:`DitheredLattice`. A good lattice by name or a list of block names (``"e8"`` for
    E8^5 at dim 40, ``["leech", "bw16"]`` for Λ24 ⊕ Λ16, ``"a2"``, ``"d4"``, ``"d3*"`` ...):
    :class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice`, Monte-Carlo rate.
    """
    if isinstance(lattice, str) and lattice.strip().lower() == "rectangular":
        return DitheredLattice(dim=dim, **kwargs)
    from .good_lattice import DitheredGoodLattice

    return DitheredGoodLattice(dim=dim, lattice=lattice, **kwargs)


#: why ``torch.jit.trace`` cannot record a dithered lattice, in either mode
#: (:attr:`~qlatent.bottlenecks.base.Bottleneck._UNTRACEABLE`)
DITHER_UNTRACEABLE = (
    "its dither comes from a key drawn per call and a counter-based hash, which a trace "
    "cannot replay (it refused the traced shapes, and on the CPU the hash runs in NumPy, "
    "which a trace would keep as a constant: the same dither on every call). Export it "
    "with torch.export.export, which records the dither's ops (eval and training mode)"
)


#: what ``make_fx`` (``torch.func.linearize``) cannot record of a dithered lattice
#: (:attr:`~qlatent.bottlenecks.base.Bottleneck._UNRECORDABLE`): nothing. Both paths take the
#: branches of :func:`~qlatent._utils.recording_graph`: each call of the graph draws its key
#: and dither as ops of the graph, as each eager call does, and ``linearize`` draws them once,
#: outside its trace, so its jvp_fn's tangents are those of the traced call's dither
#: (:func:`qlatent.rng.draw_key`). The graph holds the forward ops of the custom autograd
#: Functions, not their hand-written backwards: a backward through the graph's rate (either
#: path) is autograd of the recorded ops, the eager gradients to rounding for the rectangular
#: lattice (the reference ops, as under ``torch.export``), and refused by torch for a good
#: lattice (its Monte-Carlo log-sum forms its exponentials in place). Train the eager module.
DITHER_UNRECORDABLE: dict[str, str] = {}


class DitheredLattice(Bottleneck):
    """Dithered rectangular-lattice quantizer with a learnable Laplace prior.

    Args:
        dim: code dimension m.
        lattice: lattice family; ``"rectangular"`` (per-dimension spacing Δ_i) is the paper's.
        prior: distribution of X̂; ``"laplace"`` with per-dimension scale b_i.
        init_spacing: initial Δ_i.
        init_scale: initial b_i.
        learn_spacing: whether Δ is trained (log-parametrized, so it stays positive).
        learn_scale: whether b is trained (log-parametrized).
        compile: fuse the training path (dither, ``y_hat``, rate) into one kernel with
            ``torch.compile``: the same dither, equal results up to float rounding, several
            times faster on large inputs; needs a C++ compiler and costs seconds of compilation
            on first use per shape. The hard path with grad disabled is fused too: the same
            indices and ``y_hat`` bit for bit (tested), the rate up to float rounding (the
            files come from the code model, which does not use it); in float32 and float64
            only, float16 and bfloat16 take the eager hard path (``COMPILED_DTYPES``).

    Computation happens in the parameters' dtype (``.double()`` the module for float64); inputs
    are cast to it, so the training and hard paths return the same dtype.

    ``y`` ``(B, dim[, *spatial])`` -> ``y_hat`` of the same shape, ``rate`` ``(B,)`` nats per
    example (−log P of the dithered cell under the prior, Theorem 1), ``indices`` int64 lattice
    coordinates ``(B, dim[, *spatial])`` on the hard path. Raises ValueError for an unknown
    ``lattice`` or ``prior``, a spacing or scale outside [1e-30, 1e30], a flag that is not a
    bool, and bad input (:class:`~.base.Bottleneck`).
    """

    LOG_PARAMETERS = ("log_spacing", "log_scale")
    _UNTRACEABLE = {"training": DITHER_UNTRACEABLE, "eval": DITHER_UNTRACEABLE}
    _UNRECORDABLE = DITHER_UNRECORDABLE

    compile = Setting(check_flag)
    lattice_name = Fixed("lattice")
    prior_name = Fixed("prior")

    def __init__(
        self,
        *,
        dim: int,
        lattice: Literal["rectangular"] = "rectangular",
        prior: Literal["laplace"] = "laplace",
        init_spacing: float = 1.0,
        init_scale: float = 1.0,
        learn_spacing: bool = True,
        learn_scale: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(dim=dim)
        if lattice != "rectangular":
            raise ValueError(f"lattice must be one of ['rectangular'], got {lattice!r}")
        if prior != "laplace":
            raise ValueError(f"prior must be one of ['laplace'], got {prior!r}")
        _check_flags(learn_spacing=learn_spacing, learn_scale=learn_scale, compile=compile)
        self.lattice_name = lattice
        self.prior_name = prior
        self.compile = compile
        self.log_spacing = nn.Parameter(
            torch.full((dim,), _positive_log(init_spacing, "init_spacing")),
            requires_grad=learn_spacing,
        )
        self.log_scale = nn.Parameter(
            torch.full((dim,), _positive_log(init_scale, "init_scale")),
            requires_grad=learn_scale,
        )

    @property
    def spacing(self) -> Tensor:
        """Δ, shape ``(m,)``."""
        return self.log_spacing.exp()

    @property
    def scale(self) -> Tensor:
        """Laplace scale b, shape ``(m,)``."""
        return self.log_scale.exp()

    def geometry(self) -> RectangularLattice:
        """The current lattice (differentiable in Δ)."""
        return RectangularLattice(self.spacing)

    # ------------------------------------------------------------------ paths
    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        y = y.to(self.log_spacing.dtype)  # one dtype on both paths: the parameters'
        spacing, scale = self.spacing, self.scale
        rows = _block_rows(self.dim, y.device)
        # the kernels without autograd write with ``out=``, which forward mode refuses: where
        # it may run (also under ``torch.no_grad``, which does not stop it) the paths with it
        differentiable = torch.is_grad_enabled() or forward_mode_possible()
        # torch.export records the ops themselves, whatever the grad mode while exporting: the
        # kernels' ``out=`` writes failed in the program wherever its parameters require grad,
        # and the compiled kernels are not traced. There the differentiable reference ops,
        # the same values (:func:`_training_kernel`, the hard path's loop below)
        exporting = recording_graph()
        differentiable = differentiable or exporting
        if self.training:
            # one key per call from the generator; the dither itself comes from the key and each
            # element's index, so the kernel draws it without a sequential RNG pass
            key = draw_key(generator, y.device)
            constants = cell_constants(spacing, scale)
            if exporting:
                y_hat, rate = _training_kernel(y, key, spacing, *constants)
            elif self.compile and differentiable:
                y_hat, rate, *_ = apply_function(
                    _FusedTrainingPath, y, key, spacing, *constants, True
                )
            elif self.compile:
                kernel = compiled_or_plain(_compiled_kernel, _training_kernel)
                y_hat, rate = kernel(y, key, spacing, *constants)
            elif differentiable:
                y_hat, rate, *_ = apply_function(
                    _BlockedTrainingPath, y, key, spacing, *constants, rows
                )
            else:
                y_hat, rate = _training_blocks(y, key, spacing, *constants, rows)
            indices = None
        elif (
            not differentiable
            and self.compile
            and y.numel()
            and y.dtype in COMPILED_DTYPES  # float16 / bfloat16: other indices when fused
        ):
            key = draw_key(generator, y.device)
            y_hat, rate, indices, reach = compiled_or_plain(_compiled_hard_kernel, _hard_kernel)(
                y, key, spacing, *cell_constants(spacing, scale)
            )
            check_reach(float(reach))
        elif not differentiable:
            y_hat, rate, indices = self._hard_rows_no_grad(y, generator)
        else:
            u = self._hard_dither(y.shape[0], generator, y.device)
            geometry = self.geometry()
            indices = torch.empty(y.shape, dtype=torch.int64, device=y.device)
            y_hat = torch.empty_like(y)
            rate = y.new_empty(y.shape[0])
            # cache-sized blocks of rows; exported, one block of every row (a Python loop
            # over the rows fixed a dynamic batch size at the example's)
            n = y.shape[0]
            blocks = [slice(None)] if exporting else (slice(s, s + rows) for s in range(0, n, rows))
            for block in blocks:
                k = self._coordinates(y[block], u[block], geometry)
                value = self._reconstruct(k, u[block], geometry)
                indices[block], y_hat[block] = k, value
                rate[block] = laplace_cell_nll(value, spacing, scale).sum(-1)
        stats = {"spacing": spacing.detach(), "scale": scale.detach()}
        return BottleneckOutput(y_hat, rate, y.new_zeros(()), indices, stats)

    @torch.no_grad()
    def _hard_rows_no_grad(
        self, y: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The hard path for inference (grad disabled), fused: per cache-sized block of rows,
        the block's dither u is drawn, x = y + u is formed in the output's buffer, divided and
        rounded in place (k), checked and copied to the indices, then turned into y_hat = kΔ − u
        in place, and the rate comes from :func:`~qlatent.priors.cell_nll_no_grad`. The same
        operations in the same order as the differentiable path, so the same bits (tested), in
        about half the passes."""
        spacing, scale = self.spacing, self.scale
        constants = cell_constants(spacing, scale)
        key = draw_key(generator, y.device)  # the one key of :meth:`_hard_dither`
        n, m = y.shape
        indices = torch.empty(y.shape, dtype=torch.int64, device=y.device)
        y_hat = torch.empty_like(y)
        rate = y.new_empty(n)
        rows = _block_rows(self.dim, y.device)
        for start in range(0, n, rows):
            block = slice(start, start + rows)
            # this block's rows of the whole input's dither (counters from start·m): no
            # input-sized temporary beside the outputs
            r = counter_uniform(key, (min(rows, n - start), m), y.dtype, offset=start * m)
            u = r.sub_(0.5).mul_(spacing)  # (r − ½) Δ, as in :meth:`_hard_dither`
            x = torch.add(y[block], u, out=y_hat[block])
            x.div_(spacing).round_()  # k, as float
            check_coordinates(x)
            indices[block].copy_(x)
            x.mul_(spacing).sub_(u)  # y_hat = kΔ − u
            torch.sum(cell_nll_no_grad(x, *constants), -1, out=rate[block])
        return y_hat, rate, indices

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        y = y.to(self.log_spacing.dtype)
        return self._coordinates(y, self._hard_dither(y.shape[0], generator, y.device))

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        return self._reconstruct(indices, self._hard_dither(indices.shape[0], generator, None))

    # ------------------------------------------------------------------ files
    def code_model(self):
        """The dithered Laplace cells of the hard path (:class:`qlatent.coding.models.
        DitheredLaplace`), from the current parameters as float64."""
        from ..coding.models import DitheredLaplace
        from ..rng import SeedKeys

        geometry = self.geometry()
        return DitheredLaplace(
            spacing=self.spacing.detach().cpu().double().numpy(),
            scale=self.scale.detach().cpu().double().numpy(),
            dtype=self.log_spacing.dtype,
            dither=lambda n, seed: self._hard_dither(n, SeedKeys(seed), "cpu").detach(),
            coordinates=lambda rows, u: self._coordinates(rows, u, geometry),
            reconstruct=lambda k, u: self._reconstruct(k, u, geometry),
            rate=lambda rows, seed: self(rows, generator=SeedKeys(seed)).rate,
        )

    def shaping_gap(self) -> Tensor:
        """KL(U ‖ N(0, Σ_U)) in nats per code vector, a 0-d float64 tensor: what the cell's
        shape costs against an ideal lattice's Gaussian-like cell (lattice paper, eq. 12),
        m·½·log(2πe/12) ≈ 0.1765·m for the rectangular cell whatever its spacings (the KL is
        unchanged by a linear map of the cell). A lattice VAE ends at least this far above the
        Gaussian-lattice VAE, all else equal."""
        gap = self.dim * 0.5 * math.log(2 * math.pi * math.e / 12.0)
        return torch.tensor(gap, dtype=torch.float64, device="cpu")  # a number, not a weight

    # ----------------------------------------------------------- density view
    def posterior_sample(
        self, y: Tensor, num_samples: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``y_hat = y − u`` with ``u`` uniform over the cell: q(y_hat | y) = f_U = 1/V.

        ``y``: ``(B, m)`` -> ``z``: ``(S, B, m)``, ``log_q``: ``(S, B)`` (the constant ``-log V``).
        q is zero outside the cell around y, so IWAE with it bounds the likelihood's integral
        over that cell only (see :func:`qlatent.eval.iwae_nll`).
        """
        self._check_density_input(y, num_samples, generator)
        y = y.to(self.log_spacing.dtype)
        r = counter_uniform(draw_key(generator, y.device), (num_samples, *y.shape), y.dtype)
        z = y - (r - 0.5) * self.spacing
        log_q = (-self.log_spacing.sum()).expand(num_samples, y.shape[0])
        return z, log_q

    def log_prior(self, z: Tensor) -> Tensor:
        """log f_{X̂−U}(z) = log P(cell around z) − log V, the "prior" of Theorem 1."""
        self._check_prior_input(z)
        spacing, scale = self.spacing, self.scale
        z = z.contiguous()  # summed in row order whatever z's layout (as :func:`to_rows`)
        return laplace_cell_nll(z, spacing, scale).sum(-1).neg() - self.log_spacing.sum()

    # ---------------------------------------------------------------- helpers
    def _hard_dither(self, n: int, generator: torch.Generator | None, device) -> Tensor:
        """``(n, m)`` dither for the hard path: u = (r − ½) Δ, uniform over the cell.

        Common randomness that every machine regenerates bit for bit: one 32-bit key is drawn
        from the CPU ``generator`` and ``r`` comes from the counter-based integer generator
        (:func:`qlatent.rng.counter_uniform`) on the dyadic grid k·2^-24, computed on
        ``device`` (integer arithmetic: the same bits on every device and thread count); one
        subtraction and one multiply per element in the parameters' dtype, exact IEEE
        operations, so the dither too is the same everywhere.
        """
        device = device if device is not None else self.log_spacing.device
        dtype = self.log_spacing.dtype
        r = counter_uniform(draw_key(generator, device), (n, self.dim), dtype)  # on ``device``
        return r.sub_(0.5).mul_(self.spacing.to(device))  # (r − ½) Δ in r's own buffer

    def _coordinates(
        self, y: Tensor, u: Tensor, geometry: RectangularLattice | None = None
    ) -> Tensor:
        """k = K_Λ(y + u) in lattice coordinates (``geometry``: :meth:`geometry`, if already
        built, as by a caller working block by block)."""
        return (geometry or self.geometry()).coordinates(y + u)

    def _reconstruct(
        self, indices: Tensor, u: Tensor, geometry: RectangularLattice | None = None
    ) -> Tensor:
        """y_hat = z − u with z = B k."""
        return (geometry or self.geometry()).points(indices) - u

    def extra_repr(self) -> str:
        return f"dim={self.dim}, lattice={self.lattice_name!r}, prior={self.prior_name!r}"
