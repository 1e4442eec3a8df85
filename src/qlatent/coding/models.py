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
and their sums; under a Gaussian prior E8 by its cosets and every other block in a triangular
basis).

The protocol and the scalar models are here; the sign / geometric-magnitude code of dithered
Laplace cells is in :mod:`._laplace_cells`, :class:`GoodLattice` and its glued blocks in
:mod:`._good_lattice`, its other blocks in :mod:`._e8_blocks` and :mod:`._triangular_blocks`.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

# besides what this module uses: the names that the bottlenecks, ``qlatent bench coding``, the
# tests and the examples import from it
from ._coder_ops import (  # noqa: F401
    PRECISION,
    _check_positive,
    _geometric_op,
    _largest_probability_bits,
    _numpy,
    constriction,
)
from ._e8_blocks import (  # noqa: F401
    _coset_one_probability,
    _E8Block,
    _gaussian_rounding_error_moments,
    _GaussianE8Block,
    _rounding_error_moments,
)
from ._good_lattice import GoodLattice, _GluedBlock  # noqa: F401
from ._laplace_cells import (  # noqa: F401
    MAX_SUPPORT,
    SignCode,
    decode_signed,
    encode_signed,
    magnitude_models,
    row_blocks,
    sign_row_bits,
    signed_bits,
    support_width,
    symbol_range,
)
from ._triangular_blocks import (  # noqa: F401
    _gaussian_bin_log_mass,
    _GaussianTriangularBlock,
    _quantized_gaussian_bits,
    _TriangularBlock,
)
from .container import (  # noqa: F401
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
