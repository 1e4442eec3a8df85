"""Optimizers: torch's Adam and the VampPrior code's gradient-normalising variant."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn


class AdamNormGrad(torch.optim.Adam):
    """Adam on per-tensor normalised gradients, ``g / (‖g‖₂ + 1e-7)``.

    This is what "Adam" means in the VampPrior code (``utils/optimizer.py``; J. M. Tomczak and
    M. Welling, "VAE with a VampPrior", arXiv 1705.07120) that the lattice paper adapted; it is
    not ``torch.optim.Adam``. Takes ``torch.optim.Adam``'s arguments; ``step`` divides every
    ``p.grad`` in place before the Adam update.
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
    ``adam_normgrad``: :class:`AdamNormGrad`. ``params``: tensors (``model.parameters()``),
    those that require grad are optimized; ``lr``: in (0, 1], as a training config's.

    ValueError for an unknown ``name``, an ``lr`` outside (0, 1], a tensor listed twice or no
    tensor that requires grad; TypeError for ``params`` that is not an iterable of tensors."""
    if name not in ("adam", "adam_fused", "adam_normgrad"):
        raise ValueError(f"optimizer must be 'adam', 'adam_fused' or 'adam_normgrad', got {name!r}")
    # a single tensor is iterable too: its rows were taken as parameters ("can't optimize a
    # non-leaf Tensor"); an infinite or huge lr turned every weight into inf or NaN at the
    # first step, and True counted as 1
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise TypeError(f"params must be an iterable of tensors, got {type(params).__name__}")
    params = list(params)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params must hold tensors only, got a {type(p).__name__}")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("params holds a tensor more than once (it would be stepped twice)")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 1:
        raise ValueError(f"lr must be a finite number in (0, 1], got {lr!r}")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("params holds no tensor that requires grad: nothing to optimize")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adam_fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return AdamNormGrad(params, lr=lr)
