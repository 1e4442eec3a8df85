"""The code of dithered Laplace cells: a sign whose probabilities depend on the dither, then a
geometric magnitude; the coder's support (:func:`symbol_range`). Used by
:class:`~.models.DitheredLaplace` for the rectangular lattice, by the triangular and E8 blocks of
:class:`~.models.GoodLattice`, and by ``qlatent bench coding``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._coder_ops import _largest_probability_bits, constriction
from .container import CodingError

# ------------------------------------------------------------------ dithered Laplace cells
# Coordinate k of a dithered Laplace(0, b) variable, in units of the spacing: a Laplace with
# mean μ = u/Δ ∈ [−½, ½) and scale s = b/Δ quantized to the integers. Every cell k ≥ 1 lies
# right of the mean, so P(k | u) = P(k > 0 | u) · r^(k−1) (1 − r) with r = e^(−1/s), and
# likewise for k ≤ −1. The code is this exact factorization: a sign (−, 0, +) whose three
# probabilities depend on the dither, then for nonzero k the magnitude |k| − 1 from a geometric
# table that does not, one per coordinate. Decoding then needs no per-symbol inversion of a
# continuous CDF, which is most of the cost of constriction's parametric QuantizedLaplace.
#
# The rectangular lattice codes in blocks of rows of about _BLOCK symbols: the coordinates, each
# block's sign probabilities (computed just before the coder reads them, so that they stay in
# cache) and the reconstruction. Coding a sequence in blocks gives the same bits as coding it in
# one call, and no whole-input temporary is made beyond the dither and the coordinates.
#
# constriction (0.5) reads the raw buffer of every array it is given, whatever its strides: what
# is passed to it is contiguous by construction (a fresh array, or a contiguous reshape).

#: symbols per block of the sign code (24 bytes of probabilities each)
_BLOCK = 1 << 15
#: Δ/b beyond which P(k > 0) is computed with its own exp: ¼e^(−Δ/b) would lose precision
_ONE_EXP_LIMIT = 512.0
#: the coder's support covers the prior's mean ± this many scales (Laplace mass beyond: ~1e-11)
_TAIL_SCALES = 25.0
#: the same for a Gaussian prior, in standard deviations (mass beyond: ~4e-33)
_GAUSSIAN_TAIL_SCALES = 12.0
#: largest |k| the coder's magnitude tables hold (one table of this width per coordinate)
MAX_SUPPORT = 1 << 16


def _exp(x: np.ndarray) -> None:
    """``x ← e^x`` in place for a contiguous float64 array, with torch's vectorized ``exp``:
    about 2.5 times as fast as NumPy's on AVX2, and on the machine that made the results the
    same bits as one call per element, on 1 and 2 threads."""
    t = torch.from_numpy(x)
    torch.exp(t, out=t)


class SignCode:
    """The dither-dependent sign probabilities of every coordinate.

    With μ = u/Δ and s = b/Δ, P(k < 0 | u) = ½e^(−(½ + μ)/s) = ½e^(−(u + Δ/2)/b) and
    P(k > 0 | u) = ½e^(−(Δ/2 − u)/b); their product ¼e^(−Δ/b) does not depend on u, so one
    ``exp`` per symbol gives both (a division gives the second). A coordinate with Δ/b above
    :data:`_ONE_EXP_LIMIT`, whose product would underflow, gets a second ``exp`` instead.
    P(k = 0) is the rest. All in float64 from the dither and parameters, with the same
    operations in encoder and decoder.

    Args:
        spacing, scale: Δ and b, ``(m,)`` float64.
    """

    def __init__(self, spacing: np.ndarray, scale: np.ndarray) -> None:
        self.half = spacing / 2
        self.neg_inv_scale = -1.0 / scale
        ratio = spacing / scale
        self.product = 0.25 * np.exp(-ratio)
        self.two_exp = np.flatnonzero(ratio > _ONE_EXP_LIMIT)

    def probabilities(self, u: np.ndarray) -> np.ndarray:
        """``(n·m, 3)`` float64 P(k < 0), P(k = 0), P(k > 0) for the dither ``u`` ``(n, m)``."""
        out = np.empty((*u.shape, 3))
        below, zero, above = out[..., 0], out[..., 1], out[..., 2]
        x = np.add(u, self.half, dtype=np.float64)  # u + Δ/2 ∈ [0, Δ]
        x *= self.neg_inv_scale
        _exp(x)
        np.multiply(x, 0.5, out=below)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 in the two-exp columns
            np.divide(self.product, below, out=above)
        if self.two_exp.size:
            columns = self.two_exp
            x = np.subtract(u[:, columns], self.half[columns], dtype=np.float64)
            x *= -self.neg_inv_scale[columns]  # −(Δ/2 − u)/b
            _exp(x)
            above[:, columns] = 0.5 * x
        np.subtract(1.0, below, out=zero)
        zero -= above
        return out.reshape(-1, 3)


def sign_row_bits(spacing: np.ndarray, scale: np.ndarray) -> float:
    """A lower bound on a row's bits under the sign code: over all dithers the largest sign
    probability is max(½, P(k = 0 | u = 0)) = max(½, 1 − e^(−Δ/2b)); magnitudes only add."""
    p_zero = -np.expm1(-(spacing / scale) / 2)
    return sum(_largest_probability_bits(max(0.5, float(p)), 3) for p in p_zero)


def row_blocks(rows: int, m: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of rows, about :data:`_BLOCK` symbols each."""
    step = max(1, _BLOCK // max(m, 1))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def magnitude_models(scales: np.ndarray, width: int) -> list:
    """Per coordinate, a Categorical over |k| − 1 ∈ [0, width): the geometric r^j (1 − r).

    At least two entries: constriction refuses a one-symbol table (a support of ±1, from a
    prior much narrower than the cell); the second is never coded and costs nothing."""
    categorical = constriction().stream.model.Categorical
    j = np.arange(max(width, 2), dtype=np.float64)
    return [categorical(np.exp(-j / s) * -np.expm1(-1.0 / s), perfect=False) for s in scales]


def symbol_range(
    lo: int, hi: int, scales: np.ndarray, tail: float = _TAIL_SCALES
) -> tuple[int, int]:
    """The coder's support [min, max]: where the prior has all but ~1e-11 of its mass for any
    dither (its mean u/Δ lies in [−½, ½]), widened to the data's symbols (in [lo, hi]) so that
    every one can be coded; ``scales`` are b/Δ.

    The support is stored in the header. Taken from the data alone it would truncate the prior
    to the symbols that occur and code them in fewer bits than −log2 P(z | u); covering the
    prior's bulk keeps the coded size equal to the exact rate.

    Every file's support covers :data:`_TAIL_SCALES` scales, the Laplace window. A prior with a
    narrower ``tail`` (a Gaussian's :data:`_GAUSSIAN_TAIL_SCALES` deviations, which its tables
    cover) falls back to its own window plus the tables' margin of 3 only where that wider
    support would pass the coder's ±:data:`MAX_SUPPORT`: files that fit keep their headers."""
    widest = float(np.max(scales))
    reach = widest * _TAIL_SCALES
    if tail < _TAIL_SCALES and 0.5 + reach > MAX_SUPPORT:
        reach = widest * tail + 3
    lo = min(lo, math.floor(-0.5 - reach))
    hi = max(hi, math.ceil(0.5 + reach))
    if max(-lo, hi) > MAX_SUPPORT:
        raise ValueError(
            f"the symbols span [{lo}, {hi}], beyond the coder's ±{MAX_SUPPORT:,} "
            "(a prior scale far larger than the lattice spacing?)"
        )
    return lo, hi


def support_width(lo: int, hi: int) -> int:
    """The magnitude tables' width from a header's symbol range, checked."""
    width = max(-lo, hi)
    if not 0 <= width <= MAX_SUPPORT:
        raise CodingError(f"corrupt header (symbol range {lo}..{hi})")
    return width


def encode_signed(coder, columns: np.ndarray, u: np.ndarray, spacing, scale, width: int) -> None:
    """``columns`` ``(m, N)`` int32 coordinates with ``|k| <= width``, ``u`` their dither
    ``(N, m)``: the signs of every symbol, block by block of rows, then coordinate by coordinate
    the magnitudes of the nonzero ones (pushed in reverse, so that the decoder meets them in
    this order)."""
    categorical = constriction().stream.model.Categorical(perfect=False)
    m, n = columns.shape
    for column, model in zip(
        reversed(columns), reversed(magnitude_models(scale / spacing, width)), strict=True
    ):
        magnitude = np.abs(column[column != 0])
        if magnitude.size:
            magnitude -= 1
            coder.encode_reverse(magnitude, model)
    code = SignCode(spacing, scale)
    for start, stop in reversed(row_blocks(n, m)):
        signs = np.sign(columns[:, start:stop].T, order="C").reshape(-1)
        signs += 1
        coder.encode_reverse(signs, categorical, code.probabilities(u[start:stop]))


def signed_bits(columns: np.ndarray, u: np.ndarray, spacing, scale) -> float:
    """Σ −log2 P(k | u) of ``columns`` ``(m, N)`` under the sign / geometric-magnitude code of
    :func:`encode_signed` (``u`` their dither ``(N, m)``), in float64: the sign's probability
    from :class:`SignCode`, then (|k| − 1)·Δ/b − log(1 − e^(−Δ/b)) nats for each nonzero k."""
    m, n = columns.shape
    code = SignCode(spacing, scale)
    nats = 0.0
    for start, stop in row_blocks(n, m):
        signs = np.sign(columns[:, start:stop].T).reshape(-1) + 1
        probs = code.probabilities(np.ascontiguousarray(u[start:stop]))
        nats -= float(np.log(probs[np.arange(signs.size), signs]).sum())
    for column, step in zip(columns, spacing / scale, strict=True):
        magnitude = np.abs(column[column != 0]).astype(np.float64)
        if magnitude.size:  # the geometric r^(|k| − 1) (1 − r), r = e^(−Δ/b)
            first = -math.log(-math.expm1(-step))
            nats += float((magnitude - 1).sum()) * step + magnitude.size * first
    return nats / math.log(2)


def decode_signed(coder, u: np.ndarray, spacing, scale, width: int) -> np.ndarray:
    """The inverse of :func:`encode_signed`: ``(m, N)`` int32 coordinates."""
    categorical = constriction().stream.model.Categorical(perfect=False)
    n, m = u.shape
    columns = np.empty((m, n), dtype=np.int32)
    code = SignCode(spacing, scale)
    for start, stop in row_blocks(n, m):
        signs = coder.decode(categorical, code.probabilities(u[start:stop]))
        columns[:, start:stop] = signs.reshape(stop - start, m).T
    columns -= 1
    for column, model in zip(columns, magnitude_models(scale / spacing, width), strict=True):
        nonzero = np.flatnonzero(column)
        if nonzero.size:
            magnitude = coder.decode(model, nonzero.size)
            magnitude += 1
            column[nonzero] *= magnitude
    return columns
