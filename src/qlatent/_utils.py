"""Small helpers shared across the package."""

from __future__ import annotations

import torch
from torch import Tensor


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if x.numel() == 0:
        return
    # one reduction pass without a full-size temporary (20x cheaper than isfinite(x).all());
    # min/max propagate NaN, and an Inf is its own min or max
    low, high = torch.aminmax(x)
    if not (torch.isfinite(low) & torch.isfinite(high)):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def check_generator(generator) -> None:
    """Common randomness must come from a CPU generator so every machine regenerates it
    (a ``torch.Generator`` or a :class:`qlatent.rng.SeedKeys`)."""
    from .rng import SeedKeys

    if generator is None or isinstance(generator, SeedKeys):
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or a qlatent.rng.SeedKeys, got "
            f"{type(generator).__name__}"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"dither must be drawn from a CPU torch.Generator, got one on {generator.device}"
        )
