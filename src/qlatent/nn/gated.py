"""Gated MLPs in the style of the VampPrior code (Tomczak & Welling, 2018).

GatedDense(x) = Linear_h(x) * sigmoid(Linear_g(x)): the only nonlinearity is the gate. The lattice
paper's MNIST networks (section 4):

    encoder  784 ─GatedDense→ 300 ─GatedDense→ 300 ─Linear→ m
    decoder    m ─GatedDense→ 300 ─GatedDense→ 300 ─Linear→ 784   (Bernoulli logits)

Every ``nn.Linear`` weight, both halves of each gate included, is He-initialised
(N(0, 2/fan_in)) as in the reference code; biases keep PyTorch's default.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class GatedDense(nn.Module):
    """``h(x) * sigmoid(g(x))`` with two independent affine maps."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.h(x) * self.g(x).sigmoid()


def he_init_(module: nn.Module) -> nn.Module:
    """He-normal init of every ``nn.Linear`` weight in ``module`` (in place)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=math.sqrt(2.0 / layer.in_features))
    return module


def gated_mlp(sizes: list[int]) -> nn.Sequential:
    """GatedDense layers between ``sizes[:-1]`` and a plain ``Linear`` into ``sizes[-1]``.

    ``gated_mlp([784, 300, 300, 40])`` is the paper's encoder.
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
    layers: list[nn.Module] = [
        GatedDense(a, b) for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)
    ]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return he_init_(nn.Sequential(*layers))
