"""Blocks of :class:`~.models.GoodLattice` coded coordinate by coordinate in a triangular basis
(A2, D4, D_n* and any lattice without a coset code), under a Laplace or a Gaussian prior.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._coder_ops import (
    PRECISION,
    _categorical_op,
    _decode_categorical,
    _geometric_op,
    _Op,
    constriction,
)
from ._laplace_cells import SignCode, magnitude_models


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
