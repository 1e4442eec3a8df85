"""VQ-VAE bottleneck: nearest codeword, straight-through gradient, codebook + commitment loss.

Paper: A. van den Oord, O. Vinyals, K. Kavukcuoglu, "Neural Discrete Representation Learning"
(NeurIPS 2017, arXiv 1711.00937); read as a deterministic information bottleneck by H. Wu and
M. Flierl, "Variational Information Bottleneck on Vector Quantized Autoencoders" (arXiv 1808.01048).

    z ──k = argmin_k ‖z − e_k‖²──> e_k
    │
    ├─ y_hat = z + sg(e_k − z)      (forward value e_k; gradient copied to z)
    ├─ aux   = ‖e_k − sg(z)‖² + β ‖z − sg(e_k)‖²    (means over rows and dimensions)
    └─ rate  = log K per row        (a fixed-length code; uniform code prior)

Shapes: input ``(B, d)`` or ``(B, d, *spatial)`` with the code dimension on axis 1; one codeword
index per row, so ``indices`` is ``(B,)`` or ``(B, *spatial)`` (``index_kind = "scalar"``).
``stats``: ``codes_used`` and ``perplexity`` = exp(H(usage)) of this batch's codes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from .._utils import check_nonnegative, shown_setting
from ._codebook import (
    CodebookQuantizer,
    check_num_codes,
    codebook_and_commitment,
    init_codebook,
)
from .base import BOTTLENECKS, BottleneckOutput, Setting


@BOTTLENECKS.register("vq")
class VectorQuantizer(CodebookQuantizer):
    """VQ-VAE with a codebook trained by gradient (the codebook loss).

    Args:
        dim: code dimension d.
        num_codes: codebook size K.
        commitment: β, the weight of the commitment term ‖z − sg(e)‖² (0.25 in the VQ-VAE paper).
        init: the codebook ``(K, d)``'s initialisation (:func:`init_codebook`): U(±sqrt(3/d))
            by default, ``"uniform_inverse_k"`` (U(±1/K)) as in the LL-VQ-VAE reference code.
        compile: on the CPU, search the nearest codewords with a ``torch.compile``-fused pass
            after each chunk's matrix product (seconds of compilation on first use per dtype;
            needs a C++ compiler): the same codes bit for bit, about 1.2–1.3× faster at K = 128
            to 4096 (:func:`~qlatent.bottlenecks._codebook.nearest_codeword`; README,
            "Benchmarks").
    """

    commitment = Setting(check_nonnegative)
    # a training loss's weight, and the codebook's start (the codebook itself is the code)
    _FREE_OF_CODE = {"commitment": 0.25, "init": "unit_scaling"}

    def __init__(
        self,
        *,
        dim: int,
        num_codes: int = 512,
        commitment: float = 0.25,
        init: str = "unit_scaling",
        compile: bool = False,
    ) -> None:
        super().__init__(dim=dim, compile=compile)
        self.num_codes = check_num_codes(num_codes)
        self.commitment = commitment
        self.init = init
        self.codebook = nn.Parameter(init_codebook(init, self.num_codes, dim))

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        hard = self._hard_path(y)
        if not self.training:
            return hard
        # the gathered codewords are this call's own: y_hat takes their buffer
        y_hat, aux = codebook_and_commitment(y, hard.y_hat, self.commitment, reuse_q=True)
        return replace(hard, y_hat=y_hat, aux_loss=aux)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_codes={self.num_codes}, "
            f"commitment={shown_setting(self, 'commitment')}, "
            f"init={shown_setting(self, 'init')!r}{self._compile_repr()}"
        )
