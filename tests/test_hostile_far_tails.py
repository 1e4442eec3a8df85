"""Far tails of the Gaussian cell rate and ties in the lattices' closest point.

Checked: :func:`qlatent.priors.gaussian_cell_log_prob` and its gradients in η, Δ and s against
60-digit mpmath closed forms far into the tail (|η|/s up to 10¹⁹, where torch's own
``log_ndtr`` backward was 4% off at 10³, 6.5 times too large at 10⁴, 0 at 10⁵ and NaN or inf
beyond), its forward where the two tails round to one value (−∞ before) or both overflow (NaN
before), a narrow cell whose centre is tiny (NaN gradient before), a lattice bottleneck's
training-path rate gradient in float32 against float64, and the closest point of the
E8/BW16/Leech/D4/Z lattices at exact ties: the same point for every batch size and in float32
and float64.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.lattices import tile
from qlatent.priors import gaussian_cell_log_prob

F32, F64 = torch.float32, torch.float64


def _mp_cell(eta: float, spacing: float, scale: float) -> tuple[float, float, float, float]:
    """(log P, ∂/∂η, ∂/∂Δ, ∂/∂s) of P = Φ(−a) − Φ(−c), a = (|η| − Δ/2)/s, c = (|η| + Δ/2)/s,
    in 60-digit arithmetic from the densities φ (closed-form derivatives, η > 0)."""
    with mpmath.workdps(60):
        e, d, s = mpmath.mpf(eta), mpmath.mpf(spacing), mpmath.mpf(scale)
        a, c = (e - d / 2) / s, (e + d / 2) / s
        p = mpmath.ncdf(-a) - mpmath.ncdf(-c)
        pa, pc = mpmath.npdf(a), mpmath.npdf(c)
        d_eta = (pc - pa) / (s * p)
        d_spacing = (pa + pc) / (2 * s * p)
        d_scale = (a * pa - c * pc) / (s * p)
        return tuple(float(v) for v in (mpmath.log(p), d_eta, d_spacing, d_scale))


def _value_and_grads(eta, spacing, scale, dtype):
    args = [torch.tensor(v, dtype=dtype, requires_grad=True) for v in (eta, spacing, scale)]
    value = gaussian_cell_log_prob(*args)
    grads = torch.autograd.grad(value, args)
    return value.item(), [g.item() for g in grads]


# (η, Δ, s, relative tolerance of the float32 values and gradients)
FAR = [
    (30.0, 1.0, 1.0, 1e-5),
    (1e3, 1.0, 1.0, 1e-5),
    (1e4, 1.0, 1.0, 1e-5),
    (1e5, 1.0, 1.0, 1e-5),
    (1e10, 1.0, 1.0, 1e-5),
    (1e19, 1.0, 1.0, 1e-5),
    (2e4, 3.0, 0.5, 1e-5),
    (1e6, 1e3, 1.0, 1e-5),
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("eta", "spacing", "scale", "rtol"), FAR)
def test_gaussian_cell_far_tail_value_and_gradients_match_mpmath(eta, spacing, scale, rtol, dtype):
    """torch's ``log_ndtr`` backward is exp(−(log Φ(x) + x²/2)): a difference of two numbers
    near x²/2. Through it the float32 gradient in η was −955.6 for −999.5 at η/s = 10³,
    −64930 for −9999.5 at 10⁴ and 0 at 10⁵ (float64: NaN from 10¹⁰). At 10¹⁰ (float32) and
    10¹⁹ (float64) the two tails also rounded to one value and log P was −∞."""
    ref = _mp_cell(eta, spacing, scale)
    value, grads = _value_and_grads(eta, spacing, scale, dtype)
    tol = rtol if dtype == F32 else 1e-9
    for got, want in zip([value, *grads], ref, strict=True):
        assert math.isfinite(got)
        assert got == pytest.approx(want, rel=tol)
    # η < 0: the mirror image
    value_neg, grads_neg = _value_and_grads(-eta, spacing, scale, dtype)
    assert value_neg == value and grads_neg == [-grads[0], grads[1], grads[2]]


@pytest.mark.parametrize(
    ("dtype", "eta"), [(F32, 1e20), (F32, 1e30), (F64, 1e160)], ids=["f32-1e20", "f32-1e30", "f64"]
)
def test_gaussian_cell_whose_log_overflows_is_minus_infinity_with_a_finite_gradient(dtype, eta):
    """log P ≈ −η²/2s² past the dtype's range is −∞ (a rate of +∞); it was NaN, the two
    overflowed tails subtracted. The gradient in η, about −η/s², stays finite."""
    e = torch.tensor(eta, dtype=dtype, requires_grad=True)
    value = gaussian_cell_log_prob(
        e, torch.tensor(1.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    )
    assert value.item() == -math.inf
    (grad,) = torch.autograd.grad(value, e)
    assert grad.item() == pytest.approx(-eta, rel=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("eta", "spacing", "scale"), [(1e-30, 1e-3, 1e3), (1e-3, 1e-30, 1e3), (1e-20, 1e-4, 1.0)]
)
def test_narrow_cell_with_a_tiny_centre_has_an_exact_gradient(eta, spacing, scale, dtype):
    """A cell far narrower than s is integrated around its centre, with a log(sinh(x)/x) term
    at x = |η|Δ/2s²; autograd through sinh(x)/x formed cosh(x)/x − sinh(x)/x², NaN once 1/x²
    overflowed (every gradient was NaN at x ≈ 10⁻³⁹ in float32)."""
    ref = _mp_cell(eta, spacing, scale)
    value, grads = _value_and_grads(eta, spacing, scale, dtype)
    tol = 1e-5 if dtype == F32 else 1e-9
    assert value == pytest.approx(ref[0], rel=tol)
    for got, want in zip(grads, ref[1:], strict=True):
        assert got == pytest.approx(want, rel=tol, abs=tol * abs(ref[2]) * spacing / scale)


def test_gaussian_cell_gradient_in_a_batch_agrees_with_float64_everywhere_it_is_finite():
    """Over η/s from 10 to 10¹⁷ and Δ/s from 10⁻⁴ to 10³ the float32 gradients in η, Δ and s
    are within 10⁻⁴ of float64 (before: off by up to 6.5 times, or 0, past η/s ≈ 10³)."""
    eta = torch.logspace(1, 17, 65, dtype=F64)
    spacing = torch.logspace(-4, 3, 8, dtype=F64)
    eta, spacing = (t.reshape(-1) for t in torch.meshgrid(eta, spacing, indexing="ij"))
    grads = {}
    for dtype in (F32, F64):
        args = [t.to(dtype).requires_grad_() for t in (eta, spacing, torch.ones_like(eta))]
        gaussian_cell_log_prob(*args).sum().backward()
        grads[dtype] = [a.grad.double() for a in args]
    for g32, g64 in zip(grads[F32], grads[F64], strict=True):
        assert torch.isfinite(g32).all() and torch.isfinite(g64).all()
        torch.testing.assert_close(g32, g64, rtol=1e-4, atol=1e-5)


def test_gaussian_prior_lattice_training_rate_gradient_far_out_follows_float64():
    """A Z block under a Gaussian prior: the rate's gradient in y at y = 10³, 10⁴, 10⁵ was
    955.6, 1189 and 0 in float32 where float64 gives 999.99, 9999.98, 99999.98."""
    y0 = [[1e3, 2.0], [1e4, -2.0], [1e5, 0.5]]
    grads = {}
    for dtype in (F32, F64):
        torch.manual_seed(0)
        neck = build("lattice", dim=2, lattice="z", prior="gaussian").to(dtype).train()
        y = torch.tensor(y0, dtype=dtype, requires_grad=True)
        out = neck(y, generator=torch.Generator().manual_seed(1))
        (grads[dtype],) = torch.autograd.grad(out.rate.sum(), y)
    torch.testing.assert_close(grads[F32].double(), grads[F64], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "dim"), [("z", 8), ("d4", 4), ("e8", 8), ("bw16", 16), ("leech", 24)]
)
def test_closest_point_at_exact_ties_is_the_same_for_every_batch_and_dtype(name, dim):
    """Midpoints of two lattice points (exact in both dtypes) are decoded to one point whatever
    the batch they come in and in float32 as in float64, and that point is at the least
    distance (so the file, whichever batch encodes it, decodes to the eval path's point)."""
    lattice = tile(name, dim)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, lattice.dim, generator=gen, dtype=F64) * 3
    p = lattice.closest_point(x)
    q = lattice.closest_point(x + torch.randn(x.shape, generator=gen, dtype=F64))
    mid = (p + q) / 2
    full = lattice.closest_point(mid)
    for rows in (1, 7):
        parts = torch.cat([lattice.closest_point(mid[i : i + rows]) for i in range(0, 300, rows)])
        assert torch.equal(parts, full)
    assert torch.equal(lattice.closest_point(mid.float()).double(), full)
    best = torch.minimum((mid - p).square().sum(-1), (mid - q).square().sum(-1))
    assert torch.all((mid - full).square().sum(-1) <= best + 1e-9)
