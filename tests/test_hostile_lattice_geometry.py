"""Lattice geometry checked against independent recomputation: integer coordinates and points of
mixed, nested and single-block direct sums against their block-diagonal generator matrix, the
dither against the Voronoi cell and the cell constants, and the good-lattice hard path's
closest points of the scaled lattice against the sphere decoder on its generator matrix."""

from __future__ import annotations

import math

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.lattices import DirectSum, lattice_by_name
from qlatent.lattices.search import GeneralLattice
from qlatent.rng import SeedKeys


def _sums() -> dict[str, DirectSum]:
    a2, e8, z, d3s, d4 = (lattice_by_name(n) for n in ("a2", "e8", "z", "d3*", "d4"))
    return {
        "mixed": DirectSum([a2, e8, z, d3s, a2]),
        "single": DirectSum([e8]),
        "nested": DirectSum([DirectSum([a2, d4]), lattice_by_name("a3"), DirectSum([z])]),
    }


@pytest.mark.parametrize("name", ["mixed", "single", "nested"])
def test_direct_sum_coordinates_points_and_volume_follow_the_generator_matrix(name):
    lattice = _sums()[name]
    k = torch.randint(-50, 50, (200, lattice.dim), generator=torch.Generator().manual_seed(0))
    basis = lattice.generator_matrix.double()
    points = lattice.points(k)
    assert torch.allclose(points.double(), k.double() @ basis.T, atol=1e-12)
    assert torch.equal(lattice.coordinates(points), k)
    assert float(lattice.log_volume) == pytest.approx(float(torch.linalg.slogdet(basis)[1]))


@pytest.mark.parametrize(
    ("name", "nsm"),
    [("a2", 5 / (36 * math.sqrt(3))), ("d4", 13 / (120 * math.sqrt(2))), ("e8", 929 / 12960)],
)
def test_dither_lies_in_the_voronoi_cell_with_the_cells_second_moment(name, nsm):
    """Every dither's closest point is the origin, its mean is 0 and E‖u‖²/n = G·V^(2/n)."""
    lattice = lattice_by_name(name)
    n = lattice.dim
    u = lattice.sample_dither(8000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert bool((lattice.closest_point(u) == 0).all())
    sigma2 = nsm * math.exp(2 * float(lattice.log_volume) / n)
    assert u.mean(0).abs().max() < 5 * math.sqrt(sigma2 * n / 8000)
    assert float(u.square().sum(-1).mean() / n) == pytest.approx(sigma2, rel=0.03)


def test_good_lattice_hard_path_finds_the_scaled_lattices_closest_points():
    """z = K(y + u) of s_b·Λ_b block by block against the sphere decoder on diag(σ)·B."""
    neck = build("lattice", dim=13, lattice=["a2", "d3*", "e8"]).eval().double()
    with torch.no_grad():
        neck.log_spacing.copy_(torch.tensor([0.5, -0.7, 0.2], dtype=torch.float64))
    y = 3 * torch.randn(40, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        u = neck._hard_dither(40, SeedKeys(3), "cpu", torch.float64)
        sigma = neck._coordinate_scale()
        z = neck.geometry.points(neck._coordinates(y, u)) * sigma
        reference = GeneralLattice(neck.geometry.generator_matrix.double() * sigma.unsqueeze(1))
        assert torch.allclose(z, reference.closest_point(y + u), atol=1e-12)


@pytest.mark.parametrize("lattice", [["a2", "d4", "z", "e8"], "d3*"])
def test_spatial_layouts_quantize_alike(lattice):
    """Channels-last and transposed (B, D, H, W) inputs give the contiguous input's indices,
    rate and y_hat, and quantize / dequantize with the same seed give the hard path's."""
    dim = 15 if isinstance(lattice, list) else 6
    neck = build("lattice", dim=dim, lattice=lattice, eval_samples=64).eval()
    y = 2 * torch.randn(2, dim, 3, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = neck(y, generator=SeedKeys(7))
        for view in (
            y.contiguous(memory_format=torch.channels_last),
            y.transpose(2, 3).contiguous().transpose(2, 3),
        ):
            other = neck(view, generator=SeedKeys(7))
            assert torch.equal(other.indices, out.indices)
            assert torch.equal(other.y_hat, out.y_hat)
            assert torch.equal(other.rate, out.rate)
        k = neck.quantize(y, generator=SeedKeys(7))
        assert torch.equal(k, out.indices)
        assert torch.equal(neck.dequantize(k, generator=SeedKeys(7)), out.y_hat)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["d4*", "e8", "bw16", "leech"])
def test_half_precision_rows_get_their_closest_points(name, dtype):
    """The coset decoders summed their squared errors in the input's half precision and chose
    another coset than the nearest: of 4,000 rows in bfloat16, 28 E8, 42 Λ16 and 97 Λ24 points
    were not the closest (and as many dither draws reduced into another cell). Half rows are
    now decoded in float32: each point is as near as the float64 decoder's."""
    lattice = lattice_by_name(name)
    x = (3 * torch.randn(4000, lattice.dim, generator=torch.Generator().manual_seed(5))).to(dtype)
    point = lattice.closest_point(x)
    assert point.dtype == dtype
    exact = x.double()
    reference = lattice.closest_point(exact)
    nearest = (exact - reference).square().sum(-1)
    for found in (point, lattice.dither_point(x)):  # two decoders may break a tie apart
        assert torch.equal((exact - found.double()).square().sum(-1), nearest)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_a_general_lattices_coordinates_take_points_of_any_dtype(dtype):
    """``GeneralLattice.coordinates`` of float32 or integer points was a RuntimeError of
    ``linalg.solve`` (its basis is float64); they are solved in float64."""
    lattice = GeneralLattice(torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64))
    k = torch.randint(-20, 20, (50, 2), generator=torch.Generator().manual_seed(6))
    assert torch.equal(lattice.coordinates(lattice.points(k).to(dtype)), k)
