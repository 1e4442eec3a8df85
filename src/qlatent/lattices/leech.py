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

from .._utils import (
    COMPILED_DTYPES,
    compiled_or_plain,
    plain_cache,
    plain_tensors,
    proxy_tracing,
    recording_graph,
)
from ._glued import BinaryCode, decode_coset
from ._utils import FixedLattice, as_basis, dn_rows, in_float32, integer_basis, parity
from .base import LATTICES, check_rows

#: 1 + x^2 + x^4 + x^5 + x^6 + x^10 + x^11, a generator of the cyclic [23, 12, 7] Golay code
_GOLAY_POLY = (1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1)
#: points decoded per chunk: the (4, chunk, 256) min-plus tables stay within a few MB; on an
#: accelerator (eager) 16 times more, 64 MB of tables, since every chunk costs kernel launches
_CHUNK = 1024
_CHUNK_ACCELERATOR = 1 << 14
#: the cosets (offset o, parity of Σ z) of 4·D24 in the construction above
_OFFSETS = ((0.0, 0), (1.0, 1))
#: a tetrad's normalized patterns (bits 1..3 as 0..7) by weight parity: column π · 4 + s of a
#: table is pattern _BY_PARITY[π · 4 + s]
_BY_PARITY = (0, 3, 5, 6, 1, 2, 4, 7)
#: 4-bit patterns on a tetrad, pattern v has bit i = (v >> i) & 1
_PATTERNS = (torch.arange(16).unsqueeze(1) >> torch.arange(4)) & 1


def golay_generator() -> Tensor:
    """``(12, 24)`` generator rows of the extended Golay code (cyclic code plus a parity bit)."""
    g = torch.zeros(12, 24, dtype=torch.int64)
    for i in range(12):
        g[i, i : i + 12] = torch.tensor(_GOLAY_POLY)
    g[:, 23] = g[:, :23].sum(1) % 2
    return g


@plain_cache
def golay_code() -> BinaryCode:
    """The extended Golay code: 4096 words of length 24 (weights 0, 8, 12, 16, 24 with
    multiplicities 1, 759, 2576, 759, 1)."""
    return BinaryCode(golay_generator())


@LATTICES.register("leech")
class LeechLattice(FixedLattice):
    """Λ24 in the √8-scaled integer coordinates above (minimal norm 32, volume 8^12).

    ``closest_point`` is exact (the sextet decoder above): rows ``(..., 24)`` of any
    floating-point dtype in, the lattice points in the same shape and dtype out, detached from
    autograd (a piecewise constant map); ValueError for rows of another width or a
    non-floating dtype. Divided by √8, the lattice has minimal norm 4.
    """

    name = "Leech"
    cell_halfwidth = 4.0  # 8·Z^24 ⊂ 4·D24 ⊂ Λ24
    covering_radius = 4.0  # √2 at minimal norm 4 (Conway, Parker & Sloane 1982); here norm 32

    def __init__(self, *, compile: bool = False) -> None:
        """``compile``: decode with the sextet decoder fused by ``torch.compile``
        (:func:`compiled_decode`): compiled on first use per dtype and device (up to minutes
        with a cold inductor cache, needs a C++ compiler), then about three times the eager
        decoder's rows/s (``qlatent bench lattices``; docs/good-lattice-speed.md); the same
        points, except that a point equidistant from two lattice points (probability 0) may get
        the other one. Float16 and bfloat16 points decode eagerly: compiled, their steps would
        run in float32 (``COMPILED_DTYPES``)."""
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        self._code = golay_code()
        # held here, not fetched per call: under a caller's torch.compile Dynamo warns at a
        # cached getter and traces its body again
        self._sextet = golay_sextet()
        generators = [[2 * int(v) for v in row] for row in golay_generator()]
        generators += [[4 * v for v in row] for row in dn_rows(24)]
        generators.append([-3] + [1] * 23)
        self._basis = as_basis(integer_basis(generators))

    def __getstate__(self) -> dict:
        """Pickled (``torch.save`` of a whole model, ``copy.deepcopy``) without the Golay tables,
        which every Leech lattice of a process shares: 34 MB a copy before."""
        state = self.__dict__.copy()
        del state["_code"], state["_sextet"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._code, self._sextet = golay_code(), golay_sextet()

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, 24, self.name)
        rows = x.detach().reshape(-1, 24)  # piecewise constant: its derivative is 0
        if recording_graph():  # (a loop over the rows fixed a dynamic batch size)
            return in_float32(self._sextet.decode, rows).view(x.shape)
        out = torch.empty_like(rows)
        # the compiled decoder takes one shape; the eager one larger chunks off the CPU
        size = _CHUNK if self.compile or rows.device.type == "cpu" else _CHUNK_ACCELERATOR
        for start in range(0, rows.shape[0], size):
            chunk = rows[start : start + size]
            n = chunk.shape[0]
            # padded to one shape, compiled once (float32 and float64: COMPILED_DTYPES)
            if self.compile and n >= _CHUNK // 4 and x.dtype in COMPILED_DTYPES:
                padded = (
                    torch.cat([chunk, chunk.new_zeros(_CHUNK - n, 24)]) if n < _CHUNK else chunk
                )
                fused = compiled_or_plain(compiled_decode, self._sextet.decode)
                out[start : start + n] = fused(padded)[:n]
            else:  # eager, also for a short chunk, which padding would make 4x the work or more
                out[start : start + n] = in_float32(self._sextet.decode, chunk)
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

    A tetrad's normalized pattern (first bit 0) is one of 8, four of even weight and four of
    odd; the six patterns of a class share one weight parity π. Numbered within their parity
    (:data:`_BY_PARITY`), they make each class a word (s_0, ..., s_5) over four symbols, 64 per
    parity, any three of whose symbols fix the other three (the hexacode's MDS property; checked
    here, not assumed). So the 256 classes of both offsets are numbered (o, π, s_0, s_1, s_2),
    and a tetrad's table has 16 columns (o, π, s). Tetrads are paired as (0, 1), (2, 3), (4, 5)
    for the min-plus products: a pair's table over (o, π, s_j, s_j+1) is an outer product, the
    first pair's broadcasts over s_2, and only the other two are gathered per class.
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
        #: (128, 6): each class's normalized pattern per tetrad (its bits 1..3 as 0..7)
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
        rank = torch.empty(8, dtype=torch.int64)
        rank[torch.tensor(_BY_PARITY)] = torch.arange(8)  # pattern -> π · 4 + s
        weight, symbol = rank[self.tuples] // 4, rank[self.tuples] % 4  # (128, 6) each
        if not torch.equal(weight, weight[:, :1].expand(-1, 6)):
            raise ValueError("the code is not the Golay code: a class mixes weight parities")
        key = weight[:, 0] * 64 + (symbol[:, :3] * torch.tensor([16, 4, 1])).sum(1)
        if len(torch.unique(key)) != 128:
            raise ValueError("the code is not the Golay code: three symbols fix no class")
        # the 256 classes in (o, π, s_0, s_1, s_2) order: the class of the 128 above, offset o
        # (whose Σ z parity is o, _OFFSETS), o · 2 + π, and the six symbols
        of_key = torch.empty(128, dtype=torch.int64).scatter_(0, key, torch.arange(128))
        #: (256,): each class's class among the 128 above, and its offset
        self.classes = of_key.repeat(2)
        self.offsets = torch.arange(256) // 128
        group = torch.arange(256) // 64  # o · 2 + π
        s = symbol[self.classes]  # (256, 6)
        #: (256,): each class's entry of the Z2 × Z2 tables, (complement parity, Σ z parity)
        self.entry = 2 * self.flips[self.classes] + self.offsets
        #: (256, 6): each class's column per tetrad, (o, π, s)
        self.columns = group.unsqueeze(1) * 4 + s
        # the three pairs' tables are stacked (entry, pair, (o, π, s_j, s_j+1)), 4 · 3 · 64 rows
        entry = torch.arange(4).unsqueeze(1)
        #: (4, 256): per entry a, each class's row of the middle pair's table, (a, 1, (o, π,
        #: s_2, s_3))
        self.middle = entry * 192 + 64 + group * 16 + s[:, 2] * 4 + s[:, 3]
        #: (4, 256): per entry a, each class's row of the last pair's table at a xor (the
        #: class's entry), (a xor e, 2, (o, π, s_4, s_5))
        self.last = (entry ^ self.entry) * 192 + 128 + group * 16 + s[:, 4] * 4 + s[:, 5]
        self._cache: dict = {}

    def _on(self, dtype, device) -> dict:
        key = (dtype, device)
        if key not in self._cache:
            with plain_tensors():
                self._cache[key] = self._tables(dtype, device)
        return self._cache[key]

    def _tables(self, dtype, device) -> dict:
        """The decoder's tables in ``dtype`` on ``device`` (:meth:`_on` caches them)."""
        bits = _PATTERNS.to(device=device, dtype=dtype)
        # the 16 patterns of a tetrad's table, per entry a: 2k (a = 0) and its complement
        # 15 − 2k (a = 1), k in column order
        patterns = torch.tensor([2 * k for k in _BY_PARITY] + [15 - 2 * k for k in _BY_PARITY])
        return {
            # (16, 8) bit-major: the sums of d and p over each pattern's bits, in that order
            "sums": torch.stack([1 - bits, bits], 1).flatten(1)[patterns],
            "patterns": patterns.to(device),
            "middle": self.middle.flatten().to(device),
            "last": self.last.flatten().to(device),
            "columns": self.columns.to(device),
            "entry": self.entry.to(device),
            "classes": self.classes.to(device),
            "offsets": self.offsets.to(device),
            "word_of": self.word_of.to(device),
            "words": self.code.words.to(device=device, dtype=dtype),
            "order": self.order.to(device),
            "flag_weights": (2 ** torch.arange(6, device=device)).unsqueeze(1),
            "xor": (torch.arange(4).unsqueeze(1) ^ torch.arange(4)).flatten().to(device),
            # (offset, bit): o + 2b, broadcast over (tetrad, ., ., position, point)
            "shifts": torch.tensor(
                [[o, o + 2.0] for o, _ in _OFFSETS], dtype=dtype, device=device
            ).view(1, 2, 2, 1, 1),
        }

    def decode(self, t: Tensor) -> Tensor:
        """Closest Leech point (√8 scaling) to each row of ``t`` (``(N, 24)``).

        Tables are laid out points-last (``(..., N)``) so that every selection of classes copies
        whole rows."""
        c = self._on(t.dtype, t.device)
        n = t.shape[0]
        g = self._tetrad_tables(t, c)  # (4, 6, 16, N)
        q = g.view(4, 6, 4, 4, n)  # entry, tetrad, (o, π), s, point
        # each pair's table over (o, π, s_j, s_j+1): an outer min-plus product, three at once
        pairs = _min_plus(q[:, 0::2].unsqueeze(4), q[:, 1::2].unsqueeze(3)).view(4, 3, 64, n)
        rows = pairs.view(4 * 3 * 64, n)  # whole rows gathered per class
        # the first two pairs for every class (o, π, s_0, s_1, s_2): s_3 follows from the rest
        head = _min_plus(
            pairs[:, 0].unsqueeze(2), rows.index_select(0, c["middle"]).view(4, 64, 4, n)
        ).view(4, 256, n)
        # a class needing entry e costs min_a head[a] + last[a xor e]
        head += rows.index_select(0, c["last"]).view(4, 256, n)
        costs = head.amin(0)
        # (N,): the class, (o, π, s_0, s_1, s_2); the first minimum, as argmin gives it
        best = costs.min(0).indices
        entries = self._entries(g, c, best)  # (6, N)
        flags = ((entries >> 1) * c["flag_weights"]).sum(0)
        word = c["word_of"][c["classes"][best], flags]
        return decode_coset(t, c["words"], 2.0, 4.0, _OFFSETS, c["offsets"][best] * 4096 + word)

    @staticmethod
    def _entries(g: Tensor, c: dict, best: Tensor) -> Tensor:
        """``(6, N)``: each tetrad's entry (complement, Σ z parity) in the best assignment of
        class ``best`` (``(N,)``), read back through the same min-plus products on the
        winner's six 4-entry tables (ties to the lowest entry at every step)."""
        n = best.shape[0]
        xor = c["xor"]  # (16,): a xor b at a · 4 + b
        cols = c["columns"][best].T.reshape(1, 6, 1, n).expand(4, 6, 1, n)
        per = g.gather(2, cols).view(4, 6, n)
        # per pair k and target a, over b: per_even[b] + per_odd[a xor b] (at [b, a], xor being
        # symmetric), reduced over the leading dimension (min(1) is several times slower)
        sums = per[:, 1::2].index_select(0, xor).view(4, 4, 3, n) + per[:, 0::2].unsqueeze(1)
        pairs, pair_arg = sums.min(0)  # (4, 3, N): the pairs' tables and their best b
        # the first two pairs' product, then the third at the class's entry
        sums = pairs[:, 1].index_select(0, xor).view(4, 4, n) + pairs[:, 0].unsqueeze(1)
        head, head_arg = sums.min(0)  # (4, N)
        wanted = c["entry"][best]
        third = pairs[:, 2].gather(0, torch.arange(4, device=g.device).unsqueeze(1) ^ wanted)
        # the first minimum, as argmin gives it (several times faster over a leading dimension)
        a_head = (head + third).min(0, keepdim=True).indices  # (1, N)
        a_first = head_arg.gather(0, a_head)
        targets = torch.cat([a_first, a_head ^ a_first, a_head ^ wanted]).unsqueeze(0)  # (1, 3, N)
        even = pair_arg.gather(0, targets).squeeze(0)  # (3, N)
        return torch.stack([even, even ^ targets.squeeze(0)], 1).view(6, n)

    @staticmethod
    def _tetrad_tables(t: Tensor, c: dict) -> Tensor:
        """``(4, 6, 16, N)``: per entry 2·a + z, tetrad, column (o, π, s) and point, the cost
        of the tetrad taking the column's pattern 2k (a = 0) or its complement 15 − 2k (a = 1)
        with Σ z parity z: the pattern's squared distance, plus its cheapest flip if its parity
        is not z.

        Per coordinate and bit b, the nearest value of o + 2b + 4Z (offset o) gives a squared
        error d, the parity p of its multiple of 4, and the extra cost δ of the second-nearest
        (the other parity), as :func:`~qlatent.lattices._glued.bit_tables` computes them, here
        laid out (tetrad, offset, bit, position, point) for the sums over patterns."""
        n = t.shape[0]
        t_cols = t.T.index_select(0, c["order"]).view(6, 1, 1, 4, n)  # tetrad order
        s = (t_cols - c["shifts"]) / 4.0  # (6, 2, 2, 4, N)
        z = torch.round(s)
        e = s.sub_(z).abs_()
        d = e.square().mul_(16.0).view(6, 2, 8, n)  # bit-major within a tetrad
        p = parity(z).view(6, 2, 8, n)
        delta = e.mul_(-2.0).add_(1.0).mul_(16.0)  # (4(1 − |e|))² − (4e)²
        # (6, 2, 16, N) over the patterns of c["patterns"]: squared distance, parity of Σ z
        cost = c["sums"] @ d
        odd = parity(c["sums"] @ p)
        # the cheapest flip of pattern v = b0 + 2 b1 + 4 b2 + 8 b3: the min over its positions,
        # as min(low[b0, b1], high[b2, b3]) with low and high over position pairs
        pick = lambda i: delta[..., i, :]  # noqa: E731  (6, 2 offsets, 2 bits, N)
        low = torch.minimum(pick(0).unsqueeze(2), pick(1).unsqueeze(3)).view(6, 2, 4, n)
        high = torch.minimum(pick(2).unsqueeze(2), pick(3).unsqueeze(3)).view(6, 2, 4, n)
        fix = torch.minimum(low.unsqueeze(2), high.unsqueeze(3)).view(6, 2, 16, n)
        fix = fix.index_select(2, c["patterns"])
        traced = proxy_tracing()  # (no writes into a buffer there: see :func:`_min_plus`)
        g = [] if traced else torch.empty(4, 6, 2, 8, n, dtype=t.dtype, device=t.device)
        for a in range(2):
            cost_a, odd_a, fix_a = (v[:, :, 8 * a : 8 * a + 8] for v in (cost, odd, fix))
            if traced:
                g.append(torch.addcmul(cost_a, odd_a, fix_a))
                g.append(torch.addcmul(cost_a + fix_a, odd_a, fix_a, value=-1.0))
                continue
            torch.addcmul(cost_a, odd_a, fix_a, out=g[2 * a])
            torch.addcmul(cost_a + fix_a, odd_a, fix_a, value=-1.0, out=g[2 * a + 1])
        return (torch.stack(g) if traced else g).view(4, 6, 16, n)


def _min_plus(x: Tensor, y: Tensor) -> Tensor:
    """Min-plus product over Z2 × Z2 of tables ``x`` and ``y`` (``(4, ...)``, entry first, the
    rest broadcast): ``out[a] = min_b x[b] + y[a xor b]``. Eagerly each entry is formed in place
    with one scratch buffer; under ``torch.compile`` as pure expressions, which it fuses (a
    reused buffer would make it write every term out), and under ``make_fx`` (the same
    minima, exact): ``torch.func.linearize`` computes the ops of its graph that read no
    tangent once, as constants, a buffer's reads among them, which then saw the buffer before
    its writes (other points, other tangents)."""
    if torch.compiler.is_compiling() or proxy_tracing():
        return torch.stack(
            [
                torch.minimum(
                    torch.minimum(x[0] + y[a], x[1] + y[a ^ 1]),
                    torch.minimum(x[2] + y[a ^ 2], x[3] + y[a ^ 3]),
                )
                for a in range(4)
            ]
        )
    out = x.new_empty((4, *torch.broadcast_shapes(x.shape[1:], y.shape[1:])))
    term = torch.empty_like(out[0])
    for a in range(4):
        torch.add(x[0], y[a], out=out[a])
        for b in (1, 2, 3):
            torch.minimum(out[a], torch.add(x[b], y[a ^ b], out=term), out=out[a])
    return out


@plain_cache
def golay_sextet() -> GolaySextet:
    return GolaySextet(golay_code())


@functools.cache
def compiled_decode():
    """:meth:`GolaySextet.decode` fused by ``torch.compile`` for ``(_CHUNK, 24)`` inputs
    (compiled on first use): the min-plus products' dozens of full passes over the ``(4, 256,
    N)`` tables become a few loops."""
    return torch.compile(golay_sextet().decode, dynamic=False)
