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
from collections.abc import Sequence

from torch import Tensor, nn

from .._size import sized
from .._utils import check_count


class GatedDense(nn.Module):
    """``h(x) * sigmoid(g(x))`` with two independent affine maps.

    ``(..., in_features)`` → ``(..., out_features)`` (the last axis, as ``nn.Linear``). The gated
    linear unit of the VampPrior code (J. M. Tomczak, M. Welling, "VAE with a VampPrior",
    arXiv 1705.07120). Raises ValueError unless both widths are positive integers.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        check_width(in_features, "in_features")
        check_width(out_features, "out_features")
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.h(x) * self.g(x).sigmoid()


def check_width(value: int, name: str) -> None:
    """ValueError unless ``value`` is a positive integer (a boolean is not)."""
    check_count(value, name)


def check_widths(sizes: Sequence[int], name: str = "sizes") -> list[int]:
    """``sizes`` as a list; ValueError unless they are positive integers (booleans are not)."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ValueError(f"{name} must be a list of positive integers, got {sizes!r}")
    sizes = list(sizes)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"{name} must be positive integers, got {sizes!r}")
    return sizes


def he_init_(module: nn.Module) -> nn.Module:
    """He-normal init of every ``nn.Linear`` weight in ``module`` (in place).

    Each weight is drawn from N(0, 2/fan_in) (K. He et al., "Delving Deep into Rectifiers",
    arXiv 1502.01852) from torch's global generator; biases are left as they are. Returns
    ``module``.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=math.sqrt(2.0 / layer.in_features))
    return module


def gated_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """GatedDense layers between ``sizes[:-1]`` and a plain ``Linear`` into ``sizes[-1]``.

    ``gated_mlp([784, 300, 300, 40])`` is the paper's encoder: ``(B, 784)`` → ``(B, 40)``.
    Counted before it is allocated (ValueError past
    :data:`~qlatent._size.MAX_MODEL_NUMBERS`); ValueError also unless ``sizes`` lists at
    least two positive integers.
    """
    sizes = check_widths(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least two positive widths, got {sizes}")

    def make() -> nn.Sequential:
        layers: list[nn.Module] = [
            GatedDense(a, b) for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)
        ]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        return he_init_(nn.Sequential(*layers))

    return sized(make, "the gated MLP")
