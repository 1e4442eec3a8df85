"""The Barnes–Wall lattice Λ16 (SPLAG ch. 4 §10, ch. 20 §5).

Scaled to integer coordinates, Λ16 is the union of 32 cosets of 2·D16 glued by the first-order
Reed–Muller code RM(1, 4) (16 bits, 32 words of weight 0, 8 or 16):

    Λ16 = ⋃_{c ∈ RM(1,4)} (c + 2·D16)

Closest point: the nearest of the 32 cosets, their squared distances from one matrix product and
parity corrections only where they can matter (``qlatent.lattices._glued``), then the winning
coset decoded directly (round, fix parity). Minimal norm 8, kissing number
4320, volume 2^12, G ≈ 0.0682976.

With ``compile=True`` the same search runs as one ``torch.compile``d loop over the points
(:func:`compiled_decode`), written over the sixteen coordinates as separate columns: the 32 coset
distances and parities come from two 16-point Walsh–Hadamard transforms (a codeword of RM(1, 4) is
a0 ⊕ a·v at position v, so a sum over the positions where it is 1 is (total − transform(a))/2),
the parity correction from the largest rounding error over each half of the positions.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from ._glued import BinaryCode, closest_point_glued
from ._utils import FixedLattice, as_basis, dn_rows, integer_basis, parity
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
#: points per compiled call: the kernel keeps no temporaries, this bounds the transposed copy
_COMPILED_CHUNK = 1 << 16
#: fewer points decode eagerly with ``compile=True`` (a compiled call costs tens of
#: microseconds, and shapes of 0 and 1 rows would each be compiled apart)
_COMPILED_MIN_ROWS = 64


@LATTICES.register("bw16")
class BarnesWallLattice(FixedLattice):
    """Λ16 in the integer scaling above."""

    name = "BW16"
    cell_halfwidth = 2.0  # 4·Z^16 ⊂ 2·D16 ⊂ Λ16
    covering_radius = math.sqrt(6.0)  # √3 at minimal norm 4 (SPLAG ch. 4 §10); here norm 8

    def __init__(self, *, compile: bool = False) -> None:
        """``compile``: decode with the search fused by ``torch.compile`` (:func:`compiled_decode`,
        compiled on first use per dtype and device, about a minute with a cold inductor cache;
        needs a C++ compiler on the CPU): about four times the eager decoder's points/s. The same
        points, except that a point equidistant from two lattice points within rounding may get
        the other one (the sums run in another order)."""
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        self._code = reed_muller_1_4()
        generators = [[2 * int(v) for v in row] for row in dn_rows(16)]
        generators += [[int(v) for v in row] for row in self._code.generator]
        self._basis = as_basis(integer_basis(generators))

    def closest_point(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, 16)
        if not self.compile or rows.shape[0] < _COMPILED_MIN_ROWS:
            chunk = _CHUNK if x.device.type == "cpu" else _CHUNK_ACCELERATOR
            return closest_point_glued(x, self._code, 1.0, 2.0, ((0.0, 0),), chunk)
        rows = rows.detach()  # piecewise constant: its derivative is 0
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[0], _COMPILED_CHUNK):
            chunk = rows[start : start + _COMPILED_CHUNK]
            out[start : start + chunk.shape[0]] = compiled_decode()(chunk.T.contiguous())
        return out.view(x.shape)

    def glue(self) -> tuple[Tensor, Tensor, int]:
        """The cosets above as ``(residues r_c (32, 16), parities p_c (32,), q = 2)``: Λ16 is
        the union of r_c + 2·{y ∈ Z^16 : Σ y ≡ p_c (mod 2)}."""
        words = self._code.words.clone()
        return words, torch.zeros(words.shape[0], dtype=torch.int64), 2


def _walsh_hadamard(columns: list[Tensor]) -> list[Tensor]:
    """out[a] = Σ_v columns[v]·(−1)^{popcount(a & v)} over 16 columns: four butterfly stages."""
    v = list(columns)
    h = 1
    while h < len(v):
        for start in range(0, len(v), 2 * h):
            for i in range(start, start + h):
                v[i], v[i + h] = v[i] + v[i + h], v[i] - v[i + h]
        h *= 2
    return v


def _odd_positions(a: int) -> list[bool]:
    """Where the linear function v ↦ a·v of RM(1, 4) is 1, over the positions v = 0..15."""
    return [bin(a & v).count("1") % 2 == 1 for v in range(16)]


def _running_max(values: list[Tensor]) -> Tensor:
    out = values[0]
    for v in values[1:]:
        out = torch.maximum(out, v)
    return out


def _closest_bw16_columns(xt: Tensor) -> Tensor:
    """The closest Λ16 point to each column of ``xt`` ``(16, N)`` (coordinates first), returning
    ``(N, 16)``: the search of :func:`qlatent.lattices._glued.decode_glued` over the 32 cosets
    c + 2·D16 written column by column, so that ``torch.compile`` makes it one loop of
    elementwise vector code across points.

    Per position v and bit b, s = (x_v − b)/2 rounds to z with error e (|e| ≤ ½); in units of the
    scale's square (4) the coset of codeword c costs Σ_v e_v(c_v)² plus, where Σ_v z_v(c_v) is
    odd, the cost 1 − 2·max_v |e_v(c_v)| of moving the worst-rounded coordinate one step (as the
    eager decoder, ×4 exactly). Codeword (a0, a) is a0 ⊕ a·v: its sums over v are the all-zero or
    all-one word's plus or minus half of (total − Walsh–Hadamard transform at a) of the
    differences between the two bits' terms; the maximum is taken over the two halves
    {a·v = 0} and {a·v = 1}. The first of equal costs wins (word order a0·16 + a), then the
    winner's coset is decoded by rounding, its parity fixed at the first of its worst-rounded
    coordinates, moving toward x (up on an exact tie), as in the eager decoder."""
    xs = list(xt.unbind(0))
    z, e, err = [], [], []  # per bit: the rounded multiple of 2, signed and absolute error
    for b in (0.0, 1.0):
        s = [(x - b) * 0.5 for x in xs]
        r = [torch.round(v) for v in s]
        z.append(r)
        e.append([v - q for v, q in zip(s, r, strict=True)])
        err.append([d.abs() for d in e[-1]])
    sq = [[d * d for d in side] for side in err]
    par = [[parity(q) for q in side] for side in z]
    total_sq = [functools.reduce(torch.add, side) for side in sq]  # the constant words' costs
    total_par = [functools.reduce(torch.add, side) for side in par]
    diff_sq = _walsh_hadamard([sq[1][v] - sq[0][v] for v in range(16)])
    diff_par = _walsh_hadamard([par[1][v] - par[0][v] for v in range(16)])
    best = best_word = best_odd = None
    for a in range(16):
        odd = _odd_positions(a)
        # Σ over {a·v = 1} of (bit-1 term − bit-0 term): (Σ_v − transform)/2, exact for parities
        ones_sq = ((total_sq[1] - total_sq[0]) - diff_sq[a]) * 0.5
        ones_par = ((total_par[1] - total_par[0]) - diff_par[a]) * 0.5
        halves = [[v for v in range(16) if odd[v] == side] for side in (False, True)]
        for a0 in (0, 1):
            # codeword bit at v is a0 ⊕ odd[v]: positions {a·v = 0} take bit a0, the rest 1 − a0
            worst = _running_max(
                [err[a0][v] for v in halves[0]] + [err[1 - a0][v] for v in halves[1]]
            )
            sign = 1.0 if a0 == 0 else -1.0
            cost_sq = total_sq[a0] + sign * ones_sq
            word_odd = parity(total_par[a0] + sign * ones_par)
            cost = cost_sq + word_odd * (1.0 - 2.0 * worst)
            word = float(16 * a0 + a)
            if best is None:
                best, best_word, best_odd = cost, torch.full_like(cost, word), word_odd
                continue
            take = cost < best
            best = torch.where(take, cost, best)
            best_word = torch.where(take, word, best_word)
            best_odd = torch.where(take, word_odd, best_odd)
    top = torch.floor(best_word * (1.0 / 16))
    a_bits = [parity(torch.floor((best_word - 16.0 * top) * (1.0 / 2**j))) for j in range(4)]
    bits, zs, es = [], [], []
    worst = worst_at = None
    for v in range(16):
        bit = top
        for j in range(4):
            if (v >> j) & 1:
                bit = bit + a_bits[j]
        bit = parity(bit)
        one = bit > 0.5
        zs.append(torch.where(one, z[1][v], z[0][v]))
        es.append(torch.where(one, e[1][v], e[0][v]))
        bits.append(bit)
        size = es[-1].abs()
        if worst is None:
            worst, worst_at = size, torch.zeros_like(size)
            continue
        above = size > worst
        worst, worst_at = torch.where(above, size, worst), torch.where(above, float(v), worst_at)
    out = []
    for v in range(16):
        step = torch.where(es[v] >= 0, best_odd, -best_odd)
        out.append(bits[v] + 2.0 * torch.where(worst_at == float(v), zs[v] + step, zs[v]))
    return torch.stack(out, 1)


@functools.cache
def compiled_decode():
    """:func:`_closest_bw16_columns` fused by ``torch.compile`` (dynamic shapes: one compilation
    for every number of points)."""
    return torch.compile(_closest_bw16_columns, dynamic=True)
