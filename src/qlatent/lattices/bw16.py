"""The Barnes–Wall lattice Λ16 (SPLAG ch. 4 §10, ch. 20 §5).

Scaled to integer coordinates, Λ16 is the union of 32 cosets of 2·D16 glued by the first-order
Reed–Muller code RM(1, 4) (16 bits, 32 words of weight 0, 8 or 16):

    Λ16 = ⋃_{c ∈ RM(1,4)} (c + 2·D16)

Closest point, exact: the nearest of the 32 cosets, then the winning coset decoded directly (round,
fix parity). The cosets' distances come from RM(1, 4)'s quarters (:class:`ReedMullerQuarters`):
on each four consecutive positions a codeword is one of four labels, shared by all four quarters,
or its complement, and the four complements have an even sum. So a coset's squared distance,
the parity of its Σ z and its cheapest parity flip are sums and minima of per-quarter tables,
formed for all 32 cosets at once in two pairs of quarters, with no data-dependent work (the
search of ``qlatent.lattices._glued`` over the 32 cosets, with parity corrections only where they
can matter, is kept as the tests' reference). Minimal norm 8, kissing number 4320, volume 2^12,
G ≈ 0.0682976.

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

from .._utils import COMPILED_DTYPES, compiled_or_plain, plain_cache, plain_tensors, recording_graph
from ._glued import BinaryCode, closest_point_glued, decode_coset
from ._utils import FixedLattice, as_basis, dn_rows, in_float32, integer_basis, parity
from .base import LATTICES, check_rows


@plain_cache
def reed_muller_1_4() -> BinaryCode:
    """RM(1, 4): the 32 affine Boolean functions a_0 + a·v of v ∈ F_2^4, evaluated at the 16
    points v (position index = v's bits). Generator rows: the all-ones word and the 4 coordinate
    functions."""
    points = torch.tensor(list(itertools.product((0, 1), repeat=4)), dtype=torch.int64)
    return BinaryCode(torch.cat([torch.ones(1, 16, dtype=torch.int64), points.T]))


#: points decoded per chunk: on the CPU its largest temporaries take 1 MB of float32. 8192 points
#: ran 10–20% faster in most processes but not in all: beside ``qlatent bench lattices``' other
#: work some ran 20–45% slower (results/bw16-decoder-chunks-beside-e8/), and in a check not
#: recorded one faulted its 2 MB temporaries in again on every call, 2.4× slower; 4096 points held
#: 518–620 k rows of 64 per s in all eight processes there (one chunk of 65536 faulted in fresh
#: processes too: results/bw16-decoder-chunks.json). On an accelerator larger,
#: since every chunk costs kernel launches (16 chunks of 4096 rows held an H200 to the two-core
#: CPU's speed)
_CHUNK = 4096
_CHUNK_ACCELERATOR = 1 << 16
#: points per compiled call: the kernel keeps no temporaries, this bounds the transposed copy
_COMPILED_CHUNK = 1 << 16
#: fewer points decode eagerly with ``compile=True`` (a compiled call costs tens of
#: microseconds, and shapes of 0 and 1 rows would each be compiled apart)
_COMPILED_MIN_ROWS = 64


def _eager_chunk(device: torch.device) -> int:
    return _CHUNK if device.type == "cpu" else _CHUNK_ACCELERATOR


@LATTICES.register("bw16")
class BarnesWallLattice(FixedLattice):
    """Λ16 in the integer scaling above (minimal norm 8, volume 2^12).

    ``closest_point`` is exact (the coset search above): rows ``(..., 16)`` of any
    floating-point dtype in, the lattice points in the same shape and dtype out, detached from
    autograd (a piecewise constant map); ValueError for rows of another width or a
    non-floating dtype. Divided by √2, the lattice has minimal norm 4.
    """

    name = "BW16"
    cell_halfwidth = 2.0  # 4·Z^16 ⊂ 2·D16 ⊂ Λ16
    covering_radius = math.sqrt(6.0)  # √3 at minimal norm 4 (SPLAG ch. 4 §10); here norm 8

    def __init__(self, *, compile: bool = False) -> None:
        """``compile``: decode with the search fused by ``torch.compile`` (:func:`compiled_decode`,
        compiled on first use per dtype and device, about a minute with a cold inductor cache;
        needs a C++ compiler on the CPU): about three times the eager decoder's points/s. The same
        points, except that a point equidistant from two lattice points within rounding may get
        the other one (the sums run in another order). Float16 and bfloat16 points decode
        eagerly: compiled, their steps would run in float32 (``COMPILED_DTYPES``)."""
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        self._code = reed_muller_1_4()
        # held here, not fetched per call: under a caller's torch.compile Dynamo warns at a
        # cached getter and traces its body again
        self._quarters = rm_quarters()
        generators = [[2 * int(v) for v in row] for row in dn_rows(16)]
        generators += [[int(v) for v in row] for row in self._code.generator]
        self._basis = as_basis(integer_basis(generators))

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, 16, self.name)
        rows = x.detach().reshape(-1, 16)  # piecewise constant: its derivative is 0
        if recording_graph():  # (a loop over the rows fixed a dynamic batch size)
            return in_float32(self._quarters.decode, rows).view(x.shape)
        out = torch.empty_like(rows)
        if self.compile and rows.shape[0] >= _COMPILED_MIN_ROWS and x.dtype in COMPILED_DTYPES:
            fused = compiled_or_plain(compiled_decode, _closest_bw16_columns)
            for start in range(0, rows.shape[0], _COMPILED_CHUNK):
                chunk = rows[start : start + _COMPILED_CHUNK]
                out[start : start + chunk.shape[0]] = fused(chunk.T.contiguous())
            return out.view(x.shape)
        size = _eager_chunk(x.device)
        for start in range(0, rows.shape[0], size):
            out[start : start + size] = in_float32(
                self._quarters.decode, rows[start : start + size]
            )
        return out.view(x.shape)

    def dither_point(self, y: Tensor) -> Tensor:
        """The dither's reduction keeps the eager decoder of before ``1005005``, the search over
        the 32 cosets (``qlatent.lattices._glued``): the quarter decoder finds points as near,
        but breaks a tie within float rounding differently in about one float32 draw in two
        million, and a file's decoder regenerates its dither bit for bit. With ``compile=True``
        the fused decoder for 64 points or more, as before."""
        check_rows(y, 16, self.name)
        # (exported: the eager decoder of ``compile=False``, as :meth:`closest_point`'s; the
        # branch on the row count bounded a dynamic batch size)
        exporting = recording_graph()
        if (
            self.compile
            and not exporting
            and y.numel() >= 16 * _COMPILED_MIN_ROWS
            and y.dtype in COMPILED_DTYPES
        ):
            return self.closest_point(y)
        chunk = _eager_chunk(y.device)
        glued = lambda rows: closest_point_glued(rows, self._code, 1.0, 2.0, ((0.0, 0),), chunk)  # noqa: E731
        return in_float32(glued, y.detach())

    def glue(self) -> tuple[Tensor, Tensor, int]:
        """The cosets above as ``(residues r_c (32, 16), parities p_c (32,), q = 2)``: Λ16 is
        the union of r_c + 2·{y ∈ Z^16 : Σ y ≡ p_c (mod 2)}."""
        words = self._code.words.clone()
        return words, torch.zeros(words.shape[0], dtype=torch.int64), 2


class ReedMullerQuarters:
    """The eager decoder of Λ16 through the quarters of RM(1, 4), derived from the code itself
    (and checked when built, not assumed).

    On each quarter (positions 4j .. 4j + 3) a codeword reads c_j ⊕ ℓ, with ℓ one of four
    even-weight patterns whose first bit is 0 (the word's label, the same on all four quarters)
    and c_j its first bit; the four c_j have an even sum. So the 32 words are numbered
    (ℓ, σ, c_0, c_2), with σ = c_0 ⊕ c_1 = c_2 ⊕ c_3. Quarters are paired as (0, 1), (2, 3); a
    pair's tables have 16 rows (ℓ, σ, c_first), the first quarter taking pattern c_first ⊕ ℓ
    and the second c_first ⊕ σ ⊕ ℓ, so that every codeword's sums are one broadcast add of the
    two pairs' rows. Per coset: the squared distance Σ d, the parity of Σ z and the cheapest
    flip min δ (d, z, δ per coordinate and bit as :func:`~qlatent.lattices._glued.bit_tables`
    defines them), and its cost Σ d + [Σ z odd] · min δ, as the coset search computes it.
    Tables are laid out points-last (``(..., N)``), so that the minimum over the 32 cosets runs
    over a leading dimension (several times faster than over the last one on the CPU).
    """

    def __init__(self, code: BinaryCode) -> None:
        w = code.words.view(-1, 4, 4)  # word, quarter, position
        if w.shape[0] != 32 or bool((w.sum(-1) % 2).any()):
            raise ValueError("the code is not RM(1, 4): a quarter of a word has odd weight")
        const = w[..., 0]  # (32, 4): each quarter's complement bit c_j
        normal = torch.where(const.unsqueeze(-1) == 1, 1 - w, w)
        inner = normal[..., 1] + 2 * normal[..., 2] + 4 * normal[..., 3]  # (32, 4) in [0, 8)
        if not torch.equal(inner, inner[:, :1].expand(-1, 4)):
            raise ValueError("the code is not RM(1, 4): a word's quarters have different labels")
        labels, label = torch.unique(inner[:, 0], return_inverse=True)
        if len(labels) != 4 or bool((const.sum(1) % 2).any()):
            raise ValueError("the code is not RM(1, 4): no four labels with even complements")
        key = label * 8 + (const[:, 0] ^ const[:, 1]) * 4 + const[:, 0] * 2 + const[:, 2]
        #: (32,): the word (message order) of each coset (ℓ, σ, c_0, c_2)
        self.word_of = torch.full((32,), -1, dtype=torch.int64).scatter_(0, key, torch.arange(32))
        if bool((self.word_of < 0).any()):
            raise ValueError("the code is not RM(1, 4): two words share a label and complements")
        self.code = code
        bits = (labels.unsqueeze(1) >> torch.arange(3)) & 1  # (4, 3): positions 1..3
        bits = torch.cat([torch.zeros(4, 1, dtype=torch.int64), bits], 1)  # (4, 4)
        ell, sigma, first = (
            v.flatten()
            for v in torch.meshgrid(*[torch.arange(k) for k in (4, 2, 2)], indexing="ij")
        )
        #: (2, 16, 4): per table row (ℓ, σ, c_first), the pattern of a pair's first quarter
        #: and of its second
        self.patterns = torch.stack(
            [bits[ell] ^ first.unsqueeze(1), bits[ell] ^ (first ^ sigma).unsqueeze(1)]
        )
        self._cache: dict = {}

    def _on(self, dtype, device) -> dict:
        key = (dtype, device)
        if key not in self._cache:
            with plain_tensors():
                self._cache[key] = self._tables(dtype, device)
        return self._cache[key]

    def _tables(self, dtype, device) -> dict:
        """The decoder's tables in ``dtype`` on ``device`` (:meth:`_on` caches them)."""
        pat = self.patterns
        # a quarter's cheapest flip for pattern b0 b1 b2 b3 is entry 16 · quarter + pattern
        # of the (4 · 16) table of min(low[b0, b1], high[b2, b3])
        code = (pat * torch.tensor([8, 4, 2, 1])).sum(-1)  # (2, 16)
        quarter = torch.arange(4).view(2, 2, 1)  # (pair, quarter in pair)
        return {
            # (1, 2, 16, 8): Σ over a row's pattern of a (bit, position) bit-major table
            "sums": torch.cat([1 - pat, pat], -1).to(device=device, dtype=dtype).unsqueeze(0),
            "flips": (quarter * 16 + code).flatten().to(device),
            "shifts": torch.tensor([0.0, 1.0], dtype=dtype, device=device).view(1, 2, 1, 1),
            "word_of": self.word_of.to(device),
            "words": self.code.words.to(device=device, dtype=dtype),
        }

    def decode(self, t: Tensor) -> Tensor:
        """Closest Λ16 point to each row of ``t`` (``(N, 16)``); of equal costs the first coset
        in (ℓ, σ, c_0, c_2) order wins."""
        c = self._on(t.dtype, t.device)
        n = t.shape[0]
        # quarter, ., position, point; in a fresh buffer (t.T of one row counts as contiguous
        # with strides that the broadcasts below would carry over)
        quarters = t.new_empty(16, n).copy_(t.T).view(4, 1, 4, n)
        s = (quarters - c["shifts"]) * 0.5  # (4, 2, 4, N): bit b's multiple of 2
        z = torch.round(s)
        e = s.sub_(z).abs_()
        d = e.square().mul_(4.0).view(2, 2, 8, n)  # pair, quarter in pair, (bit, pos), point
        p = parity(z).view(2, 2, 8, n)
        delta = e.mul_(-2.0).add_(1.0).mul_(4.0)  # (2(1 − |e|))² − (2e)²
        dist = torch.matmul(c["sums"], d)  # (2, 2, 16, N)
        odd = torch.matmul(c["sums"], p)
        # the cheapest flip over a pattern's positions: min(low[b0, b1], high[b2, b3])
        dp = delta.view(4, 2, 2, 2, n)  # quarter, bit, position pair, position, point
        low = torch.minimum(dp[:, :, 0, 0].unsqueeze(2), dp[:, :, 0, 1].unsqueeze(1))
        high = torch.minimum(dp[:, :, 1, 0].unsqueeze(2), dp[:, :, 1, 1].unsqueeze(1))
        every = torch.minimum(low.view(4, 4, 1, n), high.view(4, 1, 4, n)).view(64, n)
        flip = every.index_select(0, c["flips"]).view(2, 2, 16, n)
        # each pair's rows (ℓ, σ, c_first), then every coset (ℓ, σ, c_0, c_2)
        dist = (dist[:, 0] + dist[:, 1]).view(2, 4, 2, 2, n)
        odd = (odd[:, 0] + odd[:, 1]).view(2, 4, 2, 2, n)
        flip = torch.minimum(flip[:, 0], flip[:, 1]).view(2, 4, 2, 2, n)
        cost = dist[0].unsqueeze(3) + dist[1].unsqueeze(2)  # (4, 2, 2, 2, N)
        wrong = parity(odd[0].unsqueeze(3) + odd[1].unsqueeze(2))
        cost.addcmul_(wrong, torch.minimum(flip[0].unsqueeze(3), flip[1].unsqueeze(2)))
        best = cost.view(32, n).min(0).indices  # the first minimum, as argmin gives it
        return decode_coset(t, c["words"], 1.0, 2.0, ((0.0, 0),), c["word_of"][best])


@plain_cache
def rm_quarters() -> ReedMullerQuarters:
    return ReedMullerQuarters(reed_muller_1_4())


def _closest_bw16(t: Tensor) -> Tensor:
    """The eager decoder on rows ``(N, 16)``: :meth:`ReedMullerQuarters.decode`."""
    return rm_quarters().decode(t)


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
