"""The good lattices' code model, :class:`GoodLattice` (re-exported by :mod:`.models`): a direct
sum of E8 blocks, triangular blocks and the glued blocks of Λ16 and Λ24 (:class:`_GluedBlock`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._coder_ops import (
    _CLASS_CHUNK,
    PRECISION,
    _check_positive,
    _ChunkedCategorical,
    _decode_categorical,
    _numpy,
    _Op,
)
from ._e8_blocks import (
    _decode_parity_sign_magnitude,
    _E8Block,
    _GaussianE8Block,
    _parity_sign_magnitude_ops,
    _tail_product,
)
from ._laplace_cells import (
    _GAUSSIAN_TAIL_SCALES,
    _TAIL_SCALES,
    magnitude_models,
    sign_row_bits,
    support_width,
    symbol_range,
)
from ._triangular_blocks import _GaussianTriangularBlock, _TriangularBlock
from .container import (
    MODEL_E8_COSETS,
    MODEL_GAUSSIAN_E8,
    MODEL_GAUSSIAN_LATTICE,
    MODEL_GLUED_LATTICE,
    MODEL_GOOD_LATTICE,
)

#: coordinates per group of the class sums (a table per group and row, see _GluedBlock)
_GROUP = 8


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
            kappa = (y[:, j] - n_all[:, j]).astype(np.int64)
            args = (p_all[:, j], rho[j], n_all[:, j], parity_so_far, _tail_product(d_all, j))
            out.extend(_parity_sign_magnitude_ops(kappa, *args, tables[j], 2 * log_rho[j]))
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
            args = (p_all[:, j], rho[j], n_all[:, j], parity_so_far, _tail_product(d_all, j))
            y[:, j] = _decode_parity_sign_magnitude(coder, *args, tables[j]) + n_all[:, j]
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
        """Laplace triangular blocks: the sign code's bound; every other block its own
        ``min_bits`` (:meth:`_E8Block.min_bits`: a block whose prior is far narrower than its
        cell can cost almost nothing)."""
        bits = 0.0
        for cols, block in self.blocks:
            laplace_triangular = isinstance(block, _TriangularBlock) and not isinstance(
                block, _GaussianTriangularBlock
            )
            if laplace_triangular:
                bits += sign_row_bits(self.spacing[cols], self.scale[cols])
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
