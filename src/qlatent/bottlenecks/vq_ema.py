"""VQ-VAE with an EMA codebook ("hard EM"): the codebook follows moving averages of its clusters.

Papers: A. van den Oord et al., "Neural Discrete Representation Learning" (arXiv 1711.00937),
appendix A.1; A. Roy, A. Vaswani, A. Neelakantan, N. Parmar, "Theory and Experiments on Vector
Quantized Autoencoders" (arXiv 1805.11063), where the EMA update is the M-step of hard EM.

    z ──k = argmin_k ‖z − e_k‖²──> e_k          (E-step: one-hot assignment)
    │
    ├─ y_hat = z + sg(e_k − z)
    ├─ aux   = β ‖z − sg(e_k)‖²                  (no codebook loss: the codebook is not a Parameter)
    ├─ training: M-step on the batch's counts and sums (EMACodebook, all-reduced under DDP)
    └─ rate  = log K per row

The loss uses the codebook as it was before this batch's update (tensor2tensor's order).
Shapes as for ``vq``: one codeword index per row (``index_kind = "scalar"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._codebook import (
    EMACodebook,
    check_indices,
    check_nonnegative,
    check_num_codes,
    code_counts,
    nearest_codeword,
    straight_through,
    usage_stats,
)
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput


@BOTTLENECKS.register("vq_ema")
class EMAVectorQuantizer(Bottleneck):
    """VQ-VAE whose codebook is kept by exponential moving averages with Laplace smoothing.

    Args:
        dim: code dimension d.
        num_codes: codebook size K.
        commitment: β of the commitment term (0.25).
        decay: λ of the moving averages (0.99 as in VQ-VAE; tensor2tensor uses 0.999).
        eps: ε of the Laplace smoothing of the counts (1e-5).

    The codebook lives in buffers (``ema.codebook``), so an optimizer never touches it and it is
    saved with the weights. Each training-mode forward performs one M-step.
    """

    index_kind = "scalar"

    def __init__(
        self,
        *,
        dim: int,
        num_codes: int = 512,
        commitment: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(dim=dim)
        self.num_codes = check_num_codes(num_codes)
        self.commitment = check_nonnegative(commitment, "commitment")
        self.ema = EMACodebook(self.num_codes, dim, decay=decay, eps=eps)

    @property
    def codebook(self) -> Tensor:
        """``(K, d)`` current codewords."""
        return self.ema.codebook

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        indices = nearest_codeword(y, self.codebook)
        q = self.codebook[indices]  # before this batch's M-step
        counts = code_counts(indices, self.num_codes)
        rate = y.new_full((y.shape[0],), math.log(self.num_codes))
        stats = usage_stats(counts)
        if not self.training:
            return BottleneckOutput(q, rate, y.new_zeros(()), indices, stats)
        sums = torch.zeros_like(self.codebook).index_add_(0, indices, y.detach())
        self.ema.update(counts, sums)
        aux = self.commitment * F.mse_loss(y, q)
        return BottleneckOutput(straight_through(y, q), rate, aux, indices, stats)

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return nearest_codeword(y, self.codebook)

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.codebook[check_indices(indices, self.num_codes)]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_codes={self.num_codes}, commitment={self.commitment}"
