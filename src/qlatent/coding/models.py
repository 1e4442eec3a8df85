"""Code models: what a bottleneck hands the coder, without the coder knowing the bottleneck.

A code model turns a bottleneck's rows into symbols pushed onto an ANS stack with their
probabilities, and pops them back into the same rows. It is built by the bottleneck
(``bottleneck.code_model()``) from its frozen parameters, as float64 arrays computed from the
float32 weights, and from callables for what only the bottleneck knows (its dither, its closest
point, its reconstruction); nothing here imports a bottleneck. Every table is built by the same
float64 operations in encoder and decoder, so both sides code with bit-identical tables on any
machine and thread count. The protocol (:class:`CodeModel`):

- ``kind``: the container's code-model id (:mod:`.container`; a new kind registers its id with
  :func:`~.container.register_code_model`);
- ``min_row_bits()``: a lower bound on the bits one row costs (the decoder refuses a header whose
  shape the payload cannot hold before allocating it);
- ``encode(coder, rows, seed) -> (lo, hi)``: push the symbols of ``rows`` ``(N, F)``; the
  symbol range goes into the header;
- ``decode(coder, n, seed, lo, hi) -> rows``: pop ``n`` rows, the inverse of ``encode``;
- ``ideal_bits(rows, seed)``: Σ −log2 P(symbol) under this model (what the file approaches).

Models here: :class:`DitheredLaplace` (rectangular lattice, Laplace prior), :class:`Counted`
(frequencies learned by ``update()``), :class:`UniformIndex` (K codewords, log2 K bits each) and
:class:`TriangularLattice` (any lattice with a triangular basis: E8, Λ16, Λ24 and their sums).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .container import MODEL_COUNTED, MODEL_GOOD_LATTICE, MODEL_LATTICE, MODEL_UNIFORM_INDEX

#: constriction's fixed-point precision for the coded models (its ANS coder's default)
PRECISION = 24


def constriction():
    try:
        import constriction as module
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("entropy coding needs `constriction` (pip install constriction)") from err
    return module


class CodeModel(Protocol):
    """What :func:`qlatent.coding.compress` and :func:`~qlatent.coding.decompress` need."""

    kind: int

    def min_row_bits(self) -> float: ...

    def encode(self, coder, rows: Tensor, seed: int) -> tuple[int, int]: ...

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor: ...

    def ideal_bits(self, rows: Tensor, seed: int) -> float: ...


def _largest_probability_bits(p_max: float, n: int) -> float:
    """−log2 of the largest probability the coder can give one of ``n`` symbols whose float
    probability is at most ``p_max``: quantized to 2^-24, no entry exceeds the float one by more
    than (n + 1)·2^-24, nor 1 − (n − 1)·2^-24 (every symbol keeps at least one unit)."""
    unit = 2.0**-PRECISION
    return -math.log2(min(1.0 - (n - 1) * unit, p_max + (n + 1) * unit))


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


def symbol_range(lo: int, hi: int, scales: np.ndarray) -> tuple[int, int]:
    """The coder's support [min, max]: where the prior has all but ~1e-11 of its mass for any
    dither (its mean u/Δ lies in [−½, ½]), widened to the data's symbols (in [lo, hi]) so that
    every one can be coded; ``scales`` are b/Δ.

    The support is stored in the header. Taken from the data alone it would truncate the prior
    to the symbols that occur and code them in fewer bits than −log2 P(z | u); covering the
    prior's bulk keeps the coded size equal to the exact rate."""
    reach = float(np.max(scales)) * _TAIL_SCALES
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
    from .container import CodingError

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


class DitheredLaplace:
    """The rectangular lattice's code: k = K_Λ(y + u) under the dithered Laplace prior.

    Args:
        spacing, scale: Δ and b, ``(m,)`` float64 from the float32 weights.
        dtype: the bottleneck's parameter dtype (rows are cast to it).
        dither: ``(n, seed) -> (n, m)`` the hard path's dither on the CPU.
        coordinates: ``(rows, u) -> (n, m)`` int64 lattice coordinates.
        reconstruct: ``(k, u) -> (n, m)`` y_hat = Δ k − u, the hard path's own arithmetic.
        rate: ``(rows, seed) -> (n,)`` the hard path's exact rate in nats.
    """

    kind = MODEL_LATTICE

    def __init__(self, *, spacing, scale, dtype, dither, coordinates, reconstruct, rate) -> None:
        self.spacing, self.scale, self.dtype = spacing, scale, dtype
        self.dither, self.coordinates, self.reconstruct = dither, coordinates, reconstruct
        self.rate = rate

    def min_row_bits(self) -> float:
        return sign_row_bits(self.spacing, self.scale)

    def _columns(self, rows: Tensor, u: Tensor) -> tuple[np.ndarray, int, int]:
        """k = K_Λ(y + u) of ``rows`` ``(N, m)``, block by block: ``(m, N)`` int32 (each
        coordinate contiguous), and the smallest and largest k (0 included)."""
        n, m = u.shape
        columns = np.empty((m, n), dtype=np.int32)
        lo = hi = 0
        for start, stop in row_blocks(n, m):
            k = self.coordinates(rows[start:stop], u[start:stop])
            low, high = torch.aminmax(k)
            lo, hi = min(lo, int(low)), max(hi, int(high))
            if lo < -(2**30) or hi > 2**30:
                raise ValueError(f"lattice coordinates in [{lo}, {hi}] are too large to code")
            columns[:, start:stop] = k.numpy().T
        return columns, lo, hi

    def encode(self, coder, rows: Tensor, seed: int) -> tuple[int, int]:
        rows = rows.to(self.dtype)
        u = self.dither(rows.shape[0], seed)
        columns, lo, hi = self._columns(rows, u)
        lo, hi = symbol_range(lo, hi, self.scale / self.spacing)
        encode_signed(coder, columns, u.numpy(), self.spacing, self.scale, max(-lo, hi))
        return lo, hi

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor:
        width = support_width(lo, hi)
        u = self.dither(n, seed)
        columns = decode_signed(coder, u.numpy(), self.spacing, self.scale, width)
        y_hat = torch.empty(u.shape, dtype=u.dtype)
        for start, stop in row_blocks(*u.shape):
            k = torch.from_numpy(columns[:, start:stop].T)
            y_hat[start:stop] = self.reconstruct(k, u[start:stop])
        return y_hat

    def ideal_bits(self, rows: Tensor, seed: int) -> float:
        return float(self.rate(rows, seed).double().sum()) / math.log(2)


class UniformIndex:
    """``features`` symbols per row, each uniform over ``num_codes`` values (log2 K bits).

    Args:
        num_codes: K.
        quantize: ``rows -> (N,)`` or ``(N, features)`` int64 symbols in [0, K).
        dequantize: the symbols (same shape) ``-> rows``.
        features: symbols per row.
    """

    kind = MODEL_UNIFORM_INDEX

    def __init__(self, num_codes: int, quantize, dequantize, *, features: int = 1) -> None:
        self.num_codes, self.features = num_codes, features
        self.quantize, self.dequantize = quantize, dequantize

    def min_row_bits(self) -> float:
        return self.features * math.log2(self.num_codes)

    def encode(self, coder, rows: Tensor, seed: int) -> tuple[int, int]:
        symbols = self.quantize(rows).reshape(-1)
        model = constriction().stream.model.Uniform(self.num_codes)
        coder.encode_reverse(symbols.numpy().astype(np.int32), model)
        return 0, self.num_codes - 1

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor:
        model = constriction().stream.model.Uniform(self.num_codes)
        symbols = torch.from_numpy(coder.decode(model, n * self.features).astype(np.int64))
        return self.dequantize(symbols if self.features == 1 else symbols.reshape(n, -1))

    def ideal_bits(self, rows: Tensor, seed: int) -> float:
        return rows.shape[0] * self.features * math.log2(self.num_codes)


#: an escaped symbol's value, offset by 2^31 and split into two 16-bit halves
_RAW_HALF = 1 << 16


class Counted:
    """Each feature with its own categorical of counted frequencies and an escape.

    A symbol outside feature f's counted range [low_f, low_f + L_f) is the escape followed by its
    value in 32 raw bits.

    Args:
        probabilities: per feature, float64 probabilities of the L_f counted symbols followed by
            the escape.
        low: ``(F,)`` int64 first counted symbol of each feature.
        symbols: ``rows -> (N, F)`` int64 hard-path symbols.
        dequantize: ``(N, F)`` symbols ``-> rows`` (``(N,)`` when ``scalar``).
        scalar: whether a row has one symbol (a codeword index) rather than F.
    """

    kind = MODEL_COUNTED

    def __init__(self, probabilities, low, symbols, dequantize, *, scalar: bool) -> None:
        self.probabilities = list(probabilities)
        self.low = [int(v) for v in low]
        self.symbols, self.dequantize, self.scalar = symbols, dequantize, scalar

    def min_row_bits(self) -> float:
        return sum(_largest_probability_bits(float(p.max()), p.numel()) for p in self.probabilities)

    def _models(self) -> list[tuple[int, object]]:
        categorical = constriction().stream.model.Categorical
        return [(p.numel() - 1, categorical(p.numpy(), perfect=False)) for p in self.probabilities]

    def _split(self, symbols: Tensor, widths: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per feature: the coder's symbols (offset into the counted range, or the escape) and
        the raw values of the escaped ones."""
        out = []
        for f, width in enumerate(widths):
            s = symbols[:, f] - self.low[f]
            outside = (s < 0) | (s >= width)
            coded = torch.where(outside, torch.full_like(s, width), s).numpy().astype(np.int32)
            out.append((coded, symbols[outside, f].numpy()))
        return out

    def encode(self, coder, rows: Tensor, seed: int) -> tuple[int, int]:
        symbols = self.symbols(rows)
        lo, hi = (int(symbols.min()), int(symbols.max())) if symbols.numel() else (0, 0)
        if lo < -(2**31) or hi >= 2**31:
            raise ValueError(f"symbols in [{lo}, {hi}] do not fit in 32 bits")
        raw = constriction().stream.model.Uniform(_RAW_HALF)
        models = self._models()
        parts = self._split(symbols, [width for width, _ in models])
        # feature by feature: the categorical symbols, then the escaped values (encoded in
        # reverse so that the decoder meets them in this order)
        for (_, model), (coded, escaped) in zip(reversed(models), reversed(parts), strict=True):
            if escaped.size:
                coder.encode_reverse(_raw_halves(escaped), raw)
            coder.encode_reverse(coded, model)
        return lo, hi

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor:
        raw = constriction().stream.model.Uniform(_RAW_HALF)
        columns = []
        for f, (width, model) in enumerate(self._models()):
            coded = coder.decode(model, n).astype(np.int64)
            escape = coded == width
            values = coded + self.low[f]
            count = int(escape.sum())
            if count:
                halves = coder.decode(raw, 2 * count).astype(np.int64).reshape(count, 2)
                values[escape] = (halves[:, 0] << 16) + halves[:, 1] - 2**31
            columns.append(values)
        symbols = torch.from_numpy(np.stack(columns, axis=1))
        return self.dequantize(symbols.reshape(-1) if self.scalar else symbols)

    def ideal_bits(self, rows: Tensor, seed: int) -> float:
        symbols = self.symbols(rows)
        parts = self._split(symbols, [p.numel() - 1 for p in self.probabilities])
        bits = 0.0
        for p, (coded, escaped) in zip(self.probabilities, parts, strict=True):
            bits += float(-torch.log2(p[torch.from_numpy(coded).long()]).sum()) + 32 * escaped.size
        return bits


def _raw_halves(values: np.ndarray) -> np.ndarray:
    if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
        raise ValueError("a symbol does not fit in 32 bits")
    shifted = values.astype(np.int64) + 2**31
    return np.stack([shifted >> 16, shifted & 0xFFFF], axis=1).reshape(-1).astype(np.int32)


# ------------------------------------------------------------ lattices in a triangular basis
class TriangularLattice:
    """Any lattice point, coordinate by coordinate in a triangular basis (E8, Λ16, Λ24, sums).

    In a triangular basis T (rows; upper triangular, or lower coded in reverse order), the j-th
    coordinate of a point z = k' T is z_j = o_j + T_jj k'_j with o_j fixed by the coordinates
    coded before it. Given those, z_j is coded like a rectangular lattice's coordinate: a
    dithered Laplace(0, b_j) quantized to cells of width Δ_j = σ_j |T_jj| (σ_j the coordinate's
    scale from the base lattice to the scaled one), offset by o_j. Writing σ_j o_j − u_j =
    Δ_j n_j − v_j with n_j = round(·/Δ_j) and v_j ∈ [−Δ_j/2, Δ_j/2], the coded value is
    κ_j = n_j + sign(T_jj) k'_j with dither v_j, through the exact sign / geometric-magnitude
    code of :class:`DitheredLaplace`. Each coordinate's cells tile the line, so the model is
    normalized; their widths multiply to the cell volume, so at high resolution the code length
    approaches −log2 (p(z − u) V), the ideal −log2 P(z | u). At low resolution the product of
    one-dimensional cells differs from the Voronoi cell, which the coded size shows against a
    Monte-Carlo ideal (``qlatent reproduce coding-mnist``).

    The order is column by column (signs of coordinate j for every row, then its magnitudes), so
    that the decoder knows o_j before it needs coordinate j's probabilities.

    Args:
        blocks: per block of the direct sum, ``(start, T, U, upper)``: a triangular basis T
            ``(n, n)`` float64 (rows) of the base block, the integer U with T = U @ (the block's
            own basis), and whether T is upper triangular
            (:func:`qlatent.lattices.triangular_basis`).
        sigma: ``(m,)`` float64 per-coordinate scale σ; scale: ``(m,)`` float64 prior scales b.
        dtype: the bottleneck's parameter dtype.
        dither, coordinates, reconstruct: as for :class:`DitheredLaplace` (``coordinates`` gives
            the blocks' own integer coordinates k; ``reconstruct`` maps them back to y_hat).
    """

    kind = MODEL_GOOD_LATTICE

    def __init__(
        self,
        *,
        blocks: Sequence[tuple[int, Tensor, Tensor, bool]],
        sigma: np.ndarray,
        scale: np.ndarray,
        dtype: torch.dtype,
        dither: Callable,
        coordinates: Callable,
        reconstruct: Callable,
    ) -> None:
        self.sigma, self.scale, self.dtype = sigma, scale, dtype
        self.dither, self.coordinates, self.reconstruct = dither, coordinates, reconstruct
        self.blocks = []  # (start, T, U, U^-1, order of the block's coordinates)
        order: list[int] = []
        spacing = np.empty_like(sigma)
        for start, t, u, upper in blocks:
            n = t.shape[0]
            local = list(range(n) if upper else range(n - 1, -1, -1))
            u_inv = torch.round(torch.linalg.inv(u.to(torch.float64)))
            self.blocks.append((start, t.to(torch.float64), u.to(torch.float64), u_inv, local))
            order += [start + j for j in local]
            spacing[start : start + t.shape[0]] = np.abs(np.diag(t.numpy()))
        self.order = order
        #: Δ_j = σ_j |T_jj|
        self.spacing = sigma * spacing

    def min_row_bits(self) -> float:
        return sign_row_bits(self.spacing, self.scale)

    def _triangular(self, k: Tensor) -> np.ndarray:
        """The blocks' own coordinates ``(N, m)`` -> triangular ones k' = k U^-1, float64."""
        out = np.empty(k.shape, dtype=np.float64)
        kd = k.to(torch.float64)
        for start, t, _, u_inv, _ in self.blocks:
            n = t.shape[0]
            out[:, start : start + n] = (kd[:, start : start + n] @ u_inv).numpy()
        return out

    def _own(self, kt: np.ndarray) -> Tensor:
        """Triangular coordinates -> the blocks' own, k = k' U, int64."""
        out = torch.empty(kt.shape, dtype=torch.int64)
        ktd = torch.from_numpy(kt)
        for start, t, u, _, _ in self.blocks:
            n = t.shape[0]
            out[:, start : start + n] = torch.round(ktd[:, start : start + n] @ u).long()
        return out

    def _shift(self, kt: np.ndarray, u: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        """n_j and v_j of coordinate j (see the class docstring) from the triangular
        coordinates already known (only those before j in its block are read)."""
        for start, t, _, _, local in self.blocks:
            n = t.shape[0]
            if start <= j < start + n:
                i = j - start
                before = local[: local.index(i)]
                column = t[:, i].numpy()
                offset = np.zeros(kt.shape[0])
                for p in before:
                    if column[p] != 0.0:
                        offset += kt[:, start + p] * column[p]
                x = self.sigma[j] * offset - u[:, j]
                shift = np.round(x / self.spacing[j])
                return shift, self.spacing[j] * shift - x
        raise AssertionError(j)

    def _signs(self, j: int) -> float:
        for start, t, _, _, _ in self.blocks:
            if start <= j < start + t.shape[0]:
                return 1.0 if float(t[j - start, j - start]) > 0 else -1.0
        raise AssertionError(j)

    def _models(self, width: int):
        categorical = constriction().stream.model.Categorical(perfect=False)
        magnitudes = magnitude_models(self.scale / self.spacing, width)
        return categorical, magnitudes

    def encode(self, coder, rows: Tensor, seed: int) -> tuple[int, int]:
        rows = rows.to(self.dtype)
        u_t = self.dither(rows.shape[0], seed)
        u = u_t.numpy().astype(np.float64)
        kt = self._triangular(self.coordinates(rows, u_t))
        kappa = np.empty(kt.shape, dtype=np.int64)
        dithers = np.empty_like(u)
        for j in self.order:
            shift, v = self._shift(kt, u, j)
            kappa[:, j] = (shift + self._signs(j) * kt[:, j]).astype(np.int64)
            dithers[:, j] = v
        lo = min(0, int(kappa.min())) if kappa.size else 0
        hi = max(0, int(kappa.max())) if kappa.size else 0
        if lo < -(2**30) or hi > 2**30:
            raise ValueError(f"lattice coordinates in [{lo}, {hi}] are too large to code")
        lo, hi = symbol_range(lo, hi, self.scale / self.spacing)
        categorical, magnitudes = self._models(max(-lo, hi))
        for j in reversed(self.order):  # pushed last-first: the decoder meets j in order
            column = kappa[:, j].astype(np.int32)
            magnitude = np.abs(column[column != 0])
            if magnitude.size:
                magnitude -= 1
                coder.encode_reverse(magnitude, magnitudes[j])
            signs = np.sign(column) + 1
            probs = SignCode(self.spacing[j : j + 1], self.scale[j : j + 1]).probabilities(
                np.ascontiguousarray(dithers[:, j : j + 1])
            )
            coder.encode_reverse(signs.astype(np.int32), categorical, probs)
        return lo, hi

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor:
        width = support_width(lo, hi)
        u_t = self.dither(n, seed)
        u = u_t.numpy().astype(np.float64)
        categorical, magnitudes = self._models(width)
        kt = np.zeros(u.shape, dtype=np.float64)
        for j in self.order:
            shift, v = self._shift(kt, u, j)
            probs = SignCode(self.spacing[j : j + 1], self.scale[j : j + 1]).probabilities(
                np.ascontiguousarray(v[:, None])
            )
            column = coder.decode(categorical, probs).astype(np.int64) - 1
            nonzero = np.flatnonzero(column)
            if nonzero.size:
                column[nonzero] *= coder.decode(magnitudes[j], nonzero.size).astype(np.int64) + 1
            kt[:, j] = self._signs(j) * (column - shift)
        return self.reconstruct(self._own(kt), u_t)

    def ideal_bits(self, rows: Tensor, seed: int) -> float:
        """Σ −log2 P(κ) under this model (sign and geometric magnitude per coordinate)."""
        rows = rows.to(self.dtype)
        u_t = self.dither(rows.shape[0], seed)
        u = u_t.numpy().astype(np.float64)
        kt = self._triangular(self.coordinates(rows, u_t))
        bits = 0.0
        for j in self.order:
            shift, v = self._shift(kt, u, j)
            kappa = shift + self._signs(j) * kt[:, j]
            probs = SignCode(self.spacing[j : j + 1], self.scale[j : j + 1]).probabilities(
                np.ascontiguousarray(v[:, None])
            )
            sign = (np.sign(kappa) + 1).astype(np.int64)
            bits -= float(np.log2(probs[np.arange(kappa.size), sign]).sum())
            r = math.exp(-self.spacing[j] / self.scale[j])
            magnitude = np.abs(kappa[kappa != 0]) - 1
            bits -= float(magnitude.sum()) * math.log2(r) + magnitude.size * math.log2(1 - r)
        return bits
