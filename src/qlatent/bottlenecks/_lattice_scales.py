"""The learned scales of a good lattice (:mod:`.good_lattice`) and the volumes they give.

The block or coordinate scales s and the prior scales b of
:class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice` as it reads them
(:func:`spacing`, :func:`scale`, :func:`coordinate_scale`, :func:`per_coordinate`), the scaled
blocks' volumes (:func:`block_log_volume`, :func:`log_volume`, :func:`block_spacing`) and what
the cells' shape costs (:func:`shaping_gap`). The module is their first argument; the class
takes them as its properties and methods of the same names (with a leading underscore where
private).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..lattices import RectangularLattice
from ._lattice_estimate import _block_nsm

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice


def spacing(neck: DitheredGoodLattice) -> Tensor:
    """The learned scales: per block as V_b^{1/n_b}, shape ``(blocks,)``, or per coordinate,
    shape ``(m,)`` (``spacing_per="coordinate"``)."""
    return neck.log_spacing.exp()


def block_spacing(neck: DitheredGoodLattice) -> Tensor:
    """Each scaled block's cell size V_b^{1/n_b}, shape ``(blocks,)``."""
    return (neck._block_log_volume() / neck._block_dims.to(neck.log_spacing.dtype)).exp()


def scale(neck: DitheredGoodLattice) -> Tensor:
    """Prior scales b per coordinate, shape ``(m,)`` (with ``scale_per="block"`` each block's
    one scale, repeated over its coordinates)."""
    scale = neck.log_scale.exp()
    return scale if neck.scale_per == "coordinate" else neck._per_coordinate(scale)


def coordinate_scale(neck: DitheredGoodLattice) -> Tensor:
    """σ_i: the factor from the base lattice to the scaled one, per coordinate ``(m,)``."""
    spacing = neck.spacing
    if neck.spacing_per == "block":
        spacing = neck._per_coordinate(spacing)
    return spacing * neck._unit.to(neck.log_spacing.dtype)


def per_coordinate(neck: DitheredGoodLattice, per_block: Tensor) -> Tensor:
    """A ``(blocks,)`` tensor repeated over each block's coordinates, ``(m,)``. One block is
    expanded rather than indexed: the backward of indexing a one-element tensor (a scatter
    into it) failed to compile in torch's CPU code generator ("InductorError:
    AssertionError"), so a model holding an E8 or Leech bottleneck of one block could not
    be trained under ``torch.compile``."""
    if per_block.shape[0] == 1:
        return per_block.expand(neck._block_of.shape[0])
    return per_block[neck._block_of]


def block_log_volume(neck: DitheredGoodLattice) -> Tensor:
    """log V_b of each scaled block, ``(blocks,)``: n_b log s_b, or Σ_{i ∈ b} log s_i with a
    scale per coordinate (each base block has unit volume)."""
    if neck.spacing_per == "block":
        return neck._block_dims.to(neck.log_spacing.dtype) * neck.log_spacing
    if neck._membership is not None:  # the rounding every trained row has had
        return neck.log_spacing @ neck._membership.to(neck.log_spacing.dtype)
    blocks = neck.log_spacing.new_zeros(len(neck.geometry.blocks))
    return blocks.index_add(0, neck._block_of, neck.log_spacing)


def log_volume(neck: DitheredGoodLattice) -> Tensor:
    """log V of the scaled cell, Σ_b log V_b."""
    return neck._block_log_volume().sum()


def shaping_gap(neck: DitheredGoodLattice) -> Tensor:
    """KL(U ‖ N(0, Σ_U)) in nats per code vector, a 0-d float64 tensor: what the cell's
    shape costs against an ideal lattice's Gaussian-like cell (lattice paper, eq. 12),
    Σ_b n_b·½·log(2πe·G(Λ_b)) over the blocks (E8^5 4.05, Λ24 ⊕ Λ16 2.63, Z^40 7.06 nats;
    G as :data:`qlatent.lattices.LITERATURE_NSM` gives it, else estimated once). The KL is
    unchanged by any linear map of the cell, so the learned scales, per block or per
    coordinate, leave it as it is. A lattice VAE ends at least this far above the
    Gaussian-lattice VAE, all else equal."""
    gap = 0.0
    for block in neck.geometry.blocks:
        g = 1 / 12 if isinstance(block, RectangularLattice) else _block_nsm(block)
        gap += block.dim * 0.5 * math.log(2 * math.pi * math.e * g)
    return torch.tensor(gap, dtype=torch.float64, device="cpu")  # a number, not a weight
