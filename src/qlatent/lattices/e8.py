"""The Gosset lattice E_8 = D_8 ∪ (D_8 + ½·1) (Conway & Sloane 1982; SPLAG ch. 4 §8.1, ch. 20).

Closest point: the nearer of the closest points in D_8 and in D_8 + ½·1 (each: round, then fix
the parity by moving the worst-rounded coordinate). Both come from one rounding: with r = round(x),
e = x − r and a = |e|, the nearest half-integer point is r + ½·sign(e) with errors ½ − a, so

    cost(D_8)       = Σ a²          + [Σ r odd]           · (1 − 2·max a)
    cost(D_8 + ½·1) = Σ (½ − a)²    + [Σ r − #(e<0) odd]  · 2·min a

and only the chosen coset's parity fix is applied. Volume 1, minimal norm 2,
G = 929/12960 ≈ 0.0716821, the best 8-D quantizer known.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import FixedLattice, as_basis
from .base import LATTICES


@LATTICES.register("e8")
class GossetLattice(FixedLattice):
    """E_8 with the basis of SPLAG ch. 4 eq. (100): ``2e_1``, ``e_{i+1} − e_i`` and ``½·1``."""

    name = "E8"
    cell_halfwidth = 1.0  # 2·Z^8 ⊂ E8

    def __init__(self) -> None:
        rows = [[0] * 8 for _ in range(8)]
        rows[0][0] = 2
        for i in range(1, 7):
            rows[i][i - 1], rows[i][i] = -1, 1
        rows[7] = [0.5] * 8
        self._basis = as_basis(rows)

    def closest_point(self, x: Tensor) -> Tensor:
        r = torch.round(x)
        e = x - r
        a = e.abs()
        sign = torch.where(e >= 0, 1.0, -1.0).to(x.dtype)  # toward x; + on exact integers
        sum_a2 = a.square().sum(-1, keepdim=True)
        sum_a = a.sum(-1, keepdim=True)
        worst, worst_at = a.max(-1, keepdim=True)
        best, best_at = a.min(-1, keepdim=True)
        odd0 = torch.remainder(r, 2.0).sum(-1, keepdim=True)
        odd1 = torch.remainder(odd0 - (e < 0).sum(-1, keepdim=True), 2.0)
        odd0 = torch.remainder(odd0, 2.0)
        cost0 = sum_a2 + odd0 * (1.0 - 2.0 * worst)
        cost1 = (sum_a2 - sum_a + 0.25 * x.shape[-1]) + odd1 * (2.0 * best)
        half = cost1 < cost0  # (..., 1): the D_8 + ½ coset wins
        point = torch.where(half, r + 0.5 * sign, r)
        # the parity fix of the chosen coset: D_8 moves its worst coordinate one step toward x;
        # D_8 + ½ moves its worst (the coordinate nearest an integer) to the other half-integer
        at = torch.where(half, best_at, worst_at)
        step = torch.where(half, -sign.gather(-1, at) * odd1, sign.gather(-1, at) * odd0)
        return point.scatter_add_(-1, at, step)
