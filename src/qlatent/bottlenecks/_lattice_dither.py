"""The dither of a good lattice (:mod:`.good_lattice`) and the hard path built on it.

:func:`unit_dither` draws the points uniform over the base lattice's Voronoi cell that
:class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice` subtracts on its training path,
averages over in its Monte-Carlo density and adds on its hard path (:func:`hard_dither`, made
on the CPU so that a decoder regenerates it bit for bit); :func:`coordinates` and
:func:`reconstruct` go from y to the lattice point's integer coordinates and back, and
:func:`quantize_rows` / :func:`dequantize_rows` are the module's hard path on rows. The module is
their first argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..rng import counter_uniform, draw_key

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice


def unit_dither(neck: DitheredGoodLattice, n: int, generator, dtype, device=None) -> Tensor:
    """``(n, m)`` points uniform over the base lattice's Voronoi cell (counter-based draws
    on the fundamental parallelepiped, reduced modulo the lattice), made on ``device``
    (default the CPU). The draws are the same bits on every device and the basis product
    is exact in float64 (``FixedLattice.points_from_unit``), but the reduction modulo the
    lattice runs in the draws' dtype, and MPS has no float64: the hard path's dither, which
    a decoder must regenerate bit for bit, is always made on the CPU."""
    r = counter_uniform(draw_key(generator, device), (n, neck.dim), dtype)
    y = neck.geometry.points_from_unit(r)
    return y - neck.geometry.dither_point(y)


def hard_dither(neck: DitheredGoodLattice, n: int, generator, device, dtype) -> Tensor:
    return neck._unit_dither(n, generator, dtype).to(device) * neck._coordinate_scale()


def coordinates(neck: DitheredGoodLattice, y: Tensor, u: Tensor) -> Tensor:
    """Integer coordinates of z = K_Λ(y + u) in the base blocks' bases. (Integers have no
    derivative: x is detached, so that forward mode does not meet the decoders' ``out=``
    kernels, which it refused.)"""
    x = ((y + u) / neck._coordinate_scale()).detach()
    return neck.geometry.coordinates(neck.geometry.closest_point(x))


def reconstruct(neck: DitheredGoodLattice, indices: Tensor, u: Tensor) -> Tensor:
    sigma = neck._coordinate_scale()
    return neck.geometry.points(indices).to(sigma.dtype) * sigma - u


def quantize_rows(neck: DitheredGoodLattice, y: Tensor, generator) -> Tensor:
    y = y.to(neck.log_spacing.dtype)
    return neck._coordinates(y, neck._hard_dither(y.shape[0], generator, y.device, y.dtype))


def dequantize_rows(neck: DitheredGoodLattice, indices: Tensor, generator) -> Tensor:
    dtype, device = neck.log_spacing.dtype, neck.log_spacing.device
    u = neck._hard_dither(indices.shape[0], generator, device, dtype)
    return neck._reconstruct(indices.to(device), u)
