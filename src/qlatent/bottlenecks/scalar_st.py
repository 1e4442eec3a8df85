"""Straight-through scalar quantizers with learned levels and a learned code (lattice paper,
appendix A.2: the "scalar quantizer with M learned levels" of the text experiment).

Paper: L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), appendix A.2.

    y_i ──k_i = argmin_m |y_i − c_{i,m}|──> c_{i,k_i}                 (N coordinates, M levels each)
    │
    ├─ y_hat = c_{i,k_i} + (y_i − sg(y_i))   forward value: the level; gradient: to y (straight
    │                                         through) and to the level c_{i,k_i}
    ├─ rate  = −Σ_i log π_i(k_i)              π_i = softmax(ℓ_i): a learned code over the M levels
    └─ aux   = 0 (default, the paper's), or with ``commitment=β`` DESIGN.md §3.3's VQ-style
               ‖c_{i,k_i} − sg(y_i)‖² + β ‖y_i − sg(c_{i,k_i})‖² (means over the elements)

The one-dimensional case of ``vector_st`` (groups of k = 1 coordinate): the levels are its code
vectors ``codes`` ``(N, M, 1)``, evenly spaced on [−init_range, init_range] at the start. The
default is the paper's quantizer, whose levels learn from the decoder's gradient alone (the
text experiment's recorded results); ``commitment`` adds the VQ-style terms (``vector_st``). The
hard path is deterministic: ``indices`` are the level numbers ``(B, N)`` in [0, M). Files:
``update(latents)`` counts the levels used (:class:`CountedCodeModel`), as for a codebook.

Shapes: input ``(B, N)`` or ``(B, N, *spatial)``; ``indices`` like the input; ``rate`` ``(B,)``
nats. ``stats``: ``codes_used`` (distinct levels in the batch, mean over coordinates).
"""

from __future__ import annotations

from .._utils import shown_setting
from .base import BOTTLENECKS, Fixed
from .vector_st import VectorST


@BOTTLENECKS.register("scalar_st")
class ScalarST(VectorST):
    """N straight-through scalar quantizers with M learned levels and learned codes.

    Args:
        dim: N, the number of coordinates.
        levels: M, the levels per coordinate (2, 4, 8, 16 in the paper's sweep; 1: a constant
            code, the rate-0 point).
        init_range: the levels start evenly spaced on [−init_range, init_range].
        commitment: ``None`` (the paper's quantizer: no auxiliary loss), or β ≥ 0 for the
            VQ-style ``aux_loss`` = ‖c − sg(y)‖² + β‖y − sg(c)‖² (:class:`VectorST`).

    ``y`` ``(B, dim[, *spatial])`` -> ``y_hat`` of the same shape, ``indices`` int64
    ``(B, dim[, *spatial])`` (one level per coordinate). Raises ValueError for a ``levels`` that
    is not a positive integer, the arguments :class:`VectorST` refuses, and bad input.
    """

    num_codes = Fixed("levels")

    def __init__(
        self,
        *,
        dim: int,
        levels: int = 4,
        init_range: float = 1.0,
        commitment: float | None = None,
    ) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            # checked here to name this method's argument (VectorST calls it ``codes``)
            raise ValueError(f"levels must be a positive integer, got {levels!r}")
        super().__init__(
            dim=dim, group=1, codes=levels, init_range=init_range, commitment=commitment
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, levels={self.num_codes}, "
            f"init_range={shown_setting(self, 'init_range')}{self._commitment_repr()}"
        )
