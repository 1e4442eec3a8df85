"""What a model reports as its rate against what its file costs: ``ideal_bits`` and the hard
path's rate recomputed in NumPy from the code model's own probabilities, Theorem 1's two paths
in expectation, per-example rates of spatial latents, files of subsets, orders and splits of a
batch, and the counted code model's files measured symbol by symbol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import compress, decompress, ideal_bits, unpack
from qlatent.eval import codelength_report
from qlatent.models import gated_vae
from qlatent.rng import SeedKeys

#: what a file may cost beyond its information content: the 32-bit check word, the coder's
#: final state (up to 64 bits) and the rounding to whole 32-bit words
OVERHEAD = 32 + 64 + 32


def _payload_bits(data: bytes) -> int:
    return 8 * len(unpack(data)[1])


def _laplace_cell_bits(bn, y: torch.Tensor, seed: int) -> np.ndarray:
    """Per row, −log2 P(X̂ ∈ kΔ − u ± Δ/2) under the Laplace(0, b) prior, in float64 from the
    hard path's k and u (the dither of ``SeedKeys(seed)``)."""
    u = bn._hard_dither(y.shape[0], SeedKeys(seed), "cpu").detach().double().numpy()
    k = bn.quantize(y, generator=SeedKeys(seed)).double().numpy()
    spacing = bn.spacing.detach().double().numpy()
    scale = bn.scale.detach().double().numpy()
    lo = k * spacing - u - spacing / 2
    hi = lo + spacing
    side = -np.expm1(-spacing / scale) / 2
    right = np.exp(-np.maximum(lo, 0) / scale) * side
    left = np.exp(np.minimum(hi, 0) / scale) * side
    middle = 1 - (np.exp(np.minimum(lo, 0) / scale) + np.exp(-np.maximum(hi, 0) / scale)) / 2
    mass = np.where(lo >= 0, right, np.where(hi <= 0, left, middle))
    return -np.log2(mass).sum(1)


# ------------------------------------------------------------- rectangular lattice, Theorem 1
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_lattice_reports_the_ideal_bits_its_file_approaches(dtype):
    # the ideal was the hard path's rate, rounded to 8 (bfloat16) or 11 (float16) significant
    # bits per row: for bfloat16 at Δ = 0.1, b = 5 it said 249,918 bits for a file of 249,216
    # (0.3% above the file and the exact 249,173); at b = 0.05, 0.35% below them
    for spacing, scale in ((0.1, 5.0), (1.0, 0.05)):
        bn = build("lattice", dim=8, init_spacing=spacing, init_scale=scale).to(dtype).eval()
        y = (scale * torch.randn(4000, 8, generator=torch.Generator().manual_seed(2))).to(dtype)
        exact = float(_laplace_cell_bits(bn, y, 5).sum())
        assert ideal_bits(bn, y, seed=5) == pytest.approx(exact, rel=1e-9)
        data = compress(bn, y, seed=5)
        assert exact - 1 <= _payload_bits(data) <= exact + OVERHEAD
        assert torch.equal(decompress(bn, data), bn(y, generator=SeedKeys(5)).y_hat)


def test_a_float32_lattice_ideal_is_its_hard_path_rate_and_the_cells_mass():
    bn = build("lattice", dim=6, init_spacing=0.7, init_scale=1.5).eval()
    with torch.no_grad():
        bn.log_scale.add_(torch.linspace(-2.0, 2.0, 6))
    # inputs at the prior's scale: an outlier far in a narrow prior's tail costs the coder its
    # 24-bit floor, less than the ideal (known, not checked here)
    y = torch.randn(3000, 6, generator=torch.Generator().manual_seed(3)) * bn.scale.detach()
    with torch.no_grad():
        rate = bn(y, generator=SeedKeys(9)).rate.double().numpy() / math.log(2)
    exact = _laplace_cell_bits(bn, y, 9)
    np.testing.assert_allclose(rate, exact, rtol=1e-5, atol=1e-4)  # row by row, float32 rates
    bits = ideal_bits(bn, y, seed=9)
    assert bits == pytest.approx(rate.sum(), rel=1e-12)
    assert bits == pytest.approx(exact.sum(), rel=1e-6)
    assert exact.sum() - 1 <= _payload_bits(compress(bn, y, seed=9)) <= exact.sum() + OVERHEAD


def test_the_training_and_hard_path_rates_agree_in_expectation():
    # Theorem 1 / the crypto lemma: for a fixed y, the training path's rate under a uniform
    # dither and the hard path's −log P(z | u) have the same mean over dithers; the file of the
    # hard path is its ideal plus the coder's overhead
    bn = build("lattice", dim=4, init_spacing=1.2, init_scale=0.8)
    y = torch.tensor([[0.3, -1.7, 2.5, 0.0], [4.0, 0.45, -0.6, 0.2]]).repeat(6000, 1)
    with torch.no_grad():
        training = bn.train()(y, generator=torch.Generator().manual_seed(1)).rate.double()
        hard = bn.eval()(y, generator=SeedKeys(2)).rate.double()
    for row in (0, 1):  # each fixed input on its own
        t, h = training[row::2], hard[row::2]
        se = math.sqrt(t.var().item() / t.numel() + h.var().item() / h.numel())
        assert abs(t.mean().item() - h.mean().item()) < 4 * se
    bits = ideal_bits(bn, y, seed=2)
    assert bits == pytest.approx(hard.sum().item() / math.log(2), rel=1e-9)
    assert bits - 1 <= _payload_bits(compress(bn, y, seed=2)) <= bits + OVERHEAD


def test_the_codelength_report_is_nats_per_example_of_its_own_dithers():
    # the report's hard-path rate is the bottleneck's under a generator seeded with seed + 1,
    # in nats per example; ideal_bits is bits over the whole input under SeedKeys(seed): the
    # two agree in expectation, not dither for dither
    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=4, hidden=16, data_dim=12).eval()
    x = (torch.rand(3000, 12, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    report = codelength_report(model, x, seed=3, batch_size=len(x))
    bn = model.bottleneck
    with torch.no_grad():
        y = model.encoder(x)
        hard = bn.eval()(y, generator=torch.Generator().manual_seed(4)).rate.double()
        training = bn.train()(y, generator=torch.Generator().manual_seed(3)).rate.double()
    bn.eval()
    assert report.codelength.rate == pytest.approx(hard.mean().item(), rel=1e-12)
    assert report.neg_elbo.rate == pytest.approx(training.mean().item(), rel=1e-12)
    bits = ideal_bits(bn, y, seed=3)
    with torch.no_grad():
        coded = bn(y, generator=SeedKeys(3)).rate.double()
    assert bits == pytest.approx(coded.sum().item() / math.log(2), rel=1e-9)
    se = math.sqrt((hard.var().item() + coded.var().item()) / len(x))
    assert abs(bits * math.log(2) / len(x) - report.codelength.rate) < 4 * se
    payload = _payload_bits(compress(bn, y, seed=3))
    assert bits - 1 <= payload <= bits + OVERHEAD


# --------------------------------------------------------------------------- spatial latents
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("lattice", {"dim": 4, "init_spacing": 0.5, "init_scale": 2.0}),
        ("lattice", {"dim": 4, "lattice": "d4", "init_spacing": 0.5, "init_scale": 2.0}),
        ("vq", {"dim": 4, "num_codes": 11}),
    ],
)
def test_a_spatial_input_costs_the_rows_of_its_positions(name, kwargs):
    # (B, D, H, W): the per-example rate sums the H·W positions, and the file is the file of
    # the B·H·W rows (batch, then position), bit for bit
    bn = build(name, **kwargs).eval()
    y = 2 * torch.randn(5, 4, 3, 7, generator=torch.Generator().manual_seed(6))
    rows = y.permute(0, 2, 3, 1).reshape(-1, 4)
    with torch.no_grad():
        per_example = bn(y, generator=SeedKeys(4)).rate.double()
        per_row = bn(rows, generator=SeedKeys(4)).rate.double()
    torch.testing.assert_close(per_example, per_row.reshape(5, 21).sum(1), rtol=1e-6, atol=1e-6)
    assert ideal_bits(bn, y, seed=4) == pytest.approx(ideal_bits(bn, rows, seed=4), rel=1e-12)
    assert unpack(compress(bn, y, seed=4))[1] == unpack(compress(bn, rows, seed=4))[1]


def test_iid_positions_cost_h_times_w_times_one_position():
    # one position's row repeated over an 8×8 map: the counted code gives every position the
    # same −log2 p, so an example's file is 64 times one position's; the lattice's dither
    # differs per position, so there the mean over positions matches in expectation
    vq = build("vq", dim=2, num_codes=4).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]]))
    counts = [60, 25, 10, 5]
    train = torch.cat([vq.codebook.detach()[i].expand(c, 2) for i, c in enumerate(counts)])
    vq.update(train)
    p = (np.array(counts) + 0.5) / (100 + 0.5 * 5)
    for index in range(4):
        one = vq.codebook.detach()[index].reshape(1, 2)
        y = one.reshape(1, 2, 1, 1).expand(3, 2, 8, 8).contiguous()
        bits = ideal_bits(vq, y, seed=0)
        assert bits == pytest.approx(3 * 64 * -math.log2(p[index]), rel=1e-12)
        assert bits == pytest.approx(192 * ideal_bits(vq, one, seed=0), rel=1e-12)
        assert bits - 1 <= _payload_bits(compress(vq, y, seed=0)) <= bits + OVERHEAD
        assert torch.equal(vq(y).rate, torch.full((3,), 64 * math.log(4)))  # log K per position
    bn = build("lattice", dim=3, init_spacing=0.5, init_scale=1.0).eval()
    row = torch.tensor([0.4, -1.1, 2.0])
    y = row.reshape(1, 3, 1, 1).expand(40, 3, 8, 8).contiguous()
    with torch.no_grad():
        per_example = bn(y, generator=SeedKeys(1)).rate.double()
        single = bn(row.expand(20000, 3), generator=SeedKeys(2)).rate.double()
    se = math.sqrt(per_example.var().item() / 40 + 64**2 * single.var().item() / 20000)
    assert abs(per_example.mean().item() - 64 * single.mean().item()) < 4 * se


# ------------------------------------------------------------ subsets, orders and splits
def _counted(name: str, **kwargs):
    bn = build(name, **kwargs).eval()
    train = 1.5 * torch.randn(3000, kwargs["dim"], generator=torch.Generator().manual_seed(7))
    bn.update(train)
    return bn


@pytest.mark.parametrize(
    "make",
    [
        lambda: build("vq", dim=3, num_codes=19).eval(),  # uniform indices (no update)
        lambda: _counted("vq", dim=3, num_codes=19),
        lambda: _counted("vq_ema", dim=3, num_codes=19),
        lambda: _counted("soft_em_vq", dim=3, num_codes=19),
        lambda: _counted("learnable_lattice", dim=3, init_range=0.4),
        lambda: _counted("scalar_st", dim=3, levels=5),
        lambda: _counted("vector_st", dim=4, group=2, codes=6),
    ],
)
def test_subsets_orders_and_splits_of_counted_symbols_add_up(make):
    # without a dither every row's bits are its own: a file of any subset, order or split
    # costs the sum of its rows' ideal bits, and the ideal is that sum exactly
    bn = make()
    d = bn.dim
    y = 2 * torch.randn(900, d, generator=torch.Generator().manual_seed(8))
    per_row = np.array([ideal_bits(bn, y[i : i + 1], seed=0) for i in range(0, 900, 9)])
    few = y[::9]
    assert ideal_bits(bn, few, seed=0) == pytest.approx(per_row.sum(), rel=1e-12)
    whole = ideal_bits(bn, y, seed=0)
    order = torch.randperm(900, generator=torch.Generator().manual_seed(1))
    assert ideal_bits(bn, y[order], seed=0) == pytest.approx(whole, rel=1e-12)
    first, second = ideal_bits(bn, y[:333], seed=0), ideal_bits(bn, y[333:], seed=0)
    assert first + second == pytest.approx(whole, rel=1e-12)
    for part, bits in ((y, whole), (y[order], whole), (y[:333], first), (y[333:], second)):
        data = compress(bn, part, seed=0)
        assert bits - 1 <= _payload_bits(data) <= 1.001 * bits + OVERHEAD
        assert torch.equal(decompress(bn, data), bn(part).y_hat)


@pytest.mark.parametrize("lattice", ["rectangular", "a2", "e8"])
def test_subsets_orders_and_splits_of_dithered_rows_cost_their_own_ideal(lattice):
    # a dithered row's bits depend on its place (the dither is drawn by position), so a part's
    # file is measured against the part's own ideal, and the parts' sum against the whole's
    # in expectation
    bn = build("lattice", dim=8, lattice=lattice, init_spacing=0.6, init_scale=1.5).eval()
    y = 1.5 * torch.randn(2400, 8, generator=torch.Generator().manual_seed(9))
    order = torch.randperm(2400, generator=torch.Generator().manual_seed(2))
    whole = ideal_bits(bn, y, seed=1)
    parts = [y[order], y[:1000], y[1000:], y[::3]]
    bits = [ideal_bits(bn, part, seed=1) for part in parts]
    for part, ideal in zip(parts, bits, strict=True):
        assert ideal - 1 <= _payload_bits(compress(bn, part, seed=1)) <= ideal + OVERHEAD
    # about 3.3 bits of spread per row: the sums differ by a few tens of bits
    assert abs(bits[0] - whole) < 0.01 * whole
    assert abs(bits[1] + bits[2] - whole) < 0.01 * whole


# ---------------------------------------------------------------------- counted frequencies
def test_a_counted_file_pays_each_symbols_counted_probability_and_unseen_ones_code():
    # K = 8 codewords, counted 900 / 90 / 10 times and five never: the marginal cost of one
    # more row of an index, measured as the difference of two files, is −log2 of its counted
    # probability (Krichevsky–Trofimov, with the escape's half count)
    vq = build("vq", dim=1, num_codes=8).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.arange(8.0).reshape(8, 1))
    counts = np.array([900, 90, 10, 0, 0, 0, 0, 0])
    vq.update(torch.repeat_interleave(torch.arange(8.0), torch.from_numpy(counts)).reshape(-1, 1))
    p = (counts + 0.5) / (counts.sum() + 0.5 * 9)
    probs = vq.code_probabilities()[0].numpy()
    np.testing.assert_allclose(probs[:8], p, rtol=1e-15)
    for index in (0, 1, 2, 5):
        y = torch.full((4000, 1), float(index))
        small, large = compress(vq, y[:2000], seed=0), compress(vq, y, seed=0)
        per_row = (_payload_bits(large) - _payload_bits(small)) / 2000
        assert per_row == pytest.approx(-math.log2(p[index]), abs=0.02 + 64 / 2000)
        assert ideal_bits(vq, y, seed=0) == pytest.approx(-4000 * math.log2(p[index]), rel=1e-12)
        assert torch.equal(decompress(vq, large), y)
