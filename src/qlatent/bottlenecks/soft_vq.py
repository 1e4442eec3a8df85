"""Soft VQ-VAE: noisy latent, Bayesian posterior-mean estimator over a Gaussian-mixture codebook.

Paper: H. Wu and M. Flierl, "Vector Quantization-Based Regularization for Autoencoders"
(AAAI 2020, arXiv 1905.11062), equations (4)-(7) and loss (27).

    y = [z_e | s_1 … s_K]          (the encoder predicts z_e ∈ R^d and one log-scale s_k = log σ_k
      │                            per codeword, data dependent: in_dim = d + K)
      ├─ training: z' = z_e + ε, ε ~ N(0, σ_ε² I)          (paper; the reference code: no noise)
      ├─ p_k = softmax_k(−‖z' − μ_k‖² / (2σ_k²) + c_k)     (log-softmax, never exp-then-divide)
      ├─ ẑ_q = Σ_k p_k μ_k                                   (posterior mean of the codeword)
      ├─ y_hat = z_e + sg(ẑ_q − z_e);  eval: y_hat = ẑ_q from the noiseless z_e
      └─ aux = ‖ẑ_q − sg(z')‖² + β ‖z' − sg(ẑ_q)‖²           (loss (27) without −log p(x | ẑ_q))

c_k, the log-normaliser of component k, is where paper and code differ:

- ``variant="paper"`` (default): the isotropic Gaussian of eq. (5), c_k = −d·log σ_k, with noise
  ``noise_std`` (default σ_ε = 0.01, the value in the reference code's disabled noise line).
- ``variant="reference"``: the MNIST notebook, ``exp(−½ dist/σ_k²) / sqrt(1/σ_k²)`` normalised
  over k, i.e. c_k = +log σ_k, and by default no noise on z_e.

An explicit ``noise_std`` applies to either variant, so the two differences (weights, noise) can
be tested one at a time.

As in the notebook, the first term of ``aux`` reaches the codebook, the log-scales and (through
the weights p_k) the encoder; the decoder's gradient goes straight through to z_e.

There is no discrete code on the decoder path, so ``quantize`` raises ``TypeError`` and ``rate``
is zero. ``stats`` report the usage of the most probable codeword (``codes_used``,
``perplexity``), the perplexity of the mean posterior (``soft_perplexity``), the mean entropy of
p (``posterior_entropy``, nats) and the mean σ_k (``mean_sigma``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_nonnegative
from ._codebook import (
    check_num_codes,
    code_counts,
    squared_distances,
    straight_through,
    uniform_unit_scaling,
    usage_stats,
)
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, Fixed, Setting
from .gaussian import standard_normal_noise

Variant = Literal["paper", "reference"]


def _check_variant(value, name: str) -> Variant:
    if value not in ("paper", "reference"):
        raise ValueError(f"{name} must be 'paper' or 'reference', got {value!r}")
    return value


def soft_assignment_logits(
    z: Tensor, log_sigma: Tensor, codebook: Tensor, *, variant: Variant = "paper"
) -> Tensor:
    """Unnormalised log p(μ_k | z) of the mixture: ``(N, d), (N, K), (K, d) -> (N, K)``.

    ``−‖z − μ_k‖² / (2σ_k²) + c_k`` with c_k = −d·log σ_k ("paper", eq. 5) or +log σ_k
    ("reference", the MNIST notebook). The uniform prior 1/K cancels in the softmax.
    """
    dist = squared_distances(z, codebook)
    # At the float extremes (docs/hostile-input-and-edge-cases.md, "Float extremes"):
    # log-scales beyond ±¼·log(max) (±22.2 in float32) are clamped there, so that 1/σ² stays
    # finite and 0·∞ cannot occur, and a logit that overflows to −∞ becomes the lowest finite
    # value, so that a row far from every codeword gets a uniform assignment instead of NaN.
    # Neither touches values inside those ranges.
    finfo = torch.finfo(dist.dtype)
    reach = 0.25 * math.log(finfo.max)
    log_sigma = log_sigma.clamp(-reach, reach)
    precision_half = 0.5 * torch.exp(-2.0 * log_sigma)
    normaliser = -z.shape[1] * log_sigma if variant == "paper" else log_sigma
    # (not in place: torch.func.linearize folds the primal's ops into constants that require
    # grad, and its jvp_fn refused an in-place op on one)
    return (normaliser - precision_half * dist).clamp(min=finfo.min)


@BOTTLENECKS.register("soft_vq")
class SoftVectorQuantizer(Bottleneck):
    """Soft VQ-VAE bottleneck (Wu & Flierl 2020).

    Args:
        dim: code dimension d; the input has ``in_dim = d + K`` channels on axis 1
            (z_e, then the K log-scales s_k = log σ_k).
        num_codes: codebook size K.
        commitment: β of loss (27) (2.5 in the reference MNIST notebook).
        variant: ``"paper"`` or ``"reference"`` (see the module docstring).
        noise_std: σ_ε of the latent noise on the training path; default 0.01 for
            ``variant="paper"`` and 0 (no noise) for ``variant="reference"``.

    The codebook ``(K, d)`` is a Parameter initialised U(±sqrt(3/d)), the reference code's
    ``uniform_unit_scaling``.
    """

    discrete = False
    input_layout = "d + K: z_e, then one log-scale per codeword"
    num_codes = Fixed()
    variant = Setting(_check_variant)
    commitment = Setting(check_nonnegative)
    noise_std = Setting(check_nonnegative)

    def __init__(
        self,
        *,
        dim: int,
        num_codes: int = 128,
        commitment: float = 2.5,
        variant: Variant = "paper",
        noise_std: float | None = None,
    ) -> None:
        num_codes = check_num_codes(num_codes)
        super().__init__(dim=dim, in_dim=dim + num_codes if isinstance(dim, int) else None)
        self.num_codes = num_codes
        self.variant = variant
        self.commitment = commitment
        if noise_std is None:  # each variant's own: the paper's σ_ε, the notebook's none
            noise_std = 0.01 if variant == "paper" else 0.0
        self.noise_std = noise_std
        self.codebook = nn.Parameter(uniform_unit_scaling(self.num_codes, dim))

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        z, log_sigma = y[:, : self.dim], y[:, self.dim :]
        noisy = z
        if self.training and self.noise_std > 0:
            eps = standard_normal_noise(
                z.shape, generator=generator, device=z.device, dtype=z.dtype
            )
            noisy = z + self.noise_std * eps
        log_p = torch.log_softmax(
            soft_assignment_logits(noisy, log_sigma, self.codebook, variant=self.variant), dim=1
        )
        p = log_p.exp()
        z_q = p @ self.codebook  # posterior mean, (N, d)

        with torch.no_grad():
            stats = usage_stats(code_counts(p.argmax(1), self.num_codes))
            stats.update(usage_stats(p.sum(0), prefix="soft_"))
            del stats["soft_codes_used"]
            stats["posterior_entropy"] = -(p * log_p).sum(1).mean()
            stats["mean_sigma"] = log_sigma.exp().mean()
        rate = y.new_zeros(y.shape[0])
        if not self.training:
            return BottleneckOutput(z_q, rate, y.new_zeros(()), None, stats)
        aux = F.mse_loss(z_q, noisy.detach()) + self.commitment * F.mse_loss(noisy, z_q.detach())
        return BottleneckOutput(straight_through(z, z_q), rate, aux, None, stats)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_codes={self.num_codes}, commitment={self.commitment}, "
            f"variant={self.variant!r}, noise_std={self.noise_std}"
        )
