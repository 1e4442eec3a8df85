"""The Leech lattice Λ24 (SPLAG ch. 4 §11, ch. 20 §6).

Scaled by √8 to integer coordinates, x ∈ Z^24 lies in Λ24 exactly when, for m ∈ {0, 1},

    x = m·1 + 2c + 4z

with c a word of the extended binary Golay code G24 and z ∈ Z^24 with Σ z ≡ m (mod 2). So Λ24 is
the union of 2 · 4096 cosets of 4·D24 (or of its odd-sum translate):

    Λ24 = ⋃_{c ∈ G24} (2c + 4·D24)  ∪  ⋃_{c ∈ G24} (1 + 2c + 4·(D24 + e_1))

Closest point, exact, through a sextet of the Golay code (the structure behind the hexacode
decoders of Conway & Sloane 1986 and Vardy & Be'ery 1993, here derived from the code itself). Split
the 24 coordinates into the six tetrads of a sextet (any two form an octad). Normalize a word's
pattern on each tetrad so that its first bit is 0 (complementing it if needed): the 4096 words fall
into 128 classes of 32 with the same six normalized patterns, each class a coset of the subcode of
even unions of tetrads, so within a class any set of complemented tetrads of the class's parity
gives a codeword. For one offset m, the best coset of a class is then a minimum over per-tetrad
choices (complement or not, Σ z parity of the tetrad, a coordinate's second-best value flipping it
at cost δ) under two parity constraints: a min-plus product of six 4-entry tables over the group
Z2 × Z2, computed for all 2 · 128 classes at once in three pairs of tetrads (≈ 20 k operations per
point instead of the 8192-coset search of ``qlatent.lattices._glued``, kept as the tests'
reference). The winner's tetrad choices are read back through the same products and its coset is
decoded directly (round, fix parity).
Minimal norm 32 (4 at unit scale), kissing number 196560, volume 8^12, G ≈ 0.0657710.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._glued import BinaryCode, bit_tables, decode_coset
from ._utils import FixedLattice, as_basis, dn_rows, integer_basis
from .base import LATTICES

#: 1 + x^2 + x^4 + x^5 + x^6 + x^10 + x^11, a generator of the cyclic [23, 12, 7] Golay code
_GOLAY_POLY = (1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1)
#: points decoded per chunk: the (4, chunk, 256) min-plus tables stay within a few MB; on an
#: accelerator (eager) 16 times more, 64 MB of tables, since every chunk costs kernel launches
_CHUNK = 1024
_CHUNK_ACCELERATOR = 1 << 14
#: the cosets (offset o, parity of Σ z) of 4·D24 in the construction above
_OFFSETS = ((0.0, 0), (1.0, 1))
#: 4-bit patterns on a tetrad, pattern v has bit i = (v >> i) & 1
_PATTERNS = (torch.arange(16).unsqueeze(1) >> torch.arange(4)) & 1


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
    covering_radius = 4.0  # √2 at minimal norm 4 (Conway, Parker & Sloane 1982); here norm 32

    def __init__(self, *, compile: bool = False) -> None:
        """``compile``: decode with the sextet decoder fused by ``torch.compile``
        (:func:`compiled_decode`): compiled on first use per dtype and device (up to minutes
        with a cold inductor cache, needs a C++ compiler), then about 2.5× the eager decoder's
        rows/s (``qlatent bench lattices``; README, "Lattice geometry"); the same points,
        except that a point equidistant from two lattice points (probability 0) may get the
        other one."""
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        self._code = golay_code()
        generators = [[2 * int(v) for v in row] for row in golay_generator()]
        generators += [[4 * v for v in row] for row in dn_rows(24)]
        generators.append([-3] + [1] * 23)
        self._basis = as_basis(integer_basis(generators))

    def closest_point(self, x: Tensor) -> Tensor:
        rows = x.detach().reshape(-1, 24)  # piecewise constant: its derivative is 0
        out = torch.empty_like(rows)
        # the compiled decoder takes one shape; the eager one larger chunks off the CPU
        size = _CHUNK if self.compile or rows.device.type == "cpu" else _CHUNK_ACCELERATOR
        for start in range(0, rows.shape[0], size):
            chunk = rows[start : start + size]
            n = chunk.shape[0]
            if self.compile and n >= _CHUNK // 4:  # padded to one shape, compiled once
                padded = (
                    torch.cat([chunk, chunk.new_zeros(_CHUNK - n, 24)]) if n < _CHUNK else chunk
                )
                out[start : start + n] = compiled_decode()(padded)[:n]
            else:  # eager, also for a short chunk, which padding would make 4x the work or more
                out[start : start + n] = golay_sextet().decode(chunk)
        return out.view(x.shape)

    def glue(self) -> tuple[Tensor, Tensor, int]:
        """The cosets above as ``(residues r_c (8192, 24), parities p_c (8192,), q = 4)``: Λ24
        is the union of r_c + 4·{z ∈ Z^24 : Σ z ≡ p_c (mod 2)}, r_c = m·1 + 2c (m = 0, then 1)."""
        words = self._code.words
        residues = torch.cat([m + 2 * words for m in (0, 1)])
        parities = torch.arange(2).repeat_interleave(words.shape[0])
        return residues, parities, 4


class GolaySextet:
    """The Golay code's words grouped by a sextet, and the Leech decoder built on it.

    Classes are numbered offset-major over the two offsets of the construction (256 in all);
    tetrads are paired as (0, 1), (2, 3), (4, 5) for the min-plus products.
    """

    def __init__(self, code: BinaryCode) -> None:
        words = code.words
        # the sextet of the tetrad {0, 1, 2, 3}: the five octads through it give the other five
        octads = words[(words.sum(1) == 8) & (words[:, :4].sum(1) == 4)]
        tetrads = [torch.arange(4)] + [torch.nonzero(o[4:]).squeeze(1) + 4 for o in octads]
        if len(tetrads) != 6 or any(len(t) != 4 for t in tetrads):
            raise ValueError("the code is not the Golay code: no sextet through {0, 1, 2, 3}")
        #: coordinates in tetrad-major order
        self.order = torch.cat(tetrads)
        self.code = code
        w = words[:, self.order].view(-1, 6, 4)
        flipped = w[..., 0]  # a tetrad's pattern starts with 1: it is the complement of its pair
        normal = torch.where(flipped.unsqueeze(-1) == 1, 1 - w, w)
        pair = normal[..., 1] + 2 * normal[..., 2] + 4 * normal[..., 3]  # (4096, 6) in [0, 8)
        tuples, which = torch.unique((pair * 8 ** torch.arange(6)).sum(1), return_inverse=True)
        if len(tuples) != 128:
            raise ValueError("the code is not the Golay code: the sextet gives no 128 classes")
        #: (128, 6): each class's pair of patterns per tetrad (a hexacode word and a parity)
        self.tuples = (tuples.unsqueeze(1) // 8 ** torch.arange(6)) % 8
        flags = (flipped * 2 ** torch.arange(6)).sum(1)  # which tetrads are complemented
        #: (128, 64): the word of each class with each set of complemented tetrads (-1: none)
        self.word_of = torch.full((128, 64), -1, dtype=torch.int64)
        self.word_of[which, flags] = torch.arange(len(words))
        if int((self.word_of >= 0).sum()) != len(words):
            raise ValueError("the code is not the Golay code: two words share a class and flags")
        #: (128,): each class's parity of complemented tetrads (the pairs fix it)
        self.flips = torch.zeros(128, dtype=torch.int64).scatter_(0, which, flipped.sum(1) % 2)
        if not torch.equal(self.flips[which], flipped.sum(1) % 2):
            raise ValueError("the code is not the Golay code: a class mixes complement parities")
        # the 256 classes of both offsets (offset · 128 + class), grouped by the entry of the
        # Z2 × Z2 table each needs: (complement parity, Σ z parity) = 2 · flips + offset parity
        parity = torch.tensor([pi for _, pi in _OFFSETS]).repeat_interleave(128)
        entry = 2 * self.flips.repeat(2) + parity
        #: (256,): the classes in that grouped order, and where each entry's group starts
        self.grouped = torch.argsort(entry, stable=True)
        self.bounds = torch.searchsorted(entry[self.grouped], torch.arange(5)).tolist()
        #: (256, 6): per class, its tetrads' columns in the tables (offset · 8 + pair)
        self.columns = torch.cat([self.tuples, self.tuples + 8])
        self.entry = entry
        # per tetrad pair (0, 1), (2, 3), (4, 5): the distinct column pairs, and where each
        # class (grouped order) finds its own
        k = self.columns[self.grouped]
        self.pair_columns, self.lookup = [], []
        for j in (0, 2, 4):
            combos, at = torch.unique(k[:, j] * 16 + k[:, j + 1], return_inverse=True)
            self.pair_columns.append((combos // 16, combos % 16))
            self.lookup.append(at)
        self._cache: dict = {}

    def _on(self, dtype, device) -> dict:
        key = (dtype, device)
        if key not in self._cache:
            bits = _PATTERNS.to(device=device, dtype=dtype)
            self._cache[key] = {
                "sums": torch.stack([1 - bits, bits], 1).flatten(1),  # (16, 8): bit-major
                "pair_columns": [(a.to(device), b.to(device)) for a, b in self.pair_columns],
                "lookup": [a.to(device) for a in self.lookup],
                "grouped": self.grouped.to(device),
                "columns": self.columns.to(device),
                "entry": self.entry.to(device),
                "word_of": self.word_of.to(device),
                "words": self.code.words.to(device=device, dtype=dtype),
                "order": self.order.to(device),
                "flag_weights": (2 ** torch.arange(6, device=device)).unsqueeze(1),
            }
        return self._cache[key]

    def decode(self, t: Tensor) -> Tensor:
        """Closest Leech point (√8 scaling) to each row of ``t`` (``(N, 24)``).

        Tables are laid out points-last (``(..., N)``) so that every selection of classes copies
        whole rows."""
        c = self._on(t.dtype, t.device)
        n = t.shape[0]
        g = self._tetrad_tables(t, c)  # (4, 6, 16, N)
        # the min-plus product of the six tetrads' tables for every class, in three pairs
        parts = [
            _min_plus(g[:, j].index_select(1, a), g[:, j + 1].index_select(1, b))
            for j, (a, b) in zip((0, 2, 4), c["pair_columns"], strict=True)
        ]
        first, middle, last = (
            part.index_select(1, at) for part, at in zip(parts, c["lookup"], strict=True)
        )
        head = _min_plus(first, middle)  # (4, 256, N), grouped order
        # a class needing entry e costs min_a head[a] + last[a xor e]
        costs = torch.empty(head.shape[1:], dtype=t.dtype, device=t.device)
        for e in range(4):
            span = slice(self.bounds[e], self.bounds[e + 1])
            terms = [head[a, span] + last[a ^ e, span] for a in range(4)]
            torch.minimum(
                torch.minimum(terms[0], terms[1]),
                torch.minimum(terms[2], terms[3]),
                out=costs[span],
            )
        best = c["grouped"][costs.argmin(0)]  # (N,): offset · 128 + class
        # back through the products for the winner: each tetrad's (complement, parity) entry
        rows = torch.arange(n, device=t.device)
        cols = c["columns"][best]  # (N, 6)
        per = [g[:, j, cols[:, j], rows] for j in range(6)]  # 6 × (4, N)
        pairs = [_min_plus(per[j], per[j + 1]) for j in (0, 2, 4)]
        wanted = c["entry"][best]
        a_head = _argmin_xor(_min_plus(pairs[0], pairs[1]), pairs[2], wanted)
        a_first = _argmin_xor(pairs[0], pairs[1], a_head)
        targets = (a_first, a_head ^ a_first, a_head ^ wanted)
        entries = []
        for j, target in zip((0, 2, 4), targets, strict=True):
            x = _argmin_xor(per[j], per[j + 1], target)
            entries += [x, x ^ target]
        flags = ((torch.stack(entries) >> 1) * c["flag_weights"]).sum(0)
        which, cls = best // 128, best % 128
        word = c["word_of"][cls, flags]
        return decode_coset(t, c["words"], 2.0, 4.0, _OFFSETS, which * 4096 + word)

    @staticmethod
    def _tetrad_tables(t: Tensor, c: dict) -> Tensor:
        """``(4, 6, 16, N)``: per entry 2·a + z, tetrad, column (offset · 8 + pair k) and point,
        the cost of the tetrad taking pattern 2k (a = 0) or its complement 15 − 2k (a = 1) with
        Σ z parity z: the pattern's squared distance, plus its cheapest flip if its parity is
        not z."""
        n = t.shape[0]
        t_cols = t[:, c["order"]].T.contiguous()  # (24, N), tetrad order
        # per offset, bit, tetrad, position, point: squared error, parity, flip cost
        d, p, delta = (
            torch.stack(v).view(2, 2, 6, 4, n)
            for v in zip(*(bit_tables(t_cols, o, 2.0, 4.0) for o, _ in _OFFSETS), strict=True)
        )
        by_tetrad = lambda v: v.transpose(1, 2).reshape(2, 6, 8, n)  # noqa: E731  bit-major
        cost = c["sums"] @ by_tetrad(d)  # (2, 6, 16, N): squared distance of each pattern
        odd = torch.remainder(c["sums"] @ by_tetrad(p), 2.0)  # parity of its Σ z
        # the cheapest flip of pattern v = b0 + 2 b1 + 4 b2 + 8 b3: the min over its positions,
        # as min(low[b0, b1], high[b2, b3]) with low and high over position pairs
        pick = lambda i: delta[:, :, :, i]  # noqa: E731  (2 offsets, 2 bits, 6, N)
        low = torch.minimum(pick(0).unsqueeze(1), pick(1).unsqueeze(2))  # [.., b1, b0, ..]
        high = torch.minimum(pick(2).unsqueeze(1), pick(3).unsqueeze(2))
        low, high = (v.permute(0, 3, 1, 2, 4).reshape(2, 6, 4, n) for v in (low, high))
        fix = torch.minimum(low.unsqueeze(2), high.unsqueeze(3)).view(2, 6, 16, n)
        g = torch.empty(4, 6, 2, 8, n, dtype=t.dtype, device=t.device)
        patterns = (lambda v: v[:, :, 0::2], lambda v: v[:, :, 1::2].flip(2))  # 2k; 15 − 2k
        for a, pattern in enumerate(patterns):
            cost_a, odd_a, fix_a = (pattern(v).transpose(0, 1) for v in (cost, odd, fix))
            torch.addcmul(cost_a, odd_a, fix_a, out=g[2 * a])
            torch.addcmul(cost_a + fix_a, odd_a, fix_a, value=-1.0, out=g[2 * a + 1])
        return g.view(4, 6, 16, n)


def _argmin_xor(x: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per point, the entry a minimizing ``x[a] + y[a xor target]`` (``x``, ``y``: ``(4, N)``)."""
    a = torch.arange(4, device=x.device).unsqueeze(1)
    return (x + y.gather(0, a ^ target)).argmin(0)


def _min_plus(x: Tensor, y: Tensor) -> Tensor:
    """Min-plus product over Z2 × Z2 of tables ``x`` and ``y`` (``(4, ...)``, entry first):
    ``out[a] = min_b x[b] + y[a xor b]``."""
    out = torch.empty_like(x)
    for a in range(4):
        low = x[0] + y[a]
        torch.minimum(low, x[1] + y[a ^ 1], out=low)
        high = x[2] + y[a ^ 2]
        torch.minimum(high, x[3] + y[a ^ 3], out=high)
        torch.minimum(low, high, out=out[a])
    return out


@functools.cache
def golay_sextet() -> GolaySextet:
    return GolaySextet(golay_code())


@functools.cache
def compiled_decode():
    """:meth:`GolaySextet.decode` fused by ``torch.compile`` for ``(_CHUNK, 24)`` inputs
    (compiled on first use): the min-plus products' dozens of full passes over the ``(4, 256,
    N)`` tables become a few loops."""
    return torch.compile(golay_sextet().decode, dynamic=False)
