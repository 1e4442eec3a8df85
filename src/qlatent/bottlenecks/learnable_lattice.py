"""Learnable-lattice vector quantizer (LL-VQ-VAE): a diagonal basis learned by gradient.

Paper: A. Khalil, R. Piechocki, R. Santos-Rodriguez, "LL-VQ-VAE: Learnable Lattice
Vector-Quantization for Efficient Representations" (arXiv 2310.09382). DESIGN.md §3.5.

    z ──n = round(z / b)──> q = b ⊙ n          (Babai rounding, exact for a diagonal basis)
    │
    ├─ y_hat = z + sg(q − z)                    (straight-through)
    ├─ aux   = ‖q − sg(z)‖² + β ‖z − sg(q)‖² + γ L_size,   L_size = −Σ_d |b_d|
    └─ rate  = 0: the lattice has no prior of its own (a fixed-length code would need a bound
               on n); the codes used are counted (``codes_used``), and a file's code model is
               counted from data by ``update()`` (:class:`CountedCodeModel`), whose file the
               reported rate does not estimate

The basis b ∈ R^D is the method's only parameter (D numbers against K·D for a codebook). It is
drawn from U(−B, B) with B = 1/(K^{1/D} − 1), the spacing at which a unit cube holds K lattice
points for a target codebook size K. round() has zero gradient, so b learns only through the
embedding term (q = b ⊙ n) and the size term. γ = +1 ("sparse", the paper's LL-VQ-VAE) rewards a
wide spacing and so few codes; γ = −1 ("dense") shrinks b towards a fine, effectively unbounded
lattice.

Shapes: input ``(B, D)`` or ``(B, D, *spatial)``, the code dimension on axis 1 (e.g. the 14×14×64
latent of a conv encoder, ``(B, 64, 14, 14)``). ``indices`` are the integer coordinates n, shaped
like the input (``index_kind = "vector"``). ``stats``: ``spacing`` = mean |b_d|; on the hard path
also, for the rows of the batch, ``codes_used`` (distinct code vectors) and ``perplexity`` (exp of
their usage entropy), counted exactly from a sort of the rows' hashes (``row_counts`` in
``qlatent.bottlenecks._codebook``) and kept off the training path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_nonnegative, recording_graph, shown_setting
from ..lattices.base import to_coordinates
from ._code_model import CountedCodeModel
from ._codebook import (
    check_num_codes,
    padded_row_counts,
    row_counts,
    straight_through,
    usage_stats,
)
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, Fixed, Setting

#: |b_d| below this is treated as this (sign kept), so that z / b stays finite
_MIN_SPACING = 1e-12


def _check_size_weight(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def init_bound(num_codes: int, dim: int) -> float:
    """B = 1 / (K^{1/D} − 1): with spacing B a unit interval holds 1/B + 1 points per axis and
    the unit cube (1/B + 1)^D = K. For K = 512, D = 64 this is 9.767."""
    return 1.0 / (num_codes ** (1.0 / dim) - 1.0)


@BOTTLENECKS.register("learnable_lattice")
class LearnableLattice(CountedCodeModel, Bottleneck):
    """Lattice quantizer with a learned diagonal basis b ``(D,)``.

    Args:
        dim: code dimension D.
        num_codes: the target codebook size K that sets the initial range B (512 in the paper).
        commitment: β of the commitment term (0.25).
        size_weight: γ of the size loss L_size = −Σ|b_d|: +1 "sparse" (the paper), −1 "dense".
        init_range: B of the initialisation U(−B, B); ``None`` derives it from ``num_codes``
            (the "dense" ablation of the reference code uses 1).

    Entropy coding: ``update(latents)`` counts each coordinate's integers over training latents
    (a factorized code model, :class:`~qlatent.bottlenecks._code_model.CountedCodeModel`).

    ``y`` ``(B, dim[, *spatial])`` -> ``y_hat`` of the same shape (straight-through),
    ``indices`` int64 ``(B, dim[, *spatial])`` on the hard path, ``rate`` zeros
    ``(B,)`` (the rate is measured by the code model), ``aux_loss`` the commitment and size
    terms. Raises ValueError for arguments out of range (named in the message) and bad input as
    :class:`~.base.Bottleneck`.
    """

    index_kind = "vector"
    num_codes = Fixed()  # the initial range's K, kept as the config says
    _FREE_OF_WEIGHTS = frozenset({"num_codes"})  # only the initialisation reads it
    commitment = Setting(check_nonnegative)
    size_weight = Setting(_check_size_weight)
    # the losses' weights, and the K that set the initial range; not ``init_range``, which the
    # digests of files already written show at other values than its default
    _FREE_OF_CODE = {"num_codes": 512, "commitment": 0.25, "size_weight": 1.0}

    def __init__(
        self,
        *,
        dim: int,
        num_codes: int = 512,
        commitment: float = 0.25,
        size_weight: float = 1.0,
        init_range: float | None = None,
    ) -> None:
        super().__init__(dim=dim)
        self.num_codes = check_num_codes(num_codes)
        self.commitment = commitment
        self.size_weight = size_weight
        bound = init_bound(self.num_codes, dim) if init_range is None else init_range
        # at most 1e30 (as a lattice's init_spacing): the float32 basis is drawn inside ±bound
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not 0 < bound <= 1e30:
            raise ValueError(
                f"init_range must be a positive number of at most 1e30 or None, got {init_range!r}"
            )
        self.init_range = float(bound)
        self.basis = nn.Parameter(torch.empty(dim).uniform_(-self.init_range, self.init_range))
        self._init_code_model()

    @property
    def spacing(self) -> Tensor:
        """``(D,)`` lattice spacing |b_d| per coordinate (detached)."""
        return self.basis.detach().abs()

    def _safe_basis(self) -> Tensor:
        b = self.basis
        tiny = b.abs() < _MIN_SPACING
        # (torch.export and make_fx cannot branch on a value: there the replacement below,
        # which keeps every coordinate that is not tiny, as it is)
        recording = recording_graph()
        if not recording and not tiny.any():
            return b
        sign = torch.where(b < 0, -1.0, 1.0).to(b.dtype)
        return torch.where(tiny, sign * _MIN_SPACING, b)

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        b = self._safe_basis()
        n = torch.round(y.detach() / b.detach())
        q = b * n  # gradient reaches b through q; round() passes none to z
        stats = {"spacing": self.spacing.mean()}
        rate = y.new_zeros(y.shape[0])
        if not self.training:
            indices = to_coordinates(n)
            # a sort: off the training hot path (torch.export, make_fx: counts of a size they
            # can record)
            recording = recording_graph()
            counted = padded_row_counts if recording else row_counts
            stats.update(usage_stats(counted(indices)))
            return BottleneckOutput(q.detach(), rate, y.new_zeros(()), indices, stats)
        size = -self.basis.abs().sum()
        aux = (
            F.mse_loss(q, y.detach())
            + self.commitment * F.mse_loss(y, q.detach())
            + self.size_weight * size
        )
        return BottleneckOutput(straight_through(y, q), rate, aux, None, stats)

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return to_coordinates(torch.round(y / self._safe_basis().detach()))

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        return indices.to(self.basis.dtype) * self._safe_basis().detach()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_codes={shown_setting(self, 'num_codes')}, "
            f"commitment={shown_setting(self, 'commitment')}, "
            f"size_weight={shown_setting(self, 'size_weight')}, init_range={self.init_range:.4g}"
        )
