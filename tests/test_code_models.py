"""The code-model protocol: the coder knows no bottleneck; good lattices write real files; a new
method gets files by implementing ``code_model()`` in its own module."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import qlatent.coding
from qlatent.bottlenecks import build
from qlatent.bottlenecks.base import Bottleneck, BottleneckOutput
from qlatent.coding import CodingError, compress, decompress, ideal_bits, unpack
from qlatent.coding.container import (
    MODEL_E8_COSETS,
    MODEL_GAUSSIAN_E8,
    MODEL_GAUSSIAN_LATTICE,
    MODEL_GLUED_LATTICE,
    MODEL_GOOD_LATTICE,
    register_code_model,
)
from qlatent.coding.models import constriction
from qlatent.lattices import lattice_by_name, triangular_basis
from qlatent.rng import SeedKeys

CODING = Path(qlatent.coding.__file__).parent


def test_the_coder_imports_nothing_from_the_bottlenecks_or_above():
    """``qlatent.coding`` depends on itself and the package's leaf helpers only."""
    for path in sorted(CODING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ["qlatent", "coding"][: 3 - node.level] if node.level else []
                name = ".".join([*base, node.module or ""]).strip(".")
            elif isinstance(node, ast.Import):
                name = ",".join(alias.name for alias in node.names)
            else:
                continue
            if name.startswith("qlatent"):
                assert name.startswith(("qlatent.coding", "qlatent._utils")), (path.name, name)


@pytest.mark.parametrize("name", ["d4", "d8", "d3*", "e8", "a2", "bw16", "leech"])
def test_triangular_basis_spans_the_same_lattice(name):
    lattice = lattice_by_name(name)
    basis = lattice.generator_matrix.T.double()
    t, u, upper = triangular_basis(basis)
    assert torch.equal(t, torch.triu(t) if upper else torch.tril(t))
    assert torch.allclose(u @ basis, t)
    assert torch.equal(u, u.round()) and abs(abs(float(torch.linalg.det(u))) - 1) < 1e-9
    assert float(torch.prod(torch.diagonal(t)).abs().log()) == pytest.approx(
        float(lattice.log_volume), abs=1e-9
    )


GOOD = [
    ("e8", 16),
    ("leech", 24),
    ("bw16", 16),
    ("d4", 8),
    ("a2", 6),
    ("d3*", 6),
    (["leech", "bw16"], 40),
    (["e8", "z", "z"], 10),
]


def _good(spec, dim, spacing=0.7):
    torch.manual_seed(0)
    return build(
        "lattice",
        dim=dim,
        lattice=spec,
        init_spacing=spacing,
        init_scale=1.0,
        eval_samples=2048,
        eval_prior_samples=256,
    ).eval()


@pytest.mark.parametrize("spec,dim", GOOD, ids=[str(s) for s, _ in GOOD])
@pytest.mark.parametrize("spatial", [(), (3,)])
def test_good_lattice_round_trip_is_the_hard_path(spec, dim, spatial):
    bottleneck = _good(spec, dim)
    y = 1.5 * torch.randn(40, dim, *spatial)
    data = compress(bottleneck, y, seed=5)
    glued = any(name in str(spec) for name in ("leech", "bw16"))  # Λ16, Λ24 by their cosets
    kind = MODEL_GLUED_LATTICE if glued else MODEL_GOOD_LATTICE
    assert unpack(data)[0].code_model == (MODEL_E8_COSETS if "e8" in str(spec) else kind)
    expected = bottleneck.dequantize(
        bottleneck.quantize(y, generator=SeedKeys(5)), generator=SeedKeys(5)
    )
    assert torch.equal(decompress(bottleneck, data), expected)


@pytest.mark.parametrize("spec,dim", [("e8", 16), (["leech", "bw16"], 40)], ids=["e8", "leech"])
def test_a_scale_per_coordinate_round_trips(spec, dim):
    """diag(s)·Λ (``spacing_per="coordinate"``, unequal s_i) writes files that decode to the
    hard path: the code models take a scale per coordinate."""
    bottleneck = build(
        "lattice", dim=dim, lattice=spec, spacing_per="coordinate", eval_samples=64
    ).eval()
    with torch.no_grad():
        bottleneck.log_spacing.uniform_(-0.8, 0.8, generator=torch.Generator().manual_seed(2))
    y = 1.5 * torch.randn(40, dim, generator=torch.Generator().manual_seed(3))
    data = compress(bottleneck, y, seed=5)
    expected = bottleneck.dequantize(
        bottleneck.quantize(y, generator=SeedKeys(5)), generator=SeedKeys(5)
    )
    assert torch.equal(decompress(bottleneck, data), expected)


@pytest.mark.parametrize("spec,dim", [("e8", 16), ("leech", 24)])
@pytest.mark.parametrize("spacing", [0.4, 1.5])
def test_good_lattice_file_size_tracks_its_model_and_the_monte_carlo_ideal(spec, dim, spacing):
    """The payload is the model's information content plus the coder's few words; at these
    rates the model is within a few percent of the ideal −log2 P(z | u) estimated by Monte
    Carlo (the hard path's rate)."""
    bottleneck = _good(spec, dim, spacing)
    y = torch.randn(400, dim)
    data = compress(bottleneck, y, seed=1)
    model_bits = ideal_bits(bottleneck, y, seed=1)
    payload_bits = 8 * len(unpack(data)[1])
    assert model_bits - 1 <= payload_bits <= 1.002 * model_bits + 96
    mc_bits = bottleneck(y, generator=SeedKeys(1)).rate.double().sum().item() / math.log(2)
    assert model_bits == pytest.approx(mc_bits, rel=0.08)


def _laplace_cell(lo, hi, b):
    """P(lo < X < hi) for X ~ Laplace(0, b), by its CDF."""

    def cdf(t):
        left, right = np.minimum(t, 0), np.maximum(t, 0)
        return np.where(t < 0, 0.5 * np.exp(left / b), 1 - 0.5 * np.exp(-right / b))

    return cdf(hi) - cdf(lo)


@pytest.mark.parametrize("name", ["bw16", "leech"])
def test_coset_code_is_the_normalized_product_of_cell_masses(name):
    """The Λ16 / Λ24 model codes P(x | u) = Π_j m_j(x_j) / Σ_{x' ∈ Λ} Π_j m_j(x'_j), with the
    sum over the lattice taken here the long way: every class of the glue, and the cosets of
    q·D_n summed coordinate by coordinate over a wide range (parity by ½(1 ± Π))."""
    from qlatent.bottlenecks.good_lattice import CODE_CELL_WIDTH

    dim = {"bw16": 16, "leech": 24}[name]
    bottleneck = _good(name, dim, spacing=1.2)
    lattice = bottleneck.geometry.blocks[0]
    residues, parities, q = lattice.glue()
    model = bottleneck.code_model()
    y = torch.randn(6, dim)
    u_t = model.dither(6, 7)
    k = model.coordinates(y, u_t)
    x = (k.double() @ lattice.generator_matrix.T.double()).numpy()
    u, sigma, b = u_t.double().numpy(), model.sigma, model.scale
    h = sigma * CODE_CELL_WIDTH[lattice.name] / 2
    ys = np.arange(-60, 61)

    total = np.zeros(6)
    for r, p in zip(residues.numpy(), parities.tolist(), strict=True):
        grid = (r[None, :] + q * ys[:, None])[None]  # (1, Y, n)
        m = _laplace_cell(sigma * grid - u[:, None] - h, sigma * grid - u[:, None] + h, b)
        a, d = m.sum(1), (m * ((-1.0) ** ys)[None, :, None]).sum(1)
        total += 0.5 * (a.prod(1) + (-1) ** p * d.prod(1))
    point = _laplace_cell(sigma * x - u - h, sigma * x - u + h, b).prod(1)  # x's own cells
    direct = -np.log2(point / total).sum()
    assert ideal_bits(bottleneck, y, seed=7) == pytest.approx(direct, rel=1e-9, abs=1e-6)


def _earlier_file(bottleneck, y, **model_args) -> bytes:
    """``y`` compressed with ``bottleneck.code_model(**model_args)``, an earlier code model."""
    bottleneck.code_model = lambda: type(bottleneck).code_model(bottleneck, **model_args)
    try:
        return compress(bottleneck, y, seed=4)
    finally:
        del bottleneck.code_model


def test_files_of_the_triangular_model_still_decode():
    """Files written before Λ16 and Λ24 were coded by their cosets (container kind 4) decode
    through the bottleneck's earlier model; the coset model's files are no larger here."""
    bottleneck = _good(["leech", "bw16"], 40, spacing=1.5)
    y = torch.randn(50, 40)
    old = _earlier_file(bottleneck, y, cosets=False)
    new = compress(bottleneck, y, seed=4)
    assert unpack(old)[0].code_model == MODEL_GOOD_LATTICE
    assert unpack(new)[0].code_model == MODEL_GLUED_LATTICE
    assert torch.equal(decompress(bottleneck, old), decompress(bottleneck, new))
    assert len(new) < len(old)


@pytest.mark.parametrize("spacing", [0.3, 1.0, 3.0])
def test_the_coset_row_bound_holds_for_every_row(spacing):
    """min_row_bits never exceeds a row's real cost, down to rows at the prior's mode; at a
    typical spacing it is several bits, so a forged header cannot announce many rows per bit."""
    bottleneck = _good("bw16", 16, spacing)
    bound = bottleneck.code_model().min_row_bits()
    assert bound > (2.0 if spacing == 1.0 else 0.0)
    for i, y in enumerate([*torch.randn(20, 1, 16) * 0.3, *torch.zeros(3, 1, 16)]):
        assert ideal_bits(bottleneck, y, seed=i) >= bound - 1e-9


@pytest.mark.parametrize("spec,dim", [("e8", 16), ("leech", 24)])
def test_good_lattice_files_refuse_damage_and_other_models(spec, dim):
    bottleneck = _good(spec, dim)
    data = compress(bottleneck, torch.randn(30, dim), seed=2)
    with pytest.raises(CodingError, match="truncated"):
        decompress(bottleneck, data[:-5])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 4
    with pytest.raises(CodingError, match="checksum"):
        decompress(bottleneck, bytes(flipped))
    other = _good(spec, dim, spacing=0.71)
    with pytest.raises(CodingError, match="different model"):
        decompress(other, data)


GAUSSIAN = [("z", 12), ("e8", 16), (["leech", "bw16"], 40), (["e8", "z", "z"], 10), ("a2", 6)]


def _gaussian(spec, dim, seed=2):
    """A Gaussian-prior good lattice with unequal spacings and prior scales per coordinate."""
    torch.manual_seed(0)
    bottleneck = build(
        "lattice",
        dim=dim,
        lattice=spec,
        prior="gaussian",
        spacing_per="coordinate",
        eval_samples=64,
        eval_prior_samples=16,
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bottleneck.log_spacing.uniform_(-0.8, 0.8, generator=generator)
        bottleneck.log_scale.uniform_(-2.0, 1.0, generator=generator)
    return bottleneck


@pytest.mark.parametrize("spec,dim", GAUSSIAN, ids=[str(s) for s, _ in GAUSSIAN])
@pytest.mark.parametrize("spatial", [(), (3,)])
def test_gaussian_prior_files_round_trip_to_the_hard_path(spec, dim, spatial):
    bottleneck = _gaussian(spec, dim)
    y = 1.5 * torch.randn(40, dim, *spatial, generator=torch.Generator().manual_seed(3))
    y[0, 0] = 60.0  # far in the prior's tail: the support widens to the data
    data = compress(bottleneck, y, seed=5)
    kind = MODEL_GAUSSIAN_E8 if "e8" in str(spec) else MODEL_GAUSSIAN_LATTICE
    assert unpack(data)[0].code_model == kind
    expected = bottleneck.dequantize(
        bottleneck.quantize(y, generator=SeedKeys(5)), generator=SeedKeys(5)
    )
    assert torch.equal(decompress(bottleneck, data), expected)
    empty = compress(bottleneck, y[:0], seed=5)
    assert decompress(bottleneck, empty).shape == y[:0].shape


@pytest.mark.parametrize("spec,dim", [("e8", 8), ("a2", 4), ("z", 3)])
def test_a_gaussian_prior_wider_than_the_laplace_window_allows_is_coded_in_its_own(spec, dim):
    """A Gaussian prior 3,000 lattice spacings wide: 25 of its deviations pass the coder's
    ±65,536 (the Laplace window, which a Laplace prior of that width is refused for), 12 and the
    tables' margin fit. The file round-trips to the hard path and its header holds the prior's
    own window; a narrower Gaussian prior keeps the 25-deviation window every file had."""

    def bottleneck(prior, scale):
        settings = dict(init_spacing=1e-3, eval_samples=16, eval_prior_samples=4)
        neck = build("lattice", dim=dim, lattice=spec, prior=prior, init_scale=scale, **settings)
        model = neck.eval().code_model()
        return neck, float(np.max(model.scale / model.spacing))  # the prior's width in cells

    wide, widest = bottleneck("gaussian", 3.0)
    assert 2700 < widest < 3300 and 25 * widest > 65536 > 12 * widest + 4
    y = 2.0 * torch.randn(30, dim, generator=torch.Generator().manual_seed(1))
    data = compress(wide, y, seed=4)
    expected = wide.dequantize(wide.quantize(y, generator=SeedKeys(4)), generator=SeedKeys(4))
    assert torch.equal(decompress(wide, data), expected)
    reach = math.ceil(0.5 + 12.0 * widest + 3)
    assert (unpack(data)[0].symbol_min, unpack(data)[0].symbol_max) == (-reach, reach)
    with pytest.raises(ValueError, match="beyond the coder's"):
        compress(bottleneck("laplace", 3.0)[0], y, seed=4)
    narrow, widest = bottleneck("gaussian", 1.0)
    header = unpack(compress(narrow, y, seed=4))[0]
    reach = math.ceil(0.5 + 25.0 * widest)
    assert (header.symbol_min, header.symbol_max) == (-reach, reach)


def test_gaussian_prior_z_blocks_are_coded_at_the_exact_hard_path_rate():
    """On Z blocks the model's information content is −log2 P(z | u) of the hard path (the
    Gaussian mass of each cell, in closed form), and the payload is that plus a few words. (The
    data are drawn from the prior: a symbol the prior gives less than 2^-24 costs the coder's
    floor of 24 bits, less than its −log2 P.)"""
    bottleneck = _gaussian("z", 12).double()
    noise = torch.randn(3000, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = noise * bottleneck.scale.detach()
    model_bits = ideal_bits(bottleneck, y, seed=7)
    exact = bottleneck(y, generator=SeedKeys(7)).rate.sum().item() / math.log(2)
    assert model_bits == pytest.approx(exact, rel=1e-9)
    payload_bits = 8 * len(unpack(compress(bottleneck, y, seed=7))[1])
    assert model_bits - 1 <= payload_bits <= 1.002 * model_bits + 96


@pytest.mark.parametrize("spec,dim", [("e8", 16), (["leech", "bw16"], 40)], ids=["e8", "leech"])
def test_gaussian_prior_file_size_tracks_its_model_and_the_monte_carlo_rate(spec, dim):
    """E8 by its cosets, Λ24 and Λ16 in a triangular basis: normalized models over the
    lattice's points, within a few percent of the hard path's Monte-Carlo −log2 P(z | u) at
    these rates."""
    bottleneck = _gaussian(spec, dim)
    with torch.no_grad():
        bottleneck.log_spacing.zero_()
        bottleneck.log_scale.zero_()
    bottleneck.eval_samples, bottleneck.eval_prior_samples = 2048, 256
    y = torch.randn(400, dim, generator=torch.Generator().manual_seed(6))
    data = compress(bottleneck, y, seed=1)
    model_bits = ideal_bits(bottleneck, y, seed=1)
    payload_bits = 8 * len(unpack(data)[1])
    assert model_bits - 1 <= payload_bits <= 1.002 * model_bits + 96
    mc_bits = bottleneck(y, generator=SeedKeys(1)).rate.double().sum().item() / math.log(2)
    assert model_bits == pytest.approx(mc_bits, rel=0.05 if "leech" in str(spec) else 0.02)


def test_gaussian_e8_files_of_the_triangular_model_still_decode_and_are_larger():
    """Kind-7 files (every block in a triangular basis) of an E8 bottleneck decode through the
    earlier model; E8 by its cosets (kind 8) writes smaller files at these rates."""
    bottleneck = _gaussian(["e8", "e8"], 16)
    with torch.no_grad():
        bottleneck.log_spacing.zero_()
        bottleneck.log_scale.zero_()
    y = torch.randn(300, 16, generator=torch.Generator().manual_seed(8))
    old = _earlier_file(bottleneck, y, e8_cosets="triangular")
    new = compress(bottleneck, y, seed=4)
    assert unpack(old)[0].code_model == MODEL_GAUSSIAN_LATTICE
    assert unpack(new)[0].code_model == MODEL_GAUSSIAN_E8
    assert torch.equal(decompress(bottleneck, old), decompress(bottleneck, new))
    assert len(new) < len(old)


def test_a_peaked_gaussian_prior_costs_an_e8_block_almost_nothing():
    """A prior far narrower than the cell (an idle block, b/σ = 0.02) and latents drawn from it:
    the quantizer's point is nearly always the one whose cell holds the prior's mode (the
    Monte-Carlo −log2 P(z | u) is 0.8 bits for the two blocks). With the coset from the rounding
    errors and the parities from sums of odd masses the model spends 2.6; with the parities from
    ½(1 ± Π D), which float64 rounds to 0 and 1, it spent 7.2, and in a triangular basis 20.5."""
    bottleneck = _gaussian("e8", 16)
    with torch.no_grad():
        bottleneck.log_spacing.zero_()
        bottleneck.log_scale.fill_(math.log(0.02 * float(bottleneck.spacing[0])))
    noise = torch.randn(2000, 16, generator=torch.Generator().manual_seed(9))
    y = noise * bottleneck.scale.detach()
    bits = ideal_bits(bottleneck, y, seed=3) / 2000
    assert bits < 4.0
    # rows far outside the prior's window (|κ| > 12 deviations) are escapes, coded uniformly
    y[:3, :5] = torch.tensor([10.0, -7.0, 30.0])[:, None]
    indices = bottleneck.quantize(y, generator=SeedKeys(3))
    hard = bottleneck.dequantize(indices, generator=SeedKeys(3))
    assert torch.equal(decompress(bottleneck, compress(bottleneck, y, seed=3)), hard)


def test_gaussian_rounding_error_moments_match_quadrature():
    """E|e| and E e² of e = x − round(x), x ~ N(μ, β²), against adaptive quadrature, from a
    point-like prior to a flat one. The density is written out (scipy's ``norm.pdf`` gives the
    same sums to 1e-16 but costs seconds in the thousands of integrand calls)."""
    from scipy.integrate import quad

    from qlatent.coding.models import _gaussian_rounding_error_moments

    def normal_pdf(x, mean, std):
        z = (x - mean) / std
        return math.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi))

    cases = [(0.3, 0.05), (1.7, 0.3), (-2.2, 1.5), (0.0, 0.01), (0.5, 0.2), (3.49, 3.0),
             (-0.45, 0.002), (7.0, 40.0)]  # fmt: skip
    mu = np.array([[m for m, _ in cases]])
    for j, (m, beta) in enumerate(cases):
        first, second = _gaussian_rounding_error_moments(mu[:, j : j + 1], np.array([beta]))
        reach = 20 + int(15 * beta)
        want = [
            sum(
                quad(
                    lambda t, n=n, k=k, m=m, beta=beta: abs(t) ** k * normal_pdf(n + t, m, beta),
                    -0.5,
                    0.5,
                    epsabs=1e-14,
                    limit=200,
                    points=[m - n] if abs(m - n) < 0.5 else None,
                )[0]  # fmt: skip
                for n in range(round(m) - reach, round(m) + reach + 1)
            )
            for k in (1, 2)
        ]
        assert float(first[0, 0]) == pytest.approx(want[0], rel=1e-7, abs=1e-12), (m, beta)
        assert float(second[0, 0]) == pytest.approx(want[1], rel=1e-7, abs=1e-12), (m, beta)


def test_gaussian_bin_masses_hold_in_the_tails_and_bits_stop_at_the_coder_floor():
    from scipy.stats import norm

    from qlatent.coding.models import _gaussian_bin_log_mass, _quantized_gaussian_bits

    k = np.array([-3, -1, 0, 0, 1, 2, 5])
    mean = np.array([0.4, -0.2, 0.49, -0.5, 0.1, -0.3, 0.0])
    std = np.array([1.0, 0.3, 2.0, 0.7, 5.0, 1.5, 0.9])
    mass = norm.cdf(k + 0.5, mean, std) - norm.cdf(k - 0.5, mean, std)  # well inside
    assert np.allclose(_gaussian_bin_log_mass(k, mean, std), np.log(mass), rtol=1e-12, atol=0)
    # 30 deviations out, where 1 − Φ has rounded to 0: mirrored, the same on both sides
    far = _gaussian_bin_log_mass(np.array([30, -30]), np.array([0.2, -0.2]), np.ones(2))
    assert far[0] == pytest.approx(far[1], rel=1e-12)
    assert far[0] == pytest.approx(norm.logsf(29.3), rel=1e-3)  # the bin's upper edge: negligible
    assert _quantized_gaussian_bits(k, mean, std) == pytest.approx(-np.log2(mass).sum(), rel=1e-12)
    assert _quantized_gaussian_bits(np.array([30]), np.array([0.2]), np.ones(1)) == 24.0


@pytest.mark.parametrize("spec,dim", [("e8", 16), ("z", 8)])
@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0])
def test_the_gaussian_row_bound_holds_for_every_row(spec, dim, scale):
    """min_row_bits never exceeds a row's real cost, down to rows at the prior's mode."""
    bottleneck = _gaussian(spec, dim)
    with torch.no_grad():
        bottleneck.log_scale.fill_(math.log(scale))
    bound = bottleneck.code_model().min_row_bits()
    if scale == 4.0:  # a wide prior: several bits a row (a peaked one may cost nothing)
        assert bound > 1.0
    for i, y in enumerate([*torch.randn(20, 1, dim) * scale, *torch.zeros(3, 1, dim)]):
        assert ideal_bits(bottleneck, y, seed=i) >= bound - 1e-9
        assert 8 * len(unpack(compress(bottleneck, y, seed=i))[1]) >= bound - 1e-9


def test_a_gaussian_prior_file_refuses_damage_and_a_laplace_model():
    bottleneck = _gaussian("e8", 16)
    data = compress(bottleneck, torch.randn(30, 16), seed=2)
    with pytest.raises(CodingError, match="truncated"):
        decompress(bottleneck, data[:-5])
    laplace = _good("e8", 16)
    with pytest.raises(CodingError):
        decompress(laplace, data)


def test_the_gaussian_code_model_refuses_the_laplace_glue():
    """Λ16 and Λ24 by their cosets have the Laplace prior's closed forms only."""
    from qlatent.coding.models import GoodLattice

    basis = lattice_by_name("bw16").generator_matrix.T.double()
    common = dict(sigma=np.ones(16), scale=np.ones(16), dtype=torch.float32, dither=None)
    with pytest.raises(ValueError, match="no code model under a gaussian prior"):
        GoodLattice(
            blocks=[(0, "glued", (basis,))], **common, coordinates=None, reconstruct=None,
            prior="gaussian",
        )  # fmt: skip
    with pytest.raises(ValueError, match="prior must be"):
        GoodLattice(blocks=[], **common, coordinates=None, reconstruct=None, prior="cauchy")


# ------------------------------------------------------------------ a method of a test module
SIGN_BITS = register_code_model(200, "sign bits (test)")


class _SignBits:
    """One bit per coordinate: whether y_i >= 0."""

    kind = SIGN_BITS

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def min_row_bits(self) -> float:
        return float(self.dim)

    def encode(self, coder, rows, seed):
        bits = (rows >= 0).to(torch.int32).reshape(-1).numpy()
        coder.encode_reverse(bits, constriction().stream.model.Uniform(2))
        return 0, 1

    def decode(self, coder, n, seed, lo, hi):
        bits = coder.decode(constriction().stream.model.Uniform(2), n * self.dim)
        return torch.from_numpy(2.0 * bits.astype(np.float32) - 1.0).reshape(n, self.dim)

    def ideal_bits(self, rows, seed):
        return float(rows.numel())


class SignQuantizer(Bottleneck):
    """y_hat = sign(y) (±1), one bit per coordinate: a method the library does not know."""

    def _forward_rows(self, y, generator):
        y_hat = torch.where(y >= 0, 1.0, -1.0).to(y.dtype)
        rate = y.new_full((y.shape[0],), self.dim * math.log(2))
        return BottleneckOutput(y_hat, rate, y.new_zeros(()))

    def code_model(self):
        return _SignBits(self.dim)


def test_a_new_method_gets_files_through_the_protocol_alone():
    neck = SignQuantizer(dim=5).eval()
    y = torch.randn(7, 5, 2)
    data = neck.compress(y, seed=0)
    assert torch.equal(neck.decompress(data), neck(y).y_hat)
    assert ideal_bits(neck, y, seed=0) == 70.0
    assert 8 * len(unpack(data)[1]) <= 70 + 64
    with pytest.raises(ValueError, match="64, 255"):
        register_code_model(5, "clash with the library's ids")


def test_coding_mnist_codes_the_table1_lattices(tmp_path):
    """The quick pipeline trains the Table-1 rows on the synthetic set and codes their test
    images: exact round trips, the Monte-Carlo ideal with its s.e., and the coder's overhead."""
    from qlatent.experiments.coding_mnist import reproduce

    payload = reproduce(
        quick=True,
        models=["rect_lattice", "e8_lattice"],
        runs_dir=tmp_path / "runs",
        results_dir=tmp_path / "res",
    )
    rect, e8 = payload["rows"]["rect_lattice"], payload["rows"]["e8_lattice"]
    assert rect["round_trip_exact"] and e8["round_trip_exact"]
    assert e8["code_model"].startswith("good lattice")
    assert e8["mc_ideal_se"] > 0 and e8["mc_ideal_repeats"] == 2
    assert e8["mc_ideal_proposal"] == "tilted"
    assert abs(e8["model_over_ideal_percent"]) < 15
    assert e8["payload_over_model_percent"] < 5
    assert rect["hard_distortion_nats_per_image"] > 0 and "provenance" in e8
    assert 0 < rect["code_wall_s"] and 0 < e8["code_wall_s"]
    # rows not re-run are kept
    again = reproduce(
        quick=True, models=["rect_lattice"], runs_dir=tmp_path / "runs",
        results_dir=tmp_path / "res",
    )  # fmt: skip
    assert set(again["rows"]) == {"rect_lattice", "e8_lattice"}


def test_coding_mnist_codes_a_gaussian_prior_row_at_its_exact_rate(tmp_path):
    """A Gaussian-prior Table-1 row (Z^40, a scale per coordinate) writes a file that decodes to
    the hard path, coded with the exact cell masses: model bits = hard rate = the ideal."""
    from qlatent.experiments.coding_mnist import reproduce

    payload = reproduce(
        quick=True,
        models=["rect_gauss_lattice"],
        runs_dir=tmp_path / "runs",
        results_dir=tmp_path / "res",
    )
    row = payload["rows"]["rect_gauss_lattice"]
    assert row["round_trip_exact"] and row["code_model"].endswith("Gaussian prior")
    hard, model = row["hard_rate_bits_per_image"], row["ideal_bits_per_image"]
    assert model == pytest.approx(hard, rel=1e-5)
    on_those = row["model_bits_per_image_on_those"]  # the ideal is taken on the first images
    assert row["mc_ideal_se"] == 0 and row["mc_ideal_bits_per_image"] == pytest.approx(on_those)
    assert 0 <= row["payload_over_model_percent"] < 1


def test_e8_coset_code_is_within_one_percent_of_the_ideal_at_the_table1_rate():
    """At about 1.3 bits per dimension (the Table-1 operating point) the coset model's length is
    within 1% of −log2 P(z | u) (Monte Carlo with many samples), where a triangular basis of E8
    costs about 1.5%."""
    torch.manual_seed(0)
    bottleneck = build(
        "lattice", dim=16, lattice="e8", init_spacing=2.0, init_scale=1.0,
        eval_samples=4096, eval_prior_samples=512, proposal="box",
    ).eval()  # fmt: skip
    y = torch.randn(300, 16)
    model_bits = ideal_bits(bottleneck, y, seed=3)
    mc_bits = bottleneck(y, generator=SeedKeys(3)).rate.double().sum().item() / math.log(2)
    assert 1.1 < mc_bits / (300 * 16) < 1.5  # the operating point this test is about
    assert abs(model_bits / mc_bits - 1) < 0.01
    data = compress(bottleneck, y, seed=3)
    assert 8 * len(unpack(data)[1]) <= 1.002 * model_bits + 96


def test_rounding_error_moments_match_quadrature():
    """E|e| and E e² of e = x − round(x), x ~ Laplace(μ, β), against adaptive quadrature over
    the intervals around μ, from a point-like prior to a flat one."""
    from scipy.integrate import quad

    from qlatent.coding.models import _rounding_error_moments

    def wrapped(t, n, k, mu, beta):  # |t|^k times the density at n + t
        return abs(t) ** k * math.exp(-abs(n + t - mu) / beta) / (2 * beta)

    cases = [(0.3, 0.05), (1.7, 0.3), (-2.2, 1.5), (0.0, 0.01), (0.5, 0.2), (3.49, 10.0),
             (-0.45, 0.002), (7.0, 40.0)]  # fmt: skip
    for mu, beta in cases:
        first, second = _rounding_error_moments(np.array([mu]), np.array([beta]))
        reach = 60 + int(60 * beta)
        want = [
            sum(
                quad(
                    wrapped,
                    -0.5,
                    0.5,
                    args=(n, k, mu, beta),
                    epsabs=1e-14,
                    limit=200,
                    points=[mu - n] if abs(mu - n) < 0.5 else None,
                )[0]  # fmt: skip
                for n in range(round(mu) - reach, round(mu) + reach + 1)
            )
            for k in (1, 2)
        ]
        assert float(first[0]) == pytest.approx(want[0], rel=1e-7, abs=1e-12), (mu, beta)
        assert float(second[0]) == pytest.approx(want[1], rel=1e-7, abs=1e-12), (mu, beta)
    # the clipped extremes stay finite: a point mass and a flat prior
    first, second = _rounding_error_moments(np.array([0.2, 0.2]), np.array([0.0, 1e9]))
    assert np.allclose(first, [0.2, 0.25]) and np.allclose(second, [0.04, 1 / 12])


def test_e8_coset_probability_tracks_the_nearest_coset():
    """The coset model's P(D8 + ½·1) against the frequency with which the exact closest point
    of x = (X̂ + u)/σ lies in that coset, for blocks whose prior scales run from a tenth of the
    cell to twice it: close row by row, and far better than ½ as a code for the coset."""
    from qlatent.coding.models import _coset_one_probability
    from qlatent.lattices import lattice_by_name

    e8 = lattice_by_name("e8")
    gen = torch.Generator().manual_seed(0)
    rows, draws = 60, 4000
    mu = 4 * torch.rand(rows, 8, generator=gen, dtype=torch.float64) - 2
    beta = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    model = _coset_one_probability(mu.numpy(), beta.numpy())
    freq = np.empty(rows)
    for i in range(rows):
        noise = torch.distributions.Laplace(0.0, 1.0).sample((draws, 8)).double() * beta
        z = e8.closest_point(mu[i] + noise)
        freq[i] = float((torch.round(2 * z[:, 0]) % 2).double().mean())
    assert np.mean(np.abs(model - freq)) < 0.04
    clipped = np.clip(freq, 1e-3, 1 - 1e-3)  # the cross-entropy of the frequencies under each
    cost = -(clipped * np.log2(model) + (1 - clipped) * np.log2(1 - model)).mean()
    entropy = -(clipped * np.log2(clipped) + (1 - clipped) * np.log2(1 - clipped)).mean()
    assert cost < entropy + 0.03 and entropy < 0.85


def test_e8_files_of_the_half_coset_model_still_decode_and_are_larger():
    """Files whose E8 cosets had the product model's ½-ish probabilities (kind 4; kind 5 beside
    a glued block) decode through the bottleneck's earlier model. With six of E8's eight prior
    scales a tenth of the cell (as in the trained Table-1 model) the rounding-error model saves
    over 0.1 bits per E8 block and row (of about 7), and the payload shrinks with it."""
    torch.manual_seed(0)
    cases = [("e8", 16, MODEL_GOOD_LATTICE, 2), (["e8", "bw16"], 24, MODEL_GLUED_LATTICE, 1)]
    for spec, dim, old_kind, e8_blocks in cases:
        bottleneck = _good(spec, dim, spacing=1.0)
        with torch.no_grad():  # coordinates 0-5 of each E8 block nearly pinned
            bottleneck.log_scale[[j for j in range(8 * e8_blocks) if j % 8 < 6]] = math.log(0.1)
        y = torch.distributions.Laplace(0.0, 1.0).sample((400, dim)) * bottleneck.scale.detach()
        old = _earlier_file(bottleneck, y, e8_cosets="half")
        new = compress(bottleneck, y, seed=4)
        assert unpack(old)[0].code_model == old_kind
        assert unpack(new)[0].code_model == MODEL_E8_COSETS
        assert torch.equal(decompress(bottleneck, old), decompress(bottleneck, new))
        rows = y.shape[0]
        saved = bottleneck.code_model(e8_cosets="half").ideal_bits(y, 4) - ideal_bits(
            bottleneck, y, seed=4
        )
        assert saved > 0.1 * rows * e8_blocks
        assert 8 * (len(old) - len(new)) > saved - 64


@pytest.mark.parametrize("spacing", [0.3, 1.0, 3.0])
def test_the_e8_row_bound_holds_for_every_row(spacing):
    """min_row_bits (which bounds a header's shape by its payload) never exceeds a row's real
    cost, down to rows at the prior's mode."""
    bottleneck = _good("e8", 8, spacing)
    model = bottleneck.code_model()
    bound = model.min_row_bits()
    assert bound > 0
    for i, y in enumerate([*torch.randn(40, 1, 8) * 0.3, *torch.zeros(5, 1, 8)]):
        assert ideal_bits(bottleneck, y, seed=i) >= bound - 1e-9


def test_cli_codes_a_good_lattice_checkpoint(tmp_path, capsys):
    """`qlatent compress` / `decompress` rebuild a good-lattice VAE from the config saved with
    its weights (best.pt and last.pt both carry it)."""
    from qlatent.cli import main
    from qlatent.data import synthetic_binary
    from qlatent.image_coding import load_gated_vae
    from qlatent.models import gated_vae
    from qlatent.train import TrainConfig, fit

    args = {"lattice": "e8", "samples": 16, "prior_samples": 4, "eval_samples": 16,
            "eval_prior_samples": 4}  # fmt: skip
    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=8, hidden=16, data_dim=784, **args)
    run_config = {"model": {"bottleneck": "lattice", "bottleneck_args": args}}
    cfg = TrainConfig(epochs=1, batch_size=50, progress=False)
    fit(
        model, synthetic_binary(n=300, seed=0), cfg, out_dir=tmp_path / "run", run_config=run_config
    )
    best, codes, recon = tmp_path / "run" / "best.pt", tmp_path / "c.qlc", tmp_path / "r.pt"
    assert main(["compress", "--checkpoint", str(best), "--data", "synthetic-test",
                 "--limit", "20", "-o", str(codes)]) == 0  # fmt: skip
    assert unpack(codes.read_bytes())[0].code_model == MODEL_E8_COSETS
    assert main(["decompress", str(codes), "--checkpoint", str(best), "-o", str(recon)]) == 0
    assert torch.load(recon, weights_only=True).shape == (20, 784)
    assert load_gated_vae(best).bottleneck.geometry.name == "E8"
    # an untrusted config is checked: a huge sample count is refused with the file's name
    from qlatent.train import load, save_atomic

    ckpt = load(best)
    ckpt["run_config"]["model"]["bottleneck_args"]["eval_samples"] = 10**12
    save_atomic(ckpt, tmp_path / "bad.pt")
    assert main(["compress", "--checkpoint", str(tmp_path / "bad.pt"), "--data",
                 "synthetic-test", "-o", str(tmp_path / "x.qlc")]) == 2  # fmt: skip
    assert "bad.pt" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["e8_lattice", "e8_coord_lattice", "e8z_lattice"])
def test_coding_mnist_round_trip_only_without_monte_carlo(tmp_path, name):
    from qlatent.experiments.coding_mnist import markdown_table, reproduce

    payload = reproduce(
        quick=True, models=[name], overrides=["monte_carlo=false"],
        runs_dir=tmp_path / "runs", results_dir=tmp_path / "res",
    )  # fmt: skip
    row = payload["rows"][name]
    assert row["round_trip_exact"] and row["hard_rate_bits_per_image"] is None
    assert "mc_ideal_bits_per_image" not in row and "train_rate_bits_per_image" not in row
    assert f"| {name} |" in markdown_table(payload)


def test_coding_mnist_rate_control_sweeps_the_lattice_scale(tmp_path):
    """A coarser lattice gives a smaller file and more distortion, every file decodes to the
    hard path's points, the factor-1 point is the row's own file, and the swept row is read at
    the reference row's distortion only inside its sweep."""
    from qlatent.experiments.coding_mnist import bits_at_distortion, rate_control_table, reproduce

    payload = reproduce(
        quick=True, models=["rect_lattice", "e8z_lattice"],
        overrides=["monte_carlo=false", "spacing_factors=[0.7, 1.4]"],
        runs_dir=tmp_path / "runs", results_dir=tmp_path / "res",
    )  # fmt: skip
    for name in ("rect_lattice", "e8z_lattice"):
        row = payload["rows"][name]
        points = row["rate_control"]
        assert [p["factor"] for p in points] == [0.7, 1.0, 1.4]
        assert all(p["round_trip_exact"] for p in points)
        bits = [p["coded_bits_per_image"] for p in points]
        assert bits[0] > bits[1] > bits[2]
        assert points[1]["coded_bits_per_image"] == row["coded_bits_per_image"]
        assert points[1]["hard_distortion_nats_per_image"] == pytest.approx(
            row["hard_distortion_nats_per_image"], rel=1e-9
        )
    at = payload["rows"]["e8z_lattice"]["rate_control_at_reference"]
    assert at["reference"] == "rect_lattice"
    assert "rate_control_at_reference" not in payload["rows"]["rect_lattice"]
    sweep = payload["rows"]["e8z_lattice"]["rate_control"]
    assert at["bits_per_image"] == bits_at_distortion(sweep, at["distortion_nats_per_image"])
    ref_sweep = payload["rows"]["rect_lattice"]["rate_control"]
    own = next(p for p in sweep if p["factor"] == 1.0)["hard_distortion_nats_per_image"]
    assert at["reference_bits_at_own_distortion"] == bits_at_distortion(ref_sweep, own)
    assert "| e8z_lattice | 1.400 |" in rate_control_table(payload)
    assert (tmp_path / "res" / "coding-mnist-quick-rate-control.png").is_file()


def test_bits_at_distortion_interpolates_inside_the_sweep_only():
    from qlatent.experiments.coding_mnist import bits_at_distortion

    points = [
        {"hard_distortion_nats_per_image": 10.0, "coded_bits_per_image": 30.0},
        {"hard_distortion_nats_per_image": 12.0, "coded_bits_per_image": 26.0},
    ]
    assert bits_at_distortion(points, 11.5) == pytest.approx(27.0)
    assert bits_at_distortion(points, 12.0) == pytest.approx(26.0)
    assert bits_at_distortion(points, 9.9) is None and bits_at_distortion(points, 12.1) is None


def test_spacing_scaled_restores_the_lattice_and_refuses_bad_factors():
    from qlatent.experiments.coding_mnist import config, spacing_scaled

    neck = build("lattice", dim=16, lattice="e8")
    before = neck.log_spacing.detach().clone()
    with pytest.raises(RuntimeError), spacing_scaled(neck, 2.0):
        assert torch.allclose(neck.spacing, 2 * before.exp())
        raise RuntimeError("inside")
    assert torch.equal(neck.log_spacing, before)
    for bad in ("[0.1]", "[true]", '"1.0"', "[1.0, 3]"):
        with pytest.raises(ValueError, match="spacing_factors"):
            config(quick=True, overrides=[f"spacing_factors={bad}"])
