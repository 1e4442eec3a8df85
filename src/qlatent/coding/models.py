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
:class:`GoodLattice` (E8, Λ16 and Λ24 by their cosets, any other lattice in a triangular basis,
and their sums; under a Gaussian prior every block in a triangular basis).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .container import (
    MODEL_COUNTED,
    MODEL_E8_COSETS,
    MODEL_GAUSSIAN_E8,
    MODEL_GAUSSIAN_LATTICE,
    MODEL_GLUED_LATTICE,
    MODEL_GOOD_LATTICE,
    MODEL_LATTICE,
    MODEL_UNIFORM_INDEX,
    CodingError,
)

#: constriction's fixed-point precision for the coded models (its ANS coder's default)
PRECISION = 24


def constriction():
    try:
        import constriction as module
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("entropy coding needs `constriction` (pip install constriction)") from err
    return module


class CodeModel(Protocol):
    """What :func:`qlatent.coding.compress` and :func:`~qlatent.coding.decompress` need.

    ``rows`` is the bottleneck input flattened to ``(N, in_dim)``, N = B·prod(spatial) (the code
    dimension moved from axis 1 to the last axis); ``seed`` the dither's seed.

    - ``kind``: the container's code-model id (a key of ``CODE_MODELS``).
    - ``min_row_bits()``: a lower bound on the bits one row can cost, used to refuse a header
      whose shape the payload cannot hold.
    - ``encode(coder, rows, seed)``: pushes the rows' symbols onto the ANS ``coder``; returns
      the symbol range ``(lo, hi)`` the header stores.
    - ``decode(coder, n, seed, lo, hi)``: pops ``n`` rows back; returns ``(n, dim)`` y_hat rows.
    - ``ideal_bits(rows, seed)``: Σ −log2 P(symbol) over all rows, in bits (a float).
    """

    kind: int

    def min_row_bits(self) -> float: ...

    def encode(self, coder, rows: Tensor, seed: int) -> tuple[int, int]: ...

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor: ...

    def ideal_bits(self, rows: Tensor, seed: int) -> float: ...


def _numpy(u: Tensor) -> np.ndarray:
    """A CPU dither as a NumPy array; bfloat16 (which NumPy has not) as float32, exactly."""
    return u.numpy() if u.dtype != torch.bfloat16 else u.float().numpy()


def _check_positive(name: str, values: np.ndarray) -> None:
    """Refuse a code model parameter (``(m,)`` float64) that is not finite and positive at
    every coordinate (a non-finite or extreme log-parameter in the weights): its tables would
    be NaN, and the coder's error would name neither the parameter nor the cause."""
    bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
    if bad.size:
        raise ValueError(
            f"the bottleneck's {name} is {float(values[bad[0]])!r} at coordinate {int(bad[0])} "
            f"({bad.size} of {values.size} coordinates not finite and positive): it cannot be "
            "coded with"
        )


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
        _check_positive("lattice spacing (exp of log_spacing)", spacing)
        _check_positive("prior scale (exp of log_scale)", scale)
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
        encode_signed(coder, columns, _numpy(u), self.spacing, self.scale, max(-lo, hi))
        return lo, hi

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor:
        width = support_width(lo, hi)
        u = self.dither(n, seed)
        columns = decode_signed(coder, _numpy(u), self.spacing, self.scale, width)
        y_hat = torch.empty(u.shape, dtype=u.dtype)
        for start, stop in row_blocks(*u.shape):
            k = torch.from_numpy(columns[:, start:stop].T)
            y_hat[start:stop] = self.reconstruct(k, u[start:stop])
        return y_hat

    def ideal_bits(self, rows: Tensor, seed: int) -> float:
        if self.dtype in (torch.float32, torch.float64):
            return float(self.rate(rows, seed).double().sum()) / math.log(2)
        # a 16-bit hard path rounds each row's rate to 8 (bfloat16) or 11 (float16) significant
        # bits, and the sum drifted by up to 0.35% from the file's information content (for
        # bfloat16, above the file itself): the cells' masses in float64 instead, from the
        # same dither and coordinates as the coder's tables
        rows = rows.to(self.dtype)
        u = self.dither(rows.shape[0], seed)
        columns, _, _ = self._columns(rows, u)
        return signed_bits(columns, _numpy(u).astype(np.float64), self.spacing, self.scale)


class UniformIndex:
    """``features`` symbols per row, each uniform over ``num_codes`` values (log2 K bits).

    Args:
        num_codes: K.
        quantize: ``rows -> (N,)`` or ``(N, features)`` int64 symbols in [0, K).
        dequantize: the symbols (same shape) ``-> rows``.
        features: symbols per row.

    Raises ValueError if ``num_codes`` exceeds 2^24, the most the coder's uniform model holds.
    """

    kind = MODEL_UNIFORM_INDEX

    def __init__(self, num_codes: int, quantize, dequantize, *, features: int = 1) -> None:
        if num_codes > 1 << PRECISION:  # constriction's Uniform panics (a BaseException) there
            raise ValueError(
                f"{num_codes:,} codes cannot be coded: the entropy coder's uniform model holds "
                f"at most 2^{PRECISION} = {1 << PRECISION:,} symbols"
            )
        self.num_codes, self.features = num_codes, features
        self.quantize, self.dequantize = quantize, dequantize

    def min_row_bits(self) -> float:
        # not log2 K: constriction's Uniform gives each symbol ⌊2^24/K⌋ units and the last one
        # the remainder too, up to K − 1 more (for K = 2^17 + 1 it costs 7 bits, not 17)
        k = self.num_codes
        return self.features * _largest_probability_bits(1.0 / k, k)

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
        if symbols.dim() != 2 or symbols.shape[1] != len(widths):
            raise ValueError(
                f"{tuple(symbols.shape)} symbols for a code model of {len(widths)} feature(s)"
            )
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
class _Op:
    """One call of the coder, in decode order: ``symbols`` with a model (``probs`` per symbol
    for a categorical family, a tuple of parameter arrays for a parametric one such as
    constriction's ``QuantizedGaussian``, None for a fixed table), and their information
    content."""

    __slots__ = ("bits", "model", "probs", "symbols")

    def __init__(self, symbols: np.ndarray, model, probs: np.ndarray | None, bits: float) -> None:
        self.symbols, self.model, self.probs, self.bits = symbols, model, probs, bits


def _normalized(probs: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1 (C order, as constriction reads the raw buffer); a row whose
    masses all underflowed to 0 becomes uniform instead of NaN, the same on both sides."""
    probs = np.ascontiguousarray(np.maximum(probs, 0.0))
    total = probs.sum(1, keepdims=True)
    empty = total[:, 0] == 0
    if empty.any():
        probs[empty] = 1.0
        total[empty] = probs.shape[1]
    probs /= total
    return probs


def _categorical_op(symbols: np.ndarray, probs: np.ndarray) -> _Op:
    """Symbols with per-symbol probability rows (normalized here; C order, as constriction
    reads the raw buffer)."""
    probs = _normalized(probs)
    picked = probs[np.arange(symbols.size), symbols]
    with np.errstate(divide="ignore"):
        bits = float(-np.log2(np.maximum(picked, 2.0**-PRECISION)).sum())
    categorical = constriction().stream.model.Categorical(perfect=False)
    return _Op(np.ascontiguousarray(symbols, dtype=np.int32), categorical, probs, bits)


def _decode_categorical(coder, probs: np.ndarray) -> np.ndarray:
    probs = _normalized(probs)
    categorical = constriction().stream.model.Categorical(perfect=False)
    return coder.decode(categorical, np.ascontiguousarray(probs)).astype(np.int64)


def _geometric_op(values: np.ndarray, table, log_ratio: float) -> _Op:
    """Magnitudes t ≥ 0 from a geometric table r^t (1 − r), given log r ≤ 0: its ideal bits
    from the logarithm, as :func:`signed_bits` counts them (r itself underflows to 0 once a
    cell is some 745 prior scales wide, where log2(r) failed on a math domain error)."""
    total = float(values.sum())
    per_step = total * log_ratio if total else 0.0  # no magnitude above 0: no r^t factor
    bits = -(per_step + values.size * math.log(-math.expm1(log_ratio))) / math.log(2)
    return _Op(np.ascontiguousarray(values, dtype=np.int32), table, None, bits)


class _TriangularBlock:
    """A block coded coordinate by coordinate in a triangular basis T (rows; upper triangular,
    or lower and coded in reverse order). Given the coordinates before it, z_j = o_j + T_jj k'_j
    lies on a grid of spacing Δ_j = σ_j |T_jj| offset by σ_j o_j; writing σ_j o_j − u_j =
    Δ_j n_j − v_j (n_j = round(·/Δ_j), v_j ∈ [−Δ_j/2, Δ_j/2]) the coded value is
    κ_j = n_j + sign(T_jj) k'_j with dither v_j, through the sign / geometric-magnitude code of
    :class:`DitheredLaplace`. ``u`` is T = U @ (the block's own basis), U integer."""

    def __init__(self, t: Tensor, u: Tensor, upper: bool) -> None:
        n = t.shape[0]
        self.t = t.to(torch.float64).numpy()
        self.u = u.to(torch.float64)
        self.u_inv = torch.round(torch.linalg.inv(self.u))
        self.order = list(range(n) if upper else range(n - 1, -1, -1))
        self.diag = np.diag(self.t)

    def spacing(self, sigma: np.ndarray) -> np.ndarray:
        return sigma * np.abs(self.diag)

    def _shift(self, kt, u, sigma, delta, j, done):
        offset = np.zeros(kt.shape[0])
        for p in done:
            if self.t[p, j] != 0.0:
                offset += kt[:, p] * self.t[p, j]
        x = sigma[j] * offset - u[:, j]
        shift = np.round(x / delta[j])
        return shift, delta[j] * shift - x

    def kappa(self, k: Tensor, u: np.ndarray, sigma: np.ndarray):
        """The coded values κ ``(N, n)`` and their dithers v, from the block's own k."""
        kt = (k.to(torch.float64) @ self.u_inv).numpy()
        delta = self.spacing(sigma)
        kappa, dithers = np.empty(kt.shape, dtype=np.int64), np.empty(kt.shape)
        for i, j in enumerate(self.order):
            shift, v = self._shift(kt, u, sigma, delta, j, self.order[:i])
            kappa[:, j] = (shift + np.sign(self.diag[j]) * kt[:, j]).astype(np.int64)
            dithers[:, j] = v
        return kappa, dithers

    def ops(self, prepared, sigma, scale, width: int) -> list[_Op]:
        kappa, dithers = prepared
        delta = self.spacing(sigma)
        tables = magnitude_models(scale / delta, width)
        out = []
        for j in self.order:
            column = kappa[:, j]
            probs = SignCode(delta[j : j + 1], scale[j : j + 1]).probabilities(
                np.ascontiguousarray(dithers[:, j : j + 1])
            )
            out.append(_categorical_op(np.sign(column) + 1, probs))
            magnitude = np.abs(column[column != 0]) - 1
            out.append(_geometric_op(magnitude, tables[j], -delta[j] / scale[j]))
        return out

    def decode(self, coder, u: np.ndarray, sigma, scale, width: int) -> Tensor:
        delta = self.spacing(sigma)
        tables = magnitude_models(scale / delta, width)
        kt = np.zeros(u.shape)
        for i, j in enumerate(self.order):
            shift, v = self._shift(kt, u, sigma, delta, j, self.order[:i])
            probs = SignCode(delta[j : j + 1], scale[j : j + 1]).probabilities(
                np.ascontiguousarray(v[:, None])
            )
            column = _decode_categorical(coder, probs) - 1
            nonzero = np.flatnonzero(column)
            if nonzero.size:
                column[nonzero] *= coder.decode(tables[j], nonzero.size).astype(np.int64) + 1
            kt[:, j] = np.sign(self.diag[j]) * (column - shift)
        return torch.round(torch.from_numpy(kt) @ self.u).long()


def _gaussian_bin_log_mass(symbols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log of the mass of N(mean, std²) on [k − ½, k + ½] at each symbol k, in float64 and log
    space (a bin right of the mean is mirrored to the left, so that no mass is lost to 1 − Φ
    rounding)."""
    from scipy.special import log_ndtr

    lo = (symbols - mean - 0.5) / std
    hi = lo + 1.0 / std
    right = lo > 0  # the bin lies right of the mean: Φ(−lo) − Φ(−hi)
    a = np.where(right, -hi, lo)
    b = np.where(right, -lo, hi)
    log_b = log_ndtr(b)
    with np.errstate(divide="ignore"):
        return log_b + np.log1p(-np.exp(log_ndtr(a) - log_b))


def _quantized_gaussian_bits(symbols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """Σ −log2 P(k) under the quantized Gaussian, each term at most the coder's floor of
    ``PRECISION`` bits (every symbol of the support keeps at least one unit of 2^-24)."""
    bits = -_gaussian_bin_log_mass(symbols, mean, std) / math.log(2.0)
    return float(np.minimum(bits, PRECISION).sum())


class _GaussianTriangularBlock(_TriangularBlock):
    """:class:`_TriangularBlock` under a Gaussian prior N(0, b_j²) on X̂: the coded value κ_j,
    whose cell [Δ_j κ_j − v_j ± Δ_j/2] has the prior mass of the bin [κ_j ± ½] of
    N(v_j/Δ_j, (b_j/Δ_j)²), is coded with constriction's ``QuantizedGaussian`` on the support
    ``[−width, width]`` (the mean ± :data:`_GAUSSIAN_TAIL_SCALES` deviations and every symbol
    of the data; what is cut off beyond it is renormalized). A Z block (T = 1) is then coded
    with exactly the rectangular lattice's cell probabilities, the hard path's exact rate."""

    @staticmethod
    def _model(width: int):
        return constriction().stream.model.QuantizedGaussian(-max(width, 1), max(width, 1))

    def ops(self, prepared, sigma, scale, width: int) -> list[_Op]:
        kappa, dithers = prepared
        delta = self.spacing(sigma)
        model = self._model(width)
        out = []
        for j in self.order:
            symbols = np.ascontiguousarray(kappa[:, j], dtype=np.int32)
            mean = np.ascontiguousarray(dithers[:, j] / delta[j])
            std = np.full(symbols.size, scale[j] / delta[j])
            bits = _quantized_gaussian_bits(symbols, mean, std)
            out.append(_Op(symbols, model, (mean, std), bits))
        return out

    def decode(self, coder, u: np.ndarray, sigma, scale, width: int) -> Tensor:
        delta = self.spacing(sigma)
        model = self._model(width)
        kt = np.zeros(u.shape)
        for i, j in enumerate(self.order):
            shift, v = self._shift(kt, u, sigma, delta, j, self.order[:i])
            mean = np.ascontiguousarray(v / delta[j])
            std = np.full(u.shape[0], scale[j] / delta[j])
            column = coder.decode(model, mean, std).astype(np.int64) if u.shape[0] else shift
            kt[:, j] = np.sign(self.diag[j]) * (column - shift)
        return torch.round(torch.from_numpy(kt) @ self.u).long()

    def min_bits(self, sigma: np.ndarray, scale: np.ndarray) -> float:
        """A lower bound on a row's bits: over all dithers no bin of coordinate j holds more than
        the central one at mean 0, erf(Δ_j / (2√2 b_j)); constriction's fixed-point masses
        (24 bits, a support of at most 2·MAX_SUPPORT + 1 symbols, each kept nonzero) exceed
        the float mass by less than 0.01."""
        from scipy.special import erf

        p_max = erf(self.spacing(sigma) / (2 * math.sqrt(2.0) * scale))
        unit = 2.0**-PRECISION
        return float(sum(-math.log2(min(1.0 - unit, float(p) + 0.01)) for p in p_max))


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


def _coset_one_probability(mu: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(the nearest E8 point of x lies in D8 + ½·1) for x with independent Laplace(μ_j, β_j)
    coordinates (base units: μ = u/σ, β = b/σ), ``(N, 8), (8,) -> (N,)``.

    With e_j = x_j − round(x_j), the nearest point of D8 is at squared distance Σ e_j² and that
    of D8 + ½·1 at Σ (½ − |e_j|)² = Σ e_j² − Σ |e_j| + 2, each plus a parity fix when the rounded
    coordinates' sum is odd. Without the fixes the second coset is nearer when Σ |e_j| > 2; the
    sum of the eight independent |e_j| is taken as normal with their exact means and variances
    (:func:`_rounding_error_moments`). On the E8^5 Table-1 checkpoint its five cosets cost
    4.25 bits per image where a Monte-Carlo estimate of the exact probability, fixes included,
    costs 4.26 ± 0.06 (``examples/e8-coset-cost.py``). Deterministic float64 arithmetic:
    encoder and decoder build the same table."""
    from scipy.special import ndtr

    first, second = _rounding_error_moments(mu, beta)
    mean = first.sum(1)
    var = np.maximum((second - first * first).sum(1), 1e-300)
    return np.clip(ndtr((mean - 2.0) / np.sqrt(var)), _COSET_FLOOR, 1 - _COSET_FLOOR)


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
        if self.cosets == "half":
            return np.stack([0.5 * (1 + d0.prod(1)), 0.5 * (1 + d1.prod(1))], axis=1)
        one = _coset_one_probability(u / sigma, scale / sigma)
        return np.stack([1 - one, one], axis=1)

    @staticmethod
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

    @staticmethod
    def _sign_probs(probs, r, odd: np.ndarray) -> np.ndarray:
        """κ's sign (−, 0, +) within its parity class."""
        pn, p0, pp = probs[:, 0], probs[:, 1], probs[:, 2]
        even_probs = np.stack([pn * r / (1 + r), p0, pp * r / (1 + r)], axis=1)
        odd_probs = np.stack([pn, np.zeros_like(p0), pp], axis=1)
        return np.where(odd[:, None], odd_probs, even_probs)

    def _split(self, k: Tensor):
        z = k.to(torch.float64) @ self.basis  # halves: exact
        c = np.remainder(np.round(2 * z[:, 0].numpy()), 2).astype(np.int64)
        return z.numpy() - c[:, None] / 2.0, c

    def _cosets(self, u, sigma, scale, width: int):
        """Both cosets' cells, the coset probabilities, the parity ratio r and the magnitude
        tables (ratio r²): what encoder and decoder build before the coset is known."""
        cells = [self._cells(u, sigma, scale, cc) for cc in (0, 1)]
        r = np.exp(-sigma / scale)
        tables = magnitude_models(scale / (2 * sigma), (width + 1) // 2 + 1)
        probs = self._coset_probs(u, sigma, scale, cells[0][2], cells[1][2])
        return cells, probs, r, tables

    @staticmethod
    def _chosen(cells, c: np.ndarray):
        """The shift n, the sign probabilities and D of the coset each row lies in."""
        first = c == 0
        return (
            np.where(first[:, None], cells[0][0], cells[1][0]),
            np.where(first[:, None, None], cells[0][1], cells[1][1]),
            np.where(first[:, None], cells[0][2], cells[1][2]),
        )

    def ops(self, prepared, sigma, scale, width: int) -> list[_Op]:
        kk, c, u = prepared
        cells, coset_probs, r, tables = self._cosets(u, sigma, scale, width)
        out = [_categorical_op(c, coset_probs)]
        n_all, probs_all, d_all = self._chosen(cells, c)
        parity_so_far = np.zeros(kk.shape[0])
        for j in range(8):
            tail = d_all[:, j + 1 :].prod(1) if j < 7 else np.ones(kk.shape[0])
            kappa = (kk[:, j] + n_all[:, j]).astype(np.int64)
            odd = np.remainder(kappa, 2) == 1
            parity = self._parity_probs(probs_all[:, j], r[j], n_all[:, j], parity_so_far, tail)
            out.append(_categorical_op(odd.astype(np.int64), parity))
            signs = self._sign_probs(probs_all[:, j], r[j], odd)
            out.append(_categorical_op(np.sign(kappa) + 1, signs))
            nonzero = kappa[kappa != 0]
            magnitude = (np.abs(nonzero) - np.where(np.remainder(nonzero, 2) == 1, 1, 2)) // 2
            out.append(_geometric_op(magnitude, tables[j], -2 * sigma[j] / scale[j]))  # log r²
            parity_so_far = parity_so_far + kk[:, j]
        return out

    def decode(self, coder, u: np.ndarray, sigma, scale, width: int) -> Tensor:
        cells, coset_probs, r, tables = self._cosets(u, sigma, scale, width)
        c = _decode_categorical(coder, coset_probs)
        n_all, probs_all, d_all = self._chosen(cells, c)
        kk = np.zeros(u.shape)
        parity_so_far = np.zeros(u.shape[0])
        for j in range(8):
            tail = d_all[:, j + 1 :].prod(1) if j < 7 else np.ones(u.shape[0])
            parity = self._parity_probs(probs_all[:, j], r[j], n_all[:, j], parity_so_far, tail)
            odd = _decode_categorical(coder, parity) == 1
            sign = _decode_categorical(coder, self._sign_probs(probs_all[:, j], r[j], odd)) - 1
            kappa = np.zeros(u.shape[0], dtype=np.int64)  # 0, or ±(2t + 1) / ±(2t + 2)
            nonzero = np.flatnonzero(sign)
            if nonzero.size:
                t = coder.decode(tables[j], nonzero.size).astype(np.int64)
                base = np.where(odd[nonzero], 1, 2)
                kappa[nonzero] = sign[nonzero] * (2 * t + base)
            kk[:, j] = kappa - n_all[:, j]
            parity_so_far = parity_so_far + kk[:, j]
        z = torch.from_numpy(kk + c[:, None] / 2.0)
        return torch.round(z @ self.inverse).long()


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


class _GaussianE8Block(_E8Block):
    """:class:`_E8Block`'s model under a Gaussian prior N(0, b_j²): the product of the cubes'
    masses restricted to E8 within each coset, coded as the coset c with the probability that
    the nearest E8 point lies in it (:meth:`_cosets`), then each coordinate's κ_j = k_j + n_j
    with a categorical over the mean ± 12 deviations (:meth:`_window`; an escape beyond it,
    then κ uniform over the header's range) whose entries are the masses of the bins [κ ± ½]
    of N(v_j/σ_j, (b_j/σ_j)²) times the probability that the coordinates after it complete Σ k to
    an even sum (the last coordinate's parity is forced): the Laplace model's ½(1 ± Π_{i>j} D_i)
    with the parities' masses summed over the mean ± 12 deviations (½ each beyond
    :data:`_GAUSSIAN_PARITY_SCALE` deviations per cell) and combined by a recurrence of
    positive terms, which keeps a peaked prior's tiny odd masses. Each row's table is made
    chunk by chunk of rows (:class:`_ChunkedCategorical`), in the same float64 operations in
    encoder and decoder."""

    def __init__(self, basis: Tensor) -> None:
        super().__init__(basis, cosets="half")

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

    def _cosets(self, u, sigma, scale, width: int):
        """Both cosets' cells and P(c | u): the probability that the nearest E8 point lies in
        D8 + ½·1, as :func:`_coset_one_probability` with the Gaussian's rounding-error moments
        (the product model's ½(1 + Π D) would put a peaked prior's whole mass on one coset,
        and the point the quantizer picks is often in the other)."""
        from scipy.special import ndtr

        cells = [self._cells(u, sigma, scale, cc) for cc in (0, 1)]
        first, second = _gaussian_rounding_error_moments(u / sigma, scale / sigma)
        mean = first.sum(1)
        var = np.maximum((second - first * first).sum(1), 1e-300)
        one = np.clip(ndtr((mean - 2.0) / np.sqrt(var)), _COSET_FLOOR, 1 - _COSET_FLOOR)
        return cells, np.stack([1 - one, one], axis=1), None, None

    @staticmethod
    def _chosen(cells, c: np.ndarray):
        first = c == 0
        return tuple(np.where(first[:, None], a, b) for a, b in zip(*cells, strict=True))

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

    def ops(self, prepared, sigma, scale, width: int) -> list:
        kk, c, u = prepared
        cells, coset_probs, _, _ = self._cosets(u, sigma, scale, width)
        out = [_categorical_op(c, coset_probs)]
        n_all, mean_all, odd_all = self._chosen(cells, c)
        even_after, odd_after = self._completions(odd_all)
        parity_so_far = np.zeros(kk.shape[0])
        ratio = scale / sigma
        uniform = constriction().stream.model.Uniform(2 * width + 1)
        for j in range(8):
            kappa = (kk[:, j] + n_all[:, j]).astype(np.int64)
            reach = self._window(ratio[j], width)
            inside = np.abs(kappa) <= reach
            after = (even_after[:, j], odd_after[:, j])
            args = (mean_all[:, j], ratio[j], n_all[:, j], parity_so_far, after, reach)
            symbols = np.where(inside, kappa + reach, 2 * reach + 1)
            make = lambda a, b, args=args: self._table(*args, a, b)  # noqa: E731
            out.append(_ChunkedCategorical(symbols, make, kappa.size))
            escaped = kappa[~inside] + width
            out.append(
                _Op(
                    escaped.astype(np.int32), uniform, None, escaped.size * math.log2(2 * width + 1)
                )
            )
            parity_so_far = parity_so_far + kk[:, j]
        return out

    def decode(self, coder, u: np.ndarray, sigma, scale, width: int) -> Tensor:
        cells, coset_probs, _, _ = self._cosets(u, sigma, scale, width)
        c = _decode_categorical(coder, coset_probs)
        n_all, mean_all, odd_all = self._chosen(cells, c)
        even_after, odd_after = self._completions(odd_all)
        kk = np.zeros(u.shape)
        parity_so_far = np.zeros(u.shape[0])
        ratio = scale / sigma
        rows = u.shape[0]
        uniform = constriction().stream.model.Uniform(2 * width + 1)
        for j in range(8):
            reach = self._window(ratio[j], width)
            after = (even_after[:, j], odd_after[:, j])
            args = (mean_all[:, j], ratio[j], n_all[:, j], parity_so_far, after, reach)
            kappa = np.empty(rows, dtype=np.int64)
            for a in range(0, rows, _CLASS_CHUNK):
                b = min(rows, a + _CLASS_CHUNK)
                kappa[a:b] = _decode_categorical(coder, self._table(*args, a, b)) - reach
            escaped = np.flatnonzero(kappa > reach)
            if escaped.size:
                kappa[escaped] = coder.decode(uniform, escaped.size).astype(np.int64) - width
            kk[:, j] = kappa - n_all[:, j]
            parity_so_far = parity_so_far + kk[:, j]
        z = torch.from_numpy(kk + c[:, None] / 2.0)
        return torch.round(z @ self.inverse).long()


#: rows per chunk of a glued block's class probabilities ((rows, K) float64 arrays: 16 MB at
#: K = 8192, the 2 · 4096 classes of Λ24)
_CLASS_CHUNK = 256
#: coordinates per group of the class sums (a table per group and row, see _GluedBlock)
_GROUP = 8


class _ChunkedCategorical:
    """A categorical op over many classes whose probability rows are made chunk by chunk of
    rows when needed (``make(start, stop) -> (rows, K)``), never all at once."""

    def __init__(self, symbols: np.ndarray, make, n: int) -> None:
        self.symbols = np.ascontiguousarray(symbols, dtype=np.int32)
        self.make = make
        self.chunks = [(a, min(n, a + _CLASS_CHUNK)) for a in range(0, n, _CLASS_CHUNK)]

    @property
    def bits(self) -> float:
        """The symbols' information content (made on demand: encoding does not need it)."""
        return sum(_categorical_op(self.symbols[a:b], self.make(a, b)).bits for a, b in self.chunks)

    def encode_reverse(self, coder) -> None:
        for a, b in reversed(self.chunks):
            op = _categorical_op(self.symbols[a:b], self.make(a, b))
            coder.encode_reverse(op.symbols, op.model, op.probs)


class _GluedBlock:
    """A lattice glued from cosets of a scaled D_n, in its integer coordinates x (Conway &
    Sloane):

        Λ = ⋃_c (r_c + q·D_n^(p_c)),    D_n^(p) = {y ∈ Z^n : Σ y ≡ p (mod 2)},

    with K classes c, residues r_c ∈ [0, q)^n and parities p_c — Λ16 = ⋃ (c + 2·D16) over the 32
    words of RM(1, 4); Λ24 = ⋃ (m·1 + 2c + 4·D24^(m)) over m ∈ {0, 1} and the 4096 Golay words.
    The model is E8's (:class:`_E8Block`) with a cell of width w instead of the spacing: the
    product of one-dimensional masses m_j(x_j) = P(X̂_j ∈ σ_j x_j − u_j ± σ_j w/2), restricted
    to Λ and normalized,

        P(x | u) = Π_j m_j(x_j) / Z,   Z = Σ_c Π_j A_j(r_cj) · ½(1 + (−1)^(p_c) Π_j D_j(r_cj)),

    where A_j(r) = Σ_y m_j(r + q y) and D_j(r) = Σ_y (−1)^y m_j(r + q y) / A_j(r). It is coded as
    the class c (a categorical over K), then as E8's cosets are: coordinate by coordinate the
    parity of y_j (weighted so that Σ y can still reach p_c), y_j's sign and its geometric
    magnitude. With w ≤ q every cell but the one nearest the prior's mode lies on one side of
    it, so the masses beyond it are geometric with ratio ρ = e^(−σq/b), as for E8; the cells
    need not tile the line (w is a model choice: the normalization makes any w a distribution).

    The class sums Σ_j log A_j(r_cj) and products Π_j D_j(r_cj) are formed per row as tables
    over the residue patterns of groups of :data:`_GROUP` coordinates and combined group by
    group: no matrix product, so encoder and decoder add and multiply in one order.
    """

    def __init__(self, basis, residues, parities, step: int, width: float) -> None:
        self.basis = basis.to(torch.float64)
        self.inverse = torch.linalg.inv(self.basis)
        residues = np.asarray(residues, dtype=np.int64)
        k, n = residues.shape
        if not (0 < width <= step) or residues.min() < 0 or residues.max() >= step:
            raise ValueError("a glued block needs residues in [0, q) and a width in (0, q]")
        self.n, self.step, self.width = n, int(step), float(width)
        self.parities = np.asarray(parities, dtype=np.int64)
        self.signs = np.where(self.parities % 2 == 0, 1.0, -1.0)  # (−1)^(p_c)
        self.values, index = np.unique(residues, return_inverse=True)  # the residues in use
        self.index = index.reshape(k, n)  # (K, n): each class's residue per coordinate
        weights = step ** np.arange(n, dtype=np.int64)
        keys = residues @ weights
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        if np.unique(self.keys).size != k:
            raise ValueError("two classes of a glued block share their residues")
        # per group of coordinates: its distinct residue patterns, and each class's pattern
        self.groups = []
        for start in range(0, n, _GROUP):
            part = self.index[:, start : start + _GROUP]
            patterns, which = np.unique(part, axis=0, return_inverse=True)
            self.groups.append((start, patterns, which.reshape(-1)))

    def spacing(self, sigma: np.ndarray) -> np.ndarray:
        return sigma * self.step

    def min_bits(self, sigma: np.ndarray, scale: np.ndarray) -> float:
        """A lower bound on one block's bits over all dithers. Λ contains x + 2q·Z^n for each of
        its points x, so Z ≥ Π_j Σ_k m_j(x_j + 2qk); a Laplace cell moved by d keeps at least
        e^(−|d|/b) of its mass, so each of those sums is at least m_j(x_j)(1 + r_j)/(1 − r_j)
        with r_j = e^(−2qσ_j/b_j), and no point has probability above Π_j tanh(qσ_j/b_j). The
        coder's fixed point adds a 2^-24 unit per coded symbol at most (3n + 1 of them). A
        block whose prior is far narrower than its cosets' spacing can cost almost nothing."""
        p_max = float(np.prod(np.tanh(self.step * sigma / scale)))
        slack = (3 * self.n + 1) * 2.0**-PRECISION
        return max(0.0, -math.log2(min(1.0, p_max + slack)))

    def _cells(self, u: np.ndarray, sigma, scale):
        """Per residue value v and coordinate: the shift n, the normalized sign probabilities
        (P(κ < 0), P(κ = 0), P(κ > 0)) of κ = y − n, log A and D: ``(V, N, n[, 3])``."""
        a = sigma * self.step  # the spacing of one residue class, in y units
        h = 0.5 * sigma * self.width
        log_side = math.log(0.5) + np.log(-np.expm1(-2 * h / scale))  # a one-sided cell
        log_tail = np.log(-np.expm1(-a / scale))  # 1 − ρ
        rho = np.exp(-a / scale)
        shifts, probs, log_a, d = [], [], [], []
        for v in self.values:
            centre = (u / sigma - v) / self.step
            shift = np.round(centre)
            delta = centre - shift  # in [−½, ½]: the cell κ = 0 is centred at −a δ
            lo, hi = -a * delta - h, -a * delta + h
            with np.errstate(divide="ignore"):
                zero = np.where(
                    lo >= 0,
                    log_side - lo / scale,
                    np.where(
                        hi <= 0,
                        log_side + hi / scale,
                        np.log(-0.5 * np.expm1(np.minimum(lo, 0) / scale)
                               - 0.5 * np.expm1(-np.maximum(hi, 0) / scale)),
                    ),
                )  # fmt: skip
            above = log_side - (a * (1 - delta) - h) / scale - log_tail
            below = log_side - (a * (1 + delta) - h) / scale - log_tail
            stacked = np.stack([below, zero, above], axis=-1)
            top = stacked.max(-1, keepdims=True)
            p = np.exp(stacked - top)
            total = p.sum(-1, keepdims=True)
            p /= total
            alternating = p[..., 1] - (p[..., 0] + p[..., 2]) * ((1 - rho) / (1 + rho))
            shifts.append(shift)
            probs.append(p)
            log_a.append(top[..., 0] + np.log(total[..., 0]))
            d.append(np.where(np.remainder(shift, 2) == 0, alternating, -alternating))
        return np.stack(shifts), np.stack(probs), np.stack(log_a), np.stack(d)

    def _class_probs(self, log_a, d, start: int, stop: int) -> np.ndarray:
        """``(rows, K)`` class probabilities (unnormalized, largest 1) of rows ``start:stop``,
        from ``(V, N, n)`` log A and D: Σ_j log A_j(r_cj) + log ½(1 + (−1)^(p_c) Π_j D_j(r_cj)),
        both formed as per-row tables over each group's residue patterns, then gathered per
        class and combined group by group (|D| ≤ 1: the product cannot overflow)."""
        log_a, d = log_a[:, start:stop], d[:, start:stop]
        sum_a = prod_d = None
        for first, patterns, which in self.groups:
            table_a = table_d = None
            for i in range(patterns.shape[1]):  # (patterns, rows): this group's sum and product
                a_i, d_i = log_a[patterns[:, i], :, first + i], d[patterns[:, i], :, first + i]
                table_a = a_i if table_a is None else table_a + a_i
                table_d = d_i if table_d is None else table_d * d_i
            part_a = np.ascontiguousarray(table_a.T).take(which, axis=1)
            part_d = np.ascontiguousarray(table_d.T).take(which, axis=1)
            if sum_a is None:
                sum_a, prod_d = part_a, part_d
            else:
                sum_a += part_a
                prod_d *= part_d
        prod_d *= self.signs
        prod_d += 1.0
        prod_d *= 0.5
        with np.errstate(divide="ignore"):
            np.log(prod_d, out=prod_d)
        sum_a += prod_d
        sum_a -= sum_a.max(1, keepdims=True)
        return np.exp(sum_a, out=sum_a)

    def _tables(self, u: np.ndarray, sigma, scale, width: int):
        shifts, probs, log_a, d = self._cells(u, sigma, scale)
        rho = np.exp(-sigma * self.step / scale)
        tables = magnitude_models(scale / (2 * sigma * self.step), (width + 1) // 2 + 1)
        return shifts, probs, log_a, d, rho, tables

    def _chosen(self, arrays, c: np.ndarray):
        """Each row's own residue's entries of ``(V, N, n, ...)`` arrays, ``(N, n, ...)``."""
        v = self.index[c]  # (N, n)
        rows = np.arange(c.size)[:, None]
        cols = np.arange(self.n)[None, :]
        return [a[v, rows, cols] for a in arrays]

    def _split(self, k: Tensor):
        """Integer coordinates x = k B, their class c and y = (x − r_c)/q."""
        x = torch.round(k.to(torch.float64) @ self.basis).numpy().astype(np.int64)
        keys = np.remainder(x, self.step) @ (self.step ** np.arange(self.n, dtype=np.int64))
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        if not np.array_equal(self.keys[at], keys):
            raise ValueError("a point is not in the glued lattice")
        c = self.order[at]
        y = (x - self.values[self.index[c]]) // self.step
        if not np.array_equal(np.remainder(y.sum(1), 2), self.parities[c]):
            raise ValueError("a point is not in the glued lattice")
        return y, c

    def _coordinate_ops(self, y, c, shifts, probs, d, rho, log_rho, tables) -> list[_Op]:
        n_all, p_all, d_all = self._chosen([shifts, probs, d], c)
        out = []
        parity_so_far = self.parities[c].astype(np.float64)
        for j in range(self.n):
            tail = d_all[:, j + 1 :].prod(1) if j < self.n - 1 else np.ones(c.size)
            kappa = (y[:, j] - n_all[:, j]).astype(np.int64)
            odd = np.remainder(kappa, 2) == 1
            parity = _E8Block._parity_probs(p_all[:, j], rho[j], n_all[:, j], parity_so_far, tail)
            out.append(_categorical_op(odd.astype(np.int64), parity))
            out.append(
                _categorical_op(np.sign(kappa) + 1, _E8Block._sign_probs(p_all[:, j], rho[j], odd))
            )
            nonzero = kappa[kappa != 0]
            magnitude = (np.abs(nonzero) - np.where(np.remainder(nonzero, 2) == 1, 1, 2)) // 2
            out.append(_geometric_op(magnitude, tables[j], 2 * log_rho[j]))
            parity_so_far = parity_so_far + y[:, j]
        return out

    def ops(self, prepared, sigma, scale, width: int) -> list:
        y, c, u = prepared
        shifts, probs, log_a, d, rho, tables = self._tables(u, sigma, scale, width)
        classes = _ChunkedCategorical(c, lambda a, b: self._class_probs(log_a, d, a, b), c.size)
        log_rho = -sigma * self.step / scale  # log ρ exactly, where ρ underflows to 0
        return [classes, *self._coordinate_ops(y, c, shifts, probs, d, rho, log_rho, tables)]

    def decode(self, coder, u: np.ndarray, sigma, scale, width: int) -> Tensor:
        shifts, probs, log_a, d, rho, tables = self._tables(u, sigma, scale, width)
        n = u.shape[0]
        c = np.empty(n, dtype=np.int64)
        for a in range(0, n, _CLASS_CHUNK):
            b = min(n, a + _CLASS_CHUNK)
            c[a:b] = _decode_categorical(coder, self._class_probs(log_a, d, a, b))
        n_all, p_all, d_all = self._chosen([shifts, probs, d], c)
        y = np.zeros((n, self.n))
        parity_so_far = self.parities[c].astype(np.float64)
        for j in range(self.n):
            tail = d_all[:, j + 1 :].prod(1) if j < self.n - 1 else np.ones(n)
            parity = _E8Block._parity_probs(p_all[:, j], rho[j], n_all[:, j], parity_so_far, tail)
            odd = _decode_categorical(coder, parity) == 1
            sign = _decode_categorical(coder, _E8Block._sign_probs(p_all[:, j], rho[j], odd)) - 1
            kappa = np.zeros(n, dtype=np.int64)
            nonzero = np.flatnonzero(sign)
            if nonzero.size:
                t = coder.decode(tables[j], nonzero.size).astype(np.int64)
                kappa[nonzero] = sign[nonzero] * (2 * t + np.where(odd[nonzero], 1, 2))
            y[:, j] = kappa + n_all[:, j]
            parity_so_far = parity_so_far + y[:, j]
        x = self.values[self.index[c]] + self.step * y
        return torch.round(torch.from_numpy(x) @ self.inverse).long()


#: glued blocks already built (their class tables), by constructor arguments, oldest first
_GLUED_CACHE: dict[tuple, _GluedBlock] = {}


def _glued(key: tuple, args) -> _GluedBlock:
    """The glued block of ``args`` from the last few built (its class tables take a while)."""
    if key not in _GLUED_CACHE:
        if len(_GLUED_CACHE) >= 8:
            _GLUED_CACHE.pop(next(iter(_GLUED_CACHE)))
        _GLUED_CACHE[key] = _GluedBlock(*args)
    return _GLUED_CACHE[key]


def _key(arg) -> object:
    """A hashable stand-in for a block's constructor argument (equal blocks are built once)."""
    if isinstance(arg, Tensor):
        arg = arg.numpy()
    if isinstance(arg, np.ndarray):
        return (arg.dtype.str, arg.shape, arg.tobytes())
    return arg


class GoodLattice:
    """A good lattice's point (E8, Λ16, Λ24, A2, D4, D_n* and their sums), block by block:
    E8 blocks by their two cosets of D8 (:class:`_E8Block`), Λ16 and Λ24 by their cosets of
    2·D16 and 4·D24 (:class:`_GluedBlock`), every other block coordinate by coordinate in a
    triangular basis (:class:`_TriangularBlock`). Each block's model is normalized, so the
    file's length is its information content (``ideal_bits``) plus the coder's few words; how
    far that is from −log2 P(z | u) of the Voronoi cell is measured by Monte Carlo (``qlatent
    reproduce coding-mnist``). ``kind`` is the container's :data:`MODEL_E8_COSETS` when an E8
    block codes its coset by its rounding errors; otherwise :data:`MODEL_GLUED_LATTICE` when a
    block is coded by a glue of cosets, else :data:`MODEL_GOOD_LATTICE` (the files of the
    earlier models, unchanged).

    Args:
        blocks: per block of the direct sum, ``(start, kind, args)``: ``("e8", (basis,))`` with
            the block's own basis rows; ``("glued", (basis, residues, parities, q, w))``, the
            glue of :meth:`qlatent.lattices.LeechLattice.glue` and a cell width; or
            ``("triangular", (T, U, upper))`` from :func:`qlatent.lattices.triangular_basis`.
        sigma: ``(m,)`` float64 per-coordinate scale from the base lattice to the scaled one;
            scale: ``(m,)`` float64 prior scales b.
        dtype: the bottleneck's parameter dtype.
        dither, coordinates, reconstruct: as for :class:`DitheredLaplace` (``coordinates`` gives
            the blocks' own integer coordinates k; ``reconstruct`` maps them back to y_hat).
        e8_cosets: ``"errors"`` (the default) or ``"half"``, the E8 blocks' coset model
            (:class:`_E8Block`; ``"half"`` reads files of kinds 4 and 5).
        prior: ``"laplace"`` (the default) or ``"gaussian"`` (``scale`` the standard deviations;
            blocks ``"e8"`` (:class:`_GaussianE8Block`, container kind
            :data:`MODEL_GAUSSIAN_E8`) and ``"triangular"`` (:class:`_GaussianTriangularBlock`;
            kind :data:`MODEL_GAUSSIAN_LATTICE` when there is no E8 block) only).

    Raises ValueError for a ``prior`` other than the two, a block kind with no code model under
    that prior, or a ``sigma`` or ``scale`` that is not finite and positive everywhere.
    """

    kind = MODEL_GOOD_LATTICE

    def __init__(
        self,
        *,
        blocks,
        sigma,
        scale,
        dtype,
        dither,
        coordinates,
        reconstruct,
        e8_cosets="errors",
        prior="laplace",
    ) -> None:
        if prior not in ("laplace", "gaussian"):
            raise ValueError(f"prior must be 'laplace' or 'gaussian', got {prior!r}")
        _check_positive("lattice scale (exp of log_spacing)", sigma)
        _check_positive("prior scale (exp of log_scale)", scale)
        self.sigma, self.scale, self.dtype = sigma, scale, dtype
        self.dither, self.coordinates, self.reconstruct = dither, coordinates, reconstruct
        self.prior = prior
        self.blocks = []
        made: dict[tuple, object] = {}
        kinds = {
            "e8": lambda basis: _E8Block(basis, e8_cosets),
            "triangular": _TriangularBlock,
        }
        if prior == "gaussian":  # E8's cosets with Gaussian cells; Λ16, Λ24's are Laplace only
            kinds = {"triangular": _GaussianTriangularBlock, "e8": _GaussianE8Block}
        for start, kind, args in blocks:
            if kind not in kinds and not (kind == "glued" and prior == "laplace"):
                raise ValueError(f"a {kind!r} block has no code model under a {prior} prior")
            key = (kind, *(_key(a) for a in args))
            if key not in made:
                made[key] = _glued(key, args) if kind == "glued" else kinds[kind](*args)
            block = made[key]
            n = args[0].shape[0]
            self.blocks.append((slice(start, start + n), block))
        self.spacing = np.empty_like(sigma)
        for cols, block in self.blocks:
            self.spacing[cols] = block.spacing(sigma[cols])
        glued = any(isinstance(block, _GluedBlock) for _, block in self.blocks)
        e8 = any(isinstance(block, _E8Block) for _, block in self.blocks)
        if prior == "gaussian":
            self.kind = MODEL_GAUSSIAN_E8 if e8 else MODEL_GAUSSIAN_LATTICE
        elif e8 and e8_cosets == "errors":
            self.kind = MODEL_E8_COSETS
        else:
            self.kind = MODEL_GLUED_LATTICE if glued else MODEL_GOOD_LATTICE

    def min_row_bits(self) -> float:
        """Triangular blocks: the sign code's bound; E8 blocks: :meth:`_E8Block.min_bits` (a
        block whose prior is far narrower than its cell can cost almost nothing)."""
        bits = 0.0
        for cols, block in self.blocks:
            if isinstance(block, _GaussianTriangularBlock):
                bits += block.min_bits(self.sigma[cols], self.scale[cols])
            elif isinstance(block, _TriangularBlock):
                bits += sign_row_bits(self.spacing[cols], self.scale[cols])
            elif isinstance(block, _GluedBlock):
                bits += block.min_bits(self.sigma[cols], self.scale[cols])
            else:
                bits += block.min_bits(self.sigma[cols], self.scale[cols])
        return bits

    def _prepare(self, rows: Tensor, seed: int):
        rows = rows.to(self.dtype)
        u_t = self.dither(rows.shape[0], seed)
        u = _numpy(u_t).astype(np.float64)
        k = self.coordinates(rows, u_t)
        prepared, lo, hi = [], 0, 0
        for cols, block in self.blocks:
            if isinstance(block, _E8Block):
                kk, c = block._split(k[:, cols])
                # the coded κ = k + n, |n| ≤ 2 (the dither lies within a cell of the origin)
                span = np.abs(kk).max(initial=0) + 2
                prepared.append((kk, c, np.ascontiguousarray(u[:, cols])))
                lo, hi = min(lo, -int(span)), max(hi, int(span))
            elif isinstance(block, _GluedBlock):
                y, c = block._split(k[:, cols])
                # the coded κ = y − n, |n| ≤ 2 (the dither lies within a cell of the origin)
                span = np.abs(y).max(initial=0) + 2
                prepared.append((y, c, np.ascontiguousarray(u[:, cols])))
                lo, hi = min(lo, -int(span)), max(hi, int(span))
            else:
                kappa, dithers = block.kappa(k[:, cols], u[:, cols], self.sigma[cols])
                prepared.append((kappa, dithers))
                if kappa.size:
                    lo, hi = min(lo, int(kappa.min())), max(hi, int(kappa.max()))
        if lo < -(2**30) or hi > 2**30:
            raise ValueError(f"lattice coordinates in [{lo}, {hi}] are too large to code")
        tail = _GAUSSIAN_TAIL_SCALES if self.prior == "gaussian" else _TAIL_SCALES
        lo, hi = symbol_range(lo, hi, self.scale / self.spacing, tail)
        return prepared, lo, hi

    def _ops(self, rows: Tensor, seed: int):
        prepared, lo, hi = self._prepare(rows, seed)
        width = max(-lo, hi)
        ops = []
        for (cols, block), state in zip(self.blocks, prepared, strict=True):
            ops += block.ops(state, self.sigma[cols], self.scale[cols], width)
        return ops, lo, hi

    def encode(self, coder, rows: Tensor, seed: int) -> tuple[int, int]:
        ops, lo, hi = self._ops(rows, seed)
        for op in reversed(ops):  # pushed last-first: the decoder meets them in order
            if op.symbols.size == 0:
                continue
            if isinstance(op, _ChunkedCategorical):
                op.encode_reverse(coder)
            elif op.probs is None:
                coder.encode_reverse(op.symbols, op.model)
            elif isinstance(op.probs, tuple):  # a parametric family's per-symbol parameters
                coder.encode_reverse(op.symbols, op.model, *op.probs)
            else:
                coder.encode_reverse(op.symbols, op.model, op.probs)
        return lo, hi

    def decode(self, coder, n: int, seed: int, lo: int, hi: int) -> Tensor:
        width = support_width(lo, hi)
        u_t = self.dither(n, seed)
        u = _numpy(u_t).astype(np.float64)
        k = torch.empty(u.shape, dtype=torch.int64)
        for cols, block in self.blocks:
            k[:, cols] = block.decode(
                coder, np.ascontiguousarray(u[:, cols]), self.sigma[cols], self.scale[cols], width
            )
        return self.reconstruct(k, u_t)

    def ideal_bits(self, rows: Tensor, seed: int) -> float:
        ops, _, _ = self._ops(rows, seed)
        return sum(op.bits for op in ops)
