"""Exact closest point in any lattice by Schnorr–Euchner enumeration (a sphere decoder).

Reference: E. Agrell, T. Eriksson, A. Vardy, K. Zeger, "Closest point search in lattices",
IEEE Trans. Inf. Theory 48(8), 2002 (algorithm DECODE), after LLL reduction of the basis
(Lenstra, Lenstra, Lovász 1982). Slow (a Python loop per point) but general: it is the reference
the fast family decoders are tested against, and :class:`GeneralLattice` for any generator matrix.

    B (basis rows) ──LLL──> reduced rows ──QR──> R (upper triangular)
    x ──> x Q ──> depth-first search over the last coordinate first, nearest child first,
                  pruning every branch whose partial squared distance exceeds the best so far
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import Lattice, check_rows


def lll_reduce(basis: np.ndarray, delta: float = 0.75) -> np.ndarray:
    """LLL-reduced rows spanning the same lattice as the rows of ``basis`` (float64)."""
    b = np.array(basis, dtype=np.float64)
    n = b.shape[0]

    def gram_schmidt(b):
        bs = np.zeros_like(b)
        mu = np.zeros((n, n))
        for i in range(n):
            bs[i] = b[i]
            for j in range(i):
                mu[i, j] = b[i] @ bs[j] / (bs[j] @ bs[j])
                bs[i] -= mu[i, j] * bs[j]
        return bs, mu

    bs, mu = gram_schmidt(b)
    k = 1
    while k < n:
        for j in range(k - 1, -1, -1):
            q = round(mu[k, j])
            if q:
                b[k] -= q * b[j]
                bs, mu = gram_schmidt(b)
        if bs[k] @ bs[k] >= (delta - mu[k, k - 1] ** 2) * (bs[k - 1] @ bs[k - 1]):
            k += 1
        else:
            b[[k, k - 1]] = b[[k - 1, k]]
            bs, mu = gram_schmidt(b)
            k = max(k - 1, 1)
    return b


#: the largest |coordinate| :meth:`SphereDecoder.closest` searches around: past 2^53, k + 1 == k
#: in float64, and the zig-zag stepped in place until its step outgrew the spacing of floats,
#: at every level (a 6-d lattice at coordinates near 2^60: minutes for one row)
MAX_SEARCH_COORDINATE = 2.0**53


class SphereDecoder:
    """Closest point of the lattice spanned by the rows of ``basis`` (``(m, m)`` float64),
    exactly: Schnorr–Euchner enumeration (Agrell et al. 2002, algorithm DECODE) on the LLL-reduced
    basis."""

    def __init__(self, basis: np.ndarray) -> None:
        reduced = lll_reduce(basis)
        q, r = np.linalg.qr(reduced.T)  # reduced.T = q r, columns are basis vectors
        self.reduced, self.q, self.r = reduced, q, r
        self.m = reduced.shape[0]

    def closest(self, x: np.ndarray, radius2: float = math.inf) -> np.ndarray:
        """The lattice point nearest to ``x`` (``(m,)`` float64), as an ``(m,)`` float64 array.
        With ``radius2``, the nearest point at squared distance below it, or None where there is
        none (pass the squared distance of a candidate to verify it). ValueError where ``x``'s
        coordinates in the reduced basis reach beyond ±:data:`MAX_SEARCH_COORDINATE`."""
        m, r = self.m, self.r
        y = self.q.T @ x  # target in the triangular frame: minimise ‖y − r k‖²
        reach = float(np.abs(np.linalg.solve(r, y)).max())  # x's coordinates in the basis
        if not reach <= MAX_SEARCH_COORDINATE:
            raise ValueError(
                f"x's coordinates in the reduced basis reach {reach:.3g}, beyond ±2^53 "
                "(float64's consecutive integers), where the search cannot step from one "
                "candidate to the next; scale the input down"
            )
        best_k, best = None, radius2
        k = np.zeros(m)
        # iterative depth-first search, nearest-first zig-zag at each level
        level = m - 1
        dist = np.zeros(m + 1)  # partial squared distance above each level
        centre = np.zeros(m)
        step = np.zeros(m)
        centre[level] = y[level] / r[level, level]
        k[level] = round(centre[level])
        step[level] = 1.0 if centre[level] >= k[level] else -1.0
        while True:
            diff = (centre[level] - k[level]) * r[level, level]
            d = dist[level + 1] + diff * diff
            if d < best:
                if level == 0:
                    best, best_k = d, k.copy()
                    self._next(level, k, step)
                else:
                    dist[level] = d
                    level -= 1
                    s = y[level] - r[level, level + 1 :] @ k[level + 1 :]
                    centre[level] = s / r[level, level]
                    k[level] = round(centre[level])
                    step[level] = 1.0 if centre[level] >= k[level] else -1.0
                    continue
            else:
                level += 1
                if level == m:
                    break
                self._next(level, k, step)
                continue
        if best_k is None:
            return None
        return best_k @ self.reduced

    @staticmethod
    def _next(level, k, step) -> None:
        """Move ``k[level]`` to the next value in the zig-zag order around its centre
        (c, then c ± 1, c ∓ 1, c ± 2 ...: ``step`` alternates sign and grows by one)."""
        k[level] += step[level]
        step[level] = -step[level] - math.copysign(1.0, step[level])


#: the largest dimension :class:`GeneralLattice` takes: its LLL reduction (Python loops) took
#: under a second at 64 on random bases and two minutes at 128, and the search is exponential in
#: it. A badly conditioned basis costs more within the bound (64 dimensions of integer entries
#: up to 2^40: 27 s of LLL; a closest point of 48: minutes): a reference, not a fast decoder
MAX_DIM = 64


class GeneralLattice(Lattice):
    """Any lattice from its generator matrix (columns = basis vectors); exact but slow closest
    point by :class:`SphereDecoder` (a Python loop over points, on the CPU in float64; the
    result comes back in ``x``'s shape, dtype and device, detached from autograd).

    ValueError for a ``generator`` that is not a real, finite, full-rank square matrix of 1 to
    :data:`MAX_DIM` rows, whose squared basis lengths overflow float64, or that LLL cannot
    reduce in float64; ``closest_point`` raises ValueError for rows of another width, NaN or
    infinite rows, or rows too far out for the search.
    """

    def __init__(self, generator: Tensor) -> None:
        try:
            g = torch.as_tensor(generator)
        except (TypeError, ValueError, RuntimeError):
            kind = type(generator).__name__
            raise ValueError(f"generator must be a matrix, got {kind}") from None
        if g.is_complex() or g.dtype == torch.bool:
            raise ValueError(f"generator must be a real matrix, got {g.dtype}")
        g = g.to(torch.float64)
        if g.dim() != 2 or g.shape[0] != g.shape[1] or not 1 <= g.shape[0] <= MAX_DIM:
            raise ValueError(
                f"generator must be a square matrix of 1 to {MAX_DIM} rows (LLL and the search "
                f"take minutes beyond), got shape {tuple(g.shape)}"
            )
        if not torch.isfinite(g).all():
            raise ValueError("generator must be finite (it holds NaN or infinity)")
        if torch.linalg.matrix_rank(g) < g.shape[0]:
            raise ValueError("generator must be a square full-rank matrix")
        if not torch.isfinite(g.T @ g).all():  # LLL's inner products: NaN, then a bare error
            peak = g.abs().max().item()
            raise ValueError(
                f"generator entries reach {peak:.3g}: the squared lengths of its basis vectors "
                "overflow float64; scale it down"
            )
        with np.errstate(all="ignore"):
            try:
                decoder = SphereDecoder(g.T.numpy())
            except (ValueError, OverflowError):  # round() of a NaN or infinite coefficient
                decoder = None
        if decoder is None or not (
            np.isfinite(decoder.reduced).all() and np.isfinite(decoder.r).all()
        ):
            raise ValueError("generator is too ill-conditioned to reduce in float64")
        self._generator = g
        self._decoder = decoder
        self.name = f"general({g.shape[0]})"

    @property
    def dim(self) -> int:
        return self._generator.shape[0]

    @property
    def generator_matrix(self) -> Tensor:
        return self._generator

    def closest_point(self, x: Tensor) -> Tensor:
        check_rows(x, self.dim, self.name)
        rows = x.detach().reshape(-1, self.dim).to(torch.float64).cpu().numpy()
        if not np.isfinite(rows).all():  # the search would fail on "float NaN to integer"
            raise ValueError(f"{self.name} takes finite rows; x holds NaN or infinity")
        out = np.stack([self._decoder.closest(row) for row in rows]) if len(rows) else rows
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype).view(x.shape)
