"""Entropy coding of a bottleneck's hard-path symbols with ``constriction``'s ANS coder.

The lattice paper's representation cost is −log P(Ẑ = z | U = u), with the dither U common
randomness of encoder and decoder. Here it becomes a file:

- **dithered rectangular lattice** (``lattice``): coordinate k_i of z = Δ ⊙ k has probability
  P(X̂ ∈ Δ_i k_i − u_i + [−Δ_i/2, Δ_i/2)) under the Laplace(0, b_i) prior, i.e. k_i follows a
  Laplace with mean u_i/Δ_i and scale b_i/Δ_i quantized to the integers, coded exactly as a
  dither-dependent sign and a geometric magnitude (see "lattice coordinates" below), so the
  coded length is the hard path's rate up to the coder's fixed-point overhead. The dither is
  regenerated from the seed in the header (:class:`qlatent.rng.SeedKeys`: a 32-bit key hashed
  from the seed, then integer counter-based hashing onto the grid k·2^-24), identically on
  every machine and thread count and without torch's random number generators; the model's
  parameters enter as float64 computed from the float32 weights, so encoder and decoder build
  bit-identical tables.
- **counted symbols** (``vq``, ``vq_ema``, ``soft_em_vq``, ``learnable_lattice`` after
  ``bottleneck.update(training_latents)``): each feature (the codeword index, or each lattice
  coordinate) with its own categorical of the counted frequencies
  (:mod:`qlatent.bottlenecks._code_model`); a symbol outside the counted range is an escape
  followed by 32 raw bits.
- **uniform codeword indices** (the codebook methods before ``update()``): coded uniformly over
  the K codewords, their hard path's fixed rate log K.

``compress(bottleneck, y, seed=s)`` gives ``bytes`` (see :mod:`.container`) and
``decompress(bottleneck, data)`` returns exactly ``bottleneck.eval()(y,
generator=SeedKeys(s)).y_hat``. Shapes: ``y`` is ``(B, d)`` or ``(B, d, *spatial)``; the result
has the same shape with ``d = bottleneck.dim``. :func:`ideal_bits` is the information content
the coder approaches: Σ −log2 P(symbol) under the same code model.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import Tensor, nn

from ..bottlenecks.base import Bottleneck, _from_rows, _to_rows
from ..rng import SeedKeys
from .container import (
    CODE_MODELS,
    MODEL_COUNTED,
    MODEL_LATTICE,
    MODEL_UNIFORM_INDEX,
    CodingError,
    Header,
    pack,
    unpack,
)


def _constriction():
    try:
        import constriction
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("entropy coding needs `constriction` (pip install constriction)") from err
    return constriction


def model_digest(module: nn.Module) -> bytes:
    """SHA-256 over a module's class, configuration (``repr``) and every weight and buffer."""
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def code_model(bottleneck: Bottleneck) -> int:
    """Which code model ``bottleneck``'s symbols use; TypeError if it has none (yet)."""
    from ..bottlenecks import DitheredLattice
    from ..bottlenecks._code_model import CountedCodeModel
    from ..bottlenecks._codebook import CodebookQuantizer

    if isinstance(bottleneck, DitheredLattice):
        return MODEL_LATTICE
    if isinstance(bottleneck, CountedCodeModel) and bottleneck.code_model_ready:
        return MODEL_COUNTED
    if isinstance(bottleneck, CodebookQuantizer):
        return MODEL_UNIFORM_INDEX
    if isinstance(bottleneck, CountedCodeModel):
        raise TypeError(
            f"{type(bottleneck).__name__} has no code model yet: call "
            "bottleneck.update(training_latents) after training"
        )
    raise TypeError(
        f"{type(bottleneck).__name__} has no entropy model to code its symbols with "
        "(supported: lattice with the rectangular lattice, vq, vq_ema, soft_em_vq, "
        "learnable_lattice; good lattices such as E8 and Leech have no code model yet)"
    )


def _lattice_params(bottleneck, rows: int, seed: int) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Dither ``(N, m)`` in the parameters' dtype, the spacings Δ and the Laplace scales b,
    ``(m,)`` float64 each."""
    u = bottleneck._hard_dither(rows, SeedKeys(seed), "cpu").detach()
    spacing = bottleneck.spacing.detach().cpu().double().numpy()
    return u, spacing, bottleneck.scale.detach().cpu().double().numpy()


# ------------------------------------------------------------ lattice coordinates
# Coordinate k of a dithered Laplace(0, b) variable, in units of the spacing: a Laplace with
# mean μ = u/Δ ∈ [−½, ½) and scale s = b/Δ quantized to the integers. Every cell k ≥ 1 lies
# right of the mean, so P(k | u) = P(k > 0 | u) · r^(k−1) (1 − r) with r = e^(−1/s), and
# likewise for k ≤ −1. The code is this exact factorization: a sign (−, 0, +) whose three
# probabilities depend on the dither, then for nonzero k the magnitude |k| − 1 from a geometric
# table that does not, one per coordinate. Decoding then needs no per-symbol inversion of a
# continuous CDF, which is most of the cost of constriction's parametric QuantizedLaplace.
#
# Everything runs in blocks of rows of about _BLOCK symbols: the coordinates, each block's sign
# probabilities (computed just before the coder reads them, so that they stay in cache) and the
# reconstruction. Coding a sequence in blocks gives the same bits as coding it in one call, and
# no whole-input temporary is made beyond the dither and the coordinates: on a machine where
# fresh memory is slow to fault in, that is a large part of a whole call's time.

# constriction (0.5) reads the raw buffer of every array it is given, whatever its strides: what
# is passed to it is contiguous by construction (a fresh array, or a contiguous reshape).

#: symbols per block of the sign code (24 bytes of probabilities each)
_BLOCK = 1 << 15
#: Δ/b beyond which P(k > 0) is computed with its own exp: ¼e^(−Δ/b) would lose precision
_ONE_EXP_LIMIT = 512.0


def _exp(x: np.ndarray) -> None:
    """``x ← e^x`` in place for a contiguous float64 array, with torch's vectorized ``exp``:
    about 2.5 times as fast as NumPy's on AVX2, and on the machine that made the results the
    same bits as one call per element, on 1 and 2 threads."""
    t = torch.from_numpy(x)
    torch.exp(t, out=t)


class _SignCode:
    """The dither-dependent sign probabilities of every coordinate.

    With μ = u/Δ and s = b/Δ, P(k < 0 | u) = ½e^(−(½ + μ)/s) = ½e^(−(u + Δ/2)/b) and
    P(k > 0 | u) = ½e^(−(Δ/2 − u)/b); their product ¼e^(−Δ/b) does not depend on u, so one
    ``exp`` per symbol gives both (a division gives the second). A coordinate with Δ/b above
    :data:`_ONE_EXP_LIMIT`, whose product would underflow, gets a second ``exp`` instead.
    P(k = 0) is the rest. All in float64 from the float32 dither and parameters, with the same
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


def _row_blocks(rows: int, m: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of rows, about :data:`_BLOCK` symbols each."""
    step = max(1, _BLOCK // max(m, 1))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _lattice_columns(bottleneck, rows: Tensor, u: Tensor) -> tuple[np.ndarray, int, int]:
    """k = K_Λ(y + u) of ``rows`` ``(N, m)`` with the dither ``u``, block by block with the
    bottleneck's own hard-path arithmetic: ``(m, N)`` int32 (each coordinate contiguous), and
    the smallest and largest k (0 included)."""
    n, m = u.shape
    columns = np.empty((m, n), dtype=np.int32)
    lo = hi = 0
    geometry = bottleneck.geometry()
    for start, stop in _row_blocks(n, m):
        k = bottleneck._coordinates(rows[start:stop], u[start:stop], geometry)
        low, high = torch.aminmax(k)
        lo, hi = min(lo, int(low)), max(hi, int(high))
        if lo < -(2**30) or hi > 2**30:
            raise ValueError(f"lattice coordinates in [{lo}, {hi}] are too large to code")
        columns[:, start:stop] = k.numpy().T
    return columns, lo, hi


def _magnitude_models(scales: np.ndarray, width: int) -> list:
    """Per coordinate, a Categorical over |k| − 1 ∈ [0, width): the geometric r^j (1 − r).

    At least two entries: constriction refuses a one-symbol table (a support of ±1, from a
    prior much narrower than the cell); the second is never coded and costs nothing."""
    categorical = _constriction().stream.model.Categorical
    j = np.arange(max(width, 2), dtype=np.float64)
    return [categorical(np.exp(-j / s) * -np.expm1(-1.0 / s), perfect=False) for s in scales]


def _encode_lattice(coder, columns: np.ndarray, u: np.ndarray, spacing, scale, width: int):
    """``columns`` ``(m, N)`` int32 coordinates with ``|k| <= width``, ``u`` their dither
    ``(N, m)``: the signs of every symbol, block by block of rows, then coordinate by coordinate
    the magnitudes of the nonzero ones (pushed in reverse, so that the decoder meets them in
    this order)."""
    categorical = _constriction().stream.model.Categorical(perfect=False)
    m, n = columns.shape
    for column, model in zip(
        reversed(columns), reversed(_magnitude_models(scale / spacing, width)), strict=True
    ):
        magnitude = np.abs(column[column != 0])
        if magnitude.size:
            magnitude -= 1
            coder.encode_reverse(magnitude, model)
    code = _SignCode(spacing, scale)
    for start, stop in reversed(_row_blocks(n, m)):
        signs = np.sign(columns[:, start:stop].T, order="C").reshape(-1)
        signs += 1
        coder.encode_reverse(signs, categorical, code.probabilities(u[start:stop]))


def _decode_lattice(coder, u: np.ndarray, spacing, scale, width: int) -> np.ndarray:
    """The inverse of :func:`_encode_lattice`: ``(m, N)`` int32 coordinates."""
    categorical = _constriction().stream.model.Categorical(perfect=False)
    n, m = u.shape
    columns = np.empty((m, n), dtype=np.int32)
    code = _SignCode(spacing, scale)
    for start, stop in _row_blocks(n, m):
        signs = coder.decode(categorical, code.probabilities(u[start:stop]))
        columns[:, start:stop] = signs.reshape(stop - start, m).T
    columns -= 1
    for column, model in zip(columns, _magnitude_models(scale / spacing, width), strict=True):
        nonzero = np.flatnonzero(column)
        if nonzero.size:
            magnitude = coder.decode(model, nonzero.size)
            magnitude += 1
            column[nonzero] *= magnitude
    return columns


def _lattice_points(bottleneck, columns: np.ndarray, u: Tensor) -> Tensor:
    """y_hat = Δ k − u ``(N, m)`` from the ``(m, N)`` coordinates, block by block with the
    bottleneck's own hard-path arithmetic."""
    y_hat = torch.empty(u.shape, dtype=u.dtype)
    geometry = bottleneck.geometry()
    for start, stop in _row_blocks(*u.shape):
        k = torch.from_numpy(columns[:, start:stop].T)
        y_hat[start:stop] = bottleneck._reconstruct(k, u[start:stop], geometry)
    return y_hat


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


@torch.no_grad()
def compress(bottleneck: Bottleneck, y: Tensor, *, seed: int, digest: bytes | None = None) -> bytes:
    """The hard-path symbols of ``y`` as a ``.qlc`` byte string.

    Args:
        bottleneck: a trained bottleneck with a code model: ``lattice`` (its prior), ``vq``,
            ``vq_ema``, ``soft_em_vq`` (counted after ``update()``, uniform before) or
            ``learnable_lattice`` (after ``update()``); used in eval mode.
        y: ``(B, in_dim)`` or ``(B, in_dim, *spatial)`` encoder output.
        seed: the dither's seed, stored in the header.
        digest: the model digest to write (default: :func:`model_digest` of ``bottleneck``; the
            CLI passes the whole autoencoder's so that its decoder is pinned too).
    """
    constriction = _constriction()
    kind = code_model(bottleneck)
    seed = _check_seed(seed)
    bottleneck._check_input(y)
    rows = _to_rows(bottleneck._cast(y.detach().cpu()))
    shape = (y.shape[0], bottleneck.dim, *y.shape[2:])
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(_CHECK_WORD, _terminator())  # decoded last
    if rows.shape[0] == 0:  # nothing to code: the header's shape says so
        lo = hi = 0
    elif kind == MODEL_LATTICE:
        rows = rows.to(bottleneck.log_spacing.dtype)
        u, spacing, scale = _lattice_params(bottleneck, rows.shape[0], seed)
        columns, lo, hi = _lattice_columns(bottleneck, rows, u)
        lo, hi = _symbol_range(lo, hi, scale / spacing)
        _encode_lattice(coder, columns, u.numpy(), spacing, scale, max(-lo, hi))
    elif kind == MODEL_COUNTED:
        symbols = bottleneck.code_symbols(rows)
        lo, hi = (int(symbols.min()), int(symbols.max())) if symbols.numel() else (0, 0)
        if lo < -(2**31) or hi >= 2**31:
            raise ValueError(f"symbols in [{lo}, {hi}] do not fit in 32 bits")
        _encode_counted(coder, bottleneck, symbols)
    else:
        symbols = bottleneck._quantize_rows(rows, None).reshape(-1)
        lo, hi = 0, bottleneck.num_codes - 1
        model = constriction.stream.model.Uniform(bottleneck.num_codes)
        coder.encode_reverse(symbols.numpy().astype(np.int32), model)
    payload = coder.get_compressed().astype("<u4").tobytes()
    header = Header(kind, digest or model_digest(bottleneck), seed, lo, hi, tuple(shape))
    return pack(header, payload)


#: the most values :func:`decompress` produces unless told otherwise (512 MiB of float32)
MAX_ELEMENTS = 1 << 27
#: constriction's fixed-point precision for the coded models (its ANS coder's default)
_PRECISION = 24


def _min_row_bits(bottleneck, kind: int) -> float:
    """A lower bound on the bits any one position (row of the code) costs under the code model:
    Σ over its symbols of −log2 of the largest probability the coder can give one symbol.

    Quantized to 2^-24, no probability exceeds the float one by more than (n + 1)·2^-24 (n
    entries) nor 1 − (n − 1)·2^-24. For the lattice's sign code the largest probability over all
    dithers is max(½, P(k = 0 | u = 0)) = max(½, 1 − e^(−Δ/2b)); magnitudes only add bits."""
    unit = 2.0**-_PRECISION

    def cost(p_max: float, n: int) -> float:
        return -math.log2(min(1.0 - (n - 1) * unit, p_max + (n + 1) * unit))

    if kind == MODEL_UNIFORM_INDEX:
        return math.log2(bottleneck.num_codes)
    if kind == MODEL_COUNTED:
        return sum(cost(float(p.max()), p.numel()) for p in bottleneck.code_probabilities())
    ratio = (bottleneck.spacing / bottleneck.scale).detach().cpu().double()
    p_zero = -torch.expm1(-ratio / 2)
    return sum(cost(max(0.5, float(p)), 3) for p in p_zero)


def _check_size(bottleneck, kind: int, shape: tuple[int, ...], words: int, max_elements: int):
    """Refuse a header whose shape the payload cannot hold, or beyond ``max_elements``, before
    anything of that size is allocated: the work of a refused decode is O(file size)."""
    if len(shape) < 2 or shape[1] != bottleneck.dim:
        raise CodingError(f"the file's shape {shape} does not fit a {bottleneck.dim}-d code")
    positions = shape[0] * math.prod(shape[2:])  # Python integers: no wrap-around
    elements = positions * bottleneck.dim
    if elements > max_elements:
        raise CodingError(
            f"the header announces {elements:,} values (shape {shape}), more than "
            f"max_elements={max_elements:,}; pass a larger max_elements to decode it"
        )
    # ANS codes a sequence in its information content plus at most a few words; half of the
    # bound and two words of slack keep any file this coder wrote well inside it
    available = 32 * words + 64
    needed = positions * _min_row_bits(bottleneck, kind)
    if needed > 2 * available:
        raise CodingError(
            f"corrupt header: shape {shape} needs at least {needed:,.0f} bits, the payload "
            f"holds {32 * words:,}"
        )
    return positions


@torch.no_grad()
def decompress(
    bottleneck: Bottleneck,
    data: bytes,
    *,
    digest: bytes | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> Tensor:
    """``y_hat`` from a ``.qlc`` byte string written for this ``bottleneck`` (same digest).

    Every size in the header is checked against the payload and against ``max_elements`` (the
    most values the result may hold) before anything is allocated; a file that fails any check
    raises :class:`CodingError`. A file whose payload was edited and its checksum recomputed
    cannot be told from a genuine one (a CRC detects damage, not forgery): it decodes to some
    other y_hat of the announced shape, or fails the end-of-stream check.
    """
    constriction = _constriction()
    # the digest first: a file from another model is refused as such, code model or not
    header, payload = unpack(data, expected_digest=digest or model_digest(bottleneck))
    kind = code_model(bottleneck)
    if header.code_model != kind:
        raise CodingError(
            f"the file holds symbols for the {CODE_MODELS[header.code_model]!r} code model, this "
            f"bottleneck uses {CODE_MODELS[kind]!r}"
        )
    if len(payload) % 4:
        raise CodingError("corrupt payload: its length is not a whole number of 32-bit words")
    shape = header.shape
    positions = _check_size(bottleneck, kind, shape, len(payload) // 4, max_elements)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        if positions == 0:
            rows = torch.zeros(0, bottleneck.dim, dtype=bottleneck._compute_dtype())
        elif kind == MODEL_LATTICE:
            width = max(-header.symbol_min, header.symbol_max)
            if not 0 <= width <= _MAX_SUPPORT:
                raise CodingError(f"corrupt header (symbol range {header.symbol_min}..)")
            u, spacing, scale = _lattice_params(bottleneck, positions, header.seed)
            columns = _decode_lattice(coder, u.numpy(), spacing, scale, width)
            rows = _lattice_points(bottleneck, columns, u)
        elif kind == MODEL_COUNTED:
            symbols = _decode_counted(coder, bottleneck, positions)
            if bottleneck.index_kind == "scalar":
                symbols = symbols.reshape(-1)
            rows = bottleneck._dequantize_rows(symbols, None)
        else:
            model = constriction.stream.model.Uniform(bottleneck.num_codes)
            symbols = coder.decode(model, positions)
            rows = bottleneck._dequantize_rows(torch.from_numpy(symbols.astype(np.int64)), None)
        end = coder.decode(_terminator(), _CHECK_WORD.size)
        if not np.array_equal(end, _CHECK_WORD) or not coder.is_empty():
            raise CodingError("corrupt payload: the decoder did not end where the encoder began")
    except CodingError:
        raise
    except (ValueError, RuntimeError, AssertionError, OverflowError) as err:
        raise CodingError(f"corrupt payload: the entropy decoder failed ({err})") from err
    return _from_rows(rows, shape)


#: 32 bits pushed first (so decoded last), as two 16-bit symbols
_CHECK_WORD = np.array([0x514C, 0x4331], dtype=np.int32)


def _terminator():
    """The model of :data:`_CHECK_WORD`'s halves: uniform over 16 bits.

    An ANS coder starts empty, in state 0, and while its state x is below a symbol's frequency,
    coding a symbol whose cumulative probability starts at 0 leaves x unchanged: a run of such
    symbols pushed first would cost nothing (they decode from the final state for free). The
    file would then be shorter than its information content by an amount that depends on the
    symbol order. Pushing 32 known bits first lifts the state above 2^32, after which every
    symbol pays its −log2 P; decoding checks that they come out last and the stream is empty.
    """
    return _constriction().stream.model.Uniform(1 << 16)


# ------------------------------------------------------------------ counted symbols
#: an escaped symbol's value, offset by 2^31 and split into two 16-bit halves
_RAW_HALF = 1 << 16


def _counted_models(bottleneck) -> list[tuple[int, object]]:
    """Per feature: the width of its counted range and a constriction Categorical over those
    symbols followed by the escape (symbol ``width``)."""
    constriction = _constriction()
    return [
        (p.numel() - 1, constriction.stream.model.Categorical(p.numpy(), perfect=False))
        for p in bottleneck.code_probabilities()
    ]


def _feature_symbols(
    bottleneck, symbols: Tensor, widths: list[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per feature: the coder's symbols (offset into the counted range, or the escape) and the
    raw values of the escaped ones."""
    out = []
    for f, width in enumerate(widths):
        s = symbols[:, f] - int(bottleneck.code_low[f])
        outside = (s < 0) | (s >= width)
        coded = torch.where(outside, torch.full_like(s, width), s).numpy().astype(np.int32)
        out.append((coded, symbols[outside, f].numpy()))
    return out


def _raw_halves(values: np.ndarray) -> np.ndarray:
    if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
        raise ValueError("a symbol does not fit in 32 bits")
    shifted = values.astype(np.int64) + 2**31
    return np.stack([shifted >> 16, shifted & 0xFFFF], axis=1).reshape(-1).astype(np.int32)


def _encode_counted(coder, bottleneck, symbols: Tensor) -> None:
    """Feature by feature: the categorical symbols, then the escaped values (encoded in reverse
    so that the decoder meets them in this order)."""
    raw = _constriction().stream.model.Uniform(_RAW_HALF)
    models = _counted_models(bottleneck)
    parts = _feature_symbols(bottleneck, symbols, [width for width, _ in models])
    for (_, model), (coded, escaped) in zip(reversed(models), reversed(parts), strict=True):
        if escaped.size:
            coder.encode_reverse(_raw_halves(escaped), raw)
        coder.encode_reverse(coded, model)


def _decode_counted(coder, bottleneck, positions: int) -> Tensor:
    """``(positions, F)`` int64 symbols, the inverse of :func:`_encode_counted`."""
    raw = _constriction().stream.model.Uniform(_RAW_HALF)
    columns = []
    for f, (width, model) in enumerate(_counted_models(bottleneck)):
        coded = coder.decode(model, positions).astype(np.int64)
        escape = coded == width
        values = coded + int(bottleneck.code_low[f])
        count = int(escape.sum())
        if count:
            halves = coder.decode(raw, 2 * count).astype(np.int64).reshape(count, 2)
            values[escape] = (halves[:, 0] << 16) + halves[:, 1] - 2**31
        columns.append(values)
    return torch.from_numpy(np.stack(columns, axis=1))


#: the coder's support covers the prior's mean ± this many scales (Laplace mass beyond: ~1e-11)
_TAIL_SCALES = 25.0
#: largest |k| the coder's magnitude tables hold (one table of this width per coordinate)
_MAX_SUPPORT = 1 << 16


def _symbol_range(lo: int, hi: int, scales: np.ndarray) -> tuple[int, int]:
    """The coder's support [min, max]: where the prior has all but ~1e-11 of its mass for any
    dither (its mean u/Δ lies in [−½, ½]), widened to the data's symbols (in [lo, hi]) so that
    every one can be coded; ``scales`` are b/Δ.

    The support is stored in the header. Taken from the data alone it would truncate the prior
    to the symbols that occur and code them in fewer bits than −log2 P(z | u); covering the
    prior's bulk keeps the coded size equal to the exact rate."""
    reach = float(np.max(scales)) * _TAIL_SCALES
    lo = min(lo, math.floor(-0.5 - reach))
    hi = max(hi, math.ceil(0.5 + reach))
    if max(-lo, hi) > _MAX_SUPPORT:
        raise ValueError(
            f"the symbols span [{lo}, {hi}], beyond the coder's ±{_MAX_SUPPORT:,} "
            "(a prior scale far larger than the lattice spacing?)"
        )
    return lo, hi


@torch.no_grad()
def ideal_bits(bottleneck: Bottleneck, y: Tensor, *, seed: int) -> float:
    """Σ −log2 P(symbol) of ``y``'s hard-path symbols under the code model :func:`compress`
    uses: the lattice's exact rate −log2 P(z | u) with seed ``seed``'s dither; the counted
    model's probabilities (32 raw bits more per escape); log2 K per uniform index. A file is
    this long plus the coder's overhead and the header."""
    kind = code_model(bottleneck)
    bottleneck._check_input(y)
    was_training = bottleneck.training
    bottleneck.eval()
    try:
        rows = _to_rows(bottleneck._cast(y.detach().cpu()))
        if kind == MODEL_LATTICE:
            rate = bottleneck(rows, generator=SeedKeys(_check_seed(seed))).rate
            return float(rate.double().sum()) / math.log(2)
        if kind == MODEL_UNIFORM_INDEX:
            return rows.shape[0] * math.log2(bottleneck.num_codes)
        symbols = bottleneck.code_symbols(rows)
        probs = bottleneck.code_probabilities()
        parts = _feature_symbols(bottleneck, symbols, [p.numel() - 1 for p in probs])
        bits = 0.0
        for p, (coded, escaped) in zip(probs, parts, strict=True):
            bits += float(-torch.log2(p[torch.from_numpy(coded).long()]).sum()) + 32 * escaped.size
        return bits
    finally:
        bottleneck.train(was_training)
