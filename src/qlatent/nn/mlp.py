"""Plain ReLU multilayer perceptrons (the Soft VQ-VAE paper's MNIST encoder and decoder)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .._size import sized
from .gated import check_widths


def relu_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear → ReLU → … → Linear`` through ``sizes`` (no activation after the last layer).

    Weights are Glorot-uniform and biases zero, Keras' defaults, which the Soft VQ-VAE paper
    names. ``relu_mlp([784, 500, 500, 2000, 64])`` is that paper's MNIST encoder. Counted
    before it is allocated (ValueError past :data:`~qlatent._size.MAX_MODEL_NUMBERS`).
    """
    sizes = check_widths(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must be at least two positive integers, got {sizes!r}")

    def make() -> nn.Sequential:
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            linear = nn.Linear(fan_in, fan_out)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    return sized(make, "the ReLU MLP")
