"""Train/eval modes of a caller's module, switched for one call and put back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def in_eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``module`` in eval mode inside the block; each one's own mode put back
    afterwards, also on error. Put back as the top module's (``module.train(was_training)``),
    a submodule the caller kept in another mode (a frozen encoder in eval mode inside a model
    in training) was switched to the top's; left in eval mode, a model coded between training
    epochs went on training on its hard path (real quantization, no dither)."""
    modes = [(part, part.training) for part in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for part, training in modes:
            part.training = training
