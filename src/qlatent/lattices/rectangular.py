"""Rectangular lattice: a diagonal generator ``B = diag(Δ)``; ``Z^m`` is the case ``Δ = 1``.

The lattice the paper's experiments use (L. A. Lastras, "Lattice Representation Learning",
arXiv 2006.13833, section 4): every coordinate is quantized independently with its own spacing
Δ_i, so closest point, dither and cell constants all have closed forms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import recording_graph
from .base import LATTICES, Lattice, check_dense, check_rows, dither_rows, to_coordinates

#: the largest ``Z^m`` :func:`integer_lattice` builds (a bottleneck's ``dim`` is at most this too)
MAX_DIM = 2**30


@LATTICES.register("rectangular")
class RectangularLattice(Lattice):
    """Lattice ``Δ ⊙ Z^m``: closest point rounds each coordinate, ``round(x / Δ) · Δ`` (exact);
    the Voronoi cell is the box ``[−Δ/2, Δ/2]^m``, σ² = mean(Δ_i²)/12, G = 1/12 for equal Δ.

    Args:
        spacing: ``(m,)`` positive spacings Δ_i. May require grad; every method is differentiable
            in it (``closest_point`` through the multiplication by Δ).

    Raises:
        ValueError: ``spacing`` is not a non-empty 1-D real tensor of finite positive values.
    """

    def __init__(self, spacing: Tensor) -> None:
        if not isinstance(spacing, Tensor):
            raise ValueError(f"spacing must be a torch.Tensor, got {type(spacing).__name__}")
        if spacing.is_complex() or spacing.dtype == torch.bool:
            raise ValueError(f"spacing must be a real-valued tensor, got {spacing.dtype}")
        if spacing.dim() != 1 or spacing.numel() == 0:
            raise ValueError(f"spacing must be a non-empty 1-D tensor, got shape {spacing.shape}")
        if recording_graph():
            # torch.export cannot read the values back: the check runs in the exported program,
            # and the name (for messages only) is not looked up
            ok = (torch.isfinite(spacing) & (spacing > 0)).all()
            torch._assert_async(ok, "spacing must be finite and positive")
            self.spacing, self.name = spacing, "rectangular"
            return
        if not torch.isfinite(spacing).all() or (spacing <= 0).any():
            raise ValueError("spacing must be finite and positive")
        self.spacing = spacing
        self.name = "Z" if bool((spacing == 1).all()) else "rectangular"

    @property
    def dim(self) -> int:
        return self.spacing.numel()

    @property
    def cell_halfwidth(self) -> Tensor:
        """Δ/2 per coordinate: the cell is the box itself."""
        return self.spacing / 2

    @property
    def covering_radius(self) -> float:
        """‖Δ‖/2: the cell's corners."""
        return float(self.spacing.double().norm()) / 2

    @property
    def generator_matrix(self) -> Tensor:
        check_dense(self.dim, self.name)
        return torch.diag(self.spacing)

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, self.dim, self.name)
        spacing = self.spacing.to(device=x.device, dtype=x.dtype)
        return torch.round(x / spacing) * spacing

    def coordinates(self, points: Tensor) -> Tensor:
        check_rows(points, self.dim, self.name, floating=False)
        spacing = self.spacing.to(points.device)
        return to_coordinates((points / spacing).round_())  # in place: a pass fewer

    def points(self, coords: Tensor) -> Tensor:
        check_rows(coords, self.dim, self.name, floating=False)
        return coords.to(self.spacing.dtype) * self.spacing.to(coords.device)

    def points_from_unit(self, r: Tensor) -> Tensor:
        # B r coordinate by coordinate: the same products as r @ diag(Δ), without the (m, m)
        check_rows(r, self.dim, self.name)
        return r * self.spacing.to(device=r.device, dtype=r.dtype)

    def sample_dither(self, n, generator=None, *, device=None, dtype=torch.float32) -> Tensor:
        # Uniform over the cell [-Δ/2, Δ/2)^m directly: one draw, one fused multiply-add.
        rows, batch = dither_rows(n)
        r = self._unit_draws(rows, generator, device, dtype)
        return ((r - 0.5) * self.spacing.to(device=r.device, dtype=r.dtype)).reshape(
            *batch, self.dim
        )

    @property
    def log_volume(self) -> Tensor:
        return self.spacing.log().sum()

    def second_moment(self, **_) -> Tensor:
        return self.spacing.pow(2).mean() / 12.0


@LATTICES.register("Z")
def integer_lattice(dim: int) -> RectangularLattice:
    """The integer lattice ``Z^m`` of ``dim`` = m coordinates, float64 spacing 1 (named ``Z``).
    ValueError unless ``dim`` is an integer in [1, 2^30]."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"dim must be an integer in [1, 2^30], got {dim!r}")
    return RectangularLattice(torch.ones(dim, dtype=torch.float64))
