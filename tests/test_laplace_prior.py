"""Laplace prior through a dithered cell: ``qlatent.priors.laplace``.

Checked: ``laplace_cell_log_prob`` against an independent 60-digit mpmath evaluation of
log(F(η + Δ/2) − F(η − Δ/2)) (computed from the Laplace survival function, not from the closed
forms the library uses) on a grid with η = 0, inside/outside the cell, the exact cell boundary,
far tails up to |η|/b = 1e4, tiny and huge Δ/b; float32 stays finite, ≤ 0 and close to float64;
the cell probabilities of one dithered lattice sum to 1; gradients (a hand-written closed-form
backward) are finite everywhere (kinks included), equal the closed-form tail derivatives, pass
``gradcheck`` at interior points, equal autograd of the same formula in float64 and 60-digit
numerical derivatives, and stay within 1e-5 relative of float64 in float32.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch

from qlatent.priors import laplace_cell_log_prob, laplace_cell_nll

SCALES = [0.37, 2.5]
SPACING_OVER_SCALE = [1e-6, 0.3, 1.0, 4.0, 50.0]
# η in units of b (far tails) ...
ETA_OVER_SCALE = [0.7, 5.0, 30.0, 1e2, 1e3, 1e4]
# ... and η in units of Δ/2 (0, inside, the exact boundary, just outside, outside)
ETA_OVER_HALF_SPACING = [0.0, 0.5, 1.0, 1.5, 6.0]


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat float64 arrays (eta, spacing, scale) covering the grid described above (± η)."""
    rows = []
    for b, ratio in itertools.product(SCALES, SPACING_OVER_SCALE):
        spacing = ratio * b
        etas = [r * b for r in ETA_OVER_SCALE] + [
            r * (0.5 * spacing) for r in ETA_OVER_HALF_SPACING
        ]
        for eta in etas:
            rows.append((eta, spacing, b))
            if eta != 0.0:
                rows.append((-eta, spacing, b))
    eta, spacing, scale = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
    return eta, spacing, scale


def _mp_log_prob(eta: float, spacing: float, scale: float) -> float:
    """log P(X̂ ∈ [η − Δ/2, η + Δ/2]) for X̂ ~ Laplace(0, b), in 60-digit arithmetic.

    Uses the symmetry P(η) = P(|η|) and the survival function S, P = S(|η| − Δ/2) − S(|η| + Δ/2):
    both terms are then at most 1 and the subtraction cancels at most ~log10(1/P) ≤ 7 digits here.
    """
    with mpmath.workdps(60):
        eta_, spacing_, scale_ = mpmath.mpf(eta), mpmath.mpf(spacing), mpmath.mpf(scale)

        def survival(x):
            z = x / scale_
            return mpmath.exp(-z) / 2 if z >= 0 else 1 - mpmath.exp(z) / 2

        a = abs(eta_)
        p = survival(a - spacing_ / 2) - survival(a + spacing_ / 2)
        return float(mpmath.log(p))


@pytest.fixture(scope="module")
def grid_reference():
    eta, spacing, scale = _grid()
    ref = np.array(
        [_mp_log_prob(*v) for v in zip(eta, spacing, scale, strict=True)], dtype=np.float64
    )
    return eta, spacing, scale, ref


def test_reference_matches_closed_forms():
    """The mpmath reference agrees with the design's closed forms (guards the reference itself)."""
    with mpmath.workdps(60):
        for eta, spacing, b in [
            (0.2, 1.0, 0.7),
            (0.5, 1.0, 0.7),
            (3.0, 0.5, 1.3),
            (-40.0, 2.0, 1.0),
        ]:
            a, h = abs(eta) / b, spacing / (2 * b)
            if a < h:
                closed = 1 - mpmath.exp(-h) * mpmath.cosh(a)
            else:
                closed = mpmath.exp(-a) * mpmath.sinh(h)
            assert _mp_log_prob(eta, spacing, b) == pytest.approx(
                float(mpmath.log(closed)), rel=1e-15
            )


def test_log_prob_matches_mpmath_in_float64(grid_reference):
    eta, spacing, scale, ref = grid_reference
    got = laplace_cell_log_prob(
        torch.from_numpy(eta), torch.from_numpy(spacing), torch.from_numpy(scale)
    ).numpy()
    assert np.isfinite(got).all()
    assert (got <= 0).all()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_log_prob_float32_is_finite_nonpositive_and_close_to_float64(grid_reference):
    eta, spacing, scale, _ = grid_reference
    args32 = [torch.from_numpy(v).float() for v in (eta, spacing, scale)]
    got32 = laplace_cell_log_prob(*args32)
    assert got32.dtype == torch.float32
    assert torch.isfinite(got32).all()
    assert (got32 <= 0).all()
    # Same (float32-rounded) inputs evaluated in float64: only the arithmetic precision differs.
    got64 = laplace_cell_log_prob(*(a.double() for a in args32))
    np.testing.assert_allclose(got32.double().numpy(), got64.numpy(), rtol=1e-5, atol=1e-6)


def test_nll_is_negative_log_prob(grid_reference):
    eta, spacing, scale, _ = grid_reference
    args = [torch.from_numpy(v) for v in (eta, spacing, scale)]
    nll = laplace_cell_nll(*args)
    assert torch.equal(nll, -laplace_cell_log_prob(*args))
    assert (nll >= 0).all()


@pytest.mark.parametrize(
    ("spacing", "scale", "offset"),
    [(1.0, 1.0, 0.3), (0.05, 1.0, -0.4), (3.0, 0.2, 0.49), (2.0, 7.0, 0.0), (0.7, 0.7, -0.5)],
)
def test_cell_probabilities_sum_to_one(spacing, scale, offset):
    """Σ_k P(kΔ − u) = 1 for a fixed dither u (the cells tile the line).

    A rate missing the log Δ term would sum to 1/Δ; a wrong-sign exponent would diverge.
    """
    u = offset * spacing
    kmax = math.ceil(45.0 * scale / spacing) + 2  # tail mass beyond is < e^-45
    k = torch.arange(-kmax, kmax + 1, dtype=torch.float64)
    sp = torch.tensor([spacing], dtype=torch.float64)
    log_p = laplace_cell_log_prob(
        (k * spacing - u).unsqueeze(-1), sp, torch.tensor([scale]).double()
    )
    assert log_p.shape == (k.numel(), 1)
    total = torch.logsumexp(log_p.flatten(), 0).exp().item()
    assert abs(total - 1.0) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_finite_on_whole_grid(grid_reference, dtype):
    """Including η = 0, |η| = Δ/2 exactly, |η|/b = 1e4, Δ/b = 1e-6 and Δ/b = 50."""
    eta, spacing, scale, _ = grid_reference
    args = [torch.from_numpy(v).to(dtype).requires_grad_() for v in (eta, spacing, scale)]
    laplace_cell_log_prob(*args).sum().backward()
    for a in args:
        assert a.grad is not None
        assert torch.isfinite(a.grad).all()


def test_tail_gradients_match_closed_form():
    """Outside the cell log P = −|η|/b + log sinh(Δ/2b): ∂η = −sign(η)/b, ∂Δ = coth(h)/(2b),
    ∂b = (|η| − (Δ/2) coth h)/b², also far in the tail (a wrong sign or lost term would fail)."""
    eta = torch.tensor([1.3, -2.0, 40.0, -1e3, 1e4], dtype=torch.float64, requires_grad=True)
    spacing = torch.tensor([1.0, 0.5, 3.0, 2.0, 0.01], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.8, 1.0, 2.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    laplace_cell_log_prob(eta, spacing, scale).sum().backward()
    with torch.no_grad():
        h = spacing / (2 * scale)
        coth = 1 / torch.tanh(h)
        torch.testing.assert_close(eta.grad, -torch.sign(eta) / scale, rtol=1e-12, atol=0)
        torch.testing.assert_close(spacing.grad, coth / (2 * scale), rtol=1e-10, atol=0)
        expected_b = (eta.abs() - spacing / 2 * coth) / scale**2
        torch.testing.assert_close(scale.grad, expected_b, rtol=1e-10, atol=1e-12)


def test_gradcheck_at_interior_points():
    """Away from the kinks (η ≠ 0, |η| ≠ Δ/2): inside and outside the cell, several Δ/b."""
    eta = torch.tensor([0.3, -0.2, 1.7, -4.0, 12.0, 0.01], dtype=torch.float64, requires_grad=True)
    spacing = torch.tensor([1.0, 1.0, 0.5, 2.0, 3.0, 1e-1], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.8, 3.0, 1.0, 0.6, 2.0, 0.05], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(laplace_cell_log_prob, (eta, spacing, scale))


def _plain_log_prob(eta, spacing, scale):
    """The forward formula written out, differentiated by autograd (the reference for the
    closed-form backward)."""
    inv_scale = 1 / scale
    h = 0.5 * spacing * inv_scale
    a = eta.abs() * inv_scale
    t = torch.minimum(a, h)
    inner = -torch.expm1(-h) - 0.5 * torch.exp(t - h) * torch.expm1(-t).square()
    return torch.log(inner) - (a - t)


def test_closed_form_backward_equals_autograd_in_float64(grid_reference):
    """The hand-written backward gives autograd's derivatives of the same formula over the
    whole grid (float64), and the same values forward, bit for bit."""
    eta, spacing, scale, _ = grid_reference
    grads = []
    for fn in (laplace_cell_log_prob, _plain_log_prob):
        args = [torch.from_numpy(v).requires_grad_() for v in (eta, spacing, scale)]
        value = fn(*args)
        grads.append((value, torch.autograd.grad(value.sum(), args)))
    assert torch.equal(grads[0][0], grads[1][0])
    for got, want in zip(grads[0][1], grads[1][1], strict=True):
        # autograd of the plain formula itself loses a few digits where a derivative is tiny
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-13)


def test_closed_form_gradients_match_mpmath():
    """∂ log P / ∂η, ∂Δ, ∂b against 60-digit numerical derivatives of the mpmath reference,
    inside and outside the cell (away from the kinks), from tiny to large Δ/b."""
    points = [
        (0.3, 1.0, 0.8),
        (-0.2, 1.0, 3.0),
        (1.7, 0.5, 1.0),
        (-4.0, 2.0, 0.6),
        (12.0, 3.0, 2.0),
        (1e-4, 1e-3, 1.0),
        (0.01, 50.0, 1.0),
        (300.0, 0.2, 7.0),
    ]
    eta, spacing, scale = (
        torch.tensor(col, dtype=torch.float64, requires_grad=True)
        for col in zip(*points, strict=True)
    )
    laplace_cell_log_prob(eta, spacing, scale).sum().backward()
    for i, (e, s, b) in enumerate(points):
        with mpmath.workdps(60):
            want = [
                float(mpmath.diff(lambda v, s=s, b=b: _mp_log_prob_mp(v, s, b), e)),
                float(mpmath.diff(lambda v, e=e, b=b: _mp_log_prob_mp(e, v, b), s)),
                float(mpmath.diff(lambda v, e=e, s=s: _mp_log_prob_mp(e, s, v), b)),
            ]
        got = [eta.grad[i].item(), spacing.grad[i].item(), scale.grad[i].item()]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (points[i], got, want)


def _mp_log_prob_mp(eta, spacing, scale):
    """:func:`_mp_log_prob` kept in mpmath numbers (for mpmath.diff)."""
    eta_, spacing_, scale_ = mpmath.mpf(eta), mpmath.mpf(spacing), mpmath.mpf(scale)

    def survival(x):
        z = x / scale_
        return mpmath.exp(-z) / 2 if z >= 0 else 1 - mpmath.exp(z) / 2

    a = abs(eta_)
    return mpmath.log(survival(a - spacing_ / 2) - survival(a + spacing_ / 2))


def test_closed_form_float32_gradients_are_accurate(grid_reference):
    """In float32 the closed form stays within 1e-5 relative of the float64 gradient wherever
    that is a normal float32 number (autograd of the plain formula loses more, ~5e-5)."""
    eta, spacing, scale, _ = grid_reference
    out = {}
    for dtype in (torch.float64, torch.float32):
        args = [torch.from_numpy(v).to(dtype).requires_grad_() for v in (eta, spacing, scale)]
        laplace_cell_log_prob(*args).sum().backward()
        out[dtype] = [a.grad.double() for a in args]
    tiny = torch.finfo(torch.float32).tiny
    for got, want in zip(out[torch.float32], out[torch.float64], strict=True):
        normal = want.abs() > 1e3 * tiny
        rel = ((got - want).abs() / want.abs())[normal]
        assert rel.max() < 1e-5, rel.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_nll_is_bit_for_bit_the_differentiable_one(grid_reference, dtype):
    """``cell_nll_no_grad`` (three reused buffers) and the autograd path give the same bits on
    the whole grid, tails and cell boundaries included."""
    from qlatent.priors import cell_constants, cell_nll_no_grad

    eta, spacing, scale, _ = grid_reference
    eta, spacing, scale = (torch.from_numpy(v).to(dtype) for v in (eta, spacing, scale))
    spacing.requires_grad_()
    reference = laplace_cell_nll(eta, spacing, scale)
    assert reference.requires_grad
    with torch.no_grad():
        fast = cell_nll_no_grad(eta, *cell_constants(spacing, scale))
    assert torch.equal(fast, reference.detach())


def test_inference_nll_broadcasts_and_promotes_like_the_differentiable_one():
    """η smaller than the constants and of a lower precision: the same shape, dtype and bits."""
    eta = torch.linspace(-3.0, 3.0, 7, dtype=torch.float32).unsqueeze(1)  # (7, 1)
    spacing = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    reference = laplace_cell_nll(eta, spacing, scale)
    with torch.no_grad():
        fast = laplace_cell_nll(eta, spacing, scale)
    assert fast.shape == reference.shape == (7, 3) and fast.dtype == torch.float64
    assert torch.equal(fast, reference.detach())
