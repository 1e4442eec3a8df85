"""What the resume tests share: a run's history without its wall times, and whether two runs
ended on the same weights."""

from __future__ import annotations

import torch

from qlatent.train import load


def without_time(history: list[dict]) -> list[dict]:
    """A run's per-epoch records without ``wall_s``, the one field two equal runs differ in."""
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in history]


def same_last_weights(a, b) -> bool:
    """Whether the ``last.pt`` of run folders ``a`` and ``b`` hold the same tensors."""
    a, b = load(a / "last.pt")["model"], load(b / "last.pt")["model"]
    return all(torch.equal(tensor, b[name]) for name, tensor in a.items())
