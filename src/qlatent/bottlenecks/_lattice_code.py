"""The code model of a good lattice (:mod:`.good_lattice`): how its blocks are coded into files.

:func:`code_model` builds :class:`qlatent.coding.models.GoodLattice` for
:meth:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice.code_model`, block by block, with
the cell widths of the coset code model of Λ16 and Λ24 (:data:`CODE_CELL_WIDTH`, which
:mod:`.good_lattice` shows under its own name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice

#: the cell width w of the coset code model of Λ16 and Λ24, in their integer coordinates
#: (:class:`qlatent.coding.models._GluedBlock`): the widths that gave the shortest files on the
#: first 200 and 300 training images of the Table-1 Λ24 ⊕ Λ16 model, among 1.0–2.0 (Λ16) and
#: 1.6–2.4 (Λ24); a first look at 200 test images (Λ24, 1.0–4.0) pointed the same way
CODE_CELL_WIDTH = {"BW16": 1.25, "Leech": 2.0}


def code_model(neck: DitheredGoodLattice, cosets: bool, e8_cosets: str):
    """:meth:`DitheredGoodLattice.code_model` of ``neck``: its blocks' entries (start, kind,
    arguments), its scales, and its hard path's dither, coordinates and reconstruction."""
    from ..coding.models import GoodLattice
    from ..lattices import GossetLattice, triangular_basis
    from ..rng import SeedKeys

    gaussian = neck.prior_name == "gaussian"
    blocks, start = [], 0
    for block in neck.geometry.blocks:
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
    dtype = neck.log_spacing.dtype
    return GoodLattice(
        blocks=blocks,
        sigma=neck._coordinate_scale().detach().cpu().double().numpy(),
        scale=neck.scale.detach().cpu().double().numpy(),
        dtype=dtype,
        dither=lambda n, seed: neck._hard_dither(n, SeedKeys(seed), "cpu", dtype).detach(),
        coordinates=lambda rows, u: neck._coordinates(rows, u),
        reconstruct=lambda k, u: neck._reconstruct(k, u),
        e8_cosets=e8_cosets,
        prior=neck.prior_name,
    )
