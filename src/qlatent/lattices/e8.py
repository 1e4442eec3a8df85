"""The Gosset lattice E_8 = D_8 ∪ (D_8 + ½·1) (Conway & Sloane 1982; SPLAG ch. 4 §8.1, ch. 20).

Closest point: the nearer of the closest points in D_8 and in D_8 + ½·1 (each: round, then fix
the parity by moving the worst-rounded coordinate). Both come from one rounding: with r = round(x),
e = x − r and a = |e|, the nearest half-integer point is r + ½·sign(e) with errors ½ − a, so

    cost(D_8)       = Σ a²          + [Σ r odd]           · (1 − 2·max a)
    cost(D_8 + ½·1) = Σ (½ − a)²    + [Σ r − #(e<0) odd]  · 2·min a

and only the chosen coset's parity fix is applied. Volume 1, minimal norm 2,
G = 929/12960 ≈ 0.0716821, the best 8-D quantizer known.

With ``compile=True`` the same rule runs as one ``torch.compile``d loop over the points
(:func:`compiled_decode`), written over the eight coordinates as separate columns so that every
step, the sums and the worst/best coordinate included, is elementwise across points. The eager
decoder on the CPU takes the same steps on the coordinates as eight planes of N values
(:func:`_closest_e8_planar`), so both give the same points bit for bit; the dither keeps the
rule over rows of eight (:meth:`GossetLattice.dither_point`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._utils import COMPILED_DTYPES, compiled_or_plain, recording_graph
from ._utils import FixedLattice, as_basis, in_chunks, in_float32, parity
from .base import LATTICES, check_rows


@LATTICES.register("e8")
class GossetLattice(FixedLattice):
    """E_8 with the basis of SPLAG ch. 4 eq. (100): ``2e_1``, ``e_{i+1} − e_i`` and ``½·1``.

    ``closest_point`` is exact, by the two-coset rule above (Conway & Sloane 1982): rows
    ``(..., 8)`` of any floating-point dtype in, the lattice points in the same shape and dtype
    out; ValueError for rows of another width or a non-floating dtype.
    """

    name = "E8"
    cell_halfwidth = 1.0  # 2·Z^8 ⊂ E8
    covering_radius = 1.0  # minimal norm 2 (SPLAG ch. 4 §8.1)

    def __init__(self, *, compile: bool = False) -> None:
        """``compile``: decode with the rule fused by ``torch.compile`` (:func:`compiled_decode`,
        compiled on first use per dtype and device, seconds; needs a C++ compiler on the CPU):
        about two and a half times the eager decoder's rows/s (``qlatent bench lattices``;
        docs/good-lattice-speed.md). The same points bit for bit as the eager decoder on the
        CPU, which runs the same steps (:func:`_closest_e8_planar`). Float16 and bfloat16 rows
        decode eagerly: compiled, their steps would run in float32 (``COMPILED_DTYPES``)."""
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.compile = compile
        rows = [[0] * 8 for _ in range(8)]
        rows[0][0] = 2
        for i in range(1, 7):
            rows[i][i - 1], rows[i][i] = -1, 1
        rows[7] = [0.5] * 8
        self._basis = as_basis(rows)

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, 8, self.name)
        rows = x.reshape(-1, 8)
        if _compiled(self.compile, rows.shape[0], x.dtype):
            fused = compiled_or_plain(compiled_decode, _closest_e8_columns)
            decode = lambda chunk: fused(chunk.T.contiguous())  # noqa: E731
        elif rows.device.type == "cpu":  # eager, in chunks that keep the temporaries small
            return in_chunks(_closest_e8_planar, x, 8)
        else:  # eager, also for a few rows, where the compiled call's overhead dominates
            decode = functools.partial(in_float32, _closest_e8)
        # (exported: one call, as a branch on the row count bounded a dynamic batch size)
        if recording_graph() or rows.shape[0] <= _CHUNK:
            return decode(rows).view(x.shape)
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[0], _CHUNK):
            out[start : start + _CHUNK] = decode(rows[start : start + _CHUNK])
        return out.view(x.shape)

    def dither_point(self, y: Tensor) -> Tensor:
        """The dither's reduction keeps the rule over rows of eight (:func:`_closest_e8`), the
        eager decoder on the CPU until the planar one: that finds points as near, but its sums
        run in another order, so it may break a tie within float rounding the other way, and a
        file's decoder regenerates its dither bit for bit. With ``compile=True`` the fused
        decoder for 64 points or more, as before."""
        check_rows(y, 8, self.name)
        if _compiled(self.compile, y.numel() // 8, y.dtype):
            return self.closest_point(y)
        if y.device.type == "cpu":
            return in_chunks(_closest_e8, y, 8)
        return self.closest_point(y)


def _compiled(compile: bool, rows: int, dtype: torch.dtype) -> bool:
    """Whether ``rows`` points take the fused decoder. Never within ``torch.export``: the
    program records the eager decoder of ``compile=False`` (the branch on the row count bounded
    a dynamic batch size, and a compiled function is not recorded as such)."""
    exporting = recording_graph()
    return compile and not exporting and rows >= _COMPILED_MIN_ROWS and dtype in COMPILED_DTYPES


#: E8 rows per compiled call, and per eager call on an accelerator: bounds the temporaries
#: (≈ 8 MB per float32 tensor) on huge inputs. The eager decoder on the CPU takes the smaller
#: chunks of :func:`~qlatent.lattices._utils.in_chunks` (2^14 rows of float32).
_CHUNK = 1 << 18
#: fewer rows decode eagerly with ``compile=True`` (a compiled call costs tens of microseconds,
#: and shapes of 0 and 1 rows would each be compiled apart)
_COMPILED_MIN_ROWS = 64


def _closest_e8(x: Tensor) -> Tensor:
    """Closest E8 point to each row of ``x`` (``(N, 8)``), by the two-coset rule above.

    Sums over a row are matrix-vector products and parities use r − 2·floor(r/2) (exact at
    any magnitude): both several times faster than the reductions and ``remainder`` kernels.
    The worst and best rounding errors are plain ``amax``/``amin``; only the winning coset's
    coordinate is located, by one reduction with an index (on the CPU such a reduction is a
    scalar loop, several times slower), and the per-row choices are 0/1 products, not
    ``torch.where`` (a data-dependent branch per row)."""
    ones = torch.ones(8, dtype=x.dtype, device=x.device)
    r = torch.round(x)
    e = x - r
    a = e.abs()
    sum_a2 = (a * a) @ ones  # (N,)
    sum_a = a @ ones
    # the nearest half-integer point is floor(x) + ½, and Σ floor = Σ r − #(e < 0)
    f = torch.floor(x)
    odd0 = parity(parity(r) @ ones).unsqueeze(-1)  # (N, 1)
    odd1 = parity(parity(f) @ ones).unsqueeze(-1)
    cost0 = sum_a2.unsqueeze(-1) + odd0 * (1.0 - 2.0 * a.amax(-1, keepdim=True))
    cost1 = (sum_a2 - sum_a + 2.0).unsqueeze(-1) + odd1 * (2.0 * a.amin(-1, keepdim=True))
    half = (cost1 < cost0).to(x.dtype)  # (N, 1): 1 where the D_8 + ½ coset wins
    # the chosen coset's point: r, or r moved half a step toward x (= floor(x) + ½)
    point = torch.addcmul(r, half, (f - r).add_(0.5))
    # the parity fix of the chosen coset: D_8 moves its worst coordinate (the first largest
    # |e|) one step toward x; D_8 + ½ moves its worst (the first smallest |e|, the coordinate
    # nearest an integer) to the other half-integer: the first largest of ±|e|
    at = (a * (1.0 - 2.0 * half)).max(-1, keepdim=True).indices
    toward = (e.gather(-1, at) >= 0).to(x.dtype).mul_(2.0).sub_(1.0)  # + on exact integers
    odd = odd0 - half * (odd1 + odd0)  # odd0 or −odd1
    return point.scatter_add_(-1, at, toward * odd)


def _closest_e8_planar(x: Tensor) -> Tensor:
    """The rule of :func:`_closest_e8` on rows ``x`` ``(N, 8)``, computed on the coordinates as
    eight planes of N values (the eager decoder on the CPU). The same steps as
    :func:`_closest_e8_columns`, in the same order, so the same points bit for bit as the
    fused decoder of ``compile=True``; against :func:`_closest_e8` they differ only where a
    point lies within rounding of two lattice points (its sums run in another order).

    Three things make it about 1.5× the rows/s of :func:`_closest_e8` on the CPU
    (docs/good-lattice-speed.md, "E8 on eight planes"): a reduction over the 8 planes is an
    elementwise pass down N-long rows, several times faster than one over the last dimension
    of 8; the comparisons write float 0/1 into an ``out`` tensor (a ``bool`` result costs
    about seven times a float one); and the first worst coordinate is found without a
    reduction with indices: the coordinates equal to the chosen extreme are weighted 8, 7, …,
    1, and the first is the one whose weight equals the largest. The two transposes go through
    ``channels_last`` copies, exact and several times faster than ``.T.contiguous()`` of an
    (N, 8) tensor."""
    n, dtype = x.shape[0], x.dtype
    planes = x.view(1, n, 1, 8).permute(0, 3, 1, 2).contiguous().view(8, n)
    r = torch.round(planes)
    a = (planes - r).abs_()  # |e|, e = x − r
    sum_a2 = (a * a).sum(0)  # (N,)
    sum_a = a.sum(0)
    down = torch.floor(planes).sub_(r)  # floor − round: 0, or −1 where x was rounded up
    sum_r = parity(r).sum(0)
    odd0 = parity(sum_r)
    odd1 = parity(sum_r + down.sum(0))  # Σ floor = Σ r + Σ (floor − round)
    worst, best = a.amax(0), a.amin(0)
    cost0 = sum_a2 + odd0 * (1.0 - 2.0 * worst)
    cost1 = (sum_a2 - sum_a + 2.0) + odd1 * (2.0 * best)
    half = torch.lt(cost1, cost0, out=torch.empty_like(cost0))  # 1 where D_8 + ½ wins
    toward = down.add_(0.5)  # ±½: the sign of e (+ on exact integers, where e = +0)
    point = torch.addcmul(r, half, toward)  # r, or floor(x) + ½
    # the chosen coset's worst coordinate: the first largest |e| (D_8) or smallest (D_8 + ½);
    # half·best + (1 − half)·worst is exactly one of the two
    hit = torch.eq(a, half * best + (1.0 - half) * worst, out=torch.empty_like(a))
    hit.mul_(torch.arange(8, 0, -1, dtype=dtype, device=x.device).unsqueeze(1))
    first = torch.eq(hit, hit.amax(0), out=hit)
    odd = (odd0 - half * (odd1 + odd0)).mul_(2.0)  # twice odd0 or −odd1
    point.addcmul_(first.mul_(toward), odd)  # one step toward x, as the rule over rows
    out = point.view(1, 8, n, 1).contiguous(memory_format=torch.channels_last)
    return out.permute(0, 2, 3, 1).view(n, 8)


def _closest_e8_columns(xt: Tensor) -> Tensor:
    """The rule of :func:`_closest_e8` on ``xt`` of shape ``(8, N)`` (coordinates first),
    returning ``(N, 8)``: each coordinate a column of N values, sums and the worst and best
    coordinate (the first of equal ones, as ``max``/``min`` give) formed column by column, so
    that ``torch.compile`` makes one loop across points of elementwise vector code (over rows of
    eight it reduces within each row, several times slower)."""
    xs = list(xt.unbind(0))
    r = [torch.round(v) for v in xs]
    f = [torch.floor(v) for v in xs]
    e = [v - q for v, q in zip(xs, r, strict=True)]
    a = [v.abs() for v in e]
    sum_a2, sum_a = a[0] * a[0], a[0]
    worst, best = a[0], a[0]
    worst_at = best_at = torch.zeros_like(a[0])
    odd_r, odd_f = parity(r[0]), parity(f[0])
    for i in range(1, 8):
        sum_a2 = sum_a2 + a[i] * a[i]
        sum_a = sum_a + a[i]
        above, below = a[i] > worst, a[i] < best
        worst_at, worst = torch.where(above, float(i), worst_at), torch.where(above, a[i], worst)
        best_at, best = torch.where(below, float(i), best_at), torch.where(below, a[i], best)
        odd_r, odd_f = odd_r + parity(r[i]), odd_f + parity(f[i])
    odd0, odd1 = parity(odd_r), parity(odd_f)
    cost0 = sum_a2 + odd0 * (1.0 - 2.0 * worst)
    cost1 = (sum_a2 - sum_a + 2.0) + odd1 * (2.0 * best)
    half = cost1 < cost0
    at = torch.where(half, best_at, worst_at)
    step = torch.where(half, -odd1, odd0)
    out = []
    for i in range(8):
        point = torch.where(half, f[i] + 0.5, r[i])
        toward = torch.where(e[i] >= 0, step, -step)  # + on exact integers, as the eager rule
        out.append(torch.where(at == float(i), point + toward, point))
    return torch.stack(out, 1)


@functools.cache
def compiled_decode():
    """:func:`_closest_e8_columns` fused by ``torch.compile`` (dynamic shapes: one compilation
    for every number of rows)."""
    return torch.compile(_closest_e8_columns, dynamic=True)
