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

from dataclasses import replace

import torch
from torch import Tensor

from .._utils import check_nonnegative, shown_setting
from ._codebook import (
    CodebookQuantizer,
    EMACodebook,
    EMASettings,
    check_num_codes,
    code_counts,
    mean_square_error,
    straight_through,
)
from .base import BOTTLENECKS, BottleneckOutput, Setting


@BOTTLENECKS.register("vq_ema")
class EMAVectorQuantizer(EMASettings, CodebookQuantizer):
    """VQ-VAE whose codebook is kept by exponential moving averages with Laplace smoothing.

    Args:
        dim: code dimension d.
        num_codes: codebook size K.
        commitment: β of the commitment term (0.25).
        decay: λ of the moving averages (0.99 as in VQ-VAE; tensor2tensor uses 0.999).
        eps: ε of the Laplace smoothing of the counts (1e-5).
        init: the initial codebook (:func:`~qlatent.bottlenecks._codebook.init_codebook`);
            ``"normal"`` (N(0, 1)) is the LL-VQ-VAE reference code's.
        store_smoothed: write the Laplace-smoothed counts back into the running counts, as
            zalandoresearch's ``VectorQuantizerEMA`` does (see :class:`EMACodebook`); the
            default keeps them local, as tensor2tensor and Sonnet do.
        compile: the ``torch.compile``-fused nearest-codeword search on the CPU (as ``vq``'s).

    The codebook lives in buffers (``ema.codebook``), so an optimizer never touches it and it is
    saved with the weights. Each training-mode forward performs one M-step, whether or not its
    output is backpropagated, also under ``torch.no_grad()`` and ``torch.inference_mode()``;
    an eval-mode forward performs none. Gradient accumulation over m micro-batches therefore
    performs m M-steps (decay λ each), not one on their union. Under
    ``torch.utils.checkpoint`` (``use_reentrant`` True or False) the forward recomputed in
    backward (detected as a forward run inside the autograd engine's graph task) quantizes with
    the codebook its original forward used and performs no M-step, so buffers, outputs and
    gradients equal those without checkpointing (see :class:`EMACodebook` for its limits).
    """

    commitment = Setting(check_nonnegative)
    _FREE_OF_CODE = {"commitment": 0.25}  # a training loss's weight

    def __init__(
        self,
        *,
        dim: int,
        num_codes: int = 512,
        commitment: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        init: str = "unit_scaling",
        store_smoothed: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(dim=dim, compile=compile)
        self.num_codes = check_num_codes(num_codes)
        self.commitment = commitment
        self.ema = EMACodebook(
            self.num_codes, dim, decay=decay, eps=eps, init=init, store_smoothed=store_smoothed
        )

    @property
    def codebook(self) -> Tensor:
        """``(K, d)`` current codewords."""
        return self.ema.codebook

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        if not self.training:
            return self._hard_path(y)
        # the forward a checkpoint recomputes, if any: its codebook, and no second M-step
        recorded = self.ema.recorded_step(y)
        # else the codebook before this batch's M-step, kept for a recomputation
        codebook = self.codebook.clone() if recorded is None else recorded.codebook
        hard = self._hard_path(y, codebook)
        indices, q = hard.indices, hard.y_hat
        if recorded is None:
            self.ema.record_step(y, codebook)
            sums = torch.zeros_like(codebook).index_add_(0, indices, y.detach())
            self.ema.update(code_counts(indices, self.num_codes), sums)
        aux = self.commitment * mean_square_error(y, q)
        return replace(hard, y_hat=straight_through(y, q), aux_loss=aux)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_codes={self.num_codes}, "
            f"commitment={shown_setting(self, 'commitment')}{self._compile_repr()}"
        )
