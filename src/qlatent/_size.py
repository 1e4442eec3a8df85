"""A model's size, checked before anything is allocated.

Sizes come from configs, checkpoints and the command line, none of them trusted: a mistyped or
hostile width must end in one clear error, not in an allocation failure, a swapping machine or
minutes of initialising a layer nobody can train. :func:`sized` builds the module first on the
meta device (shapes without memory), counts its numbers and only then builds it for real.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

#: the most numbers (parameters and buffers) a model built here may hold: 2^30, 4 GiB of
#: float32, and training keeps about four times that (gradients, Adam's two moments). The
#: models of the paper tables hold about a million.
MAX_MODEL_NUMBERS = 1 << 30

M = TypeVar("M", bound=nn.Module)


def numbers(module: nn.Module) -> int:
    """The numbers a module holds: its parameters' and buffers' elements."""
    return sum(t.numel() for t in (*module.parameters(), *module.buffers()))


def check_numbers(module: nn.Module, what: str = "the model") -> None:
    """Raise ValueError if ``module`` holds more than :data:`MAX_MODEL_NUMBERS` numbers."""
    count = numbers(module)
    if count > MAX_MODEL_NUMBERS:
        raise ValueError(
            f"{what} would hold {count:,} numbers, more than the {MAX_MODEL_NUMBERS:,} a model "
            "may have here: check its sizes (widths, latent dimension, codebook, image size)"
        )


def check_size(make: Callable[[], nn.Module], what: str = "the model") -> None:
    """Build ``make()`` on the meta device only (shapes without memory) and raise ValueError if
    it would hold more than :data:`MAX_MODEL_NUMBERS` numbers: a config's sizes checked before
    its data is read. A bad argument raises as ``make`` raises it; a constructor that computes
    with values the meta device does not hold is not counted here (:func:`sized` builds it)."""
    try:
        with torch.device("meta"):
            probe = make()
    except (NotImplementedError, RuntimeError):
        return
    check_numbers(probe, what)


def sized(make: Callable[[], M], what: str = "the model") -> M:
    """``make()``, built only once the module it returns is known to hold at most
    :data:`MAX_MODEL_NUMBERS` numbers: it is built first on the meta device and counted there
    (ValueError past the limit; a bad argument raises as ``make`` raises it). A constructor
    that computes with values the meta device does not hold (a bottleneck registered outside
    this library, say) is built directly. Building on the meta device draws no random
    numbers, so the module returned is the one ``make()`` alone would give."""
    check_size(make, what)
    return make()
