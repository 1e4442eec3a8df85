"""Lattice geometry: ``qlatent.lattices`` (RectangularLattice, Z^m and the generic base class).

Checked: closest point equals a brute-force search over a neighbourhood of candidate lattice
points (random non-uniform spacings, float64); coordinates/points round trip and agree with the
base class's generic solve; the dither (closed-form sampler and the base class's generic
parallelepiped-reduction sampler) lies in the cell [-Δ/2, Δ/2] with mean 0 and variance Δ²/12
within Monte-Carlo error; volume = Π Δ (= |det B|); second moment = mean(Δ²)/12 and equals the
base class's Monte-Carlo estimate; G(Z^m) = 1/12; KL to the Gaussian = ½ log(2πe/12) for Z;
invalid spacings are rejected.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from qlatent.lattices import LATTICES, Lattice, RectangularLattice, integer_lattice

F64 = torch.float64


def _random_spacing(m: int, seed: int) -> torch.Tensor:
    """Log-uniform spacings in [0.1, 5]: strongly non-uniform."""
    g = torch.Generator().manual_seed(seed)
    return torch.empty(m, dtype=F64).uniform_(math.log(0.1), math.log(5.0), generator=g).exp()


def _brute_force_closest(lat: RectangularLattice, x: torch.Tensor, reach: int = 2) -> torch.Tensor:
    """Nearest point among all k·Δ with k in floor(x/Δ) + {-reach..reach}^m (Euclidean)."""
    m = lat.dim
    offsets = torch.tensor(list(itertools.product(range(-reach, reach + 1), repeat=m)), dtype=F64)
    base = torch.floor(x / lat.spacing)  # (N, m)
    cands = (base.unsqueeze(1) + offsets.unsqueeze(0)) * lat.spacing  # (N, C, m)
    dist = (cands - x.unsqueeze(1)).pow(2).sum(-1)
    best = dist.argmin(dim=1)
    return cands[torch.arange(x.shape[0]), best]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closest_point_matches_brute_force(seed):
    m = 3
    lat = RectangularLattice(_random_spacing(m, seed))
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(2000, m, generator=g, dtype=F64) * 10.0
    got = lat.closest_point(x)
    torch.testing.assert_close(got, _brute_force_closest(lat, x), rtol=0, atol=1e-12)
    # And no point is farther than half a spacing in any coordinate.
    assert ((got - x).abs() <= lat.spacing / 2 * (1 + 1e-12)).all()


def test_coordinates_points_round_trip():
    m = 5
    lat = RectangularLattice(_random_spacing(m, 3))
    g = torch.Generator().manual_seed(4)
    k = torch.randint(-1000, 1000, (500, m), generator=g)
    pts = lat.points(k)
    torch.testing.assert_close(pts, k.to(F64) * lat.spacing, rtol=0, atol=0)
    assert lat.coordinates(pts).dtype == torch.int64
    assert torch.equal(lat.coordinates(pts), k)
    # The base class's generic versions (solve with the generator matrix B = diag Δ) agree.
    assert torch.equal(Lattice.coordinates(lat, pts), k)
    torch.testing.assert_close(Lattice.points(lat, k), pts, rtol=1e-15, atol=1e-12)
    # closest_point output is a lattice point: coordinates -> points reproduces it exactly.
    x = torch.randn(500, m, generator=g, dtype=F64) * 20
    z = lat.closest_point(x)
    assert torch.equal(lat.points(lat.coordinates(z)), z)


def _check_uniform_over_cell(u: torch.Tensor, spacing: torch.Tensor) -> None:
    """Bounds, per-dim mean (SE Δ/√(12n)) and E[u²] (SE Δ²/√(180n)) at 5 sigma.

    A dither on [0, Δ) (mean Δ/2) or on [-Δ, Δ] (variance Δ²/3) fails by hundreds of sigma.
    """
    n = u.shape[0]
    half = spacing / 2
    assert (u >= -half).all() and (u <= half).all()
    mean = u.mean(0)
    assert (mean.abs() <= 5 * spacing / math.sqrt(12 * n)).all(), mean / spacing
    second = u.pow(2).mean(0)
    assert ((second - spacing**2 / 12).abs() <= 5 * spacing**2 / math.sqrt(180 * n)).all()


def test_sample_dither_uniform_over_cell():
    spacing = _random_spacing(4, 5)
    lat = RectangularLattice(spacing)
    u = lat.sample_dither(200_000, generator=torch.Generator().manual_seed(6), dtype=F64)
    assert u.shape == (200_000, 4) and u.dtype == F64
    _check_uniform_over_cell(u, spacing)


def test_generic_base_sample_dither_uniform_over_same_cell():
    """The base class reduces a point of B[0,1)^m modulo the lattice; same cell, same moments."""
    spacing = _random_spacing(4, 5)
    lat = RectangularLattice(spacing)
    u = Lattice.sample_dither(lat, 200_000, generator=torch.Generator().manual_seed(7), dtype=F64)
    assert u.shape == (200_000, 4)
    _check_uniform_over_cell(u, spacing)


def test_sample_dither_is_reproducible_from_seed():
    lat = RectangularLattice(_random_spacing(3, 8))
    a = lat.sample_dither(10, generator=torch.Generator().manual_seed(9))
    b = lat.sample_dither(10, generator=torch.Generator().manual_seed(9))
    c = lat.sample_dither(10, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_volume_is_product_of_spacings():
    spacing = _random_spacing(6, 11)
    lat = RectangularLattice(spacing)
    expected = torch.prod(spacing)
    torch.testing.assert_close(lat.volume, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(lat.log_volume, spacing.log().sum(), rtol=1e-13, atol=1e-14)
    # The base class's |det B| agrees.
    torch.testing.assert_close(Lattice.log_volume.fget(lat), lat.log_volume, rtol=1e-12, atol=1e-13)


def test_second_moment_closed_form_and_monte_carlo():
    spacing = _random_spacing(5, 12)
    lat = RectangularLattice(spacing)
    closed = lat.second_moment()
    torch.testing.assert_close(closed, spacing.pow(2).mean() / 12, rtol=1e-14, atol=0)
    n = 200_000
    mc = Lattice.second_moment(lat, samples=n, seed=13)
    # (1/m)Σu_i² has variance (1/m²)Σ Var(u_i²) = (1/m²)Σ Δ_i⁴/180; 5 sigma.
    se = math.sqrt((spacing.pow(4).sum() / 180).item() / n) / lat.dim
    assert abs(mc.item() - closed.item()) <= 5 * se


@pytest.mark.parametrize("m", [1, 2, 7])
def test_integer_lattice_constants(m):
    lat = integer_lattice(m)
    assert lat.dim == m
    assert torch.equal(lat.generator_matrix, torch.eye(m, dtype=F64))
    assert lat.volume.item() == pytest.approx(1.0, abs=1e-15)
    assert lat.nsm().item() == pytest.approx(1 / 12, rel=1e-14)
    assert lat.kl_to_gaussian().item() == pytest.approx(
        0.5 * math.log(2 * math.pi * math.e / 12), rel=1e-14
    )
    assert LATTICES.build("Z", dim=m).nsm().item() == pytest.approx(1 / 12, rel=1e-14)


def test_nsm_is_scale_invariant_and_minimal_for_cubic_cell():
    """G(cΔ) = G(Δ); a non-cubic box has G = mean(Δ²)/(12·(ΠΔ)^{2/m}) > 1/12 (AM-GM)."""
    cube = RectangularLattice(torch.full((4,), 3.7, dtype=F64))
    assert cube.nsm().item() == pytest.approx(1 / 12, rel=1e-13)
    spacing = _random_spacing(4, 14)
    box, scaled = RectangularLattice(spacing), RectangularLattice(2.9 * spacing)
    expected = spacing.pow(2).mean() / 12 / spacing.prod() ** (2 / 4)
    assert box.nsm().item() == pytest.approx(expected.item(), rel=1e-13)
    assert scaled.nsm().item() == pytest.approx(box.nsm().item(), rel=1e-13)
    assert box.nsm().item() > 1 / 12


@pytest.mark.parametrize(
    "spacing",
    [
        torch.tensor([1.0, 0.0]),
        torch.tensor([1.0, -0.5]),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([1.0, float("inf")]),
        torch.ones(2, 2),
        torch.ones(()),
        torch.ones(0),
    ],
    ids=["zero", "negative", "nan", "inf", "2d", "0d", "empty"],
)
def test_invalid_spacing_raises(spacing):
    with pytest.raises(ValueError):
        RectangularLattice(spacing)
