"""The Gosset lattice E_8 = D_8 ∪ (D_8 + ½·1) (Conway & Sloane 1982; SPLAG ch. 4 §8.1, ch. 20).

Closest point: decode x in D_8 and x − ½·1 in D_8 (round, fix parity), keep the nearer. Volume 1,
minimal norm 2, G = 929/12960 ≈ 0.0716821, the best 8-D quantizer known.
"""

from __future__ import annotations

from torch import Tensor

from ._utils import FixedLattice, as_basis, nearer, round_to_dn
from .base import LATTICES


@LATTICES.register("e8")
class GossetLattice(FixedLattice):
    """E_8 with the basis of SPLAG ch. 4 eq. (100): ``2e_1``, ``e_{i+1} − e_i`` and ``½·1``."""

    name = "E8"

    def __init__(self) -> None:
        rows = [[0] * 8 for _ in range(8)]
        rows[0][0] = 2
        for i in range(1, 7):
            rows[i][i - 1], rows[i][i] = -1, 1
        rows[7] = [0.5] * 8
        self._basis = as_basis(rows)

    def closest_point(self, x: Tensor) -> Tensor:
        return nearer(x, round_to_dn(x), round_to_dn(x - 0.5).add_(0.5))
