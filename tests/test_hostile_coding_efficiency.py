"""What a round trip cannot see: file sizes and reported rates against independent computations
of −Σ log2 P(symbol), in extreme but legal cases (large alphabets, skewed counts, escapes,
spatial latents), and the decoder's size check against the coder's real fixed-point costs."""

from __future__ import annotations

import math

import constriction
import numpy as np
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import compress, decompress, ideal_bits, unpack
from qlatent.coding.models import UniformIndex
from qlatent.rng import SeedKeys


def _coded_bits(model, symbols: np.ndarray) -> float:
    """Bits per symbol that constriction's ANS coder spends on ``symbols`` with ``model``."""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.array([0x514C, 0x4331], dtype=np.int32), model.__class__(1 << 16))
    start = coder.num_bits()
    coder.encode_reverse(symbols.astype(np.int32), model)
    return (coder.num_bits() - start) / symbols.size


@pytest.mark.parametrize("num_codes", [37, 2**16 + 1, 2**17 + 1, 3 * 2**20, 2**23 + 1, 2**24])
def test_the_uniform_row_bound_holds_for_the_cheapest_index(num_codes):
    # constriction's Uniform(K) gives every index ⌊2^24/K⌋ units and the last one the remainder
    # as well: for K = 3·2^20 the last index costs 4 bits, not log2 K = 21.6. min_row_bits was
    # log2 K, so the decoder's size check refused such files as corrupt
    model = constriction.stream.model.Uniform(num_codes)
    cheapest = _coded_bits(model, np.full(4096, num_codes - 1))
    bound = UniformIndex(num_codes, None, None).min_row_bits()
    assert bound <= cheapest + 2 * 32 / 4096


def test_a_file_of_the_last_codeword_of_a_large_codebook_decodes():
    num_codes = 2**17 + 1
    vq = build("vq", dim=1, num_codes=num_codes).eval()
    with torch.no_grad():  # every input's nearest code is the last one
        vq.codebook.fill_(5.0)
        vq.codebook[-1] = 0.0
    z = torch.zeros(1000, 1)
    assert bool((vq(z).indices == num_codes - 1).all())
    data = compress(vq, z, seed=0)
    assert 8 * len(unpack(data)[1]) < 8 * 1000  # 7 bits an index, where log2 K = 17
    assert torch.equal(decompress(vq, data), vq(z).y_hat)


def test_a_codebook_beyond_the_coders_alphabet_is_refused_with_a_value_error():
    # 2^24 + 1 codes (67 MB of float32, within the model-size limit): constriction's Uniform
    # panicked with a pyo3 PanicException, which is no Exception and passed every handler
    vq = build("vq", dim=1, num_codes=2**24 + 1).eval()
    z = torch.randn(2, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"at most 2\^24"):
        compress(vq, z, seed=0)
    with pytest.raises(ValueError, match=r"at most 2\^24"):
        UniformIndex(2**24 + 1, None, None)


def test_counted_rates_match_an_independent_count_with_escapes_and_skew():
    # a learnable lattice whose first coordinate is almost always 0 (one outlier widens its
    # range to 6001 symbols), the others narrow; then test rows with escapes on both sides
    bn = build("learnable_lattice", dim=3, init_range=0.5).eval()
    with torch.no_grad():
        bn.basis.copy_(torch.tensor([1.0, 0.5, 2.0]))
    g = torch.Generator().manual_seed(4)
    train = torch.cat([0.2 * torch.randn(30000, 3, generator=g), torch.tensor([[6000.0, 0, 0]])])
    summary = bn.update(train.split(4096))
    assert summary["symbols"] == train.numel()
    k_train = torch.round(train / bn.basis.detach()).long()
    test = 0.2 * torch.randn(20000, 3, generator=g)
    test[:5, 1] = torch.tensor([40.0, -40.0, 1e6, -1e6, 3.0])  # outside the counted range
    k_test = torch.round(test / bn.basis.detach()).long()
    expected = 0.0
    widths = []
    for f in range(3):
        low, high = int(k_train[:, f].min()), int(k_train[:, f].max())
        counts = np.bincount((k_train[:, f] - low).numpy(), minlength=high - low + 1)
        widths.append(counts.size + 1)
        p = np.append(counts + 0.5, 0.5) / (counts.sum() + 0.5 * (counts.size + 1))
        s = (k_test[:, f] - low).numpy()
        inside = (s >= 0) & (s < counts.size)
        expected += -np.log2(p[s[inside]]).sum()
        expected += (~inside).sum() * (32 - math.log2(p[-1]))  # escape, then 32 raw bits
    bits = ideal_bits(bn, test, seed=0)
    assert bits == pytest.approx(expected, rel=1e-12)
    data = compress(bn, test, seed=0)
    payload = 8 * len(unpack(data)[1])
    # the coder keeps one 2^-24 unit for every symbol of a table, taken from the others: at
    # most −log2(1 − L·2^-24) bits more per coded symbol (6002 symbols: 0.0005 bits)
    floor = sum(-math.log2(1 - w * 2.0**-24) for w in widths) * test.shape[0]
    assert bits - 1 <= payload <= bits + floor + 96
    assert torch.equal(decompress(bn, data), bn(test).y_hat)


def test_spatial_latents_are_counted_per_position():
    # (B, D, H, W): every position is a row of D symbols, whatever the batches
    bn = build("learnable_lattice", dim=4, init_range=0.4).eval()
    z = torch.randn(6, 4, 3, 5, generator=torch.Generator().manual_seed(2))
    rows = z.permute(0, 2, 3, 1).reshape(-1, 4)
    bn.update(rows)
    counts, low = bn.code_counts.clone(), bn.code_low.clone()
    for batches in (z, [z[:1], z[1:4], z[4:]]):
        summary = bn.update(batches)
        assert torch.equal(bn.code_counts, counts) and torch.equal(bn.code_low, low)
        assert summary["symbols"] == rows.numel()
    assert int(counts.clamp_min(0).sum()) == rows.numel()


def test_lattice_ideal_bits_are_the_cells_prior_mass_in_float64():
    # −log2 of the Laplace cell [kΔ − u ± Δ/2] written out in NumPy, against ideal_bits and the
    # file: one coordinate far narrower than its cell, one far wider
    bn = build("lattice", dim=4, init_spacing=1.0, init_scale=1.0).eval()
    with torch.no_grad():
        bn.log_scale.copy_(torch.log(torch.tensor([0.02, 0.7, 3.0, 40.0])))
    y = torch.randn(3000, 4, generator=torch.Generator().manual_seed(5)) * bn.scale.detach()
    u = bn._hard_dither(y.shape[0], SeedKeys(11), "cpu").detach().double().numpy()
    k = bn.quantize(y, generator=SeedKeys(11)).double().numpy()
    spacing, scale = bn.spacing.detach().double().numpy(), bn.scale.detach().double().numpy()
    lo = k * spacing - u - spacing / 2
    hi = lo + spacing
    side = -np.expm1(-spacing / scale) / 2
    mass = np.where(
        lo >= 0,
        np.exp(-lo / scale) * side,
        np.where(
            hi <= 0, np.exp(hi / scale) * side, 1 - (np.exp(lo / scale) + np.exp(-hi / scale)) / 2
        ),
    )
    exact = float(-np.log2(mass).sum())
    assert ideal_bits(bn, y, seed=11) == pytest.approx(exact, rel=1e-6)
    payload = 8 * len(unpack(compress(bn, y, seed=11))[1])
    assert exact - 1 <= payload <= 1.001 * exact + 64
