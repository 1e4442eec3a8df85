"""The root lattice A_n, with A_2 the hexagonal lattice (the lattice paper's Figure 1).

A_n = {k ∈ Z^{n+1} : Σ k_i = 0} lives in the hyperplane Σ x_i = 0 of R^{n+1}; here it is written
in n orthonormal coordinates of that hyperplane (a Helmert basis Q, ``x' = x Qᵀ``). Closest point
(Conway & Sloane 1982, SPLAG ch. 20 §2): round every coordinate of x'; the rounded sum Δ is
generally not 0, so move the Δ coordinates that rounded up the most down by one (Δ > 0), or the
|Δ| that rounded down the most up by one (Δ < 0). G(A_2) = 5/(36√3) ≈ 0.0801875, the best 2-D
quantizer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import FixedLattice, in_chunks
from .base import LATTICES, check_rows

#: the largest n of A_n, D_n and D_n*: their (n, n) bases are formed in Python, and A_10000 took
#: 15 s and 800 MB (a name gives at most three digits; a good lattice's bottleneck at most 2^14
#: coordinates, in blocks)
MAX_N = 4096


def helmert(n: int) -> Tensor:
    """``(n, n+1)`` orthonormal rows spanning the hyperplane Σ x_i = 0 of R^{n+1} (float64)."""
    q = torch.zeros(n, n + 1, dtype=torch.float64)
    for i in range(1, n + 1):
        q[i - 1, :i] = 1.0 / math.sqrt(i * (i + 1))
        q[i - 1, i] = -i / math.sqrt(i * (i + 1))
    return q


@LATTICES.register("an")
class RootLatticeA(FixedLattice):
    """A_n for n ≥ 1, minimal norm 2, volume √(n+1), in the n Helmert coordinates above.

    ``closest_point`` is exact: the rule above (SPLAG ch. 20 §2), computed in float64 and
    returned in the input's dtype; A_2 by its two rectangular cosets. ValueError unless ``n`` is
    an integer in [1, :data:`MAX_N`].
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise ValueError(f"A_n needs an integer n in [1, {MAX_N}], got {n!r}")
        self._q = helmert(n)
        roots = torch.zeros(n, n + 1, dtype=torch.float64)  # e_i − e_{i+1}
        roots[torch.arange(n), torch.arange(n)] = 1.0
        roots[torch.arange(n), torch.arange(1, n + 1)] = -1.0
        self._basis = roots @ self._q.T
        self.name = f"A{n}"
        a = (n + 1) // 2  # the covering radius (minimal norm 2), SPLAG ch. 4 §6.1
        self.cell_halfwidth = math.sqrt(a * (n + 1 - a) / (n + 1))
        self.covering_radius = self.cell_halfwidth
        self._side = float(self._basis[0, 0])  # the Helmert frame puts b_1 = (√2, 0, ..., 0)

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, self.dim, self.name)
        if self.dim == 2:  # computed in float64: 8 bytes a number
            return in_chunks(self._closest_hexagonal, x, 2, itemsize=8)
        if x.dtype != torch.float64:
            # the basis is irrational: decode in float64 so that a float32 input gets the
            # float32 rounding of its exact closest point, at any magnitude
            return self.closest_point(x.double()).to(x.dtype)
        q = self._q.to(device=x.device, dtype=x.dtype)
        xe = x @ q  # (..., n+1), coordinates in R^{n+1} with Σ = 0
        f = torch.round(xe)
        e = xe - f
        excess = f.sum(-1, keepdim=True)  # Δ, an integer (|Δ| ≤ (n+1)/2)
        # rank of each coordinate's rounding error, 0 = rounded up the most (most negative e)
        rank = e.argsort(-1).argsort(-1).to(x.dtype)
        n1 = xe.shape[-1]
        down = (rank < excess) & (excess > 0)
        up = (rank >= n1 + excess) & (excess < 0)
        f = f - down.to(x.dtype) + up.to(x.dtype)
        return f @ q.T

    def _closest_hexagonal(self, x: Tensor) -> Tensor:
        """A_2 as two cosets of a rectangular lattice: b_1 = (a, 0) here, so with h = a√3/2
        the points are (a i, 2h j) and (a i + a/2, 2h j + h); round in each and keep the nearer
        (the 2-D case of Conway & Sloane's coset method). Computed in float64 (the basis is
        irrational), returned in ``x``'s dtype."""
        xd = x.to(torch.float64)
        a = self._side
        step = torch.tensor([a, a * math.sqrt(3)], dtype=torch.float64, device=x.device)
        half = step / 2
        first = torch.round(xd / step) * step
        second = torch.round((xd - half) / step) * step + half
        # the two squared coordinates summed by a matrix-vector product: the same sums (two
        # terms, one rounding), twice as fast on the CPU as a reduction over the last dimension
        ones = torch.ones(2, dtype=torch.float64, device=x.device)
        da = (xd - first).square_() @ ones
        db = (xd - second).square_() @ ones
        return torch.where((db < da).unsqueeze(-1), second, first).to(x.dtype)


@LATTICES.register("a2")
def hexagonal_lattice() -> RootLatticeA:
    """A_2, the hexagonal lattice (``RootLatticeA(2)``, named ``A2``; volume √3)."""
    return RootLatticeA(2)
