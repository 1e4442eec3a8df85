"""Gaussian dithering between two linear maps (lattice paper, appendix A.2: the stand-in for a
"hypothetical good lattice" in the text experiment).

Paper: L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), appendix A.2.

    y ──A──> μ = A y ──(+ σ ⊙ ε, ε ~ N(0, I), σ learned, the same for every input)──> z ──B──> y_hat
    rate = KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_i (μ_i² + σ_i² − 1 − log σ_i²)

Unlike the VAE's posterior, σ does not depend on the input: the noise is a dither of fixed shape,
as a lattice's would be, and the rate is the KL of a Gaussian channel. On the hard path (eval)
there is no noise, ``y_hat = B μ``, with the same rate; there is no discrete code.

Shapes: input ``(B, N)`` or ``(B, N, *spatial)`` with the code dimension on axis 1; ``rate``
``(B,)`` nats. ``stats``: ``sigma`` (mean σ).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import BOTTLENECKS, Bottleneck, BottleneckOutput
from .gaussian import kl_to_standard_normal, standard_normal_noise


@BOTTLENECKS.register("gaussian_dither")
class GaussianDither(Bottleneck):
    """Linear map A, Gaussian noise of learned diagonal variance, linear map B.

    Args:
        dim: N, the code dimension (A and B are N × N, initialised to the identity).
        init_logvar: log σ² at initialisation (the same for every coordinate).

    ``y`` ``(B, dim[, *spatial])`` -> ``y_hat`` of the same shape; ``rate`` ``(B,)`` in nats per
    example; no discrete hard path (``quantize`` raises TypeError). Raises ValueError for an
    ``init_logvar`` that is not a number in [−30, 30], and bad input as
    :class:`~.base.Bottleneck`.
    """

    LOG_PARAMETERS = ("logvar",)

    discrete = False

    def __init__(self, *, dim: int, init_logvar: float = -2.0) -> None:
        super().__init__(dim=dim)
        if isinstance(init_logvar, bool) or not isinstance(init_logvar, int | float):
            raise ValueError(f"init_logvar must be a number, got {init_logvar!r}")
        if not -30.0 <= init_logvar <= 30.0:
            raise ValueError(f"init_logvar must lie in [-30, 30], got {init_logvar!r}")
        self.init_logvar = float(init_logvar)
        self.encode_map = nn.Linear(dim, dim)
        self.decode_map = nn.Linear(dim, dim)
        for layer in (self.encode_map, self.decode_map):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.logvar = nn.Parameter(torch.full((dim,), self.init_logvar))

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        mean = self.encode_map(y)
        logvar = self.logvar.clamp(-30.0, 30.0)  # exp stays finite in every float dtype
        rate = kl_to_standard_normal(mean, logvar.expand_as(mean)).sum(-1)
        z = mean
        if self.training:
            noise = standard_normal_noise(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            z = mean + torch.exp(0.5 * logvar) * noise
        stats = {"sigma": torch.exp(0.5 * logvar).mean().detach()}
        return BottleneckOutput(self.decode_map(z), rate, y.new_zeros(()), None, stats)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, init_logvar={self.init_logvar}"
