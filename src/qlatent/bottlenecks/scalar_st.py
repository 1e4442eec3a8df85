"""Straight-through scalar quantizers with learned levels and a learned code (lattice paper,
appendix A.2: the "scalar quantizer with M learned levels" of the text experiment).

Paper: L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), appendix A.2.

    y_i ──k_i = argmin_m |y_i − c_{i,m}|──> c_{i,k_i}                 (N coordinates, M levels each)
    │
    ├─ y_hat = c_{i,k_i} + (y_i − sg(y_i))   forward value: the level; gradient: to y (straight
    │                                         through) and to the level c_{i,k_i}
    └─ rate  = −Σ_i log π_i(k_i)              π_i = softmax(ℓ_i): a learned code over the M levels

The rate is the length of a real code, the learned categorical ``π_i`` of each coordinate, which
the loss trains with the rest (its gradient reaches only the logits ℓ). The hard path is the
same map (deterministic): ``indices`` are the level numbers ``(B, N)`` in [0, M). Files:
``update(latents)`` counts the levels used (:class:`CountedCodeModel`), as for a codebook.

Shapes: input ``(B, N)`` or ``(B, N, *spatial)``; ``indices`` like the input (``index_kind =
"vector"``); ``rate`` ``(B,)`` nats. ``stats``: ``levels_used`` (mean over coordinates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._code_model import CountedCodeModel
from ._codebook import check_num_codes
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput


@BOTTLENECKS.register("scalar_st")
class ScalarST(CountedCodeModel, Bottleneck):
    """N straight-through scalar quantizers with M learned levels and learned codes.

    Args:
        dim: N, the number of coordinates.
        levels: M, the levels per coordinate (2, 4, 8, 16 in the paper's sweep).
        init_range: the levels start evenly spaced on [−init_range, init_range].
    """

    index_kind = "vector"

    def __init__(self, *, dim: int, levels: int = 4, init_range: float = 1.0) -> None:
        super().__init__(dim=dim)
        self.num_levels = check_num_codes(levels)
        if isinstance(init_range, bool) or not isinstance(init_range, int | float):
            raise ValueError(f"init_range must be a positive number, got {init_range!r}")
        if not 0 < init_range < float("inf"):
            raise ValueError(f"init_range must be a positive number, got {init_range!r}")
        self.init_range = float(init_range)
        grid = torch.linspace(-self.init_range, self.init_range, self.num_levels)
        self.levels = nn.Parameter(grid.repeat(dim, 1))  # (N, M)
        self.logits = nn.Parameter(torch.zeros(dim, self.num_levels))  # (N, M)
        self._init_code_model()

    def _fixed_support(self) -> tuple[int, int]:
        return 0, self.num_levels

    def _nearest(self, y: Tensor) -> Tensor:
        """``(R, N)`` level numbers of the nearest level per coordinate (ties: the lowest)."""
        distance = (y.detach().unsqueeze(-1) - self.levels.detach()).abs()  # (R, N, M)
        return distance.argmin(-1)

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        k = self._nearest(y)
        q = self.levels.expand(y.shape[0], -1, -1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        log_pi = F.log_softmax(self.logits, dim=-1).expand(y.shape[0], -1, -1)
        rate = -log_pi.gather(-1, k.unsqueeze(-1)).squeeze(-1).sum(-1)
        used = torch.zeros_like(self.logits, dtype=torch.bool).scatter_(
            1, k.T, True
        )  # (N, M): which levels occur in this batch
        stats = {"levels_used": used.sum(1).float().mean().detach()}
        if not self.training:
            return BottleneckOutput(q.detach(), rate.detach(), y.new_zeros(()), k, stats)
        y_hat = q + (y - y.detach())
        return BottleneckOutput(y_hat, rate, y.new_zeros(()), None, stats)

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return self._nearest(y)

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_levels):
            raise ValueError(
                f"level numbers must lie in [0, {self.num_levels}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        levels = self.levels.detach().expand(indices.shape[0], -1, -1)
        return levels.gather(-1, indices.long().unsqueeze(-1)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.num_levels}, init_range={self.init_range}"
