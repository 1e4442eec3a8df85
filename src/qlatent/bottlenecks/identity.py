"""Identity bottleneck: ``y_hat = y`` at zero rate. The plain autoencoder's "no bottleneck"."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BOTTLENECKS, Bottleneck, BottleneckOutput


@BOTTLENECKS.register("identity")
class Identity(Bottleneck):
    """Passes ``y`` through unchanged; ``rate`` is zero, there are no discrete symbols.

    ``y``: ``(B, dim)`` or ``(B, dim, *spatial)`` -> ``y_hat``: the same tensor values and shape,
    ``rate``: ``(B,)`` zeros (nats per example), ``aux_loss``: ``zeros(())``, ``indices``: None,
    in both modes. Bad input raises ValueError through :class:`Bottleneck`'s checks.
    """

    discrete = False

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        return BottleneckOutput(
            y_hat=y, rate=y.new_zeros(y.shape[0]), aux_loss=y.new_zeros(()), indices=None
        )
