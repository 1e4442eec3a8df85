"""Entropy coding of a bottleneck's hard-path symbols with ``constriction``'s ANS coder.

The lattice paper's representation cost is −log P(Ẑ = z | U = u), with the dither U common
randomness of encoder and decoder. Here it becomes a file:

- **dithered rectangular lattice** (``lattice``): coordinate k_i of z = Δ ⊙ k has probability
  P(X̂ ∈ Δ_i k_i − u_i + [−Δ_i/2, Δ_i/2)) under the Laplace(0, b_i) prior, i.e. k_i follows a
  Laplace with mean u_i/Δ_i and scale b_i/Δ_i quantized to the integers. That is
  ``constriction.stream.model.QuantizedLaplace`` with one mean per symbol, so the coded length is
  the hard path's rate up to the coder's fixed-point overhead. The dither is regenerated from the
  seed in the header (:meth:`DitheredLattice._hard_dither`: a 32-bit key from a CPU generator
  seeded with it, then integer counter-based hashing onto the grid k·2^-24), identically on
  every machine and thread count; the model's parameters enter as float64 computed from the
  float32 weights, so encoder and decoder build bit-identical integer tables.
- **codeword indices** (``vq``, ``vq_ema``, ``soft_em_vq``): one index per position, coded
  uniformly over the K codewords, which is their hard path's fixed rate log K.

``compress(bottleneck, y, seed=s)`` gives ``bytes`` (see :mod:`.container`) and
``decompress(bottleneck, data)`` returns exactly ``bottleneck.eval()(y,
generator=torch.Generator().manual_seed(s)).y_hat``. Shapes: ``y`` is ``(B, d)`` or
``(B, d, *spatial)``; the result has the same shape with ``d = bottleneck.dim``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import Tensor, nn

from ..bottlenecks.base import Bottleneck, _from_rows, _to_rows
from .container import (
    CODE_MODELS,
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
    """Which code model ``bottleneck``'s symbols use; TypeError if it has none."""
    from ..bottlenecks import DitheredLattice
    from ..bottlenecks._codebook import CodebookQuantizer

    if isinstance(bottleneck, DitheredLattice):
        return MODEL_LATTICE
    if isinstance(bottleneck, CodebookQuantizer):
        return MODEL_UNIFORM_INDEX
    raise TypeError(
        f"{type(bottleneck).__name__} has no entropy model to code its symbols with "
        "(supported: lattice, vq, vq_ema, soft_em_vq)"
    )


def _lattice_params(bottleneck, rows: int, seed: int) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Dither ``(N, m)`` and the per-symbol (mean, scale) of the quantized Laplace, float64."""
    u = bottleneck._hard_dither(rows, torch.Generator().manual_seed(seed), "cpu")
    spacing = bottleneck.spacing.detach().cpu().double()
    scale = bottleneck.scale.detach().cpu().double()
    means = (u.detach().double() / spacing).reshape(-1).numpy()
    scales = np.tile((scale / spacing).numpy(), rows)
    return u, means, scales


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


@torch.no_grad()
def compress(bottleneck: Bottleneck, y: Tensor, *, seed: int, digest: bytes | None = None) -> bytes:
    """The hard-path symbols of ``y`` as a ``.qlc`` byte string.

    Args:
        bottleneck: a trained bottleneck with a code model (``lattice``, ``vq``, ``vq_ema``,
            ``soft_em_vq``); used in eval mode.
        y: ``(B, in_dim)`` or ``(B, in_dim, *spatial)`` encoder output.
        seed: the dither's seed, stored in the header.
        digest: the model digest to write (default: :func:`model_digest` of ``bottleneck``; the
            CLI passes the whole autoencoder's so that its decoder is pinned too).
    """
    constriction = _constriction()
    kind = code_model(bottleneck)
    seed = _check_seed(seed)
    bottleneck._check_input(y)
    rows = _to_rows(y.detach().cpu())
    shape = (y.shape[0], bottleneck.dim, *y.shape[2:])
    coder = constriction.stream.stack.AnsCoder()
    if kind == MODEL_LATTICE:
        rows = rows.to(bottleneck.log_spacing.dtype)
        u, means, scales = _lattice_params(bottleneck, rows.shape[0], seed)
        symbols = bottleneck._coordinates(rows, u).reshape(-1)
        lo, hi = _symbol_range(symbols, means, scales)
        family = constriction.stream.model.QuantizedLaplace(lo, hi)
        coder.encode_reverse(symbols.numpy().astype(np.int32), family, means, scales)
    else:
        symbols = bottleneck._quantize_rows(rows, None).reshape(-1)
        lo, hi = 0, bottleneck.num_codes - 1
        model = constriction.stream.model.Uniform(bottleneck.num_codes)
        coder.encode_reverse(symbols.numpy().astype(np.int32), model)
    payload = coder.get_compressed().astype("<u4").tobytes()
    header = Header(kind, digest or model_digest(bottleneck), seed, lo, hi, tuple(shape))
    return pack(header, payload)


@torch.no_grad()
def decompress(bottleneck: Bottleneck, data: bytes, *, digest: bytes | None = None) -> Tensor:
    """``y_hat`` from a ``.qlc`` byte string written for this ``bottleneck`` (same digest)."""
    constriction = _constriction()
    kind = code_model(bottleneck)
    header, payload = unpack(data, expected_digest=digest or model_digest(bottleneck))
    if header.code_model != kind:
        raise CodingError(
            f"the file holds symbols for the {CODE_MODELS[header.code_model]!r} code model, this "
            f"bottleneck uses {CODE_MODELS[kind]!r}"
        )
    shape = header.shape
    if len(shape) < 2 or shape[1] != bottleneck.dim:
        raise CodingError(f"the file's shape {shape} does not fit a {bottleneck.dim}-d code")
    if len(payload) % 4:
        raise CodingError("corrupt payload: its length is not a whole number of 32-bit words")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    positions = shape[0] * int(np.prod(shape[2:], dtype=np.int64))
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        if kind == MODEL_LATTICE:
            u, means, scales = _lattice_params(bottleneck, positions, header.seed)
            family = constriction.stream.model.QuantizedLaplace(
                header.symbol_min, max(header.symbol_max, header.symbol_min + 1)
            )
            symbols = coder.decode(family, means, scales)
            k = torch.from_numpy(symbols.astype(np.int64)).reshape(positions, bottleneck.dim)
            rows = bottleneck._reconstruct(k, u.to(bottleneck.log_spacing.dtype))
        else:
            model = constriction.stream.model.Uniform(bottleneck.num_codes)
            symbols = coder.decode(model, positions)
            rows = bottleneck._dequantize_rows(torch.from_numpy(symbols.astype(np.int64)), None)
    except (ValueError, RuntimeError, AssertionError) as err:
        raise CodingError(f"corrupt payload: the entropy decoder failed ({err})") from err
    return _from_rows(rows, shape)


#: the coder's support covers the prior's mean ± this many scales (Laplace mass beyond: ~1e-11)
_TAIL_SCALES = 25.0
#: widest support: every symbol in it costs the coder a probability of at least 2^-24
_MAX_SUPPORT = 1 << 20


def _symbol_range(symbols: Tensor, means: np.ndarray, scales: np.ndarray) -> tuple[int, int]:
    """The coder's support [min, max]: where the prior has all but ~1e-11 of its mass, widened
    to the data's symbols so that every one can be coded.

    The support is stored in the header. Taken from the data alone it would truncate the prior
    to the symbols that occur and code them in fewer bits than −log2 P(z | u); covering the
    prior's bulk keeps the coded size equal to the exact rate."""
    lo, hi = int(symbols.min()), int(symbols.max())
    reach = float(np.max(scales)) * _TAIL_SCALES
    lo = min(lo, math.floor(float(np.min(means)) - reach))
    hi = max(hi, math.ceil(float(np.max(means)) + reach))
    if lo < -(2**30) or hi > 2**30:
        raise ValueError(f"lattice coordinates in [{lo}, {hi}] are too large to code")
    if hi - lo > _MAX_SUPPORT:
        raise ValueError(
            f"the symbols span [{lo}, {hi}], wider than the coder's {_MAX_SUPPORT:,} symbols "
            "(a prior scale far larger than the lattice spacing?)"
        )
    return lo, hi
