"""Exact decoding of lattices glued from a binary code and a scaled D_n (Λ16, Λ24): the plain
search over all cosets, which the tests take as the reference of the Λ16 and Λ24 decoders (they
find the nearest coset through the codes' structure instead), and the decoding of one coset.

A lattice of the form

    Λ = ⋃_{(o, π)} ⋃_{c ∈ C} (o·1 + a·c + q·D_n^π),     D_n^π = {z ∈ Z^n : Σ z ≡ π (mod 2)}

(Λ16: C = RM(1,4), a = 1, q = 2, one offset o = 0 with π = 0; Λ24: C = the Golay code, a = 2,
q = 4, offsets (0, even) and (1, odd)) is decoded exactly by a search over its |C| cosets. Per
coordinate i and bit b the best value of o + a·b + qZ gives a squared error d_i(b), a parity
p_i(b) of its z, and the extra cost δ_i(b) of the second-best value, which flips that parity. The
squared distance to coset c is

    D(c) = Σ_i d_i(c_i)  [+ min_i δ_i(c_i) when Σ_i p_i(c_i) ≢ π]

The sums over all codewords are one matrix product, ``(N, n) @ (n, |C|)``, for d and p together.
The correction min_i δ_i(c_i) is not a sum; it is only needed for a wrong-parity coset whose D(c)
is already below the best right-parity distance (δ ≥ 0, so the others cannot win), and is computed
exactly for those few. The winning coset is then decoded directly (round, fix parity).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import plain_tensors, recording_graph
from ._utils import parity


class BinaryCode:
    """A binary linear code with its codewords in message order: word j = msg(j) · G (mod 2),
    ``msg(j)_r = (j >> r) & 1``. Holds the parity table ``T[g, j] = popcount(g & j) mod 2``,
    through which the parity of Σ_i p_i(c_i) over all codewords is one row lookup."""

    def __init__(self, generator: Tensor) -> None:
        k = generator.shape[0]
        j = torch.arange(2**k)
        bits = (j.unsqueeze(1) >> torch.arange(k)) & 1  # (K, k): msg(j)
        self.generator = generator.to(torch.int64)
        self.words = (bits @ self.generator) % 2  # (K, n)
        self._weights = 2 ** torch.arange(k)
        # popcount(g & j) mod 2 = <bits(g), bits(j)> mod 2: one small matrix product
        as_float = bits.to(torch.float32)
        odd = parity(as_float @ as_float.T).to(torch.bool)
        self.parity_table = torch.cat([odd, ~odd])  # (2K, K); rows K.. complemented
        self._cache: dict = {}

    def on(self, dtype, device) -> tuple[Tensor, Tensor, Tensor]:
        """``(words, generatorᵀ, parity table)`` in ``dtype`` on ``device`` (cached)."""
        key = (dtype, device)
        if key not in self._cache:
            with plain_tensors():
                self._cache[key] = (
                    self.words.to(device=device, dtype=dtype),
                    self.generator.T.to(device=device, dtype=dtype),
                    self.parity_table.to(device),
                )
        return self._cache[key]


def closest_point_glued(
    x: Tensor,
    code: BinaryCode,
    a: float,
    q: float,
    offsets: tuple[tuple[float, int], ...],
    chunk: int,
) -> Tensor:
    """:func:`decode_glued` on every row of ``x`` (``(..., n)``), ``chunk`` rows at a time so
    that the ``(rows, |C|)`` coset costs stay a few MB."""
    n = code.words.shape[1]
    rows = x.reshape(-1, n)
    if recording_graph():  # (a loop over the rows fixed a dynamic batch size)
        return decode_glued(rows, code, a, q, offsets).view(*x.shape[:-1], n)
    out = torch.empty_like(rows)
    for start in range(0, rows.shape[0], chunk):
        out[start : start + chunk] = decode_glued(rows[start : start + chunk], code, a, q, offsets)
    return out.view(*x.shape[:-1], n)


def decode_glued(
    t: Tensor, code: BinaryCode, a: float, q: float, offsets: tuple[tuple[float, int], ...]
) -> Tensor:
    """Closest point of the glued lattice to each row of ``t`` (``(N, n)``).

    ``code``: the glue code C; ``offsets``: the ``(o, π)`` pairs. Returns ``(N, n)`` lattice
    points in ``t``'s dtype.
    """
    words, generator_t, parity_table = code.on(t.dtype, t.device)
    n_words = words.shape[0]
    weights = code._weights.to(t.device)
    costs, flips, deltas, values, indices = [], [], [], [], []
    for offset, wanted in offsets:
        d, p, delta = bit_tables(t, offset, a, q)
        cost = (d[1] - d[0]) @ words.T  # (N, K): Σ_i d_i(c_i) minus the all-zero word's
        cost += d[0].sum(-1, keepdim=True)
        # parity of Σ_i p_i(c_i) = parity of Σ p_i(0) xor <msg, G f> with f = p(1) xor p(0);
        # the table's second half holds the complemented rows, so the xor is part of the lookup
        flip = parity((p[1] - p[0]).abs_() @ generator_t)  # (N, k)
        base = parity(p[0].sum(-1) - wanted).to(torch.int64)  # (N,)
        wrong = parity_table[(flip.to(torch.int64) * weights).sum(-1) + n_words * base]
        value, index = cost.masked_fill(wrong, math.inf).min(1)  # best right-parity coset
        costs.append(cost)
        flips.append(wrong)
        deltas.append(delta)
        values.append(value)
        indices.append(index)
    # best right-parity coset over all offsets; a wrong-parity coset (cost D + min δ ≥ D) can
    # only beat it if its D is already lower, so only those get their parity correction
    best_cost, which = torch.stack(values).min(0)
    best_index = torch.stack(indices).gather(0, which.unsqueeze(0)).squeeze(0) + which * n_words
    for j, (cost, wrong, delta) in enumerate(zip(costs, flips, deltas, strict=True)):
        rows, cols = torch.nonzero(wrong & (cost < best_cost.unsqueeze(1)), as_tuple=True)
        if not recording_graph() and rows.numel() == 0:
            continue  # (a shortcut only: torch.export cannot branch on the count)
        bits = words[cols] > 0  # (K', n)
        fixed = cost[rows, cols] + torch.where(bits, delta[1, rows], delta[0, rows]).amin(-1)
        low = torch.full_like(best_cost, math.inf).scatter_reduce_(0, rows, fixed, "amin")
        take = low < best_cost
        # the column that attains each row's minimum (any, if several)
        hit = fixed == low[rows]
        chosen = torch.zeros_like(best_index).scatter_(0, rows[hit], cols[hit] + j * n_words)
        best_cost = torch.where(take, low, best_cost)
        best_index = torch.where(take, chosen, best_index)
    return decode_coset(t, words, a, q, offsets, best_index)


def bit_tables(t: Tensor, offset: float, a: float, q: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per coordinate of ``t`` (``(N, n)``) and bit b: the squared error d of the nearest value of
    ``offset + a·b + q·Z``, the parity p of its multiple of q, and the extra cost δ of the
    second-nearest (which has the other parity). Each ``(2, N, n)``, bit-major."""
    s = torch.stack([(t - offset) / q, (t - (offset + a)) / q])
    z = torch.round(s)
    e = (s - z).abs_()
    d = e.square().mul_(q * q)
    p = parity(z)
    delta = (1.0 - 2.0 * e).mul_(q * q)  # (q(1-|e|))² − (q e)²
    return d, p, delta


def decode_coset(t, words, a, q, offsets, index) -> Tensor:
    """Closest point of coset ``index`` (offset-major) to each row: round, then fix parity."""
    n_words = words.shape[0]
    which = index // n_words
    offset = torch.tensor([o for o, _ in offsets], dtype=t.dtype, device=t.device)[which]
    wanted = torch.tensor([p for _, p in offsets], dtype=t.dtype, device=t.device)[which]
    shift = offset.unsqueeze(-1) + a * words[index % n_words]
    s = (t - shift) / q
    z = torch.round(s)
    e = s - z
    wrong = parity(parity(z).sum(-1) - wanted).unsqueeze(-1)
    worst = e.abs().max(-1, keepdim=True).indices  # the first, as argmax; faster on the CPU
    step = torch.where(e.gather(-1, worst) >= 0, 1.0, -1.0).to(t.dtype) * wrong
    return shift + q * z.scatter_add_(-1, worst, step)
