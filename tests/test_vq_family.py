"""Properties of the codebook bottlenecks beyond the contract: nearest-codeword search against
brute force, usage / perplexity, the VQ losses and gradients, the EMA M-step (by hand, and the
same on two gloo processes as on one), soft EM's fractional counts and VIB term, Soft VQ-VAE's
estimator in both variants, and information dropout's rate."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from qlatent.bottlenecks import _codebook as cb
from qlatent.bottlenecks import _codebook_search as search
from qlatent.bottlenecks import build
from qlatent.bottlenecks.soft_vq import soft_assignment_logits


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- shared maths
# one block, one row per chunk, and chunks of 7 rows with a shorter last one (13 codes)
@pytest.mark.parametrize("chunk", [1 << 22, 7, 91])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_codeword_matches_brute_force(monkeypatch, chunk, dtype):
    monkeypatch.setattr(search, "_CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(search, "_MIN_CHUNK_ROWS", 1)
    z = torch.randn(300, 5, generator=gen(0)).to(dtype)
    codebook = torch.randn(13, 5, generator=gen(1)).to(dtype)
    brute = torch.cdist(z.double(), codebook.double()).argmin(1)
    assert torch.equal(cb.nearest_codeword(z, codebook), brute)


@pytest.mark.parametrize("chunk", [1 << 22, 7, 91])
def test_nearest_codeword_ties_go_to_the_lowest_index(monkeypatch, chunk):
    """Duplicated codewords tie exactly: the first of them wins, in every chunk layout."""
    monkeypatch.setattr(search, "_CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(search, "_MIN_CHUNK_ROWS", 1)
    base = torch.randint(-2, 3, (6, 4), generator=gen(4)).float()
    codebook = torch.cat([base, base, base[:3]])  # codeword k + 6 (and k + 12) repeats k
    z = base[torch.randint(0, 6, (500,), generator=gen(5))]  # every row sits on a codeword
    assert torch.equal(
        cb.nearest_codeword(z, codebook), (z.unsqueeze(1) == base).all(-1).int().argmax(1)
    )


def _min_indices(distances: torch.Tensor) -> torch.Tensor:
    return distances.min(1).indices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_codes", [2, 3, 100, 128, 129, 4096])
def test_first_minimum_is_torch_min_on_hard_rows(dtype, num_codes):
    """The weighted search returns ``torch.min``'s first index on every row: exact ties (±0
    included), near-ties one ulp apart on either side of the first minimum, rows with no
    negative distance, ±inf, and NaN (such a row goes to ``torch.min`` itself)."""
    g = gen(num_codes)
    d = -torch.rand(64, num_codes, generator=g, dtype=torch.float64).to(dtype) - 0.5
    one_ulp = torch.finfo(dtype).eps
    d[1] = -1.0  # every code ties: the first one wins
    d[2, -1] = d[2].min() * (1 + one_ulp)  # the minimum at the last code ...
    d[2, 0] = d[2, -1] * (1 - one_ulp)  # ... one ulp above it at code 0
    d[3] = torch.rand(num_codes, generator=g).to(dtype)  # no negative distance
    d[4, :] = 0.0
    d[4, num_codes // 2] = -0.0  # −0 and +0 tie
    d[5, num_codes // 2] = math.nan
    d[6, -1] = -math.inf
    d[7, 0] = math.inf
    d[8] = d[8].min() * (1 + one_ulp * torch.arange(num_codes, dtype=dtype) / num_codes)
    d[9, num_codes // 3 :] = d[9].min() - 1.0  # a run of equal minima
    d[10, num_codes // 2 :] = -math.inf  # −inf ties
    d[11, [0, -1]] = math.inf
    d[11, num_codes // 2 :] = -math.inf
    d[12] = math.inf  # every code at +inf
    d[13] = torch.rand(num_codes, generator=g).to(dtype) + 1.0
    d[13, -1], d[13, num_codes // 2] = -0.0, 0.0  # a zero minimum, +0 ahead of −0 when K > 2
    d[14, : num_codes // 2 + 1] = math.nan  # NaN first, and in every row of K = 2
    out = torch.empty(64, dtype=torch.int64)
    cb._first_minimum(d, torch.empty_like(d), out)
    assert torch.equal(out, _min_indices(d))


@pytest.mark.fuzz
@given(
    num_codes=st.integers(1, 300),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_fuzz_first_minimum_is_torch_min(num_codes, seed, dtype):
    """Rows drawn from a few values each (per row a negative or positive base and its
    neighbours 1–3 ulps away, ±0, ±inf, NaN) so that ties and near-ties are the rule."""
    g = gen(seed)
    eps = torch.finfo(dtype).eps
    rows = 40
    base = (torch.rand(rows, 1, generator=g, dtype=torch.float64) * 4 - 2).to(dtype)
    steps = torch.tensor([0.0, 1.0, -1.0, 2.0, -3.0], dtype=dtype) * eps
    pool = torch.cat(
        [
            base * (1 + steps),
            torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan], dtype=dtype).expand(rows, 5),
        ],
        1,
    )
    # mostly the base and its neighbours; each special value in about one draw in 55
    weights = torch.tensor([10.0] * 5 + [1.0] * 5)
    pick = torch.multinomial(weights.expand(rows, 10), num_codes, replacement=True, generator=g)
    d = pool.gather(1, pick)
    out = torch.empty(rows, dtype=torch.int64)
    cb._first_minimum(d, torch.empty_like(d), out)
    assert torch.equal(out, _min_indices(d))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_codes", [128, 4096])
def test_nearest_codeword_weighted_search_matches_torch_min(monkeypatch, dtype, num_codes):
    """The CPU search of large inputs (in parts of a chunk at K = 4096) gives the indices of
    ``addmm`` followed by ``torch.min``, bit for bit, on trained-looking and adversarial
    codebooks: duplicated codewords, a codeword at the origin, near-duplicates 1 ulp apart."""
    monkeypatch.setattr(search, "_CHUNK_ELEMENTS", 1 << 16)
    monkeypatch.setattr(search, "_MIN_CHUNK_ROWS", 64)
    g = gen(7)
    codebook = torch.randn(num_codes, 8, generator=g, dtype=dtype) * 0.5
    codebook[1] = codebook[0]
    codebook[2] = 0.0
    codebook[3] = codebook[4] * (1 + torch.finfo(dtype).eps)
    z = torch.cat(
        [
            torch.randn(1500, 8, generator=g, dtype=dtype),
            codebook[torch.randint(0, num_codes, (500,), generator=g)],
            1e-3 * torch.randn(100, 8, generator=g, dtype=dtype),  # nearer the origin
        ]
    )
    expected = torch.addmm(codebook.square().sum(1), z, codebook.t(), alpha=-2.0).min(1).indices
    assert z.shape[0] * num_codes >= cb._WEIGHTED_MIN_ELEMENTS  # the weighted search runs
    assert torch.equal(cb.nearest_codeword(z, codebook), expected)


def test_nearest_codeword_keeps_torch_min_beyond_the_weighted_range(monkeypatch):
    """Half precision and codebooks past 2^16 codes take ``torch.min`` (no weighted search)."""
    calls = []
    monkeypatch.setattr(search, "_first_minimum", lambda *a: calls.append(a))
    monkeypatch.setattr(search, "_WEIGHTED_MAX_CODES", 8)
    z = torch.randn(20000, 4, generator=gen(8))
    codebook = torch.randn(16, 4, generator=gen(9))
    brute = torch.cdist(z.double(), codebook.double()).argmin(1)
    assert torch.equal(cb.nearest_codeword(z, codebook), brute)
    half = cb.nearest_codeword(z.bfloat16(), torch.randn(4, 4, generator=gen(9)).bfloat16())
    assert half.shape == (20000,) and not calls


def test_first_nearest_is_torch_min():
    """The search that ``compile=True`` compiles, run eagerly: ``torch.min``'s index of each row
    on random rows and on exact ties; K for a row holding a NaN."""
    g = gen(11)
    codebook = torch.randint(-2, 3, (9, 4), generator=g).float()
    codebook[5] = codebook[2]  # a duplicate: ties go to 2
    z = torch.cat([torch.randn(200, 4, generator=g), codebook[torch.randint(0, 9, (50,))]])
    z[7, 1] = float("nan")
    distances = torch.addmm(codebook.square().sum(1), z, codebook.t(), alpha=-2.0)
    found = cb._first_nearest(distances, torch.arange(9).unsqueeze(0))
    expected = distances.min(1).indices
    assert found[7] == 9 and found.dtype == torch.int64
    found[7] = expected[7]
    assert torch.equal(found, expected) and not (found == 5).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_search_chunks_short_inputs_and_nans(monkeypatch, dtype):
    """``nearest_codeword(compile=True)`` around the compiled pass (replaced here by the same
    function run eagerly, so that no compiler runs): chunks with a short last one, inputs too
    short to compile, a row with a NaN, the same indices as the eager search."""
    monkeypatch.setattr(search, "_compiled_first_nearest", lambda: cb._first_nearest)
    monkeypatch.setattr(search, "_CHUNK_ELEMENTS", 13 * 100)
    monkeypatch.setattr(search, "_MIN_CHUNK_ROWS", 1)
    g = gen(12)
    codebook = torch.randn(13, 6, generator=g, dtype=dtype)
    codebook[4] = codebook[3]
    z = torch.randn(350, 6, generator=g, dtype=dtype)  # chunks of 100: the last one 50 rows
    z[:40] = codebook[torch.randint(0, 13, (40,), generator=g)]
    z[123, 2] = float("nan")
    for n in (cb._COMPILED_MIN_ROWS - 1, cb._COMPILED_MIN_ROWS, 100, 350):
        eager = cb.nearest_codeword(z[:n], codebook)
        assert torch.equal(cb.nearest_codeword(z[:n], codebook, compile=True), eager), n
    calls = []
    monkeypatch.setattr(search, "_compiled_first_nearest", lambda: calls.append(1))
    cb.nearest_codeword(z[:63], codebook, compile=True)  # below the threshold: eager
    cb.nearest_codeword(z[:64].bfloat16(), codebook.bfloat16(), compile=True)  # not float32/64
    assert not calls


def test_compile_flag_of_the_codebook_methods():
    for name in ("vq", "vq_ema", "soft_em_vq"):
        with pytest.raises(ValueError, match="compile must be True or False"):
            build(name, dim=4, num_codes=8, compile=1)
        assert build(name, dim=4, num_codes=8, compile=True).compile
        assert "compile=True" in repr(build(name, dim=4, num_codes=8, compile=True))
        assert "compile" not in repr(build(name, dim=4, num_codes=8))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_search_matches_eager(dtype):
    """The search compiled by ``torch.compile``: the eager indices at K = 7 to 4096 on random
    rows, rows on duplicated codewords, also inside a caller's ``torch.compile``, and ``vq``'s
    outputs in both modes."""
    g = gen(13)
    for num_codes in (7, 128, 512, 4096):
        codebook = torch.randn(num_codes, 16, generator=g, dtype=dtype) * 0.5
        codebook[1] = codebook[0]
        z = torch.randn(3000, 16, generator=g, dtype=dtype)
        z[:500] = codebook[torch.randint(0, num_codes, (500,), generator=g)]
        for n in (64, 1000, 3000):
            assert torch.equal(
                cb.nearest_codeword(z[:n], codebook, compile=True),
                cb.nearest_codeword(z[:n], codebook),
            ), (num_codes, n)
    outer = torch.compile(lambda rows: cb.nearest_codeword(rows, codebook, compile=True))
    assert torch.equal(outer(z), cb.nearest_codeword(z, codebook))  # inside a caller's compile
    eager = build("vq", dim=16, num_codes=128).to(dtype)
    fused = build("vq", dim=16, num_codes=128, compile=True).to(dtype)
    fused.load_state_dict(eager.state_dict())
    y = torch.randn(2000, 16, generator=g, dtype=dtype)
    for mode in (False, True):
        a, b = eager.train(mode)(y), fused.train(mode)(y)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.y_hat, b.y_hat)
        assert torch.equal(a.aux_loss, b.aux_loss)


def test_squared_distances_are_exact_and_nonnegative():
    z = torch.randn(40, 6, generator=gen(2))
    codebook = torch.cat([z[:3], torch.randn(5, 6, generator=gen(3))])  # exact coincidences
    d = cb.squared_distances(z, codebook)
    brute = (z[:, None, :] - codebook[None]).square().sum(-1)
    assert (d >= 0).all()
    torch.testing.assert_close(d, brute, atol=1e-5, rtol=1e-5)


def test_usage_stats_perplexity():
    uniform = cb.usage_stats(torch.ones(8))
    assert uniform["perplexity"].item() == pytest.approx(8.0)
    assert uniform["codes_used"].item() == 8
    collapsed = cb.usage_stats(torch.tensor([0.0, 5.0, 0.0]))
    assert collapsed["perplexity"].item() == pytest.approx(1.0)
    assert collapsed["codes_used"].item() == 1
    half = cb.usage_stats(torch.tensor([1.0, 1.0, 0.0, 0.0]), prefix="x_")
    assert half["x_perplexity"].item() == pytest.approx(2.0)


# --------------------------------------------------------------------------- vq
def test_vq_losses_and_gradients():
    torch.manual_seed(0)
    vq = build("vq", dim=4, num_codes=6, commitment=0.25)
    y = torch.randn(10, 4, generator=gen(4), requires_grad=True)
    out = vq(y)
    q = vq.codebook[cb.nearest_codeword(y, vq.codebook)]
    torch.testing.assert_close(out.y_hat, q)
    torch.testing.assert_close(out.aux_loss, 1.25 * F.mse_loss(q, y))
    out.aux_loss.backward()
    # codebook term moves the codewords, commitment the encoder: d/dy = β · 2(y − q)/numel
    torch.testing.assert_close(y.grad, 0.25 * 2 * (y - q).detach() / y.numel())
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    # the decoder's gradient goes straight through to y
    y.grad = None
    vq(y).y_hat.sum().backward()
    torch.testing.assert_close(y.grad, torch.ones_like(y))


def test_vq_rate_is_log_k_and_dequantize_rejects_bad_indices():
    vq = build("vq", dim=3, num_codes=16).eval()
    out = vq(torch.randn(5, 3, 2, 2, generator=gen(5)))
    torch.testing.assert_close(out.rate, torch.full((5,), 4 * math.log(16)))
    with pytest.raises(ValueError, match="indices"):
        vq.dequantize(torch.tensor([0, 16]))


# ----------------------------------------------------------------------- vq_ema
def test_ema_update_matches_hand_formula():
    torch.manual_seed(1)
    ema = build("vq_ema", dim=2, num_codes=3, decay=0.9, eps=1e-5)
    initial = ema.codebook.clone()
    y = torch.randn(50, 2, generator=gen(6))
    idx = cb.nearest_codeword(y, initial)
    out = ema(y)
    assert torch.equal(out.indices, idx)
    n = torch.bincount(idx, minlength=3).float()
    s = torch.zeros(3, 2).index_add_(0, idx, y)
    count = 0.1 * n
    total = count.sum()
    smoothed = (count + 1e-5) / (total + 3e-5) * total
    expected = (0.9 * initial + 0.1 * s) / smoothed[:, None]
    torch.testing.assert_close(ema.codebook, expected)
    torch.testing.assert_close(out.y_hat, initial[idx])  # the loss used the pre-update codebook
    assert not any(p.requires_grad for p in ema.parameters())


def test_ema_with_no_memory_moves_codewords_to_cluster_means():
    torch.manual_seed(2)
    ema = build("vq_ema", dim=2, num_codes=4, decay=0.0)
    y = torch.randn(200, 2, generator=gen(7))
    idx = cb.nearest_codeword(y, ema.codebook)
    ema(y)
    used = torch.bincount(idx, minlength=4) > 0
    means = torch.stack([y[idx == k].mean(0) if used[k] else torch.zeros(2) for k in range(4)])
    # with decay 0 only the smoothing separates the codeword from the mean (relative 4e-7)
    torch.testing.assert_close(ema.codebook[used], means[used], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("store", [False, True])
def test_dead_code_count_decays_or_settles_at_its_floor(store):
    """A code that is never chosen: with the smoothed counts kept local its running count stays
    0 and its codeword grows as λ^t / ε; written back (the zalando variant) the count settles at
    ε / (1 − λ) and the codeword shrinks back towards the data."""
    ema = cb.EMACodebook(2, 1, decay=0.9, eps=1e-3, store_smoothed=store)
    m0 = ema.ema_sum[1].clone()
    for _ in range(200):  # every row goes to code 0
        ema.update(torch.tensor([100.0, 0.0]), torch.tensor([[50.0], [0.0]]))
    if store:
        floor = 1e-3 / (1 - 0.9) * 100 / (100 + 2e-3)  # the fixed point of c ← (λc + ε)·n/(n + Kε)
        torch.testing.assert_close(ema.ema_count[1], torch.tensor(floor), rtol=1e-3, atol=0)
    else:
        assert ema.ema_count[1].item() == 0.0
    smoothed = (ema.ema_count[1] + 1e-3) * 100 / (100 + 2e-3) if not store else ema.ema_count[1]
    torch.testing.assert_close(ema.codebook[1], 0.9**200 * m0 / smoothed, rtol=1e-4, atol=0)
    torch.testing.assert_close(ema.codebook[0], torch.tensor([0.5]), rtol=1e-4, atol=0)


def _ddp_ema_worker(rank: int, world: int, init_file: str, y: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(3)  # same initial codebook on every rank
        ema = build("vq_ema", dim=3, num_codes=5, decay=0.5)
        for step in range(3):
            ema(y[step].chunk(world)[rank])  # each rank sees only its half of the batch
        torch.save(ema.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ema_codebook_is_identical_across_ranks_and_equals_the_global_batch(tmp_path):
    y = torch.randn(3, 40, 3, generator=gen(8))
    mp.spawn(
        _ddp_ema_worker,
        args=(2, str(tmp_path / "init"), y, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    torch.manual_seed(3)
    single = build("vq_ema", dim=3, num_codes=5, decay=0.5)
    for step in range(3):
        single(y[step])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- soft_em_vq
def test_soft_em_counts_are_fractional_and_sum_to_rows():
    torch.manual_seed(4)
    sem = build("soft_em_vq", dim=3, num_codes=6, num_samples=4, decay=0.0)
    y = 0.3 * torch.randn(30, 3, generator=gen(9))
    out = sem(y, generator=gen(10))
    assert out.indices is None
    # with decay 0 the EMA count is the batch's fractional count: Σ_k n_k = rows
    assert sem.ema.ema_count.sum().item() == pytest.approx(30.0)
    assert torch.allclose(sem.ema.ema_count * 4, (sem.ema.ema_count * 4).round())
    assert 0 < out.stats["posterior_entropy"] <= math.log(6) + 1e-6


def test_soft_em_with_peaked_posterior_decodes_the_nearest_codeword():
    torch.manual_seed(5)
    sem = build("soft_em_vq", dim=2, num_codes=3, num_samples=5)
    sem.ema.codebook.copy_(torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]]))
    y = sem.codebook[torch.tensor([0, 1, 2, 1])] + 0.01
    out = sem(y, generator=gen(11))
    torch.testing.assert_close(out.y_hat, torch.tensor([[0.0, 0], [30, 0], [0, 30], [30, 0]]))


def test_soft_em_vib_term_is_kl_to_uniform():
    torch.manual_seed(6)
    plain = build("soft_em_vq", dim=3, num_codes=5, commitment=0.0)
    torch.manual_seed(6)
    vib = build("soft_em_vq", dim=3, num_codes=5, commitment=0.0, vib_weight=2.0)
    y = torch.randn(20, 3, generator=gen(12))
    assert plain(y, generator=gen(13)).aux_loss.item() == 0.0
    out = vib(y, generator=gen(13))
    entropy = out.stats["posterior_entropy"].item()
    assert out.aux_loss.item() == pytest.approx(2.0 * (math.log(5) - entropy), rel=1e-5)
    assert out.aux_loss.item() >= 0


def test_soft_em_temperature_sharpens_the_posterior():
    y = torch.randn(50, 3, generator=gen(14))
    entropies = []
    for temperature in (1.0, 0.05):
        torch.manual_seed(7)  # the same initial codebook
        sem = build("soft_em_vq", dim=3, num_codes=8, temperature=temperature)
        entropies.append(sem(y, generator=gen(15)).stats["posterior_entropy"].item())
    assert entropies[1] < 0.5 * entropies[0]
    # the hard path is the nearest codeword whatever the temperature
    sem.eval()
    torch.testing.assert_close(sem.quantize(y), torch.cdist(y, sem.codebook).argmin(1))


def test_codebook_initialisations():
    torch.manual_seed(8)
    inverse_k = build("vq", dim=16, num_codes=256, init="uniform_inverse_k").codebook
    assert inverse_k.abs().max() <= 1 / 256 and inverse_k.abs().max() > 0.9 / 256
    normal = build("vq_ema", dim=16, num_codes=256, init="normal").codebook
    assert normal.std().item() == pytest.approx(1.0, abs=0.05)
    unit = build("vq", dim=16, num_codes=256).codebook
    assert unit.square().sum(1).mean().item() == pytest.approx(1.0, abs=0.1)


# ---------------------------------------------------------------------- soft_vq
def test_soft_assignment_logits_of_both_variants():
    z = torch.tensor([[1.0, 0.0]])
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    log_sigma = torch.tensor([[0.0, math.log(2.0)]])
    dist2 = torch.tensor([1.0, 1.0])
    paper = soft_assignment_logits(z, log_sigma, codebook, variant="paper")
    reference = soft_assignment_logits(z, log_sigma, codebook, variant="reference")
    sigma2 = torch.tensor([1.0, 4.0])
    torch.testing.assert_close(paper[0], -dist2 / (2 * sigma2) - 2 * log_sigma[0])
    torch.testing.assert_close(reference[0], -dist2 / (2 * sigma2) + log_sigma[0])


def test_soft_vq_is_stable_where_exp_then_divide_underflows():
    torch.manual_seed(7)
    svq = build("soft_vq", dim=4, num_codes=8, variant="reference").eval()
    z = 1e3 * torch.randn(5, 4, generator=gen(14))
    log_sigma = torch.full((5, 8), -5.0)  # σ = e^-5: every exp(-dist/2σ²) underflows to 0
    out = svq(torch.cat([z, log_sigma], 1))
    assert torch.isfinite(out.y_hat).all()
    nearest = svq.codebook[cb.nearest_codeword(z, svq.codebook)]
    torch.testing.assert_close(out.y_hat, nearest.detach())  # the softmax became one-hot


def test_soft_vq_noise_by_variant_or_as_asked_and_only_in_training():
    torch.manual_seed(8)
    y = torch.randn(6, 4 + 5, generator=gen(15))
    cases = (
        ("paper", {}, True),  # the paper's σ_ε = 0.01
        ("reference", {}, False),  # the notebook: no noise
        ("paper", {"noise_std": 0.0}, False),
        ("reference", {"noise_std": 0.5}, True),
    )
    for variant, noise, noisy in cases:
        torch.manual_seed(8)
        svq = build("soft_vq", dim=4, num_codes=5, variant=variant, **noise)
        assert svq.noise_std == (noise.get("noise_std", 0.01 if variant == "paper" else 0.0))
        a, b = svq(y, generator=gen(1)).aux_loss, svq(y, generator=gen(2)).aux_loss
        assert (a != b).item() is noisy
        svq.eval()
        assert torch.equal(svq(y, generator=gen(1)).y_hat, svq(y, generator=gen(2)).y_hat)


def test_soft_vq_estimator_is_the_posterior_mean_and_gradients_reach_scales():
    torch.manual_seed(9)
    svq = build("soft_vq", dim=3, num_codes=4, noise_std=0.0)
    y = torch.randn(7, 3 + 4, generator=gen(16), requires_grad=True)
    out = svq(y)
    logits = soft_assignment_logits(y[:, :3], y[:, 3:], svq.codebook)
    torch.testing.assert_close(out.y_hat, torch.softmax(logits, 1) @ svq.codebook)
    out.aux_loss.backward()
    assert y.grad[:, 3:].abs().sum() > 0  # the per-codeword scales are trained by the loss
    assert svq.codebook.grad.abs().sum() > 0
    assert out.stats["perplexity"] >= 1 and out.stats["soft_perplexity"] >= 1


def test_soft_vq_rejects_wrong_width():
    svq = build("soft_vq", dim=3, num_codes=4)
    with pytest.raises(ValueError, match="d \\+ K"):
        svq(torch.zeros(2, 3))


# ----------------------------------------------------------------- info_dropout
def test_info_dropout_rate_and_noise():
    drop = build("info_dropout", dim=3, alpha_max=0.7)
    f = torch.tensor([[1.0, 0.0, -2.0]])
    a = torch.tensor([[0.0, 1e4, -1e4]])  # α = 0.35, 0.7, 0 — the last would be log(0)
    out = drop(torch.cat([f, a], 1), generator=gen(0))
    expected = math.log(2.0) + 0.0 + 1e4  # −log(α/α_max) per dimension
    assert out.rate.item() == pytest.approx(expected, rel=1e-6)
    assert out.y_hat[0, 1] == 0.0  # multiplicative noise keeps zeros at zero
    assert out.y_hat[0, 2] == -2.0  # α = 0: no noise
    drop.eval()
    assert torch.equal(drop(torch.cat([f, a], 1)).y_hat, f)


def test_constructor_arguments_are_validated():
    for name, kwargs in [
        ("vq", dict(num_codes=1)),
        ("vq", dict(commitment=-1.0)),
        ("vq_ema", dict(decay=1.0)),
        ("soft_em_vq", dict(num_samples=0)),
        ("soft_em_vq", dict(temperature=0.0)),
        ("vq", dict(init="zeros")),
        ("vq_ema", dict(init="zeros")),
        ("soft_vq", dict(variant="notebook")),
        ("info_dropout", dict(alpha_max=0.0)),
    ]:
        with pytest.raises(ValueError):
            build(name, dim=3, **kwargs)


def test_fused_vq_losses_equal_the_composed_form():
    """``codebook_and_commitment`` gives the value and gradients of z + sg(q − z) and
    mse(q, sg(z)) + β·mse(z, sg(q)) (float64, random upstream weights), also when y_hat takes
    the buffer of q (``reuse_q``)."""
    import torch.nn.functional as F

    z0 = torch.randn(40, 6, dtype=torch.float64, generator=gen(40))
    q0 = torch.randn(40, 6, dtype=torch.float64, generator=gen(41))
    w = torch.randn(40, 6, dtype=torch.float64, generator=gen(42))
    results = []
    for fused in (False, True, "reuse"):
        z, q = z0.clone().requires_grad_(), q0.clone().requires_grad_()
        if fused == "reuse":  # y_hat written into a temporary's buffer, gradient through it
            y_hat, aux = cb.codebook_and_commitment(z, q * 1.0, 0.3, reuse_q=True)
        elif fused:
            y_hat, aux = cb.codebook_and_commitment(z, q, 0.3)
        else:
            y_hat = cb.straight_through(z, q)
            aux = F.mse_loss(q, z.detach()) + 0.3 * F.mse_loss(z, q.detach())
        ((y_hat * w).sum() + 5 * aux).backward()
        results.append((y_hat.detach(), aux.detach(), z.grad, q.grad))
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0])
        for a, b in zip(results[0][1:], other[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "dtype,module_dtype,scale,rows",
    [(torch.bfloat16, torch.float32, 3e18, 18), (torch.float16, torch.float16, 40.0, 50_000)],
    ids=["float32-near-the-limit", "float16"],
)
def test_vq_losses_stay_finite_where_the_sum_of_squares_overflows(dtype, module_dtype, scale, rows):
    """Inputs below the input limit bound each row's squared distance, not their sum over rows:
    the fused losses' mean square is formed again from scaled values when the plain dot product
    overflows (found by ``make fuzz``: float32 inputs at 3e18 with 144 values; and a float16
    module gave an infinite loss on 50,000 ordinary rows)."""
    neck = build("vq", dim=8, num_codes=16).to(module_dtype).train()
    y = ((torch.rand(rows, 8, generator=gen(7)) * 2 - 1) * scale).to(dtype)
    out = neck(y)
    q = neck.codebook.detach().double()[out.indices]
    expected = 1.25 * (y.double() - q).square().mean()
    assert out.aux_loss.dtype == module_dtype and torch.isfinite(out.aux_loss)
    assert out.aux_loss.double().item() == pytest.approx(expected.item(), rel=2e-3)
    out.aux_loss.float().backward()
    assert torch.isfinite(neck.codebook.grad).all()


@pytest.mark.parametrize("name", ["vq_ema", "soft_em_vq"])
def test_commitment_losses_stay_finite_near_the_input_limit(name):
    """The other codebook methods' commitment terms (``mean_square_error``) on the input that
    overflowed them: 144 values at 3e18, below the float32 limit of 3.26e18 at in_dim 8."""
    neck = build(name, dim=8, num_codes=16).train()
    y = torch.full((2, 8, 3, 3), 3e18).to(torch.bfloat16)
    out = neck(y)
    assert torch.isfinite(out.aux_loss) and out.aux_loss > 1e36
    assert torch.isfinite(out.y_hat).all()


def test_mean_square_error_is_mse_loss_within_range_and_finite_past_it():
    import torch.nn.functional as F

    a = torch.randn(30, 4, dtype=torch.float64, generator=gen(50), requires_grad=True)
    b = torch.randn(30, 4, dtype=torch.float64, generator=gen(51))
    (g_ours,) = torch.autograd.grad(cb.mean_square_error(a, b), a)
    (g_ref,) = torch.autograd.grad(F.mse_loss(a, b), a)
    assert cb.mean_square_error(a, b).item() == pytest.approx(F.mse_loss(a, b).item(), rel=1e-14)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=0)
    big = torch.full((144,), 3e18, requires_grad=True)
    value = cb.mean_square_error(big, torch.zeros(144))
    (grad,) = torch.autograd.grad(value, big)
    assert value.item() == pytest.approx(9e36, rel=1e-5) and torch.isinf(F.mse_loss(big, big * 0))
    torch.testing.assert_close(grad, torch.full((144,), 2 * 3e18 / 144))
    # float16: one difference of 300 among zeros, whose square (90,000) alone passes the range
    # while the mean (90,000 / 64) does not; formed again in float32
    half = torch.zeros(64, dtype=torch.float16)
    half[0] = 300.0
    value = cb.mean_square_error(half, torch.zeros_like(half))
    assert value.dtype == torch.float16 and value.item() == pytest.approx(90000 / 64, rel=1e-3)
