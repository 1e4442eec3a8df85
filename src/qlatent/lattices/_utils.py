"""Helpers shared by the lattice families: integer bases, D_n rounding, fixed generator matrices.

Everything here is exact for integer-valued inputs: a lattice's generator matrix is computed once
from integer generating vectors (Hermite normal form with Python integers), and the parity fixes
of the Conway–Sloane decoders test parities with :func:`parity`, which is exact in floating
point at any magnitude.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
from torch import Tensor

from .._utils import plain_tensors, recording_graph
from .base import Lattice, check_rows, to_coordinates

#: bytes of one float temporary of an eager decoder's chunk of rows on the CPU (E8: 2^14 rows of
#: float32). Under glibc's defaults temporaries of several MB were faulted in again on most
#: calls (E8 in one chunk of 2^17 rows: 12,704 page faults a call), which cost the E8 decoder
#: about half its speed and D4 about a third; chunks of 2^12 and 2^13 E8 rows paid more in
#: per-operation overhead (examples/decoder-chunks.py; docs/good-lattice-speed.md)
CHUNK_BYTES = 1 << 19


#: the floating-point types too narrow for a decoder's sums of squared errors
HALF_DTYPES = (torch.float16, torch.bfloat16)


def in_float32(rule: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """``rule(rows)``, with float16 and bfloat16 rows decoded in float32 and the points returned
    in their dtype. In half precision a coset decoder's costs (sums of squared errors over 8 to
    24 coordinates) round to 8 or 11 significant bits and it chose another coset than the
    nearest: of 4,000 Gaussian rows of scale 3 in bfloat16, 30 E8, 43 Λ16 and 99 Λ24 points
    were not the closest, and as many dither draws were reduced into another cell than the
    Voronoi cell. The points are integers or halves, which the half types hold exactly at the
    magnitudes their rows reach; float32 and float64 rows are decoded as they come."""
    if rows.dtype in HALF_DTYPES:
        return rule(rows.float()).to(rows.dtype)
    return rule(rows)


def in_chunks(
    rule: Callable[[Tensor], Tensor], x: Tensor, n: int, itemsize: int | None = None
) -> Tensor:
    """``rule`` (rows ``(k, n)`` to points ``(k, n)``) on every row of ``x`` (``(..., n)``), in
    chunks whose float temporaries take :data:`CHUNK_BYTES` each on the CPU (``itemsize``: the
    bytes per number the rule computes in, ``x``'s by default); in one call elsewhere.
    Float16 and bfloat16 rows are decoded in float32 (:func:`in_float32`)."""
    if x.dtype in HALF_DTYPES:
        return in_chunks(rule, x.float(), n, itemsize).to(x.dtype)
    rows = x.reshape(-1, n)
    size = max(1, CHUNK_BYTES // (n * (itemsize or x.element_size())))
    # (exported: in one call, as a Python loop over the rows fixed a dynamic batch size)
    if recording_graph() or rows.shape[0] <= size or x.device.type != "cpu":
        return rule(rows).view(x.shape)
    out = torch.empty_like(rows)
    for start in range(0, rows.shape[0], size):
        out[start : start + size] = rule(rows[start : start + size])
    return out.view(x.shape)


def parity(v: Tensor) -> Tensor:
    """``v mod 2`` for integer-valued floats, exactly at any magnitude (v/2, its floor and
    twice that are exact, and v − 2·floor(v/2) is 0 or 1); several times faster than
    ``torch.remainder`` on the CPU."""
    return v - 2.0 * torch.floor(v * 0.5)


def round_to_dn(x: Tensor) -> Tensor:
    """Closest point of ``D_n = {k ∈ Z^n : Σ k even}`` to each row of ``x`` (Conway & Sloane 1982).

    Round every coordinate; if the sum is odd, move the coordinate that rounded worst to its
    other neighbour. ``x``: ``(..., n)``, any float dtype; the result has ``x``'s dtype.
    """
    r = torch.round(x)
    e = x - r
    # Σ of the parities by a matrix-vector product (exact: small integers), faster on the CPU
    # than a reduction over the last dimension, as is max(dim).indices than argmax
    ones = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    odd = parity(parity(r) @ ones).unsqueeze(-1)  # 1.0 where Σ r is odd
    worst = e.abs().max(-1, keepdim=True).indices  # the first largest, as argmax gives it
    step = (e.gather(-1, worst) >= 0).to(x.dtype).mul_(2.0).sub_(1.0).mul_(odd)  # ±1 or 0
    return r.scatter_add_(-1, worst, step)


def nearer(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Row by row, whichever of the candidates ``a`` and ``b`` is nearer to ``x`` (``a`` on
    ties)."""
    da = (x - a).square_().sum(-1, keepdim=True)
    db = (x - b).square_().sum(-1, keepdim=True)
    return torch.where(db < da, b, a)


def integer_basis(generators: Sequence[Sequence[int]]) -> list[list[int]]:
    """A basis (rows) of the lattice spanned by integer ``generators``: their Hermite normal form.

    Exact integer elimination; the result is upper triangular with positive pivots. Raises
    ``ValueError`` if the generators do not span a full-rank lattice.
    """
    rows = [list(map(int, g)) for g in generators]
    n = len(rows[0])
    basis: list[list[int]] = []
    for col in range(n):
        # Euclid on column ``col`` among the remaining rows until at most one is non-zero there
        while True:
            live = [r for r in rows if r[col] != 0]
            if len(live) <= 1:
                break
            pivot = min(live, key=lambda r: abs(r[col]))
            for r in live:
                if r is not pivot:
                    q = r[col] // pivot[col]
                    for j in range(col, n):
                        r[j] -= q * pivot[j]
        live = [r for r in rows if r[col] != 0]
        if not live:
            raise ValueError("the generating vectors do not span a full-rank lattice")
        pivot = live[0]
        if pivot[col] < 0:
            pivot[:] = [-v for v in pivot]
        rows = [r for r in rows if r is not pivot and any(r)]
        basis.append(pivot)
    for i in range(n - 1, -1, -1):  # reduce the entries above each pivot
        for k in range(i):
            q = basis[k][i] // basis[i][i]
            if q:
                basis[k] = [a - q * b for a, b in zip(basis[k], basis[i], strict=True)]
    return basis


class FixedLattice(Lattice):
    """A lattice with a fixed generator matrix (held in float64, cast to the input's dtype).

    Subclasses set ``_basis`` (rows = basis vectors, float64, ``(m, m)``) and implement
    ``closest_point``; coordinates are computed in float64 with a cached inverse.
    """

    _basis: Tensor

    @property
    def dim(self) -> int:
        return self._basis.shape[0]

    @property
    def generator_matrix(self) -> Tensor:
        return self._basis.T  # columns are basis vectors

    def coordinates(self, points: Tensor) -> Tensor:
        check_rows(points, self.dim, self.name, floating=False)
        inverse = self._inverse_t.to(points.device)
        return to_coordinates(torch.round(points.to(torch.float64) @ inverse))

    def points(self, coords: Tensor) -> Tensor:
        check_rows(coords, self.dim, self.name, floating=False)
        return coords.to(torch.float64) @ self._basis.to(coords.device)

    @property
    def _inverse_t(self) -> Tensor:
        inv = getattr(self, "_inv_cache", None)
        if inv is None:
            # a normal tensor even when first asked for under ``torch.inference_mode``: an
            # inference tensor cached there broke every later call that autograd records
            # (and a plain one under a torch.func transform, whose tensors die with it)
            with torch.inference_mode(False), plain_tensors():
                inv = self._inv_cache = torch.linalg.inv(self._basis)
        return inv

    def points_from_unit(self, r: Tensor) -> Tensor:
        """``r @ basis``, formed in float64 and rounded once to ``r``'s dtype. Draws on the 2^-24
        grid (the dither's) times the integer or half-integer bases of D_n, D_n*, E8, Λ16 and
        Λ24 sum exactly there, so the hard path's dither, which a decoder regenerates, does not
        depend on the matrix kernel (A_n's irrational basis: up to a float64 rounding, below
        float32's). In float32 the kernel rounded its partial sums in an order that depended on
        the thread count and the number of rows: a Leech file written with 4 threads failed to
        decode with 1, 1 to 3 rows of Λ16 or Λ24 coded alone got another dither than inside a
        larger batch, and a kernel of another CPU could have done the same to any of them. MPS
        has no float64: there the product stays in ``r``'s dtype."""
        check_rows(r, self.dim, self.name)
        if r.device.type == "mps":
            return r @ self._basis.to(device=r.device, dtype=r.dtype)
        return (r.to(torch.float64) @ self._basis.to(r.device)).to(r.dtype)

    @property
    def log_volume(self) -> Tensor:
        return torch.linalg.slogdet(self._basis)[1]


def dn_rows(n: int) -> list[list[int]]:
    """Integer basis rows of D_n: ``2e_1`` and ``e_{i+1} − e_i``."""
    rows = [[0] * n for _ in range(n)]
    rows[0][0] = 2
    for i in range(1, n):
        rows[i][i - 1], rows[i][i] = -1, 1
    return rows


def as_basis(rows: Sequence[Sequence[int | float | Fraction]]) -> Tensor:
    return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)


def triangular_basis(basis: Tensor) -> tuple[Tensor, Tensor, bool]:
    """For a lattice with basis rows ``basis`` ``(n, n)`` (points = k @ basis): a triangular
    basis T of the same lattice, the integer matrix U with T = U @ basis, and whether T is upper
    triangular (else lower).

    A basis that is already triangular is kept (U = I); otherwise T is the Hermite normal form
    of 2·basis (an integer matrix for every family here: D_n, E8 ... have half-integer entries at
    most), halved. Raises ValueError for a basis that is neither.
    """
    b = basis.to(torch.float64)
    eye = torch.eye(b.shape[0], dtype=torch.float64)
    if torch.equal(b, torch.triu(b)):
        return b, eye, True
    if torch.equal(b, torch.tril(b)):
        return b, eye, False
    doubled = 2 * b
    if not torch.equal(doubled, doubled.round()):
        raise ValueError("the lattice's basis is neither triangular nor half-integral")
    t = as_basis(integer_basis(doubled.round().long().tolist())) / 2
    u = torch.round(t @ torch.linalg.inv(b))
    if not torch.allclose(u @ b, t) or abs(abs(float(torch.linalg.det(u))) - 1) > 1e-9:
        raise ValueError("could not find a unimodular change to a triangular basis")
    return t, u, True
