"""The Leech lattice Λ24 (SPLAG ch. 4 §11, ch. 20 §6).

Scaled by √8 to integer coordinates, x ∈ Z^24 lies in Λ24 exactly when, for m ∈ {0, 1},

    x = m·1 + 2c + 4z

with c a word of the extended binary Golay code G24 and z ∈ Z^24 with Σ z ≡ m (mod 2). So Λ24 is
the union of 2 · 4096 cosets of 4·D24 (or of its odd-sum translate):

    Λ24 = ⋃_{c ∈ G24} (2c + 4·D24)  ∪  ⋃_{c ∈ G24} (1 + 2c + 4·(D24 + e_1))

Closest point, exact: a search over the 8192 cosets in which the squared distances to all of them
come from one matrix product per offset and the parity corrections are computed only for the
cosets that can still win (``qlatent.lattices._glued``); the winning coset is decoded directly.
Minimal norm 32 (4 at unit scale), kissing number 196560, volume 8^12, G ≈ 0.0657710.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._glued import BinaryCode, closest_point_glued
from ._utils import FixedLattice, as_basis, dn_rows, integer_basis
from .base import LATTICES

#: 1 + x^2 + x^4 + x^5 + x^6 + x^10 + x^11, a generator of the cyclic [23, 12, 7] Golay code
_GOLAY_POLY = (1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1)
#: points decoded per chunk: the (chunk, 4096) tables stay within a few MB
_CHUNK = 512


def golay_generator() -> Tensor:
    """``(12, 24)`` generator rows of the extended Golay code (cyclic code plus a parity bit)."""
    g = torch.zeros(12, 24, dtype=torch.int64)
    for i in range(12):
        g[i, i : i + 12] = torch.tensor(_GOLAY_POLY)
    g[:, 23] = g[:, :23].sum(1) % 2
    return g


@functools.cache
def golay_code() -> BinaryCode:
    """The extended Golay code: 4096 words of length 24 (weights 0, 8, 12, 16, 24 with
    multiplicities 1, 759, 2576, 759, 1)."""
    return BinaryCode(golay_generator())


@LATTICES.register("leech")
class LeechLattice(FixedLattice):
    """Λ24 in the √8-scaled integer coordinates above."""

    name = "Leech"
    cell_halfwidth = 4.0  # 8·Z^24 ⊂ 4·D24 ⊂ Λ24

    def __init__(self) -> None:
        self._code = golay_code()
        generators = [[2 * int(v) for v in row] for row in golay_generator()]
        generators += [[4 * v for v in row] for row in dn_rows(24)]
        generators.append([-3] + [1] * 23)
        self._basis = as_basis(integer_basis(generators))

    def closest_point(self, x: Tensor) -> Tensor:
        return closest_point_glued(x, self._code, 2.0, 4.0, ((0.0, 0), (1.0, 1)), _CHUNK)
