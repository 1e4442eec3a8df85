"""The Barnes–Wall lattice Λ16 (SPLAG ch. 4 §10, ch. 20 §5).

Scaled to integer coordinates, Λ16 is the union of 32 cosets of 2·D16 glued by the first-order
Reed–Muller code RM(1, 4) (16 bits, 32 words of weight 0, 8 or 16):

    Λ16 = ⋃_{c ∈ RM(1,4)} (c + 2·D16)

Closest point: the nearest of the 32 cosets, their squared distances from one matrix product and
parity corrections only where they can matter (``qlatent.lattices._glued``), then the winning
coset decoded directly (round, fix parity). Minimal norm 8, kissing number
4320, volume 2^12, G ≈ 0.0682976.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from ._glued import BinaryCode, closest_point_glued
from ._utils import FixedLattice, as_basis, dn_rows, integer_basis
from .base import LATTICES


@functools.cache
def reed_muller_1_4() -> BinaryCode:
    """RM(1, 4): the 32 affine Boolean functions a_0 + a·v of v ∈ F_2^4, evaluated at the 16
    points v (position index = v's bits). Generator rows: the all-ones word and the 4 coordinate
    functions."""
    points = torch.tensor(list(itertools.product((0, 1), repeat=4)), dtype=torch.int64)
    return BinaryCode(torch.cat([torch.ones(1, 16, dtype=torch.int64), points.T]))


#: points decoded per chunk: on the CPU sized for its cache; on an accelerator larger, since
#: every chunk costs kernel launches and host syncs (16 chunks of 4096 rows held an H200 to the
#: two-core CPU's speed)
_CHUNK = 4096
_CHUNK_ACCELERATOR = 1 << 16


@LATTICES.register("bw16")
class BarnesWallLattice(FixedLattice):
    """Λ16 in the integer scaling above."""

    name = "BW16"
    cell_halfwidth = 2.0  # 4·Z^16 ⊂ 2·D16 ⊂ Λ16
    covering_radius = math.sqrt(6.0)  # √3 at minimal norm 4 (SPLAG ch. 4 §10); here norm 8

    def __init__(self) -> None:
        self._code = reed_muller_1_4()
        generators = [[2 * int(v) for v in row] for row in dn_rows(16)]
        generators += [[int(v) for v in row] for row in self._code.generator]
        self._basis = as_basis(integer_basis(generators))

    def closest_point(self, x: Tensor) -> Tensor:
        chunk = _CHUNK if x.device.type == "cpu" else _CHUNK_ACCELERATOR
        return closest_point_glued(x, self._code, 1.0, 2.0, ((0.0, 0),), chunk)

    def glue(self) -> tuple[Tensor, Tensor, int]:
        """The cosets above as ``(residues r_c (32, 16), parities p_c (32,), q = 2)``: Λ16 is
        the union of r_c + 2·{y ∈ Z^16 : Σ y ≡ p_c (mod 2)}."""
        words = self._code.words.clone()
        return words, torch.zeros(words.shape[0], dtype=torch.int64), 2
