"""Dithered rectangular-lattice bottleneck with a Laplace prior (``build("lattice", ...)``).

Checked (float64, non-trivial per-dimension Δ and b): the crypto lemma on the hard path (error
y_hat − x uniform over the cell, KS test, independent of x); Theorem 1 (mean hard-path rate =
mean training-path rate, and both equal the exact expectation computed by quadrature); the rate
equals its direct definition −Σ log(F(η + Δ/2) − F(η − Δ/2)) evaluated with scipy; gradients of
the training path (reach x, log Δ, log b; gradcheck with the dither fixed); the hard-path dither
is common randomness regenerated from the seed; ``compile=True`` matches eager (slow);
constructor arguments are validated.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from qlatent.bottlenecks import DitheredLattice, build
from qlatent.bottlenecks.lattice import dithered_training_path

F64 = torch.float64
DIM = 8


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_lattice(seed: int = 0, dim: int = DIM) -> DitheredLattice:
    """float64 bottleneck with random 'learned-like' Δ ∈ [0.2, 3] and b ∈ [0.3, 4]."""
    module = build("lattice", dim=dim).double()
    g = gen(seed)
    with torch.no_grad():
        module.log_spacing.uniform_(math.log(0.2), math.log(3.0), generator=g)
        module.log_scale.uniform_(math.log(0.3), math.log(4.0), generator=g)
    return module


def np_cell_prob(eta: np.ndarray, spacing: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """F(η + Δ/2) − F(η − Δ/2) for Laplace(0, b), written with scipy on |η| (no cancellation)."""
    a = np.abs(eta)
    return stats.laplace.sf(a - spacing / 2, scale=scale) - stats.laplace.sf(
        a + spacing / 2, scale=scale
    )


def np_rate(eta: np.ndarray, spacing: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """−Σ_i log P_i(η_i) over the last axis."""
    return -np.log(np_cell_prob(eta, spacing, scale)).sum(-1)


def hard_errors(module: DitheredLattice, value: float, n: int, seed: int) -> np.ndarray:
    """``y_hat − x`` on the hard path for x = value in every coordinate, n dithers."""
    x = torch.full((n, module.dim), value, dtype=F64)
    out = module.eval()(x, generator=gen(seed))
    return (out.y_hat - x).detach().numpy()


# --------------------------------------------------------------------------- crypto lemma
N_CRYPTO = 20_000


@pytest.mark.parametrize("value", [0.3, 7.9])
def test_hard_path_error_is_uniform_over_cell(value):
    """Per dim: |e| ≤ Δ/2, mean 0 (SE Δ/√(12n)), E e² = Δ²/12 (SE Δ²/√(180n)), KS vs U(0,1).

    Without the dither (plain rounding) e is a constant per dim: the KS test and the variance
    fail; a dither on [0, Δ) instead of [-Δ/2, Δ/2) still gives a uniform error here, but is
    caught by the rate tests and the test_lattices cell checks.
    """
    module = make_lattice(seed=1)
    spacing = module.spacing.detach().numpy()
    e = hard_errors(module, value, N_CRYPTO, seed=2)
    assert (np.abs(e) <= spacing / 2 * (1 + 1e-12)).all()
    assert (np.abs(e.mean(0)) <= 5 * spacing / math.sqrt(12 * N_CRYPTO)).all()
    second = (e**2).mean(0)
    assert (np.abs(second - spacing**2 / 12) <= 5 * spacing**2 / math.sqrt(180 * N_CRYPTO)).all()
    for i in range(module.dim):
        assert stats.kstest(e[:, i] / spacing[i] + 0.5, "uniform").pvalue > 1e-3, i


def test_hard_path_error_is_independent_of_input():
    """Same error law at x = 0.3 and x = 7.9 (two-sample KS), and e uncorrelated with x and with
    x's position inside its cell over random x (5 sigma = 5/√n). A quantizer that rounds
    without adding the dither has corr(position, e) = −1 and shifted error laws."""
    module = make_lattice(seed=3)
    spacing = module.spacing.detach().numpy()
    e1 = hard_errors(module, 0.3, N_CRYPTO, seed=4)
    e2 = hard_errors(module, 7.9, N_CRYPTO, seed=5)
    for i in range(module.dim):
        assert stats.ks_2samp(e1[:, i], e2[:, i]).pvalue > 1e-3, i

    x = 5.0 * torch.randn(N_CRYPTO, module.dim, generator=gen(6), dtype=F64)
    e = (module.eval()(x, generator=gen(7)).y_hat - x).detach().numpy()
    xs = x.numpy()
    position = xs / spacing - np.round(xs / spacing)
    for i in range(module.dim):
        assert abs(np.corrcoef(xs[:, i], e[:, i])[0, 1]) < 5 / math.sqrt(N_CRYPTO)
        assert abs(np.corrcoef(position[:, i], e[:, i])[0, 1]) < 5 / math.sqrt(N_CRYPTO)


# ------------------------------------------------------------------------------ Theorem 1
def _expected_rate_1d(x: float, spacing: float, scale: float, hard: bool) -> float:
    """E_u[−log P(η(u))] for u ~ U(−Δ/2, Δ/2): η = K(x + u) − u (hard) or x − u (training)."""

    def integrand(u: float) -> float:
        eta = spacing * np.round((x + u) / spacing) - u if hard else x - u
        return -math.log(np_cell_prob(np.array(eta), spacing, scale))

    lo, hi = -spacing / 2, spacing / 2
    # kinks (η = 0, |η| = Δ/2) and, on the hard path, the jump where x + u crosses a cell edge
    k = np.arange(math.floor((x - spacing) / spacing) - 1, math.ceil((x + spacing) / spacing) + 2)
    cand = np.concatenate([x + 0 * k, x - spacing / 2 + 0 * k, x + spacing / 2 + 0 * k])
    cand = np.concatenate([cand, k * spacing, (k + 0.5) * spacing - x, (k - 0.5) * spacing])
    points = sorted({float(p) for p in cand if lo < p < hi})
    value, _ = integrate.quad(integrand, lo, hi, points=points or None, limit=200, epsabs=1e-12)
    return value / spacing


@pytest.mark.parametrize("x_kind", ["zero", "random", "far"])
def test_theorem1_hard_and_training_rates_have_equal_means(x_kind):
    """Mean hard-path rate = mean training-path rate (5 SE of the difference) = exact expectation
    by quadrature (5 SE). A rate missing Σ log Δ_i, or using the density instead of the cell
    probability on one path only, would miss the quadrature value by many SE."""
    module = make_lattice(seed=8)
    spacing = module.spacing.detach().numpy()
    scale = module.scale.detach().numpy()
    if x_kind == "zero":
        x0 = torch.zeros(DIM, dtype=F64)
    elif x_kind == "random":
        x0 = 2.0 * torch.randn(DIM, generator=gen(9), dtype=F64)
    else:
        x0 = torch.from_numpy(15.0 * scale * np.where(np.arange(DIM) % 2 == 0, 1.0, -1.0))
    n = 20_000
    x = x0.expand(n, DIM)
    train_rate = module.train()(x, generator=gen(10)).rate.detach().numpy()
    hard_rate = module.eval()(x, generator=gen(11)).rate.detach().numpy()
    diff = hard_rate.mean() - train_rate.mean()
    se_diff = math.sqrt(train_rate.var() / n + hard_rate.var() / n)
    assert abs(diff) <= 5 * se_diff

    xs = x0.numpy()
    exact_hard = sum(_expected_rate_1d(xs[i], spacing[i], scale[i], True) for i in range(DIM))
    exact_train = sum(_expected_rate_1d(xs[i], spacing[i], scale[i], False) for i in range(DIM))
    # Theorem 1 holds exactly for the expectations, no Monte Carlo involved.
    assert exact_hard == pytest.approx(exact_train, rel=1e-8)
    assert abs(hard_rate.mean() - exact_hard) <= 5 * math.sqrt(hard_rate.var() / n)
    assert abs(train_rate.mean() - exact_train) <= 5 * math.sqrt(train_rate.var() / n)


# ---------------------------------------------------------------------- direct definition
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_rate_matches_direct_definition(training):
    """rate = −Σ log(F(η + Δ/2) − F(η − Δ/2)) with η = x − u (training) or z − u (hard), the
    dither u recovered from the outputs. A missing log Δ, a density instead of a probability, or a
    wrong sign changes the rate by O(1) nats per dim."""
    module = make_lattice(seed=12).train(training)
    spacing = module.spacing.detach().numpy()
    scale = module.scale.detach().numpy()
    x = 3.0 * torch.randn(500, DIM, generator=gen(13), dtype=F64)
    out = module(x, generator=gen(14))
    y_hat = out.y_hat.detach().numpy()
    xs = x.numpy()
    if training:
        assert out.indices is None
        u = xs - y_hat  # y_hat = x − u
        eta = xs - u
    else:
        z = out.indices.numpy() * spacing  # lattice point, z = Δ ⊙ k
        u = z - y_hat  # y_hat = z − u
        # z is the closest lattice point to x + u
        assert (np.abs(xs + u - z) <= spacing / 2 * (1 + 1e-12)).all()
        eta = z - u
    assert (np.abs(u) <= spacing / 2 * (1 + 1e-12)).all()
    np.testing.assert_allclose(out.rate.detach().numpy(), np_rate(eta, spacing, scale), rtol=1e-9)


# ---------------------------------------------------------------------------- gradients
def test_training_path_gradients_reach_all_parameters():
    module = make_lattice(seed=15).train()
    x = (2.0 * torch.randn(64, DIM, generator=gen(16), dtype=F64)).requires_grad_()
    out = module(x, generator=gen(17))
    (out.rate.mean() + (out.y_hat - 1.0).pow(2).sum(-1).mean()).backward()
    for grad in (x.grad, module.log_spacing.grad, module.log_scale.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert (grad != 0).all()


def test_training_path_gradcheck_with_fixed_dither():
    g = gen(18)
    y = (2.0 * torch.randn(4, 3, generator=g, dtype=F64)).requires_grad_()
    r = torch.rand(4, 3, generator=g, dtype=F64)
    log_spacing = torch.tensor([-0.5, 0.2, 1.0], dtype=F64, requires_grad=True)
    log_scale = torch.tensor([0.3, -0.7, 0.1], dtype=F64, requires_grad=True)

    def path(y, log_spacing, log_scale):
        return dithered_training_path(y, r, log_spacing.exp(), log_scale.exp())

    assert torch.autograd.gradcheck(path, (y, log_spacing, log_scale))


# ------------------------------------------------------------------- common randomness
def test_hard_path_dither_is_common_randomness():
    module = make_lattice(seed=19).eval()
    x = 3.0 * torch.randn(100, DIM, generator=gen(20), dtype=F64)
    k1 = module.quantize(x, generator=gen(21))
    k2 = module.quantize(x, generator=gen(21))
    k3 = module.quantize(x, generator=gen(22))
    assert torch.equal(k1, k2)
    assert not torch.equal(k1, k3)
    # A decoder that has the parameters and the seed, but never sees x, regenerates y_hat.
    decoder = copy.deepcopy(module)
    y_hat = decoder.dequantize(k1, generator=gen(21))
    assert torch.equal(y_hat, module(x, generator=gen(21)).y_hat)
    assert ((y_hat - x).abs() <= module.spacing.detach() / 2 * (1 + 1e-12)).all()


# ------------------------------------------------------------------------------ compile
@pytest.mark.parametrize("path", ["fused", "blocked", "blocked, four factors"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_training_path_functions_match_autograd(dtype, path):
    """The two training paths with a hand-written backward: ``compile=True``'s forms its
    gradient's factors in one fused forward (run uncompiled here); the eager one does so over
    blocks of rows (8 here, the last one short), each drawing its own dither. Their values
    equal the autograd path's bit for bit and their gradients (upstream gradients on y_hat,
    the rate or both; far-out and in-cell coordinates) agree to rounding. Over more than four
    blocks the eager one keeps only the sums over rows of the prior's factors, enough when
    ∂L/∂rate is one number for all rows ("y_hat": zero, "rate mean": 1/N); a different one per
    row ("both", "rate") makes it form them again. Over four blocks (13 rows each) it keeps all
    four factors."""
    from qlatent._utils import apply_function
    from qlatent.bottlenecks.lattice import (
        _BlockedTrainingPath,
        _FusedTrainingPath,
        _training_kernel,
    )
    from qlatent.priors import cell_constants
    from qlatent.rng import draw_key

    g = gen(30)
    y = (3 * torch.randn(50, 7, generator=g, dtype=dtype)).requires_grad_(True)
    log_spacing = (torch.rand(7, generator=g, dtype=dtype) * 1.5 - 1).requires_grad_(True)
    log_scale = (torch.rand(7, generator=g, dtype=dtype) * 2 - 1.5).requires_grad_(True)
    with torch.no_grad():
        y[0, 0] = 1e4  # far in the tail: the rate's slope is 1/b there
    key = draw_key(gen(31))
    up_y, up_rate = torch.randn(50, 7, generator=g, dtype=dtype), torch.randn(50, generator=g)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for upstream in ("both", "y_hat", "rate", "rate mean"):
        results = []
        for reference in (True, False):
            spacing, scale = log_spacing.exp(), log_scale.exp()
            args = (y, key, spacing, *cell_constants(spacing, scale))
            if reference:
                y_hat, rate = _training_kernel(*args)
            elif path == "fused":
                y_hat, rate, *_ = apply_function(_FusedTrainingPath, *args, False)
            else:
                y_hat, rate, *_ = apply_function(
                    _BlockedTrainingPath, *args, 8 if path == "blocked" else 13
                )
            loss = (y_hat * up_y).sum() if upstream in ("both", "y_hat") else 0.0
            if upstream == "rate mean":
                loss = rate.mean()
            elif upstream != "y_hat":
                loss = loss + (rate * up_rate.to(dtype)).sum()
            grads = torch.autograd.grad(
                loss, (y, log_spacing, log_scale), allow_unused=True, materialize_grads=True
            )
            results.append((y_hat, rate, grads))
        (y_a, rate_a, grads_a), (y_b, rate_b, grads_b) = results
        assert torch.equal(y_a, y_b) and torch.equal(rate_a, rate_b)
        for a, b in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(b, a, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_in_place_gradient_factors_equal_the_reference_bit_for_bit(dtype):
    """The eager blocked path's factors (fewer passes, buffers reused) are the same numbers as
    :func:`_gradient_factors`, bit for bit: η = 0 (where sign(η)·x and copysign differ but
    x = 0), far tails, cells much wider and much narrower than the prior."""
    from qlatent.bottlenecks.lattice import _gradient_factors, _gradient_factors_in_place
    from qlatent.priors import cell_constants

    g = gen(40)
    n, m = 400, 9
    r = torch.randint(0, 2**24, (n, m), generator=g).to(dtype) * 2.0**-24
    spacing = torch.logspace(-2, 2, m, dtype=dtype)
    scale = torch.logspace(1, -2, m, dtype=dtype)
    y_hat = 5 * torch.randn(n, m, generator=g, dtype=dtype)
    y_hat[0] = 0.0
    y_hat[1] = 1e6
    constants = cell_constants(spacing, scale)
    with torch.no_grad():
        reference = _gradient_factors(y_hat, r, *constants)
        shift = r.clone().sub_(0.5)
        ours = _gradient_factors_in_place(y_hat, shift, *constants)
    for a, b in zip(reference, ours, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.view(-1).numpy().tobytes() == b.view(-1).numpy().tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_training_path_matches_eager(weighted):
    """The compiled training path against the eager one, with the rate summed into the loss or
    weighted by row (each row's ∂L/∂rate then weights the prior's factors q and d_h of its own
    row)."""
    eager = make_lattice(seed=23).float().train()
    compiled = build("lattice", dim=DIM, compile=True).train()
    compiled.load_state_dict(eager.state_dict())
    n = 600
    x = 2.0 * torch.randn(n, DIM, generator=gen(24))
    weights = torch.rand(n, generator=gen(26)) if weighted else torch.ones(n)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = eager(xa, generator=gen(25))
    b = compiled(xb, generator=gen(25))
    torch.testing.assert_close(b.y_hat, a.y_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.rate, a.rate, rtol=1e-5, atol=1e-5)
    # the closed-form backward of the cell rate runs inside the compiled graph too
    for out in (a, b):
        rate = (out.rate * weights).sum() if weighted else out.rate.sum()
        (rate + out.y_hat.square().sum()).backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-6)
    # the parameters' gradients are float32 sums over 600 rows of terms of both signs, which
    # the compiled kernel adds in another order (one that depends on the machine's vector width):
    # 1.1e-4 apart on an AMD EPYC where an Intel Xeon stayed within 1e-4
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5)


def test_compiled_hard_path_matches_eager_bit_for_bit():
    """With grad disabled the fused hard path gives the eager path's indices and y_hat bit for
    bit (ties of the rounding included: inputs on cell boundaries), the rate up to rounding;
    an input too large for the lattice is refused as on the eager path."""
    eager = make_lattice(seed=26).float().eval()
    compiled = build("lattice", dim=DIM, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    x = 3.0 * torch.randn(64, DIM, generator=gen(27))
    x[:8] = eager.spacing.detach() * torch.randint(-4, 4, (8, DIM), generator=gen(28)) / 2
    with torch.no_grad():
        a = eager(x, generator=gen(29))
        b = compiled(x, generator=gen(29))
        assert torch.equal(b.indices, a.indices) and torch.equal(b.y_hat, a.y_hat)
        torch.testing.assert_close(b.rate, a.rate, rtol=1e-6, atol=1e-5)
        assert b.indices.dtype == torch.int64
        empty = compiled(x[:0], generator=gen(29))  # no reduction to fuse: the eager path
        assert empty.indices.shape == (0, DIM) and empty.rate.shape == (0,)
        x[3, 1] = 1e30
        with pytest.raises(ValueError, match="beyond"):
            compiled(x, generator=gen(29))
        # within the input limit, but a spacing that puts the coordinates beyond int64's: the
        # fused kernel's own reach check
        compiled.log_spacing.fill_(-12.0)
        x[3, 1] = 1e15
        with pytest.raises(ValueError, match="coordinates reach"):
            compiled(x, generator=gen(29))


# ------------------------------------------------------------------------- constructor
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dim=4, init_spacing=0),
        dict(dim=4, init_spacing=float("nan")),
        dict(dim=4, init_scale=-1),
        dict(dim=4, init_scale=float("inf")),
        dict(dim=4, lattice="E9"),
        dict(dim=4, prior="gaussian"),
        dict(dim=0),
        dict(dim=-3),
        dict(dim=2.0),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_bad_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        build("lattice", **kwargs)


def test_init_values_and_learnability_flags():
    module = build("lattice", dim=3, init_spacing=0.5, init_scale=2.0, learn_spacing=False)
    torch.testing.assert_close(module.spacing, torch.full((3,), 0.5))
    torch.testing.assert_close(module.scale, torch.full((3,), 2.0))
    assert not module.log_spacing.requires_grad
    assert module.log_scale.requires_grad


# --------------------------------------------------------------------------- row blocks
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_blocks_of_rows_change_nothing(monkeypatch, training):
    """Large inputs run in cache-sized blocks of rows: the same y_hat, rate, indices and
    gradients, bit for bit, as one block."""
    import qlatent.bottlenecks.lattice as lattice_module

    module = make_lattice(seed=31).train(training)
    x = 2.0 * torch.randn(97, DIM, generator=gen(32))
    outs = []
    for elements in (1 << 19, 5 * DIM):  # one block; blocks of 5 rows (the last one short)
        monkeypatch.setattr(lattice_module, "_BLOCK_ELEMENTS", elements)
        xi = x.clone().requires_grad_()
        module.zero_grad()
        out = module(xi, generator=gen(33))
        (out.rate.sum() + out.y_hat.square().sum()).backward()
        grads = [xi.grad] + [p.grad.clone() for p in module.parameters()]
        outs.append((out, grads))
    (a, ga), (b, gb) = outs
    assert torch.equal(a.y_hat, b.y_hat) and torch.equal(a.rate, b.rate)
    assert (a.indices is None) == (b.indices is None)
    if a.indices is not None:
        assert torch.equal(a.indices, b.indices)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------- fused hard path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,dim", [(97, DIM), (3000, 3), (5, 1024)])
def test_hard_path_without_grad_is_the_differentiable_one(monkeypatch, dtype, rows, dim):
    """With grad disabled the hard path runs fused (in-place blocks, no derivatives): the same
    y_hat, rate and indices bit for bit as with grad enabled, across blocks of rows, for inputs
    that reach far tails (|η|/b up to ~1e6), and the same error for coordinates too large."""
    import qlatent.bottlenecks.lattice as lattice_module

    monkeypatch.setattr(lattice_module, "_BLOCK_ELEMENTS", 7 * dim)  # several blocks
    module = build("lattice", dim=dim).to(dtype).eval()
    with torch.no_grad():
        module.log_spacing.uniform_(-2.0, 2.0, generator=gen(40))
        module.log_scale.uniform_(-3.0, 1.0, generator=gen(41))
    x = 3.0 * torch.randn(rows, dim, generator=gen(42), dtype=dtype)
    x[0, 0], x[-1, -1] = 1e5, -3e4
    a = module(x, generator=gen(43))
    assert a.rate.requires_grad  # the differentiable path
    with torch.no_grad():
        b = module(x, generator=gen(43))
    assert torch.equal(a.y_hat.detach(), b.y_hat) and torch.equal(a.indices, b.indices)
    assert torch.equal(a.rate.detach(), b.rate)
    with torch.no_grad():
        module.log_spacing.fill_(-6.0)  # Δ ≈ 0.0025: 1.5e16 / Δ ≈ 6e18 > 2^62
    huge = torch.full((2, dim), 1.5e16, dtype=dtype)  # in range, but its coordinates are not
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="beyond the limit"):
            module(huge, generator=gen(44))
