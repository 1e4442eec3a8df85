"""``Lattice.sample_dither(shape, generator)`` as DESIGN.md §2 names it: a shape ``(*batch)``
gives ``(*batch, m)`` samples, the numbers of ``n = Π batch`` rows, and the generator may be
passed by position."""

from __future__ import annotations

import pytest
import torch

from qlatent.lattices import integer_lattice, tile


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("lattice", [integer_lattice(3), tile("a2", 4), tile("e8", 8)])
@pytest.mark.parametrize("shape", [(2, 3), [4], torch.Size([2, 1, 3]), (0, 5), ()])
def test_a_shape_gives_the_rows_of_its_product_reshaped(lattice, shape):
    rows = 1
    for k in shape:
        rows *= k
    u = lattice.sample_dither(shape, gen(3), dtype=torch.float64)
    assert u.shape == (*shape, lattice.dim) and u.dtype == torch.float64
    flat = lattice.sample_dither(rows, generator=gen(3), dtype=torch.float64)
    assert torch.equal(u.reshape(rows, lattice.dim), flat)
    if rows:  # inside the cell: its own closest point is the origin
        assert torch.equal(lattice.closest_point(flat), torch.zeros_like(flat))


def test_an_integer_keeps_its_rows_and_the_generator_may_come_by_position():
    lattice = tile("d4", 8)
    by_position = lattice.sample_dither(5, gen(1))
    by_name = lattice.sample_dither(n=5, generator=gen(1))
    assert by_position.shape == (5, 8) and torch.equal(by_position, by_name)


@pytest.mark.parametrize("shape", [(2, -1), (2, 1.5), (True, 2), ("3",), (2**20, 2**20)], ids=str)
def test_a_bad_shape_is_refused_by_name(shape):
    with pytest.raises(ValueError, match=r"^n must be an integer"):
        tile("e8", 8).sample_dither(shape, gen(0))
    with pytest.raises(ValueError, match=r"^n must be an integer"):
        integer_lattice(2).sample_dither(shape, gen(0))
