"""E8 blocks of :class:`~.models.GoodLattice`, coded by their two cosets of D8 under a Laplace
(:class:`_E8Block`) or a Gaussian prior (:class:`_GaussianE8Block`); the moments of the rounding
errors that give a coset its probability are in :mod:`._rounding_errors`. The Laplace block's
coordinate code (a parity, a sign within the parity class, a geometric magnitude:
:func:`_parity_sign_magnitude_ops`, :func:`_decode_parity_sign_magnitude`) is also that of the
glued blocks of Λ16 and Λ24 (:mod:`._good_lattice`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._coder_ops import (
    _CLASS_CHUNK,
    PRECISION,
    _categorical_op,
    _ChunkedCategorical,
    _decode_categorical,
    _geometric_op,
    _Op,
    constriction,
)
from ._laplace_cells import _GAUSSIAN_TAIL_SCALES, MAX_SUPPORT, SignCode, magnitude_models

# besides what this module uses: the names that :mod:`.models` imports from it
from ._rounding_errors import (  # noqa: F401
    _COSET_FLOOR,
    _GAUSSIAN_PARITY_SCALE,
    _coset_one_probability,
    _gaussian_bin_masses,
    _gaussian_rounding_error_moments,
    _rounding_error_moments,
)


def _parity_probs(probs, r, n, parity_so_far, tail):
    """P(κ even), P(κ odd) for one coordinate: class mass × the weight of k's parity."""
    pn, p0, pp = probs[:, 0], probs[:, 1], probs[:, 2]
    even = p0 + (pn + pp) * (r / (1 + r))
    odd = (pn + pp) / (1 + r)
    k_even_if_kappa_even = np.remainder(n, 2) == 0  # k = κ − n
    sign = np.where(np.remainder(parity_so_far, 2) == 0, 1.0, -1.0)
    w_k_even, w_k_odd = 0.5 * (1 + sign * tail), 0.5 * (1 - sign * tail)
    w_even = np.where(k_even_if_kappa_even, w_k_even, w_k_odd)
    w_odd = np.where(k_even_if_kappa_even, w_k_odd, w_k_even)
    return np.stack([even * w_even, odd * w_odd], axis=1)


def _sign_probs(probs, r, odd: np.ndarray) -> np.ndarray:
    """κ's sign (−, 0, +) within its parity class."""
    pn, p0, pp = probs[:, 0], probs[:, 1], probs[:, 2]
    even_probs = np.stack([pn * r / (1 + r), p0, pp * r / (1 + r)], axis=1)
    odd_probs = np.stack([pn, np.zeros_like(p0), pp], axis=1)
    return np.where(odd[:, None], odd_probs, even_probs)


def _tail_product(d_all: np.ndarray, j: int) -> np.ndarray:
    """Π_{i>j} D_i per row of ``(N, n)`` D: the weight that the parities after coordinate j
    give to Σ k's parity (ones after the last coordinate)."""
    return d_all[:, j + 1 :].prod(1) if j < d_all.shape[1] - 1 else np.ones(d_all.shape[0])


def _parity_sign_magnitude_ops(
    kappa, probs_j, ratio_j, shift_j, parity_so_far, tail, table_j, log_ratio2_j
) -> list[_Op]:
    """One coordinate's ops for κ = k + n (E8) or κ = y − n (a glued block), with its sign
    probabilities ``probs_j``, ratio r (ρ for a glued block), shift n, the parity so far and
    ``tail`` (:func:`_tail_product`): its parity, its sign within the parity class and its
    geometric magnitude (table ``table_j``, log-ratio ``log_ratio2_j`` = log r²)."""
    odd = np.remainder(kappa, 2) == 1
    parity = _parity_probs(probs_j, ratio_j, shift_j, parity_so_far, tail)
    signs = _sign_probs(probs_j, ratio_j, odd)
    nonzero = kappa[kappa != 0]
    magnitude = (np.abs(nonzero) - np.where(np.remainder(nonzero, 2) == 1, 1, 2)) // 2
    return [
        _categorical_op(odd.astype(np.int64), parity),
        _categorical_op(np.sign(kappa) + 1, signs),
        _geometric_op(magnitude, table_j, log_ratio2_j),
    ]


def _decode_parity_sign_magnitude(
    coder, probs_j, ratio_j, shift_j, parity_so_far, tail, table_j
) -> np.ndarray:
    """One coordinate's κ, decoded from the ops of :func:`_parity_sign_magnitude_ops`."""
    parity = _parity_probs(probs_j, ratio_j, shift_j, parity_so_far, tail)
    odd = _decode_categorical(coder, parity) == 1
    sign = _decode_categorical(coder, _sign_probs(probs_j, ratio_j, odd)) - 1
    kappa = np.zeros(shift_j.shape[0], dtype=np.int64)  # 0, or ±(2t + 1) / ±(2t + 2)
    nonzero = np.flatnonzero(sign)
    if nonzero.size:
        t = coder.decode(table_j, nonzero.size).astype(np.int64)
        base = np.where(odd[nonzero], 1, 2)
        kappa[nonzero] = sign[nonzero] * (2 * t + base)
    return kappa


class _E8Block:
    """E8 = D8 ∪ (D8 + ½·1) in base units (Conway & Sloane): z = k + c/2·1 with k ∈ Z^8,
    Σ k even, c ∈ {0, 1}. The model is the product of the one-dimensional cell masses
    m_j(k_j) = P(X̂_j ∈ σ(k_j + c/2) − u_j ± σ/2) restricted to E8 and normalized:

        P(z | u) = Π_j m_j(k_j) / Z,   Z = Σ_c ½ (1 + Π_j D_j^c),   D_j^c = Σ_k (−1)^k m_j(k),

    (the parity restriction keeps ½(1 + Π D) of each coset's product mass). It is coded as the
    coset c (probabilities ∝ ½(1 + Π_j D_j^c)), then coordinate by coordinate the parity of k_j,
    weighted by ½(1 ± Π_{i>j} D_i^c) so that the parities still to come can make Σ k even, and
    k_j within its parity class: for the Laplace cells, shifted so that their mean lies in
    [−½, ½] as for the rectangular lattice, a sign and a geometric magnitude with ratio
    r² = e^(−2σ/b) — all exact, no truncation but the coder's support. Each D has a closed
    form: with P_−, P_0, P_+ the sign probabilities, D = ±(P_0 − (P_− + P_+)(1 − r)/(1 + r)).
    Its cells are cubes of
    side σ, far closer to E8's Voronoi cell than the elongated boxes of a triangular basis.

    Every coset tiles space with these cubes, so the product model gives each coset about half
    the mass whatever the prior; the true P(c | u) is the prior's mass on the points whose
    nearest E8 point lies in coset c, which a peaked prior tilts far from ½. With
    ``cosets="errors"`` (files of kind :data:`MODEL_E8_COSETS`) the coset is coded with
    :func:`_coset_one_probability` instead and the coordinates with the same P(k | c) as before
    (the product model within coset c, normalized); ``cosets="half"`` is the model of files of
    kinds 4 and 5. On the E8^5 Table-1 checkpoint the five cosets cost 4.31 bits per image
    instead of 5.00 (2000 training images, ``examples/e8-coset-cost.py``)."""

    #: E|e| and E e² of the rounding errors under the prior, for :func:`_coset_one_probability`
    _moments = staticmethod(_rounding_error_moments)

    def __init__(self, basis: Tensor, cosets: str = "errors") -> None:
        if cosets not in ("errors", "half"):
            raise ValueError(f"cosets must be 'errors' or 'half', got {cosets!r}")
        self.basis = basis.to(torch.float64)
        self.inverse = torch.linalg.inv(self.basis)
        self.cosets = cosets

    def spacing(self, sigma: np.ndarray) -> np.ndarray:
        return sigma.copy()

    @staticmethod
    def min_bits(sigma: np.ndarray, scale: np.ndarray) -> float:
        """A lower bound on one block's bits over all dithers and both coset models. A cell's
        mass is at most M_j = 1 − e^(−σ_j/2b_j) (centred on the mode); the alternating sum of
        the unimodal cell masses is at most their largest, |D_j| ≤ M_j, so each coset's
        normalizer ½(1 + Π D_j) is at least ½(1 − Π M_j) and, whatever the coset's own
        probability, no point has probability above 2 Π M_j / (1 − Π M_j); the coder's fixed
        point adds a 2^-24 unit per coded symbol at most (25 of them)."""
        product = float(np.prod(-np.expm1(-sigma / (2 * scale))))
        p_max = 1.0 if product >= 1 / 3 else 2 * product / (1 - product)
        return max(0.0, -math.log2(min(1.0, p_max + 25 * 2.0**-PRECISION)))

    @staticmethod
    def _cells(u: np.ndarray, sigma, scale, c: int):
        """Per coordinate, for coset c: the shift n, the sign probabilities ``(N, 8, 3)`` and
        D ``(N, 8)``."""
        x = sigma * (c / 2.0) - u
        n = np.round(x / sigma)
        v = sigma * n - x
        probs = SignCode(sigma, scale).probabilities(np.ascontiguousarray(v)).reshape(*u.shape, 3)
        r = np.exp(-sigma / scale)
        d = probs[..., 1] - (probs[..., 0] + probs[..., 2]) * ((1 - r) / (1 + r))
        d = np.where(np.remainder(n, 2) == 0, d, -d)
        return n, probs, d

    def _coset_probs(self, u, sigma, scale, d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
        """``(N, 2)`` coset probabilities: ½(1 + Π_j D_j^c) (``"half"``) or
        :func:`_coset_one_probability` with the prior's rounding-error moments (``"errors"``)."""
        if self.cosets == "half":
            return np.stack([0.5 * (1 + d0.prod(1)), 0.5 * (1 + d1.prod(1))], axis=1)
        one = _coset_one_probability(u / sigma, scale / sigma, self._moments)
        return np.stack([1 - one, one], axis=1)

    def _split(self, k: Tensor):
        z = k.to(torch.float64) @ self.basis  # halves: exact
        c = np.remainder(np.round(2 * z[:, 0].numpy()), 2).astype(np.int64)
        return z.numpy() - c[:, None] / 2.0, c

    def _cosets(self, u, sigma, scale):
        """Both cosets' cells and the coset probabilities: what encoder and decoder build
        before the coset is known."""
        cells = [self._cells(u, sigma, scale, cc) for cc in (0, 1)]
        return cells, self._coset_probs(u, sigma, scale, cells[0][2], cells[1][2])

    @staticmethod
    def _chosen(cells, c: np.ndarray):
        """Each of :meth:`_cells`' arrays (the shift n first) for the coset each row lies in."""
        first = c == 0
        return tuple(
            np.where(first.reshape(-1, *(1,) * (a.ndim - 1)), a, b)
            for a, b in zip(*cells, strict=True)
        )

    def _coordinates(self, chosen, sigma, scale, width: int):
        """What the coordinates' tables take once the coset is known: the chosen cells (n, the
        sign probabilities, D), the parity ratio r, the magnitude tables (ratio r²) and log r²."""
        r = np.exp(-sigma / scale)
        tables = magnitude_models(scale / (2 * sigma), (width + 1) // 2 + 1)
        return (*chosen, r, tables, -2 * sigma / scale)

    def _coordinate_args(self, coords, j: int, parity_so_far: np.ndarray) -> tuple:
        """Coordinate j's sign probabilities, r, shift n, the parity so far, the product of the
        D's after it and its magnitude table: what both its ops and its decoding take."""
        n_all, probs_all, d_all, r, tables, _ = coords
        tail = _tail_product(d_all, j)
        return probs_all[:, j], r[j], n_all[:, j], parity_so_far, tail, tables[j]

    def _coordinate_ops(self, coords, j: int, kappa: np.ndarray, parity_so_far) -> list[_Op]:
        """Coordinate j's ops for κ_j = k_j + n_j: its parity, weighted by the parities still
        to come, its sign within the parity class and its geometric magnitude."""
        log_r2 = coords[5]
        args = self._coordinate_args(coords, j, parity_so_far)
        return _parity_sign_magnitude_ops(kappa, *args, log_r2[j])

    def _decode_coordinate(self, coder, coords, j: int, parity_so_far) -> np.ndarray:
        """Coordinate j's κ_j, decoded from the ops of :meth:`_coordinate_ops`."""
        return _decode_parity_sign_magnitude(
            coder, *self._coordinate_args(coords, j, parity_so_far)
        )

    def ops(self, prepared, sigma, scale, width: int) -> list:
        kk, c, u = prepared
        cells, coset_probs = self._cosets(u, sigma, scale)
        out = [_categorical_op(c, coset_probs)]
        coords = self._coordinates(self._chosen(cells, c), sigma, scale, width)
        n_all = coords[0]
        parity_so_far = np.zeros(kk.shape[0])
        for j in range(8):
            kappa = (kk[:, j] + n_all[:, j]).astype(np.int64)
            out.extend(self._coordinate_ops(coords, j, kappa, parity_so_far))
            parity_so_far = parity_so_far + kk[:, j]
        return out

    def decode(self, coder, u: np.ndarray, sigma, scale, width: int) -> Tensor:
        cells, coset_probs = self._cosets(u, sigma, scale)
        c = _decode_categorical(coder, coset_probs)
        coords = self._coordinates(self._chosen(cells, c), sigma, scale, width)
        n_all = coords[0]
        kk = np.zeros(u.shape)
        parity_so_far = np.zeros(u.shape[0])
        for j in range(8):
            kk[:, j] = self._decode_coordinate(coder, coords, j, parity_so_far) - n_all[:, j]
            parity_so_far = parity_so_far + kk[:, j]
        z = torch.from_numpy(kk + c[:, None] / 2.0)
        return torch.round(z @ self.inverse).long()


class _GaussianE8Block(_E8Block):
    """:class:`_E8Block`'s model under a Gaussian prior N(0, b_j²): the product of the cubes'
    masses restricted to E8 within each coset, coded as the coset c with the probability that
    the nearest E8 point lies in it (:meth:`_coset_probs`), then each coordinate's κ_j = k_j + n_j
    with a categorical over the mean ± 12 deviations (:meth:`_window`; an escape beyond it,
    then κ uniform over the header's range) whose entries are the masses of the bins [κ ± ½]
    of N(v_j/σ_j, (b_j/σ_j)²) times the probability that the coordinates after it complete Σ k to
    an even sum (the last coordinate's parity is forced): the Laplace model's ½(1 ± Π_{i>j} D_i)
    with the parities' masses summed over the mean ± 12 deviations (½ each beyond
    :data:`_GAUSSIAN_PARITY_SCALE` deviations per cell) and combined by a recurrence of
    positive terms, which keeps a peaked prior's tiny odd masses. Each row's table is made
    chunk by chunk of rows (:class:`_ChunkedCategorical`), in the same float64 operations in
    encoder and decoder."""

    #: the Gaussian's moments give P(c | u) (the product model's ½(1 + Π D) would put a peaked
    #: prior's whole mass on one coset, and the point the quantizer picks is often in the other)
    _moments = staticmethod(_gaussian_rounding_error_moments)

    def __init__(self, basis: Tensor) -> None:
        super().__init__(basis, cosets="errors")

    @staticmethod
    def min_bits(sigma: np.ndarray, scale: np.ndarray) -> float:
        """As :meth:`_E8Block.min_bits` with M_j = erf(σ_j / (2√2 b_j)), the largest Gaussian
        cell mass, and a fixed-point excess of at most (2·MAX_SUPPORT + 2)·2^-24 per entry on
        each of the 9 coded symbols."""
        from scipy.special import erf

        product = float(np.prod(erf(sigma / (2 * math.sqrt(2.0) * scale))))
        p_max = 1.0 if product >= 1 / 3 else 2 * product / (1 - product)
        excess = 9 * (2 * MAX_SUPPORT + 2) * 2.0**-PRECISION
        return max(0.0, -math.log2(min(1.0, p_max + excess)))

    @staticmethod
    def _cells(u: np.ndarray, sigma, scale, c: int):
        """Per coordinate, for coset c: the shift n ``(N, 8)``, the bins' means v/σ, and the
        probability that k = κ − n is odd under the coordinate's cell masses (summed, not
        taken as ½(1 − D): a peaked prior's odd mass can be far below the float's epsilon)."""
        x = sigma * (c / 2.0) - u
        n = np.round(x / sigma)
        mean = (sigma * n - x) / sigma
        odd = np.full(u.shape, 0.5)
        for j, ratio in enumerate(scale / sigma):
            if ratio > _GAUSSIAN_PARITY_SCALE:
                continue
            reach = math.ceil(_GAUSSIAN_TAIL_SCALES * ratio) + 1
            masses = _gaussian_bin_masses(mean[:, j], ratio, -reach, reach)
            kappa_odd = np.arange(-reach, reach + 1) % 2 == 1
            odd_kappa = masses[:, kappa_odd].sum(1) / masses.sum(1)
            even_kappa = masses[:, ~kappa_odd].sum(1) / masses.sum(1)
            odd[:, j] = np.where(np.remainder(n[:, j], 2) == 0, odd_kappa, even_kappa)
        return n, mean, odd

    @staticmethod
    def _completions(odd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each coordinate j, the probabilities that the coordinates after it have an even
        and an odd sum of k, ``(N, 8)`` each, by the recurrence E' = E(1 − q) + Oq,
        O' = Eq + O(1 − q) from the last coordinate back (sums of positive terms only)."""
        even_after, odd_after = np.empty(odd.shape), np.empty(odd.shape)
        e, o = np.ones(odd.shape[0]), np.zeros(odd.shape[0])
        for j in range(odd.shape[1] - 1, -1, -1):
            even_after[:, j], odd_after[:, j] = e, o
            q = odd[:, j]
            e, o = e * (1 - q) + o * q, e * q + o * (1 - q)
        return even_after, odd_after

    @staticmethod
    def _window(ratio: float, width: int) -> int:
        """Half-width R of coordinate j's table, κ ∈ [−R, R]: the bins' mean (in [−½, ½]) ±
        :data:`_GAUSSIAN_TAIL_SCALES` deviations, never wider than the header's range; a κ
        beyond it is an escape, coded uniformly over the header's range. So the tables' size
        depends on the model's scales alone, not on what a header announces."""
        return min(width, math.ceil(_GAUSSIAN_TAIL_SCALES * ratio) + 3)

    @staticmethod
    def _table(mean, ratio, n, parity_so_far, after, reach: int, a: int, b: int) -> np.ndarray:
        """Rows a:b of one coordinate's table over κ ∈ [−reach, reach] and an escape: bin
        mass × the probability that the coordinates after it complete Σ k to an even sum,
        given the parity so far and k = κ − n (``after``: their even and odd completion
        probabilities); the escape gets the mass beyond the window (either parity)."""
        from scipy.special import ndtr

        masses = _gaussian_bin_masses(mean[a:b], ratio, -reach, reach)
        kappa = np.arange(-reach, reach + 1)
        k_odd = np.remainder(kappa[None, :] - n[a:b, None] + parity_so_far[a:b, None], 2) == 1
        even_after, odd_after = after
        inside = masses * np.where(k_odd, odd_after[a:b, None], even_after[a:b, None])
        beyond = ndtr((-reach - 0.5 - mean[a:b]) / ratio) + ndtr((mean[a:b] - reach - 0.5) / ratio)
        escape = beyond * 0.5 * (even_after[a:b] + odd_after[a:b])
        return np.concatenate([inside, escape[:, None]], axis=1)

    def _coordinates(self, chosen, sigma, scale, width: int):
        """What the coordinates' tables take once the coset is known: the chosen shifts n and
        bins' means, the completion probabilities (:meth:`_completions`), the ratios b/σ, the
        header's range and the escapes' uniform model."""
        n_all, mean_all, odd_all = chosen
        uniform = constriction().stream.model.Uniform(2 * width + 1)
        return n_all, mean_all, self._completions(odd_all), scale / sigma, width, uniform

    def _table_args(self, coords, j: int, parity_so_far: np.ndarray) -> tuple:
        """:meth:`_table`'s arguments for coordinate j, up to the rows (``reach`` last)."""
        n_all, mean_all, (even_after, odd_after), ratio, width, _ = coords
        reach = self._window(ratio[j], width)
        after = (even_after[:, j], odd_after[:, j])
        return (mean_all[:, j], ratio[j], n_all[:, j], parity_so_far, after, reach)

    def _coordinate_ops(self, coords, j: int, kappa: np.ndarray, parity_so_far) -> list:
        """Coordinate j's ops for κ_j = k_j + n_j: its table's entry (or the escape), then the
        escaped κ uniformly over the header's range."""
        width, uniform = coords[4:]
        args = self._table_args(coords, j, parity_so_far)
        reach = args[-1]
        inside = np.abs(kappa) <= reach
        symbols = np.where(inside, kappa + reach, 2 * reach + 1)
        escaped = kappa[~inside] + width
        return [
            _ChunkedCategorical(symbols, lambda a, b: self._table(*args, a, b), kappa.size),
            _Op(escaped.astype(np.int32), uniform, None, escaped.size * math.log2(2 * width + 1)),
        ]

    def _decode_coordinate(self, coder, coords, j: int, parity_so_far) -> np.ndarray:
        """Coordinate j's κ_j, decoded from the ops of :meth:`_coordinate_ops`."""
        width, uniform = coords[4:]
        args = self._table_args(coords, j, parity_so_far)
        reach = args[-1]
        rows = parity_so_far.shape[0]
        kappa = np.empty(rows, dtype=np.int64)
        for a in range(0, rows, _CLASS_CHUNK):
            b = min(rows, a + _CLASS_CHUNK)
            kappa[a:b] = _decode_categorical(coder, self._table(*args, a, b)) - reach
        escaped = np.flatnonzero(kappa > reach)
        if escaped.size:
            kappa[escaped] = coder.decode(uniform, escaped.size).astype(np.int64) - width
        return kappa
