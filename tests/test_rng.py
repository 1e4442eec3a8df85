"""The counter-based generator: exact uint32 semantics, uniformity, independence, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from qlatent.rng import SeedKeys, _counter_uniform_torch, counter_uniform, draw_key, lowbias32

M32 = 0xFFFFFFFF


def lowbias32_reference(v: int) -> int:
    """The published hash on Python integers (no overflow questions)."""
    v ^= v >> 16
    v = (v * 0x7FEB352D) & M32
    v ^= v >> 15
    v = (v * 0x846CA68B) & M32
    return v ^ (v >> 16)


def to_int32(v: int) -> int:
    return v - (1 << 32) if v >= (1 << 31) else v


def test_lowbias32_matches_reference_on_all_bit_patterns():
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**31), 2**31, (2000,), generator=g, dtype=torch.int32)
    words = torch.cat([words, torch.tensor([0, 1, -1, 2**31 - 1, -(2**31)], dtype=torch.int32)])
    before = words.clone()
    got = lowbias32(words)
    assert torch.equal(words, before)  # the hash works in place on its own buffers only
    for w, h in zip(words.tolist(), got.tolist(), strict=True):
        assert h & M32 == lowbias32_reference(w & M32)


def test_counter_uniform_is_the_documented_function():
    key = to_int32(0xDEADBEEF)
    r = counter_uniform(torch.tensor(key, dtype=torch.int32), (7, 9))
    expected = [
        (lowbias32_reference(lowbias32_reference(i) ^ (key & M32)) >> 8) * 2.0**-24
        for i in range(63)
    ]
    assert r.flatten().tolist() == expected  # bit for bit: no machine-dependent step


def test_numpy_blocks_give_the_torch_bits():
    # the CPU path hashes in NumPy blocks of 2^16 counters; sizes around a block boundary and
    # keys with the top bit set must give exactly the whole-tensor torch operations' numbers
    for key in (0, -1, -(2**31), 2**31 - 1, 0x1234567):
        k = torch.tensor(key, dtype=torch.int32)
        for shape in ((1,), (3, 5), (2**16,), (2**16 + 1,), (1000, 131)):
            for dtype in (torch.float32, torch.float64):
                fast = counter_uniform(k, shape, dtype)
                assert fast.dtype == dtype and fast.shape == shape
                assert torch.equal(fast, _counter_uniform_torch(k, shape, dtype))
    assert counter_uniform(torch.tensor(3, dtype=torch.int32), (0, 4)).shape == (0, 4)


def test_an_offset_draws_the_rows_of_the_whole_draw():
    # blocks of rows drawn with offset = first row · m are the whole draw's rows, on both paths,
    # across a NumPy block boundary and with blocks of uneven size
    k = torch.tensor(-7, dtype=torch.int32)
    whole = counter_uniform(k, (3000, 45), torch.float64)
    for start, stop in ((0, 1), (1, 1457), (1457, 1458), (1458, 3000)):
        shape = (stop - start, 45)
        block = counter_uniform(k, shape, torch.float64, offset=start * 45)
        assert torch.equal(block, whole[start:stop])
        assert torch.equal(_counter_uniform_torch(k, shape, torch.float64, start * 45), block)


def test_values_lie_on_the_dyadic_grid_in_unit_interval():
    r = counter_uniform(torch.tensor(5, dtype=torch.int32), (1000, 64), dtype=torch.float64)
    assert r.min() >= 0 and r.max() < 1
    assert torch.equal(r * 2**24, torch.round(r * 2**24))


def test_uniform_and_uncorrelated():
    n_rows, dim = 4096, 64
    r = counter_uniform(torch.tensor(12345, dtype=torch.int32), (n_rows, dim), torch.float64)
    flat = r.flatten().numpy()
    assert stats.kstest(flat, "uniform").pvalue > 1e-3
    n = flat.size
    # correlations of neighbours in a row, of the same coordinate in adjacent rows, and of two
    # keys: each ~N(0, 1/n) if independent; 5 standard errors would miss a real dependence of
    # 5/sqrt(n) ≈ 0.01 or more
    tol = 5 / math.sqrt(n)
    row_lag = torch.corrcoef(torch.stack([r[:, :-1].flatten(), r[:, 1:].flatten()]))[0, 1]
    col_lag = torch.corrcoef(torch.stack([r[:-1].flatten(), r[1:].flatten()]))[0, 1]
    other = counter_uniform(torch.tensor(12346, dtype=torch.int32), (n_rows, dim), torch.float64)
    key_corr = torch.corrcoef(torch.stack([r.flatten(), other.flatten()]))[0, 1]
    assert abs(row_lag) < tol and abs(col_lag) < tol and abs(key_corr) < tol
    # pairs of neighbours fill the unit square evenly (chi-square on a 16x16 grid)
    cells = (r[:, :-1] * 16).long() * 16 + (r[:, 1:] * 16).long()
    counts = torch.bincount(cells.flatten(), minlength=256).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_keys_come_from_the_generator():
    a = draw_key(torch.Generator().manual_seed(3))
    b = draw_key(torch.Generator().manual_seed(3))
    c = draw_key(torch.Generator().manual_seed(4))
    assert a.dtype == torch.int32 and a.dim() == 0
    assert a == b and a != c


def test_seed_keys_are_the_documented_hash_of_the_seed_alone():
    h = lowbias32_reference
    for seed in (0, 1, 2**32 + 5, 2**64 - 1):
        keys = SeedKeys(seed)
        torch.manual_seed(123)  # torch's generators play no part
        got = [draw_key(keys).item() & M32 for _ in range(3)]
        base = h(h(seed & M32) ^ (seed >> 32))
        assert got == [h(base ^ j) for j in range(3)]
        assert keys.calls == 3
    assert SeedKeys(7).next_key() != SeedKeys(8).next_key()
    for bad in (-1, 2**64, 1.0, True):
        with pytest.raises(ValueError, match="seed"):
            SeedKeys(bad)


def test_too_many_numbers_per_key_is_an_error():
    with pytest.raises(ValueError, match="2\\^31"):
        counter_uniform(torch.tensor(0, dtype=torch.int32), (2**16, 2**15))
    with pytest.raises(ValueError, match="2\\^31"):  # the counters, not the numbers, are capped
        counter_uniform(torch.tensor(0, dtype=torch.int32), (4,), offset=2**31 - 4)
    with pytest.raises(ValueError, match="2\\^31"):
        counter_uniform(torch.tensor(0, dtype=torch.int32), (4,), offset=-1)


@pytest.mark.slow
def test_compiled_generator_matches_eager():
    key = torch.tensor(-77, dtype=torch.int32)
    compiled = torch.compile(counter_uniform)
    assert torch.equal(compiled(key, (300, 40)), counter_uniform(key, (300, 40)))
