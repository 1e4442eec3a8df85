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


def check_generator(generator: torch.Generator | None) -> None:
    """Common randomness must come from a CPU generator so every machine regenerates it."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"dither must be drawn from a CPU torch.Generator, got one on {generator.device}"
        )
