"""Memory that grew with the layout of the same work, checked structurally (no timings).

* ``vector_st`` / ``scalar_st``: the nearest-code search formed the ``(R, G, M, k)`` differences
  of all rows at once, 2·M times the input's memory (3.9 GB for 10^5 rows of 256 coordinates
  with M = 16); it now works block by block of rows, each block's differences at most
  ``NEAREST_NUMBERS`` numbers, and picks the same codes as the one-shot search.
* ``binarize``: its draw was blocked by rows alone, so a block of 4096 large images held
  gigabytes of float64 draws (252 MiB for 64 images of 3×256×256, against 100 MiB for the same
  pixels as rows of 784); a block now also holds at most ``_VALUES_PER_BLOCK`` values, and the
  numbers are those of one draw of the whole shape.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import qlatent.bottlenecks.vector_st as vector_st
from qlatent.bottlenecks import build
from qlatent.data import datasets


class _LargestResult(TorchDispatchMode):
    """Records the largest storage (bytes) of any tensor an op returns: views and expanded
    tensors count by the memory behind them, not by their shape."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def _one_shot_nearest(module, y: torch.Tensor) -> torch.Tensor:
    """The nearest code per group over all rows at once (ties: the lowest code number)."""
    grouped = y.reshape(y.shape[0], module.dim // module.group, module.group)
    return (grouped.unsqueeze(2) - module.codes.detach()).square().sum(-1).argmin(-1)


def _perturbed(module, seed: int):
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        module.codes.add_(0.05 * torch.randn(module.codes.shape, generator=g))
    return module


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vector_st", dict(dim=8, group=2, codes=16)),
        ("scalar_st", dict(dim=8, levels=16)),
    ],
)
def test_nearest_code_search_forms_no_difference_tensor_past_its_bound(monkeypatch, name, kwargs):
    bound = 8192
    monkeypatch.setattr(vector_st, "NEAREST_NUMBERS", bound)
    module = _perturbed(build(name, **kwargs), 0).eval()
    y = torch.randn(2000, 8, generator=torch.Generator().manual_seed(1))
    # all rows at once: 2000 · 8 · 16 = 256,000 differences, 16 times the input
    with torch.no_grad(), _LargestResult() as seen:
        out = module(y)
    # int64 code numbers of every coordinate (scalar_st) are the largest other result
    assert seen.largest <= max(8 * y.numel(), 4 * bound)
    assert torch.equal(out.indices, _one_shot_nearest(module, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_nearest_code_search_picks_the_one_shot_codes(monkeypatch, dtype):
    """Across block boundaries, with ties (inputs on a half grid, codes on a grid), in both
    dtypes and for 0 and 1 rows: the same code numbers and the same y_hat."""
    module = build("vector_st", dim=6, group=2, codes=9, init_range=1.0).to(dtype).eval()
    g = torch.Generator().manual_seed(2)
    rows = [torch.randn(n, 6, generator=g, dtype=dtype) for n in (0, 1, 301)]
    rows.append(torch.round(2 * torch.randn(301, 6, generator=g, dtype=dtype)) / 2)
    for y in rows:
        expected = _one_shot_nearest(module, y)
        whole = module(y).y_hat
        monkeypatch.setattr(vector_st, "NEAREST_NUMBERS", 6 * 9 * 7)  # blocks of 7 rows
        assert torch.equal(module(y).indices, expected)
        assert torch.equal(module(y).y_hat, whole)
        monkeypatch.undo()


def test_binarize_of_wide_images_draws_block_by_block_of_values(monkeypatch):
    block = 1 << 14
    monkeypatch.setattr(datasets, "_VALUES_PER_BLOCK", block)
    images = np.random.default_rng(0).integers(0, 256, (3, 2, 256, 256), dtype=np.uint8)
    flat = images.reshape(3, -1)
    # the numbers of one draw of the whole shape (what the docstring promises)
    expected = np.random.default_rng(5).random(flat.shape) < flat / 255.0
    tracemalloc.start()
    try:
        out = datasets.binarize(images, 5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert torch.equal(out, torch.from_numpy(expected.astype(np.float32)))
    # the float32 result plus a block's float64 draws, its float64 greys and its comparison;
    # three rows at once held 2 × 3 MiB of float64 beside the 1.5 MiB result
    assert peak <= out.numel() * 4 + block * (8 + 8 + 1) + (1 << 16)
