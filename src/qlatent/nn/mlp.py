"""Plain ReLU multilayer perceptrons (the Soft VQ-VAE paper's MNIST encoder and decoder)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def relu_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear → ReLU → … → Linear`` through ``sizes`` (no activation after the last layer).

    Weights are Glorot-uniform and biases zero, Keras' defaults, which the Soft VQ-VAE paper
    names. ``relu_mlp([784, 500, 500, 2000, 64])`` is that paper's MNIST encoder.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be at least two positive integers, got {sizes!r}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])
