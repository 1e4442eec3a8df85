"""The code models' shared pieces: constriction and its precision, the checks on a model's
parameters, and the ops (one coder call each, in decode order) into which the blocks of
:class:`~.models.GoodLattice` turn their symbols. Used by every code-model module of
:mod:`qlatent.coding`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: constriction's fixed-point precision for the coded models (its ANS coder's default)
PRECISION = 24


def constriction():
    try:
        import constriction as module
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("entropy coding needs `constriction` (pip install constriction)") from err
    return module


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


#: rows per chunk of a glued block's class probabilities ((rows, K) float64 arrays: 16 MB at
#: K = 8192, the 2 · 4096 classes of Λ24)
_CLASS_CHUNK = 256


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
