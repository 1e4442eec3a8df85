"""What the codebook methods (``vq``, ``vq_ema``, ``soft_em_vq``, ``soft_vq``) share.

Stateless maths as plain functions, plus :class:`EMACodebook`, the one piece with state:

- :func:`uniform_unit_scaling` — the codebook initialisation of the reference code (TensorFlow's
  ``uniform_unit_scaling``: U(±sqrt(3/d))).
- :func:`squared_distances` and :func:`nearest_codeword` — ‖z − e_k‖² and its argmin, in row
  chunks so that a large codebook never materialises an ``N×K`` matrix bigger than a few MB.
- :func:`mean_square_error` — ``mse_loss`` without overflow where only the sum of squares would.
- :func:`usage_stats` — codes used and perplexity exp(H(usage)) from (possibly fractional) counts.
- :func:`row_counts` — how often each distinct integer row occurs (code vectors of a lattice);
  :func:`padded_row_counts` the same counts as ``torch.export`` records them.
- :class:`CodebookQuantizer` — the hard path of one-index-per-row methods (lookup, log K rate).
- :class:`EMACodebook` — the M-step of hard and soft EM (Roy et al. 2018, arXiv 1805.11063):
  exponential moving averages of counts and sums with Laplace smoothing. Under
  ``torch.distributed`` the batch statistics are all-reduced first, so every rank applies the
  same update and keeps the same codebook (not inside :func:`local_updates`, for passes whose
  updates are put back). A forward recomputed by ``torch.utils.checkpoint`` (:func:`recomputing`)
  repeats the forward it recomputes, with no second update (:meth:`EMACodebook.recorded_step`).

Shapes: ``z`` ``(N, d)`` rows, codebook ``e`` ``(K, d)``, indices ``(N,)`` int64.

The hard path and the index checks are here; the initialisations are in :mod:`._codebook_init`,
the search in :mod:`._codebook_search`, the counts in :mod:`._codebook_counts`, VQ-VAE's
training terms in :mod:`._codebook_loss` and the EMA codebook in :mod:`._ema_codebook`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import shown_compile
from ._code_model import CountedCodeModel

# besides what this module uses: the names that the methods, the losses, the experiments, the
# tests, the examples and the documents import or name from it
from ._codebook_counts import code_counts, padded_row_counts, row_counts, usage_stats  # noqa: F401
from ._codebook_init import CODEBOOK_INITS, init_codebook, uniform_unit_scaling  # noqa: F401
from ._codebook_loss import (  # noqa: F401
    codebook_and_commitment,
    mean_square_error,
    straight_through,
)
from ._codebook_search import (  # noqa: F401
    _CHUNK_ELEMENTS,
    _COMPILED_MIN_ROWS,
    _MIN_CHUNK_ROWS,
    _WEIGHTED_MIN_ELEMENTS,
    _compiled_first_nearest,
    _first_minimum,
    _first_nearest,
    nearest_codeword,
    squared_distances,
)
from ._constructor_values import Fixed, Setting, check_flag
from ._ema_codebook import (  # noqa: F401
    EMACodebook,
    EMASettings,
    TrainingStep,
    local_updates,
)
from .base import Bottleneck, BottleneckOutput


def check_num_codes(num_codes: int) -> int:
    if not isinstance(num_codes, int) or isinstance(num_codes, bool) or num_codes < 2:
        raise ValueError(f"num_codes must be an integer >= 2, got {num_codes!r}")
    return num_codes


def check_indices(indices: Tensor, num_codes: int) -> Tensor:
    """Codeword indices must lie in [0, K): a clear error instead of an index fault."""
    if indices.numel() and (indices.min() < 0 or indices.max() >= num_codes):
        raise ValueError(
            f"codeword indices must lie in [0, {num_codes}), got values in "
            f"[{indices.min().item()}, {indices.max().item()}]"
        )
    return indices.long()


class CodebookQuantizer(CountedCodeModel, Bottleneck):
    """Hard path shared by the methods with one codeword index per row (``vq``, ``vq_ema``,
    ``soft_em_vq``): nearest codeword, ``dequantize`` by lookup, rate log K per row.

    Subclasses set ``num_codes`` and provide ``codebook`` ``(K, d)`` (a Parameter or a buffer).
    ``update(latents)`` learns the index frequencies that entropy coding uses
    (:class:`~qlatent.bottlenecks._code_model.CountedCodeModel`). ``compile``: search the
    nearest codewords with the ``torch.compile``-fused search on the CPU
    (:func:`nearest_codeword`).
    """

    index_kind = "scalar"
    num_codes = Fixed()  # set by the subclass: the codebook's K rows
    codebook: Tensor
    compile = Setting(check_flag)

    def __init__(self, *, dim: int, in_dim: int | None = None, compile: bool = False) -> None:
        super().__init__(dim=dim, in_dim=in_dim)
        self.compile = compile
        self._init_code_model()

    def _fixed_support(self) -> tuple[int, int]:
        return 0, self.num_codes

    def _hard_path(self, y: Tensor, codebook: Tensor | None = None) -> BottleneckOutput:
        """Eval-mode output: nearest codewords, their indices and usage, zero aux loss
        (with ``codebook`` ``(K, d)`` in place of ``self.codebook`` when given)."""
        codebook = self.codebook if codebook is None else codebook
        indices = nearest_codeword(y, codebook, compile=self.compile)
        stats = usage_stats(code_counts(indices, self.num_codes))
        q = codebook.index_select(0, indices)  # backward: one index_add into the codebook
        return BottleneckOutput(q, self._fixed_rate(y), y.new_zeros(()), indices, stats)

    def _fixed_rate(self, y: Tensor) -> Tensor:
        """log K nats per row: a fixed-length code under a uniform code prior."""
        return y.new_full((y.shape[0],), math.log(self.num_codes))

    def code_model(self):
        """Counted index frequencies after ``update()``; before it, uniform indices (log2 K
        bits each, the hard path's own rate)."""
        if self.code_model_ready:
            return self._counted_code_model()
        from ..coding.models import UniformIndex

        return UniformIndex(
            self.num_codes,
            lambda rows: self._quantize_rows(rows, None),
            lambda symbols: self._dequantize_rows(symbols, None),
        )

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return nearest_codeword(y, self.codebook, compile=self.compile)

    def _compile_repr(self) -> str:
        return ", compile=True" if shown_compile(self.compile) else ""

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.codebook.detach()[check_indices(indices, self.num_codes)]
