"""Gaussian prior seen through a rectangular cell: the closed form of Theorem 1's density.

For X̂ ~ N(0, s²) and a cell of width Δ around η, P(η) = Φ((η + Δ/2)/s) − Φ((η − Δ/2)/s). Written
on the side of the tail (η replaced by |η|, which does not change P) as

    log P = log Φ(−a) + log(1 − e^{log Φ(−c) − log Φ(−a)}),   a = (|η| − Δ/2)/s,  c = (|η| + Δ/2)/s,

with ``log_ndtr`` for both tails and ``log(−expm1(·))`` for the difference, it is finite and
accurate for |η|/s up to the float range (where both Φ underflow), and so is its gradient. For a
cell far narrower than s the two logs nearly cancel, with an absolute error of about ε·s/Δ (ε the
dtype's machine epsilon), and below Δ ≈ ε·s they round to one value: the rate was infinite. So
for h = Δ/(2s) below (2ε)^(1/3) the cell is integrated around its centre instead: with c = |η|/s,

    P = φ(c)·s⁻¹·∫_{−Δ/2}^{Δ/2} e^{−cτ/s − τ²/2s²} dτ,
    log P = log φ(c) + log 2h + log(sinh(ch)/(ch)) + O(h²),

whose error h²/2 is at most the other form's at the switch (2·10⁻⁵ nats in float32, 10⁻¹¹ in
float64) and falls with h.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import apply_function, save_for_jvp, with_plain_twin
from .laplace import check_real


def gaussian_cell_log_prob(eta: Tensor, spacing: Tensor, scale: Tensor) -> Tensor:
    """log P(X̂ ∈ η + [−Δ/2, Δ/2)) for X̂ ~ N(0, s²), elementwise.

    Args:
        eta: ``(..., m)`` cell centres.
        spacing: ``(m,)`` cell widths Δ > 0 (broadcast against ``eta``).
        scale: ``(m,)`` standard deviations s > 0.

    Returns:
        ``(..., m)`` log-probabilities in nats, each ≤ 0 (the broadcast shape of the three
        arguments). The Gaussian lattice VAE of L. A. Lastras, "Lattice Representation
        Learning" (arXiv 2006.13833), section 3.3.1 and section 4.

    Raises:
        ValueError: ``eta`` is not a real tensor, or ``spacing``/``scale`` is neither a real
            tensor nor a number. Values are not checked: a spacing or scale ≤ 0 gives NaN.
    """
    check_real(eta, spacing, scale)
    if _HALF & {_dtype(v) for v in (eta, spacing, scale)}:
        # torch has no log_ndtr for float16 / bfloat16 on the CPU (a half model with a Gaussian
        # prior failed on NotImplementedError): computed in float32, returned in η's dtype
        wider = [v.float() if _dtype(v) in _HALF else v for v in (eta, spacing, scale)]
        return gaussian_cell_log_prob(*wider).to(eta.dtype)
    centre = eta.abs() / scale
    half = spacing / (2 * scale)
    near = apply_function(_LogNdtr, half - centre)  # log Φ(−a)
    far = apply_function(_LogNdtr, -half - centre)  # log Φ(−c) < log Φ(−a)
    # far out (a ≳ 4h/ε) the two round to one value, or both overflow to −∞, and the gap is 0
    # or NaN: log P was −∞ or NaN though finite. There the true gap is below −2h·a ≲ −300
    # (h ≥ (2ε)^{1/3} on the wide form), e^{gap} is 0 and log P = log Φ(−a): the gap is taken
    # as −∞ (the narrow form replaces it below where h is smaller)
    gap = far - near
    gap = torch.where((gap == 0) | gap.isnan(), -math.inf, gap)
    half = torch.as_tensor(half, dtype=gap.dtype, device=gap.device)  # spacing, scale: numbers
    narrow = half < (2 * torch.finfo(gap.dtype).eps) ** (1 / 3)
    if not bool(narrow.any()):
        return near + torch.log(-torch.expm1(gap))
    # where the narrow form is taken the gap may round to 0 (h below about ε/2), and the wide
    # form's log(0) = −inf then had an infinite gradient, which where() turned into NaN for η,
    # Δ and s though the value was finite: the wide form is formed from a finite stand-in there
    wide = near + torch.log(-torch.expm1(torch.where(narrow, -1.0, gap)))
    # the narrow cell's form, its inputs kept finite where the other form is taken
    h, c, narrow = torch.broadcast_tensors(torch.where(narrow, half, 1.0), centre, narrow)
    return torch.where(narrow, _log_phi(c) + torch.log(2 * h) + _log_sinhc(c * h), wide)


#: the dtypes torch's ``log_ndtr`` does not take on the CPU
_HALF = {torch.float16, torch.bfloat16}


def _dtype(value: Tensor | float) -> torch.dtype | None:
    return value.dtype if isinstance(value, Tensor) else None


@with_plain_twin
class _LogNdtr(torch.autograd.Function):
    """``torch.special.log_ndtr`` (the same values) with a gradient that holds in the tails.

    torch differentiates log Φ(x) as exp(−(log Φ(x) + x²/2))/√(2π), a difference of two
    numbers near x²/2: in float32 the gradient was 4% off at x = −10³, 6.5 times too large at
    −10⁴, 0 at −10⁵ and NaN past −10¹⁹ (float64: inf from −10¹⁰), where it is the inverse
    Mills ratio φ(x)/Φ(x) ≈ −x. Here it is formed without the cancellation:

        φ(x)/Φ(x) = √(2/π) / erfcx(−x/√2)            x < 0   (erfcx(z) = e^{z²} erfc(z))
                  = −x                                 x < −ε^{−1/2} (error 1/x² < ε)
                  = e^{−x²/2 − log Φ(x)} / √(2π)       x ≥ 0   (log Φ(x) ∈ [−log 2, 0])

    The backward is made of differentiable operations, so second derivatives still exist;
    forward mode (``jvp``) uses the same ratio. ``x`` any floating tensor torch's ``log_ndtr``
    takes; returns its shape.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.special.log_ndtr(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0], output)
        save_for_jvp(ctx, inputs[0], output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * _mills_ratio(*ctx.saved_tensors)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:
        return tangent * _mills_ratio(*ctx.saved_tensors)


def _mills_ratio(x: Tensor, value: Tensor) -> Tensor:
    """φ(x)/Φ(x), the derivative of log Φ at ``x``, given ``value`` = log Φ(x)
    (:class:`_LogNdtr`)."""
    negative = x < 0
    far = x < -(torch.finfo(x.dtype).eps ** -0.5)
    # each branch's input kept finite and in its range where another branch is taken
    left = torch.where(negative, x, -1.0)
    right = torch.where(negative, 0.0, x)
    return torch.where(
        far,
        -x,
        torch.where(
            negative,
            math.sqrt(2 / math.pi) / torch.special.erfcx(left * -math.sqrt(0.5)),
            torch.exp(-0.5 * right * right - torch.where(negative, 0.0, value))
            / math.sqrt(2 * math.pi),
        ),
    )


def _log_phi(c: Tensor) -> Tensor:
    """log φ(c) of the standard normal density."""
    return -0.5 * c * c - 0.5 * math.log(2 * math.pi)


@with_plain_twin
class _LogSinhc(torch.autograd.Function):
    """log(sinh(x)/x) for x ≥ 0 (values of :func:`_log_sinhc_value`) with a stable gradient.

    Autograd through sinh(x)/x forms cosh(x)/x − sinh(x)/x², two numbers near 1/x whose
    difference is x/3: relative error about 3ε/x², NaN once 1/x² overflows (x below 5·10⁻²⁰
    in float32, which a cell narrower than 10⁻⁴ of its prior's scale and a centre within
    10⁻¹⁵ of it reach). The derivative, Langevin's L(x) = coth(x) − 1/x, is formed in float64,
    from its series below 0.1 (error below 10⁻¹⁵):

        L(x) = x/3 − x³/45 + 2x⁵/945 − x⁷/4725 + 2x⁹/93555 − …

    ``x`` ≥ 0 of any shape; returns its shape and dtype. Forward mode (``jvp``) uses the same
    derivative.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _log_sinhc_value(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])
        save_for_jvp(ctx, inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * _langevin(*ctx.saved_tensors).to(grad.dtype)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:
        return tangent * _langevin(*ctx.saved_tensors).to(tangent.dtype)


def _langevin(x: Tensor) -> Tensor:
    """Langevin's L(x) = coth(x) − 1/x in float64, the derivative of :class:`_LogSinhc`."""
    wide = x.double()
    small = wide < 0.1
    t = torch.where(small, wide, 0.0)
    t2 = t * t
    series = t * (1 / 3 + t2 * (-1 / 45 + t2 * (2 / 945 + t2 * (-1 / 4725 + t2 * 2 / 93555))))
    big = torch.where(small, 1.0, wide)
    return torch.where(small, series, 1 / torch.tanh(big) - 1 / big)


def _log_sinhc(x: Tensor) -> Tensor:
    """log(sinh(x)/x) for x ≥ 0, finite for every finite x, 0 at x = 0; its gradient is
    accurate down to x = 0 (:class:`_LogSinhc`)."""
    return apply_function(_LogSinhc, x)


def _log_sinhc_value(x: Tensor) -> Tensor:
    """log(sinh(x)/x) for x ≥ 0, finite for every finite x, 0 at x = 0."""
    large = x > 0.5
    big = torch.where(large, x, torch.ones_like(x))  # x + log((1 − e^{−2x})/2x)
    small = torch.where(large | (x == 0), torch.ones_like(x), x)  # log1p of sinh(x)/x − 1
    return torch.where(
        large,
        big + torch.log1p(-torch.exp(-2 * big)) - torch.log(2 * big),
        torch.where(x == 0, torch.zeros_like(x), torch.log(torch.sinh(small) / small)),
    )
