"""Global PyTorch state set by the caller: thread count, default dtype, the global RNG.

A file must not depend on any of it: the same model, input and seed give the same bytes, and a
file written under one setting decodes under another. Every test restores what it changes.
"""

from __future__ import annotations

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.rng import SeedKeys

_MC = dict(samples=8, prior_samples=4, eval_samples=16, eval_prior_samples=4)


@pytest.fixture
def threads():
    """Set torch's intra-op thread count inside a test; the count before is restored after."""
    before = torch.get_num_threads()
    try:
        yield torch.set_num_threads
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def default_dtype():
    """Set torch's default dtype inside a test; the one before is restored after."""
    before = torch.get_default_dtype()
    try:
        yield torch.set_default_dtype
    finally:
        torch.set_default_dtype(before)


def _leech():
    return build("lattice", dim=24, lattice="leech", **_MC).eval()


def test_leech_files_do_not_depend_on_the_thread_count(threads):
    """The hard dither's basis product ran as a float32 matrix product, whose rounding follows
    the BLAS kernel's summation order: with 2 or more threads Λ24's dither, its y_hat and its
    file differed from 1 thread's, and a file written with 4 threads failed to decode with 1
    ("corrupt payload")."""
    bn = _leech()
    y = 1.5 * torch.randn(7, 24, generator=torch.Generator().manual_seed(0))
    files, y_hats = {}, {}
    for count in (1, 2, 4):
        threads(count)
        files[count] = bn.compress(y, seed=3)
        y_hats[count] = bn(y, generator=SeedKeys(3)).y_hat
    assert files[2] == files[1] and files[4] == files[1]
    assert torch.equal(y_hats[2], y_hats[1]) and torch.equal(y_hats[4], y_hats[1])
    threads(1)
    assert torch.equal(bn.decompress(files[4]), y_hats[1])


@pytest.mark.parametrize("lattice, dim", [("lattice", 8), ("e8", 8)])
def test_files_do_not_depend_on_the_default_dtype_or_the_global_rng(default_dtype, lattice, dim):
    """A float32 model codes the same bytes when the caller's default dtype is float64 and
    decodes them after the global RNG has moved on: nothing drawn from torch's generator or
    made in the default dtype reaches a file."""
    kwargs = dict(dim=dim) if lattice == "lattice" else dict(dim=dim, lattice=lattice, **_MC)
    bn = build("lattice", **kwargs).eval()
    y = 2.0 * torch.randn(5, dim, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    reference = bn.compress(y, seed=9)
    default_dtype(torch.float64)
    torch.manual_seed(123)
    assert bn.compress(y, seed=9) == reference
    torch.manual_seed(456)
    y_hat = bn.decompress(reference)
    assert y_hat.dtype == torch.float32
    default_dtype(torch.float32)
    assert torch.equal(y_hat, bn(y, generator=SeedKeys(9)).y_hat)
