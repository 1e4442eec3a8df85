"""The checkerboard lattice D_n and its dual D_n* (Conway & Sloane, SPLAG ch. 4 §7.1, ch. 20).

    D_n  = {k ∈ Z^n : Σ k_i even}              closest point: round, then fix the parity
    D_n* = Z^n ∪ (Z^n + ½·1)                    closest point: nearer of the two roundings

D_4 is the best known 4-D quantizer (G = 13/(120√2) ≈ 0.0766032); D_3* is the body-centred cubic
lattice, the optimal 3-D quantizer.
"""

from __future__ import annotations

import math

from torch import Tensor

from ._utils import FixedLattice, as_basis, in_chunks, nearer, round_to_dn
from .an import MAX_N
from .base import LATTICES, check_rows


@LATTICES.register("dn")
class CheckerboardLattice(FixedLattice):
    """D_n for n ≥ 2; volume 2, minimal norm 2.

    ``closest_point`` is exact (Conway & Sloane 1982; SPLAG ch. 20): round every coordinate,
    and where the sum is odd move the worst-rounded coordinate one step the other way. ValueError
    unless ``n`` is an integer in [2, :data:`~qlatent.lattices.an.MAX_N`].
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_N:
            raise ValueError(f"D_n needs an integer n in [2, {MAX_N}], got {n!r}")
        rows = [[0] * n for _ in range(n)]
        rows[0][0], rows[0][1] = -1, -1
        for i in range(1, n):
            rows[i][i - 1], rows[i][i] = 1, -1
        self._basis = as_basis(rows)
        self.name = f"D{n}"
        self.cell_halfwidth = 1.0  # 2·Z^n ⊂ D_n
        # holes (1, 0, …, 0) and (½, …, ½) (SPLAG ch. 4 §7.1)
        self.covering_radius = max(1.0, math.sqrt(n) / 2)

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, self.dim, self.name)
        return in_chunks(round_to_dn, x, self.dim)


@LATTICES.register("dn_dual")
class DualCheckerboardLattice(FixedLattice):
    """D_n* = Z^n ∪ (Z^n + ½·1) for n ≥ 2, the dual lattice of D_n; volume ½.

    ``closest_point`` is exact: the nearer of the roundings to Z^n and to Z^n + ½·1 (SPLAG
    ch. 20). ValueError unless ``n`` is an integer in [2, :data:`~qlatent.lattices.an.MAX_N`].
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_N:
            raise ValueError(f"D_n* needs an integer n in [2, {MAX_N}], got {n!r}")
        rows = [[1 if j == i else 0 for j in range(n)] for i in range(n - 1)]
        rows.append([0.5] * n)
        self._basis = as_basis(rows)
        self.name = f"D{n}*"
        self.cell_halfwidth = 0.5  # Z^n ⊂ D_n*

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, self.dim, self.name)
        return in_chunks(_closest_dual, x, self.dim)


def _closest_dual(x: Tensor) -> Tensor:
    """The nearer of the two roundings of each row of ``x``: to Z^n and to Z^n + ½."""
    return nearer(x, x.round(), (x - 0.5).round_().add_(0.5))
