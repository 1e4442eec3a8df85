"""The public API does what its docstrings say: shapes, dtypes, units, raised errors and stated
guarantees, each checked by running the code on small synthetic inputs against an independent
computation (brute force, a closed form, another path of the library).

Found wrong and fixed: ``pack`` failed with ``struct.error`` (not the ValueError it documents)
for a code model, seed or symbol range the header cannot hold, and wrote files with an
unregistered code model that ``unpack`` then refused as corrupt; ``codelength_report`` (through
``evaluate_objective``) left a bottleneck kept in eval mode inside a training model in training
mode; the Gaussian VAE said it computed half-precision inputs in their own dtype (float32).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import Laplace, Normal

from qlatent.bottlenecks import build
from qlatent.bottlenecks._codebook import uniform_unit_scaling
from qlatent.coding import Header, compress, decompress, ideal_bits, pack, unpack
from qlatent.eval import cluster_accuracy, codelength_report, iwae_nll
from qlatent.image_coding import compress_images, decompress_images, images_in
from qlatent.lattices import (
    BarnesWallLattice,
    CheckerboardLattice,
    DualCheckerboardLattice,
    GossetLattice,
    LeechLattice,
    RectangularLattice,
    RootLatticeA,
    integer_lattice,
    tile,
)
from qlatent.losses import RateDistortionLoss
from qlatent.models import gated_vae
from qlatent.priors import (
    cell_constants,
    cell_log_prob_from_constants,
    gaussian_cell_log_prob,
    laplace_cell_log_prob,
    laplace_cell_nll,
)
from qlatent.rng import SeedKeys, counter_uniform, draw_key, lowbias32

HALF = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------ lattices
def _lattices():
    return [
        integer_lattice(3),
        RectangularLattice(torch.tensor([0.5, 2.0], dtype=torch.float64)),
        RootLatticeA(2),
        RootLatticeA(3),
        CheckerboardLattice(4),
        DualCheckerboardLattice(3),
        GossetLattice(),
        BarnesWallLattice(),
        LeechLattice(),
        tile(["a2", "d4"], 6),
    ]


LATTICES = _lattices()


@pytest.mark.parametrize("lattice", LATTICES, ids=lambda lat: lat.name)
def test_closest_point_keeps_shape_and_dtype_and_coordinates_round_trip(lattice):
    """``closest_point``: points in ``x``'s shape and dtype (halves too); ``coordinates``:
    int64 ``(..., m)`` with ``points(k)`` the same points."""
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 3, lattice.dim, generator=gen, dtype=torch.float64)
    for dtype in (*HALF, torch.float32, torch.float64):
        p = lattice.closest_point(x.to(dtype))
        assert p.shape == x.shape and p.dtype == dtype
    p = lattice.closest_point(x)
    k = lattice.coordinates(p)
    assert k.dtype == torch.int64 and k.shape == x.shape
    assert torch.allclose(lattice.points(k).double(), p, atol=1e-9)


@pytest.mark.parametrize("lattice", LATTICES, ids=lambda lat: lat.name)
def test_dither_is_in_the_voronoi_cell(lattice):
    """``sample_dither(n)``: ``(n, m)`` of the asked dtype, inside the Voronoi cell (its closest
    point is the origin) and within :attr:`cell_bound`; n = 0 gives ``(0, m)``."""
    u = lattice.sample_dither(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert u.shape == (500, lattice.dim) and u.dtype == torch.float64
    assert bool((lattice.closest_point(u) == 0).all())
    if lattice.cell_bound is not None:
        assert float(u.norm(dim=-1).max()) <= lattice.cell_bound + 1e-9
    assert lattice.sample_dither(0).shape == (0, lattice.dim)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError):
            lattice.sample_dither(bad)


@pytest.mark.parametrize(
    ("lattice", "g"),
    [
        (RootLatticeA(2), 5 / (36 * math.sqrt(3))),  # the hexagonal lattice
        (CheckerboardLattice(4), 13 / (120 * math.sqrt(2))),
        (integer_lattice(2), 1 / 12),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_second_moment_and_nsm_are_the_known_constants(lattice, g):
    """``second_moment``: a 0-d tensor in squared length per dimension; ``nsm`` its G;
    ``kl_to_gaussian`` ½·log(2πe·G) nats per dimension; ``volume`` a 0-d |det B|."""
    sm = lattice.second_moment(samples=40_000)
    assert sm.dim() == 0
    assert lattice.volume.dim() == 0
    det = abs(float(torch.linalg.det(lattice.generator_matrix.double())))
    assert float(lattice.volume) == pytest.approx(det, rel=1e-12)
    assert float(lattice.nsm(samples=40_000)) == pytest.approx(g, rel=0.02)
    kl = float(lattice.kl_to_gaussian(samples=40_000))
    assert kl == pytest.approx(0.5 * math.log(2 * math.pi * math.e * g), abs=0.01)


def test_direct_sum_volume_multiplies():
    """Volumes of the blocks multiply (the module docstring of ``sums``)."""
    lat = tile(["a2", "d4", "e8"], 14)
    expected = math.sqrt(3) * 2.0 * 1.0
    assert float(lat.volume) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------- rng
def test_counter_uniform_grid_range_and_paths():
    """In [0, 1) on the grid k·2^-24 (float32, float64); the NumPy and torch paths give the same
    bits; a block drawn with ``offset`` is the same rows of the whole draw; ``lowbias32``
    leaves its input as it was."""
    from qlatent.rng import _counter_uniform_torch

    key = draw_key(SeedKeys(7))
    for dtype in (torch.float32, torch.float64):
        a = counter_uniform(key, (3, 70_000), dtype)
        assert a.dtype == dtype and a.shape == (3, 70_000)
        assert float(a.min()) >= 0 and float(a.max()) < 1
        assert torch.equal(a * 2**24, (a * 2**24).round())
        assert torch.equal(a, _counter_uniform_torch(key, (3, 70_000), dtype))
    whole = counter_uniform(key, (10, 5))
    assert torch.equal(whole[2:5], counter_uniform(key, (3, 5), offset=10))
    v = torch.tensor([1, -5, 2**31 - 1], dtype=torch.int32)
    kept = v.clone()
    assert lowbias32(v).dtype == torch.int32 and torch.equal(v, kept)
    assert torch.equal(SeedKeys(3).next_key(), SeedKeys(3).next_key())
    for bad in (dict(offset=-1), dict(offset=2**31 - 5), dict(dtype=torch.int32)):
        with pytest.raises(ValueError):
            counter_uniform(key, (10,), **bad)


# ------------------------------------------------------------------------------- priors
@pytest.mark.parametrize(
    ("log_prob", "dist"), [(gaussian_cell_log_prob, Normal), (laplace_cell_log_prob, Laplace)]
)
def test_cell_log_prob_is_a_probability_in_nats(log_prob, dist):
    """log P of the cell η + [−Δ/2, Δ/2): ≤ 0, the CDF difference, and summing to 1 over a
    grid of cells; the broadcast ``(..., m)`` shape."""
    spacing = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.5, 3.0], dtype=torch.float64)
    eta = torch.arange(-400, 401, dtype=torch.float64).unsqueeze(1) * spacing + 0.17 * spacing
    lp = log_prob(eta, spacing, scale)
    assert lp.shape == eta.shape and float(lp.max()) <= 0
    assert torch.allclose(lp.exp().sum(0), torch.ones(3, dtype=torch.float64), atol=1e-12)
    d = dist(torch.zeros(3, dtype=torch.float64), scale)
    ref = (d.cdf(eta + spacing / 2) - d.cdf(eta - spacing / 2)).log()
    near = ref > -15  # where the CDF difference is itself accurate
    assert torch.allclose(lp[near], ref[near], atol=1e-8)


def test_laplace_nll_and_no_grad_path():
    """``laplace_cell_nll`` is −log P in nats (≥ 0); without grad the constants' path gives the
    autograd path's values bit for bit."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    spacing, scale = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.0, 2.0, 0.3])
    nll = laplace_cell_nll(x, spacing, scale)
    assert torch.equal(nll, -laplace_cell_log_prob(x, spacing, scale)) and bool((nll >= 0).all())
    constants = cell_constants(spacing, scale)
    with torch.no_grad():
        fast = cell_log_prob_from_constants(x, *constants)
    assert torch.equal(fast, cell_log_prob_from_constants(x.requires_grad_(), *constants))


# --------------------------------------------------------------------------- bottlenecks
def test_gaussian_vae_dtypes():
    """The Gaussian VAE computes in the input's dtype, at least float32: half inputs come back
    as float32, float64 ones as float64."""
    b = build("gaussian", dim=4)
    for dtype, expected in [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        y = torch.randn(3, 8).to(dtype)
        for training in (True, False):
            out = b.train(training)(y)
            assert out.y_hat.dtype == expected and out.rate.dtype == expected


def test_gaussian_vae_kl_per_dimension_sums_to_the_rate():
    """``kl_per_dimension``: ``(B, 2m)`` -> ``(B, m)`` nats, whose sum is ``rate``."""
    b = build("gaussian", dim=4).eval()
    y = torch.randn(5, 8, dtype=torch.float64)
    kl = b.kl_per_dimension(y)
    assert kl.shape == (5, 4) and bool((kl >= 0).all())
    assert torch.allclose(kl.sum(1), b(y).rate)


@pytest.mark.parametrize("name", ["vq", "vq_ema", "soft_em_vq"])
def test_codebook_rate_is_log_k_nats_per_position(name):
    """Codebook methods: rate log K nats per row, summed over positions per example."""
    b = build(name, dim=4, num_codes=8).eval()
    out = b(torch.randn(3, 4, 2, 5))
    assert out.rate.shape == (3,)
    assert torch.allclose(out.rate, torch.full((3,), 10 * math.log(8)))
    assert out.indices.shape == (3, 2, 5) and out.indices.dtype == torch.int64


def test_uniform_unit_scaling_bound():
    """U(±sqrt(3/d)): inside the bound, each row of expected squared norm 1."""
    torch.manual_seed(0)
    c = uniform_unit_scaling(4000, 12)
    assert float(c.abs().max()) <= math.sqrt(3 / 12)
    assert float(c.square().sum(1).mean()) == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lattice", dict(dim=8)),
        ("vq", dict(dim=8, num_codes=16)),
        ("lattice", dict(dim=8, lattice="d4")),
    ],
    ids=["rectangular", "vq", "d4"],
)
def test_compress_ideal_bits_and_file_length(name, kwargs):
    """``decompress(compress(y, seed=s))`` is exactly the eval forward with ``SeedKeys(s)``,
    whatever mode the bottleneck is in; ``ideal_bits`` is in bits over the whole batch, the
    rate's nats / ln 2 for the rectangular lattice and log2 K per index; the file holds them."""
    torch.manual_seed(0)
    b = build(name, **kwargs).train()
    y = torch.randn(6, 8, 2)
    data = compress(b, y, seed=11)
    assert b.training  # used in eval mode, its mode left alone
    y_hat = decompress(b, data)
    out = b.eval()(y, generator=SeedKeys(11))
    assert torch.equal(y_hat, out.y_hat)
    bits = ideal_bits(b, y, seed=11)
    if name == "vq":
        assert bits == pytest.approx(12 * 4.0)
    elif "lattice" not in kwargs:
        nats = float(out.rate.detach().double().sum())
        assert bits == pytest.approx(nats / math.log(2), rel=1e-5)
    assert 8 * len(data) >= bits


# ------------------------------------------------------------------------------ container
DIGEST = bytes(range(32))


@pytest.mark.parametrize(
    "header",
    [
        Header(999, DIGEST, 0, 0, 0, (1, 2)),  # no byte holds it (struct.error)
        Header(50, DIGEST, 0, 0, 0, (1, 2)),  # unregistered: unpack refused the file
        Header(1, DIGEST, 0, 2**31, 0, (1, 2)),  # not int32 (struct.error)
        Header(1, DIGEST, 0, 0, -(2**31) - 1, (1, 2)),
        Header(1, DIGEST, 1.5, 0, 0, (1, 2)),  # not an integer (struct.error)
        Header(1, DIGEST, True, 0, 0, (1, 2)),
    ],
)
def test_pack_refuses_what_a_header_cannot_hold(header):
    """``pack`` raises ValueError for a header that the container cannot hold or that
    :func:`unpack` would refuse."""
    with pytest.raises(ValueError, match="code_model|symbol_m|seed"):
        pack(header, b"")


def test_pack_unpack_round_trip_with_numpy_integers():
    """A header of NumPy integers packs, and unpacks to the same fields."""
    header = Header(3, DIGEST, np.uint64(2**63 + 5), np.int64(-7), np.int32(9), (4, 3, 2))
    back, payload = unpack(pack(header, b"\x01\x02\x03\x04"))
    assert payload == b"\x01\x02\x03\x04"
    assert (back.code_model, back.seed, back.symbol_min, back.symbol_max, back.shape) == (
        3,
        2**63 + 5,
        -7,
        9,
        (4, 3, 2),
    )


# ----------------------------------------------------------------------------------- eval
def _tiny(bottleneck="lattice", **kwargs):
    torch.manual_seed(0)
    return gated_vae(bottleneck, latent_dim=4, hidden=8, data_dim=12, **kwargs)


def test_codelength_report_units_and_modes():
    """Nats per example: the hard path's rate and distortion are the eval forward's with a CPU
    generator seeded ``seed + 1``, the training path's rate the training forward's with
    ``seed``; every module's mode is as it was (a bottleneck kept in eval inside a training
    model was left in training mode)."""
    model = _tiny()
    x = torch.rand(7, 12, generator=torch.Generator().manual_seed(1)).bernoulli()
    model.train()
    model.bottleneck.eval()
    report = codelength_report(model, x, seed=3, batch_size=100)
    assert model.training and model.encoder.training and not model.bottleneck.training
    model.eval()
    out = model(x, generator=torch.Generator().manual_seed(4))
    loss = RateDistortionLoss()(x, out, model.likelihood)
    assert report.codelength.rate == pytest.approx(
        float(out.bottleneck.rate.detach().mean()), rel=1e-6
    )
    assert report.codelength.distortion == pytest.approx(
        float(loss.distortion.detach().mean()), rel=1e-6
    )
    model.bottleneck.train()
    out = model(x, generator=torch.Generator().manual_seed(3))
    assert report.neg_elbo.rate == pytest.approx(
        float(out.bottleneck.rate.detach().mean()), rel=1e-6
    )


def test_iwae_nll_contract():
    """``(N,)`` float64 nats on the CPU, every module's mode restored (mixed modes too), and a
    ValueError for ``num_samples`` 0."""
    model = _tiny("gaussian")
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(2)).bernoulli()
    model.train()
    model.decoder.eval()
    nll = iwae_nll(
        model,
        x,
        num_samples=4,
        batch_size=5,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert nll.shape == (5,) and nll.dtype == torch.float64 and nll.device.type == "cpu"
    assert model.training and model.bottleneck.training and not model.decoder.training
    assert bool((nll > 0).all())
    with pytest.raises(ValueError):
        iwae_nll(model, x, num_samples=0, progress=False)


def test_cluster_accuracy_is_the_best_matching():
    """Against every one-to-one map of cluster ids to labels (ids need not be contiguous or
    non-negative; unmatched clusters count as wrong)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true, y_pred = rng.integers(-2, 3, 7), 3 * rng.integers(5, 9, 7)
        classes, clusters = np.unique(y_true), np.unique(y_pred)
        labels = [*classes, *[None] * max(0, len(clusters) - len(classes))]
        best = max(
            sum(
                dict(zip(clusters, perm, strict=True))[p] == t
                for p, t in zip(y_pred, y_true, strict=True)
            )
            for perm in itertools.permutations(labels, len(clusters))
        )
        assert cluster_accuracy(y_true, y_pred) == pytest.approx(best / 7)


def test_image_files_decode_to_the_eval_reconstruction():
    """``decompress_images(compress_images(x, seed=s))`` is the eval reconstruction with the
    dither of ``SeedKeys(s)``, shaped like the images; ``images_in`` reads N from the header."""
    model = _tiny("vq", num_codes=8)
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(3))
    data = compress_images(model, x, seed=3, batch_size=2)
    assert images_in(data) == 5
    x_hat = decompress_images(model, data)
    assert torch.equal(x_hat, model.eval().reconstruct(x, generator=SeedKeys(3)))
