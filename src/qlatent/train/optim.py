"""Optimizers: torch's Adam and the VampPrior code's gradient-normalising variant."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn


class AdamNormGrad(torch.optim.Adam):
    """Adam on per-tensor normalised gradients, ``g / (‖g‖₂ + 1e-7)``.

    This is what "Adam" means in the VampPrior code (``utils/optimizer.py``) that the lattice paper
    adapted; it is not ``torch.optim.Adam``.
    """

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(p.grad.norm() + 1e-7)
        return super().step(closure)


def make_optimizer(
    params: Iterable[nn.Parameter],
    *,
    name: Literal["adam", "adam_fused", "adam_normgrad"],
    lr: float,
) -> torch.optim.Optimizer:
    """``adam``: torch's Adam with its default (per-tensor loop on the CPU); ``adam_fused``: the
    same update in torch's fused kernel (faster on the CPU, equal up to float rounding);
    ``adam_normgrad``: :class:`AdamNormGrad`."""
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adam_fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if name == "adam_normgrad":
        return AdamNormGrad(params, lr=lr)
    raise ValueError(f"optimizer must be 'adam', 'adam_fused' or 'adam_normgrad', got {name!r}")
