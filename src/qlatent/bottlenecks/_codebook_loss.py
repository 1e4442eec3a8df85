"""VQ-VAE's training terms: the straight-through output and the codebook and commitment losses
(:func:`codebook_and_commitment`, :func:`straight_through`), and the mean square error they
rest on, finite where only the sum of squares overflows (:func:`mean_square_error`). Used by
``vq``, ``vector_st``, ``soft_vq`` and ``learnable_lattice``, and re-exported by
:mod:`._codebook`.

Shapes: ``z`` ``(N, d)`` rows, ``q`` their codewords ``(N, d)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import (
    anchor,
    apply_function,
    first_order,
    forward_mode_possible,
    forward_tangent,
    recording_graph,
    save_for_first_order,
    saved_for_first_order,
    with_plain_twin,
)


def mean_square_error(a: Tensor, b: Tensor) -> Tensor:
    """``F.mse_loss(a, b)`` (the mean of (a − b)², differentiable in both) that stays finite
    where the sum of squares passes the dtype's range but the mean does not
    (:func:`_rescaled_mean_square`)."""
    diff = a - b
    mean_square = diff.square().mean()
    if diff.numel() and recording_graph():
        return _finite_or_rescaled(mean_square, diff.reshape(-1))
    if diff.numel() and not bool(torch.isfinite(mean_square)):
        mean_square = _rescaled_mean_square(diff.reshape(-1))
    return mean_square


def _mean_square(flat: Tensor) -> Tensor:
    """Σ e²/n of a flat tensor as one dot product: no rows × d temporary (each costs page faults
    on the CPU), with the same fallback as :func:`mean_square_error`."""
    mean_square = torch.dot(flat, flat) / flat.numel()
    if flat.numel() and recording_graph():
        return _finite_or_rescaled(mean_square, flat)
    if flat.numel() and not bool(torch.isfinite(mean_square)):
        mean_square = _rescaled_mean_square(flat)
    return mean_square


def _finite_or_rescaled(mean_square: Tensor, flat: Tensor) -> Tensor:
    """The fallback of :func:`_mean_square` as ``torch.export`` can record it, which cannot
    branch on a value: both computed, the rescaled one taken where the plain one is not finite
    (the same value; the peak kept from 0 so that an all-zero ``flat`` gives no NaN beside it)."""
    wide = flat.float() if flat.element_size() < 4 else flat
    peak = wide.detach().abs().amax().clamp_min(torch.finfo(wide.dtype).tiny)
    unit = wide / peak
    rescaled = (peak.square() * (torch.dot(unit, unit) / flat.numel())).to(flat.dtype)
    return torch.where(mean_square.isfinite(), mean_square, rescaled)


def _rescaled_mean_square(flat: Tensor) -> Tensor:
    """Σ e²/n formed from e/max|e|, in float32 at least, and scaled back: for where the sum of
    squares passes the dtype's range and the mean does not (a row's squared norm is bounded by
    the input limit, not the sum over rows; any ordinary batch of a float16 module)."""
    wide = flat.float() if flat.element_size() < 4 else flat
    peak = wide.detach().abs().amax()
    unit = wide / peak
    return (peak.square() * (torch.dot(unit, unit) / flat.numel())).to(flat.dtype)


@with_plain_twin
class _CodebookAndCommitment(torch.autograd.Function):
    """VQ-VAE's straight-through output and auxiliary loss from one difference e = q − z:

        y_hat = z + sg(e),   aux = ‖q − sg(z)‖² + β ‖z − sg(q)‖²   (means; both equal mean e²)

    so ∂aux/∂q = 2e/n and ∂aux/∂z = −2βe/n. Three passes forward (e, its mean square, y_hat)
    where the composed form takes eight, and two rows × d allocations (e and y_hat, or e alone
    with ``reuse_q``). Forward mode (``jvp``) as the composed form's: ẏ_hat = ż,
    ȧux = Σ 2e·(q̇ − βż)/n."""

    outputs = 2  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(z: Tensor, q: Tensor, beta: float, reuse_q: bool):
        e = q - z
        mean_square = _mean_square(e.reshape(-1))
        # with ``reuse_q``, y_hat in the buffer of q, which the caller gave up
        y_hat = torch.add(z, e, out=q) if reuse_q else z + e
        return y_hat, (1.0 + beta) * mean_square, e, anchor(e)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, q, beta, reuse_q = inputs
        _, _, e, kept = output
        if reuse_q:
            ctx.mark_dirty(q)
        save_for_first_order(ctx, kept, (e,), (e,), (e,))
        ctx.beta = beta

    @staticmethod
    @first_order
    def backward(ctx, grad_y_hat: Tensor | None, grad_aux: Tensor | None, *_):
        (e,) = saved_for_first_order(ctx)
        if grad_y_hat is None:
            grad_y_hat = torch.zeros_like(e)
        if grad_aux is None:
            grad_aux = e.new_zeros(())
        scaled = e * (grad_aux * (2.0 / e.numel()))
        grad_z = grad_y_hat - ctx.beta * scaled if ctx.needs_input_grad[0] else None
        grad_q = scaled if ctx.needs_input_grad[1] else None
        return grad_z, grad_q, None, None

    @staticmethod
    def jvp(ctx, t_z, t_q, *_):
        (e,) = ctx.saved_tensors
        t_y_hat = torch.zeros_like(e) if t_z is None else t_z.clone()
        slope = e * (2.0 / e.numel())
        t_aux = forward_tangent((slope, t_q), (-ctx.beta * slope, t_z)).sum()
        return t_y_hat, t_aux, None, anchor(e)


def codebook_and_commitment(
    z: Tensor, q: Tensor, beta: float, *, reuse_q: bool = False
) -> tuple[Tensor, Tensor]:
    """``(y_hat, aux)`` of VQ-VAE: the straight-through output ``z + sg(q − z)`` and
    ``mse(q, sg(z)) + β·mse(z, sg(q))``, with the gradients of those expressions.

    ``reuse_q=True`` writes y_hat into q's buffer (q must be a temporary the caller no longer
    reads, e.g. the codewords just gathered, and not a leaf that requires grad): one rows × d
    allocation fewer."""
    # (not into q's buffer where forward mode may run: its tangent would have to be
    # rewritten in place; nor while exporting: the program recorded the ``out=`` write, which
    # failed wherever the codebook requires grad, and strict export refused the dirty input)
    reuse_q = reuse_q and not (forward_mode_possible() or recording_graph())
    y_hat, aux, *_ = apply_function(_CodebookAndCommitment, z, q, float(beta), reuse_q)
    return y_hat, aux


def straight_through(z: Tensor, q: Tensor) -> Tensor:
    """Forward value ``q``, gradient copied to ``z``: ``z + sg(q − z)``."""
    return z + (q - z).detach()
