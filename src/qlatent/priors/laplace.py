"""Laplace prior seen through a dithered rectangular cell (lattice paper, section 4).

For X̂ ~ Laplace(0, b) and U ~ Unif(-Δ/2, Δ/2), the probability of the cell around η,

    P(η) = Δ · f_{X̂-U}(η) = F(η + Δ/2) - F(η - Δ/2),

is both the hard path's ``P(Ẑ = z | U = u)`` (at η = z - u) and, inside Theorem 1's
``log f_U(u) - log f_{X̂-U}(x - u) = -log P(x - u)``, the training path's rate. With a = |η|/b and
h = Δ/(2b) the closed form is ``1 - e^{-h} cosh a`` for a < h and ``e^{-a} sinh h`` for a ≥ h.
Both branches are one formula: with t = min(a, h),

    log P = -(a - t) + log(1 - e^{-h} cosh t),
    1 - e^{-h} cosh t = -expm1(-h) - ½ e^{t-h} expm1(-t)²,

in which every exponent is ≤ 0 and the subtraction loses at most a factor two of relative
precision (the result is never below half of its first term). So log P is finite, ≤ 0 and
accurate for |η|/b up to the float range, and its gradient is defined everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import (
    anchor,
    apply_function,
    first_order,
    forward_tangent,
    save_for_first_order,
    saved_for_first_order,
    with_plain_twin,
)


def laplace_cell_log_prob(eta: Tensor, spacing: Tensor, scale: Tensor) -> Tensor:
    """log P(X̂ ∈ η + [-Δ/2, Δ/2)) for X̂ ~ Laplace(0, b), elementwise.

    Args:
        eta: ``(..., m)`` cell centres relative to the dither (``x - u`` or ``z - u``).
        spacing: ``(m,)`` cell widths Δ > 0 (broadcast against ``eta``).
        scale: ``(m,)`` Laplace scales b > 0.

    Returns:
        ``(..., m)`` log-probabilities in nats, each ≤ 0 (the broadcast shape of the three
        arguments). Lattice paper (L. A. Lastras, arXiv 2006.13833), section 4.

    Raises:
        ValueError: ``eta`` is not a real tensor, or ``spacing``/``scale`` is neither a real
            tensor nor a number. Values are not checked: a spacing or scale ≤ 0 gives NaN.
    """
    check_real(eta, spacing, scale)
    spacing, scale = torch.as_tensor(spacing), torch.as_tensor(scale)  # numbers too
    return cell_log_prob_from_constants(eta, *cell_constants(spacing, scale))


def check_real(eta, spacing, scale) -> None:
    """ValueError naming the first argument that is not real: ``eta`` a real tensor,
    ``spacing`` and ``scale`` real tensors or numbers (a complex η was read as its modulus
    without a word, a list failed on a missing ``abs``). Values are not checked: a spacing or
    scale ≤ 0 gives NaN."""
    for name, value in (("eta", eta), ("spacing", spacing), ("scale", scale)):
        if isinstance(value, Tensor):
            if value.is_complex() or value.dtype == torch.bool:
                raise ValueError(f"{name} must be a real-valued tensor, got {value.dtype}")
        elif name == "eta" or isinstance(value, bool) or not isinstance(value, int | float):
            kind = "a tensor" if name == "eta" else "a tensor or a number"
            raise ValueError(f"{name} must be {kind}, got {type(value).__name__}")


def laplace_cell_nll(eta: Tensor, spacing: Tensor, scale: Tensor) -> Tensor:
    """``-laplace_cell_log_prob``: the per-coordinate rate in nats (≥ 0), elementwise.

    Arguments, broadcasting and errors as :func:`laplace_cell_log_prob`: ``eta`` ``(..., m)``,
    ``spacing`` and ``scale`` ``(m,)``; returns ``(..., m)``. Summing over the last axis gives
    the rate of one code vector; nothing is summed here.
    """
    return -laplace_cell_log_prob(eta, spacing, scale)


def cell_constants(spacing: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-dimension constants ``(1/b, h = Δ/2b, -expm1(-h))``, computed once per call.

    ``spacing`` Δ and ``scale`` b are tensors of shape ``(m,)`` (or any shapes that broadcast);
    each returned tensor has their broadcast shape. Values are not checked.
    Split from the elementwise part so that a fused kernel does not recompute them per element.
    """
    inv_scale = scale.reciprocal()
    h = 0.5 * spacing * inv_scale
    return inv_scale, h, -torch.expm1(-h)


def cell_log_prob_from_constants(eta: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """The elementwise part of :func:`laplace_cell_log_prob` given :func:`cell_constants`
    (``c`` must be ``-expm1(-h)``: its gradient is part of the closed form's ``h`` term).

    ``eta`` ``(..., m)`` against constants of shape ``(m,)``; returns ``(..., m)`` log-probabilities
    in nats, each ≤ 0. Inputs are not checked (:func:`laplace_cell_log_prob` checks them).
    """
    if not torch.is_grad_enabled():  # no backward can follow: the forward alone
        return -cell_nll_no_grad(eta, inv_scale, h, c)
    derivatives = eta.requires_grad or inv_scale.requires_grad or h.requires_grad
    return -apply_function(_CellNLL, eta, inv_scale, h, c, derivatives)[0]


def _forward_parts(eta, inv_scale, h, c):
    a = eta.abs() * inv_scale
    t = torch.minimum(a, h)
    e1 = torch.exp(t - h)
    em = torch.expm1(-t)
    inner = c - 0.5 * e1 * em.square()
    return a, t, e1, em, inner


def cell_nll_no_grad(eta: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """``-cell_log_prob_from_constants`` for inference, in three buffers of the broadcast shape:
    the same operations in the same order as the autograd path, so bit for bit its values
    (x·½ for ½·x and c + (−x) for c − x are exact rewrites), with the temporaries reused in
    place. No gradient flows through it. Returns the rate in nats (≥ 0) of the broadcast shape
    of ``eta`` ``(..., m)`` and the ``(m,)`` constants."""
    with torch.no_grad():
        d, e1, em = cell_terms_in_place(torch.abs(eta), inv_scale, h)
        inner = e1.mul_(0.5).mul_(em.square_()).neg_().add_(c)  # c − ½ e1 em²
        return d.sub_(inner.log_())


def cell_terms_in_place(abs_eta: Tensor, inv_scale: Tensor, h: Tensor) -> tuple[Tensor, ...]:
    """``(a − t, e^{t−h}, expm1(−t))`` with a = |η|/b and t = min(a, h), in three new buffers of
    the broadcast shape (``abs_eta`` is only read): the terms every in-place form of the cell
    rate starts from, computed as :func:`_forward_parts` computes them. No autograd."""
    d = abs_eta * inv_scale  # a = |η|/b
    t = torch.minimum(d, h)
    if d.shape != t.shape or d.dtype != t.dtype:  # h broadcasts or promotes further
        d = d.to(t.dtype).expand_as(t).clone()
    d.sub_(t)  # a − t
    e1 = torch.sub(t, h).exp_()
    em = t.neg_().expm1_()  # expm1(−t), in t's buffer
    return d, e1, em


def cell_nll_and_derivatives(
    eta: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(−log P, ∂(−log P)/∂a, ∂(−log P)/∂h)`` elementwise, a = |η|/b (see :class:`_CellNLL`
    for the closed forms), from one set of exponentials. Each of the three has the broadcast shape
    of ``eta`` ``(..., m)`` and the ``(m,)`` constants; −log P is in nats."""
    a, t, e1, em, inner = _forward_parts(eta, inv_scale, h, c)
    nll = (a - t) - torch.log(inner)
    r = (0.5 * e1).div_(inner)
    two_t = em * (em + 2.0)  # expm1(−2t)
    d_a = r.mul(two_t).neg_()  # ∂(−log P)/∂a ≥ 0
    d_h = two_t.add_(2.0).mul_(r).neg_()  # ∂(−log P)/∂h ≤ 0
    return nll, d_a, d_h


@with_plain_twin
class _CellNLL(torch.autograd.Function):
    """−log P(η) elementwise with a closed-form backward.

    With t = min(a, h), Q = 1 − e^{−h} cosh t (``inner``) and −log P = (a − t) − log Q, both
    branches of P have the derivatives

        ∂ log P / ∂a = −e^{−h} sinh t / Q = ½ e^{t−h} expm1(−2t) / Q      (−1 for a ≥ h)
        ∂ log P / ∂h =  e^{−h} cosh t / Q = ½ e^{t−h} (2 + expm1(−2t)) / Q

    (the derivative in h includes that of c = −expm1(−h)), with expm1(−2t) computed as
    expm1(−t)·(expm1(−t) + 2), accurate for small t. Every factor is bounded (e^{t−h} ≤ 1,
    Q ≥ half its first term), so the gradient is finite wherever the forward is. The forward
    keeps the two elementwise derivatives instead of autograd's dozen intermediate tensors.
    First derivatives only; forward mode (``jvp``) from the same two derivatives.
    """

    outputs = 1  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(eta: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor, derivatives: bool):
        if not derivatives:  # no input of the first three needs a gradient
            a, t, _, em, inner = _forward_parts(eta, inv_scale, h, c)
            return (a - t) - torch.log(inner), None, None, anchor(eta)
        # the two elementwise derivatives, formed while the terms are at hand: the backward is
        # then a few products and reductions
        return *cell_nll_and_derivatives(eta, inv_scale, h, c), anchor(eta)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        eta, inv_scale, h, c, _ = inputs
        _, d_a, d_h, kept = output
        forward = (eta, inv_scale, h, c, d_a, d_h)
        save_for_first_order(ctx, kept, (d_a, d_h, eta, inv_scale, h), (d_a, d_h), forward)

    @staticmethod
    @first_order
    def backward(ctx, grad: Tensor, *_):
        d_a, d_h, eta, inv_scale, h = saved_for_first_order(ctx)
        grad_a = grad * d_a
        grad_eta = grad_inv = grad_h = None
        if ctx.needs_input_grad[0]:
            grad_eta = grad_a * inv_scale * torch.sign(eta)
        if ctx.needs_input_grad[1]:
            grad_inv = (grad_a * eta.abs()).sum_to_size(inv_scale.shape)
        if ctx.needs_input_grad[2]:
            grad_h = (grad * d_h).sum_to_size(h.shape)
        return grad_eta, grad_inv, grad_h, None, None

    @staticmethod
    def jvp(ctx, t_eta, t_inv, t_h, _t_c, _):
        eta, inv_scale, h, c, d_a, d_h = ctx.saved_tensors
        if d_a is None:  # (no input required a gradient: not formed in the forward)
            _, d_a, d_h = cell_nll_and_derivatives(eta, inv_scale, h, c)
        # c = −expm1(−h) has no term of its own: d_h includes it, as in the backward
        tangent = forward_tangent(
            (d_a * inv_scale * torch.sign(eta), t_eta), (d_a * eta.abs(), t_inv), (d_h, t_h)
        )
        return tangent, None, None, anchor(eta)
