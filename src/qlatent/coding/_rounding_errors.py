"""The moments of the rounding errors e = x − round(x) under a Laplace and a Gaussian prior, the
probability of E8's second coset of D8 that they give, and the masses of a normal on unit bins:
stateless float64 maths of the E8 blocks (:mod:`._e8_blocks`).
"""

from __future__ import annotations

import math

import numpy as np

from ._laplace_cells import _GAUSSIAN_TAIL_SCALES

#: the prior scale over the cell size, b/σ, is clipped to this range in the rounding errors'
#: moments: below it the prior is a point, above it the error is uniform to 1e-20
_ERROR_SCALE_RANGE = (1e-6, 50.0)
#: the coset probability is kept this far from 0 and 1 (a prior that is wrong costs at most
#: log2 of its inverse, 20 bits, on one coset)
_COSET_FLOOR = 1e-6


def _rounding_error_moments(mu: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E|e| and E e² of e = x − round(x) for x ~ Laplace(μ, β), elementwise, in closed form.

    With a = |μ − round(μ)| (the error's law is symmetric in a's sign), the unit interval
    around round(μ) has density e^(−|t − a|/β)/2β, split at −½, 0, a and ½ into three pieces;
    every other interval lies on one side of μ, where the density is e^(∓t/β) times a geometric
    factor in the interval's distance from μ, and their sum is that of a geometric series. Each
    piece is ∫ s^k e^(λ(s − s0)) ds = [e^(λ(s − s0)) P_k(s)] with λ = ±1/β, P_1 = s/λ − 1/λ² and
    P_2 = s²/λ − 2s/λ² + 2/λ³, every exponent ≤ 0; the exponentials that depend on a are only
    e^(−a/β) and e^(−(½ − a)/β) (two per element)."""
    beta = np.clip(beta, *_ERROR_SCALE_RANGE)
    a = np.abs(mu - np.round(mu))
    inv = 1 / beta
    e_a = np.exp(-a * inv)  # e^(−a/β)
    e_rest = np.exp((a - 0.5) * inv)  # e^(−(½ − a)/β)
    half, whole = np.exp(-0.5 * inv), np.exp(-inv)  # per coordinate
    e_far = e_a * half  # e^(−(½ + a)/β)
    b2 = beta * beta

    def p_up(s, k):  # P_k(s) for λ = +1/β
        return s * beta - b2 if k == 1 else s * s * beta - 2 * s * b2 + 2 * b2 * beta

    def p_down(s, k):  # P_k(s) for λ = −1/β
        return -s * beta - b2 if k == 1 else -s * s * beta - 2 * s * b2 - 2 * b2 * beta

    # Σ over the intervals right and left of the middle one of e^(−(distance to their near edge)/β)
    tails = (e_rest + e_far) / -np.expm1(-inv)
    moments = []
    for k in (1, 2):
        middle = (
            e_far * p_down(0.5, k) - e_a * p_down(0.0, k)  # t ∈ [−½, 0], as s = −t ∈ [0, ½]
            + p_up(a, k) - e_a * p_up(0.0, k)  # t ∈ [0, a]
            + e_rest * p_down(0.5, k) - p_down(a, k)  # t ∈ [a, ½]
        )  # fmt: skip
        # one whole interval, its near edge at distance 0: ∫_{−½}^{½} |t|^k e^(−(t + ½)/β) dt
        other = p_up(0.5, k) - half * p_up(0.0, k) + whole * p_down(0.5, k) - half * p_down(0.0, k)
        moments.append((middle + tails * other) * (0.5 * inv))
    return moments[0], moments[1]


def _coset_one_probability(
    mu: np.ndarray, beta: np.ndarray, moments=_rounding_error_moments
) -> np.ndarray:
    """P(the nearest E8 point of x lies in D8 + ½·1) for x with independent Laplace(μ_j, β_j)
    coordinates (base units: μ = u/σ, β = b/σ), ``(N, 8), (8,) -> (N,)``; ``moments`` gives
    E|e| and E e² under another prior (:func:`_gaussian_rounding_error_moments`: N(μ_j, β_j²)).

    With e_j = x_j − round(x_j), the nearest point of D8 is at squared distance Σ e_j² and that
    of D8 + ½·1 at Σ (½ − |e_j|)² = Σ e_j² − Σ |e_j| + 2, each plus a parity fix when the rounded
    coordinates' sum is odd. Without the fixes the second coset is nearer when Σ |e_j| > 2; the
    sum of the eight independent |e_j| is taken as normal with their exact means and variances
    (:func:`_rounding_error_moments`). On the E8^5 Table-1 checkpoint its five cosets cost
    4.25 bits per image where a Monte-Carlo estimate of the exact probability, fixes included,
    costs 4.26 ± 0.06 (``examples/e8-coset-cost.py``). Deterministic float64 arithmetic:
    encoder and decoder build the same table."""
    from scipy.special import ndtr

    first, second = moments(mu, beta)
    mean = first.sum(1)
    var = np.maximum((second - first * first).sum(1), 1e-300)
    return np.clip(ndtr((mean - 2.0) / np.sqrt(var)), _COSET_FLOOR, 1 - _COSET_FLOOR)


#: beyond this prior deviation in cell units, b/σ, a coordinate's alternating sum of Gaussian
#: cell masses is below e^(−π²·16/2) ≈ 1e-34 and taken as 0
_GAUSSIAN_PARITY_SCALE = 4.0


def _gaussian_bin_masses(mean: np.ndarray, std: float, low: int, high: int) -> np.ndarray:
    """``(N, high − low + 1)`` masses of N(mean, std²) on the bins [κ ± ½], κ = low … high, one
    row per mean (bins right of the mean from the upper tail, so that none is lost to 1 − Φ)."""
    from scipy.special import ndtr

    kappa = np.arange(low, high + 1, dtype=np.float64)
    lo = (kappa[None, :] - 0.5 - mean[:, None]) / std
    hi = lo + 1.0 / std
    right = lo > 0
    return np.where(right, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))


def _gaussian_rounding_error_moments(
    mu: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """E|e| and E e² of e = x − round(x) for x ~ N(μ, β²), elementwise ``(N, m), (m,)``.

    Summed over the unit intervals n ± ½ within μ ± 12β (+1) of the mean, each split at n,
    with the normal's partial moments in closed form: on [a, b], with A, B the standardized
    ends, ∫φ = Φ(B) − Φ(A), ∫(t − μ)φ = β(φ(A) − φ(B)) and ∫(t − μ)²φ = β²(Φ(B) − Φ(A) +
    Aφ(A) − Bφ(B)). Beyond :data:`_GAUSSIAN_PARITY_SCALE` deviations per unit the error is
    uniform to double precision (¼ and 1/12)."""
    from scipy.special import ndtr

    beta = np.broadcast_to(np.maximum(beta, 1e-12), mu.shape[1:])
    first, second = np.empty(mu.shape), np.empty(mu.shape)
    pdf = lambda z: np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731

    def pieces(a, b, m, col, scale):  # ∫_a^b |t − m|^k φ, for the side where t − m has one sign
        za, zb = (a - col) / scale, (b - col) / scale
        mass = ndtr(zb) - ndtr(za)
        lin = scale * (pdf(za) - pdf(zb))  # ∫ (t − μ) φ
        quad = scale * scale * (mass + za * pdf(za) - zb * pdf(zb))  # ∫ (t − μ)² φ
        d = col - m  # (t − m) = (t − μ) + d
        return lin + d * mass, quad + 2 * d * lin + d * d * mass

    for j, scale in enumerate(beta):
        col = mu[:, j]
        if scale > _GAUSSIAN_PARITY_SCALE:
            first[:, j], second[:, j] = 0.25, 1.0 / 12.0
            continue
        reach = math.ceil(_GAUSSIAN_TAIL_SCALES * scale) + 1
        centre = np.round(col)
        f, s2 = np.zeros(col.shape), np.zeros(col.shape)
        for offset in range(-reach, reach + 1):
            m = centre + offset
            up1, up2 = pieces(m, m + 0.5, m, col, scale)  # t − m ∈ [0, ½]: |t − m| = t − m
            down1, down2 = pieces(m - 0.5, m, m, col, scale)  # t − m ∈ [−½, 0]
            f += up1 - down1
            s2 += up2 + down2
        first[:, j], second[:, j] = f, s2
    return first, second
