"""Information dropout: multiplicative log-normal noise whose scale the encoder predicts.

Paper: A. Achille and S. Soatto, "Information Dropout: Learning Optimal Representations Through
Noisy Computation" (IEEE TPAMI 40(12), 2018; arXiv 1611.01353), the ReLU / log-uniform case.

    y = [f | a]                    (the encoder predicts the code f ∈ R^d and a ∈ R^d: in_dim = 2d)
      ├─ α = α_max · sigmoid(a)                           (bounded noise scale, α_max = 0.7)
      ├─ training: y_hat = f ⊙ exp(α ⊙ ε), ε ~ N(0, I)    (f ⊙ log-normal noise)
      ├─ eval:     y_hat = f
      └─ rate = Σ_i −log(α_i / α_max) = Σ_i softplus(−a_i)   (both paths)

For a log-uniform prior the KL term of the information-dropout objective is −log α plus a
constant; the constant is fixed here so that the rate is zero at α = α_max and positive below it,
and ``softplus(−a)`` computes it without ever forming log(0).

The Soft VQ-VAE reference notebook instead scales the raw linear output, ``α = 0.7·a``, and takes
``−log(a + 0.001)``, which is NaN as soon as ``a < −0.001``; this module does not copy that.

Shapes: input ``(B, 2d)`` or ``(B, 2d, *spatial)`` (f, then a, on axis 1); ``y_hat`` has d
channels; no discrete code (``quantize`` raises ``TypeError``). ``stats``: ``mean_alpha``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, Setting
from .gaussian import standard_normal_noise


def _check_alpha_max(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


@BOTTLENECKS.register("info_dropout")
class InformationDropout(Bottleneck):
    """Information dropout bottleneck (Achille & Soatto 2018).

    Args:
        dim: code dimension d; the input has ``in_dim = 2d`` channels (f, then a).
        alpha_max: the largest noise scale α_max (0.7 in the paper).
    """

    discrete = False
    input_layout = "2·dim: the code f, then the noise logits a"
    alpha_max = Setting(_check_alpha_max)

    def __init__(self, *, dim: int, alpha_max: float = 0.7) -> None:
        super().__init__(dim=dim, in_dim=2 * dim if isinstance(dim, int) else None)
        self.alpha_max = alpha_max

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        f, a = y[:, : self.dim], y[:, self.dim :]
        alpha = self.alpha_max * torch.sigmoid(a)
        if self.training:
            eps = standard_normal_noise(
                f.shape, generator=generator, device=f.device, dtype=f.dtype
            )
            y_hat = f * torch.exp(alpha * eps)
        else:
            y_hat = f
        rate = F.softplus(-a).sum(1)
        stats = {"mean_alpha": alpha.detach().mean()}
        return BottleneckOutput(y_hat, rate, y.new_zeros(()), None, stats)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, alpha_max={self.alpha_max}"
