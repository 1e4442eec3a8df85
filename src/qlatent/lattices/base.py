"""Lattice geometry: closest point, coordinates, Voronoi-cell dither and cell constants.

A lattice ``Λ(B) = {B k : k ∈ Z^m}`` is given by its generator matrix ``B`` (basis vectors as
columns). Points are row vectors of shape ``(..., m)``, so ``points = k @ B.T``. Geometry only:
a lattice holds no ``nn.Parameter``; a bottleneck that learns a lattice's scale builds the lattice
from its parameters on each call, and gradients flow through the geometry.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from .._utils import recording_graph
from ..registry import Registry

LATTICES: Registry[Lattice] = Registry("lattice")


#: the largest |coordinate| a lattice point may have: int64 holds ±2^63, and coordinates this
#: large are far beyond any float's resolution of neighbouring points anyway
MAX_COORDINATE = 2**62
#: the most numbers one :meth:`Lattice.sample_dither` call draws (8 GiB of float32)
MAX_DRAWS = 2**31
#: the widest dense ``(m, m)`` generator matrix a structured lattice forms (128 MiB of float64;
#: Z^(2^20) asked for 8 TiB); the largest A_n and D_n bases are this wide too
MAX_DENSE_DIM = 2**12


def check_dense(dim: int, name: str) -> None:
    """ValueError if a dense ``(dim, dim)`` generator matrix is wider than :data:`MAX_DENSE_DIM`."""
    if dim > MAX_DENSE_DIM:
        raise ValueError(
            f"the generator matrix of {name} is dense (m × m): m must be at most 2^12 "
            f"({MAX_DENSE_DIM}) for it, got {dim}"
        )


def to_coordinates(k: Tensor) -> Tensor:
    """Rounded float coordinates ``k`` as int64, refusing (ValueError) any beyond
    ±:data:`MAX_COORDINATE` instead of letting the conversion wrap around."""
    check_coordinates(k)
    return k.to(torch.int64)


def check_coordinates(k: Tensor) -> None:
    """ValueError if the rounded float coordinates ``k`` reach beyond ±:data:`MAX_COORDINATE`
    (or are NaN): what :func:`to_coordinates` checks before converting."""
    if k.numel() and recording_graph():
        # torch.export and make_fx cannot read the reach back: the check runs in the program
        reach = k.detach().abs().amax()
        torch._assert_async(reach <= MAX_COORDINATE, _reach_message("the reach"))
    elif k.numel():
        low, high = torch.aminmax(k.detach())
        check_reach(max(-float(low), float(high)))


def check_reach(reach: float) -> None:
    """ValueError if ``reach``, the largest |k| of rounded float coordinates, is beyond
    ±:data:`MAX_COORDINATE` or NaN (for kernels that reduce it themselves)."""
    if not reach <= MAX_COORDINATE:  # NaN too
        raise ValueError(_reach_message(f"{reach:.3g}"))


def _reach_message(reach: str) -> str:
    return (
        f"lattice coordinates reach {reach}, beyond the limit ±2^62 ({MAX_COORDINATE:.3g}) of "
        "int64 coordinates: the input is too large for this lattice's spacing"
    )


def check_rows(x: Tensor, dim: int, name: str, *, floating: bool = True) -> None:
    """ValueError unless ``x`` is a tensor of rows of ``dim`` numbers, shape ``(..., dim)``: a
    wrong width would otherwise decode as other blocks, be cut short by a direct sum's slices or
    end in a reshape's error. ``floating``: the rows must be floating-point (points to decode,
    draws on the unit cube: integer rows were decoded with a truncated basis or failed inside
    torch); otherwise (integer coordinates) any real dtype but ``bool``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} takes a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool or (floating and not x.is_floating_point()):
        kind = "floating-point" if floating else "real-valued (integer or floating-point)"
        raise ValueError(f"{name} takes {kind} rows, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{name} takes rows of {dim} coordinates, shape (..., {dim}); got {tuple(x.shape)}"
        )


def dither_rows(n) -> tuple[int, tuple[int, ...]]:
    """The rows and the batch shape of :meth:`Lattice.sample_dither`'s ``n``: an integer is
    ``n`` rows, a shape ``(*batch)`` of non-negative integers ``Π batch`` rows (the count's
    bound is checked with the draws)."""
    if isinstance(n, tuple | list | torch.Size):
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in n):
            raise ValueError(f"n must be an integer or a shape of non-negative integers, got {n!r}")
        return math.prod(n), tuple(n)
    return n, (n,)  # (a bad n is refused with the draws, before the reshape)


class Lattice(ABC):
    """Base class of a lattice Λ(B) in R^m. Subclasses give the generator matrix and an exact
    ``closest_point``.

    Points are rows: every method takes and returns tensors of shape ``(..., m)`` (any leading
    shape), and a row whose last dimension is not m raises ValueError naming the lattice.
    Closest-point algorithms follow J. H. Conway and N. J. A. Sloane, "Fast quantizing and
    decoding algorithms for lattice quantizers and codes", IEEE Trans. Inf. Theory 28(2):227–232,
    1982, and SPLAG (Sphere Packings, Lattices and Groups, 3rd ed. 1999) ch. 20.
    """

    #: whether ``closest_point`` is exact (otherwise the class documents its approximation)
    exact: bool = True
    #: short display name (``E8``, ``D4*`` ...)
    name: str = "lattice"
    #: a bound h on every coordinate of the Voronoi cell (|u_i| ≤ h), in the lattice's own
    #: scaling: half the side of a cube c·Z^n contained in the lattice, or the covering radius;
    #: None where unknown
    cell_halfwidth: float | None = None
    #: the covering radius (the largest ‖u‖ over the Voronoi cell), in the lattice's own scaling;
    #: None where unknown (:attr:`cell_bound` then falls back on the cube)
    covering_radius: float | None = None

    @property
    def cell_bound(self) -> float | None:
        """An upper bound on ‖u‖ over the Voronoi cell: the covering radius, else h·√n from
        :attr:`cell_halfwidth`; None where neither is known. A point farther from the origin is
        outside the cell without decoding it."""
        if self.covering_radius is not None:
            return float(self.covering_radius)
        if self.cell_halfwidth is None:
            return None
        return float(self.cell_halfwidth) * math.sqrt(self.dim)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension m."""

    @property
    @abstractmethod
    def generator_matrix(self) -> Tensor:
        """``(m, m)`` matrix B whose columns are the basis vectors."""

    @abstractmethod
    def closest_point(self, x: Tensor) -> Tensor:
        """K_Λ(x): the lattice point nearest to each row of ``x``.

        ``x``: floating-point ``(..., m)``; returns the points in ``x``'s shape and dtype. Raises
        ValueError where ``x`` is not a floating-point tensor of rows of m numbers."""

    # ------------------------------------------------------------ coordinates
    def coordinates(self, points: Tensor) -> Tensor:
        """Integer coordinates ``k`` (int64, ``(..., m)``) of lattice points ``(..., m)``:
        ``points = k @ B.T``, solved in float64 whatever the points' dtype (float32 or integer
        points against a float64 basis were a RuntimeError of ``linalg.solve``), then rounded.
        ValueError for rows of the wrong width or coordinates beyond ±:data:`MAX_COORDINATE`."""
        check_rows(points, self.dim, self.name, floating=False)
        basis = self.generator_matrix.to(device=points.device, dtype=torch.float64)
        k = torch.linalg.solve(basis, points.to(torch.float64).unsqueeze(-1)).squeeze(-1)
        return to_coordinates(torch.round(k))

    def points(self, coords: Tensor) -> Tensor:
        """Lattice points ``k @ B.T`` ``(..., m)`` from integer coordinates ``k`` ``(..., m)``,
        in the generator matrix's dtype (float64 for the fixed lattices, whatever ``k``'s)."""
        check_rows(coords, self.dim, self.name, floating=False)
        basis = self.generator_matrix
        return coords.to(basis.dtype) @ basis.T

    # ------------------------------------------------------------------ dither
    def sample_dither(
        self,
        n: int | Sequence[int],
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``(n, m)`` samples uniform over the Voronoi cell P0; ``n`` may also be a shape
        ``(*batch)``, for ``(*batch, m)`` samples (the same numbers as ``n = Π batch``, reshaped).

        A point uniform over the fundamental parallelepiped ``B [0, 1)^m`` reduced modulo the
        lattice, ``u = y - K(y)``, is uniform over P0. Drawn on the generator's device (torch's
        default CPU generator when none is given), then moved to ``device``. ValueError for an
        ``n`` outside [0, 2^31 / m] (or a shape of other than non-negative integers, or of more
        samples), a ``generator`` that is not a ``torch.Generator`` or a ``dtype`` that is not
        floating-point.
        """
        rows, batch = dither_rows(n)
        y = self.points_from_unit(self._unit_draws(rows, generator, device, dtype))
        return (y - self.dither_point(y)).reshape(*batch, self.dim)

    def dither_point(self, y: Tensor) -> Tensor:
        """The lattice point that a dither subtracts from a draw ``y`` on the fundamental
        parallelepiped (``u = y − dither_point(y)``): a closest point of ``y``. A lattice whose
        decoder changed keeps its earlier decoder here (:class:`BarnesWallLattice`), because the
        decoder of a file regenerates the dither bit for bit, and two exact decoders may break
        a tie within rounding differently."""
        return self.closest_point(y)

    def _unit_draws(self, n: int, generator, device, dtype) -> Tensor:
        """``(n, m)`` draws in [0, 1) from the generator (CPU by default), moved to ``device``."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n * self.dim <= MAX_DRAWS:
            raise ValueError(
                f"n must be an integer in [0, {MAX_DRAWS // self.dim}] (at most 2^31 numbers "
                f"of {self.dim} coordinates), got {n!r}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        source = generator.device if generator is not None else "cpu"
        r = torch.rand(n, self.dim, generator=generator, device=source, dtype=dtype)
        return r if device is None else r.to(device)

    def points_from_unit(self, r: Tensor) -> Tensor:
        """Map ``r ∈ [0, 1)^m`` to the fundamental parallelepiped ``B r``."""
        check_rows(r, self.dim, self.name)
        return r @ self.generator_matrix.to(device=r.device, dtype=r.dtype).T

    # --------------------------------------------------------------- constants
    @property
    def log_volume(self) -> Tensor:
        """log V, the log-volume of the Voronoi cell (= log |det B|)."""
        return torch.linalg.slogdet(self.generator_matrix)[1]

    @property
    def volume(self) -> Tensor:
        """V = |det B|, the volume of the Voronoi cell (a 0-d tensor)."""
        return self.log_volume.exp()

    def second_moment(self, *, samples: int = 200_000, seed: int = 0) -> Tensor:
        """σ²_Λ = (1/m) E‖U‖² for U uniform over P0.

        The base class estimates it by Monte Carlo (relative standard error about
        ``1/sqrt(samples)``) from ``samples`` float64 dither draws seeded with ``seed``; lattices
        with a closed form override it. A 0-d float64 tensor, in the lattice's own units
        (squared length per dimension). ValueError unless ``samples`` is a positive integer.
        """
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        gen = torch.Generator().manual_seed(seed)
        u = self.sample_dither(samples, generator=gen, dtype=torch.float64)
        return u.pow(2).sum(-1).mean() / self.dim

    def nsm(self, **kwargs) -> Tensor:
        """Normalized second moment G(Λ) = σ²_Λ / V^{2/m}."""
        return self.second_moment(**kwargs) / torch.exp(2.0 * self.log_volume / self.dim)

    def kl_to_gaussian(self, **kwargs) -> Tensor:
        """KL(U_m ‖ N(0, σ²_Λ I)) in nats per dimension, ½·log(2πe·G(Λ)) (lattice paper,
        eq. 12); ``kwargs`` go to :meth:`second_moment`."""
        return 0.5 * torch.log(2 * math.pi * math.e * self.nsm(**kwargs))
