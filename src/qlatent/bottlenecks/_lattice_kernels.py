"""The rectangular dithered lattice's kernels (:class:`~qlatent.bottlenecks.lattice.
DitheredLattice`), without its module: the training path y_hat = y − (r − ½)Δ with the Laplace
cell rate, as a reference kernel, fused by ``torch.compile`` with its closed-form backward
(:class:`_FusedTrainingPath`) and eager in blocks of rows (:class:`_BlockedTrainingPath`), the
elementwise gradient factors both backwards are made of, and the hard path's fused kernel.
Used by :mod:`qlatent.bottlenecks.lattice`, which re-exports what the benchmarks and tests
read."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._utils import (
    anchor,
    compiled_or_plain,
    first_order,
    forward_tangent,
    save_for_first_order,
    saved_for_first_order,
    transform_wrapper,
    with_plain_twin,
)
from ..priors import (
    cell_log_prob_from_constants,
    cell_nll_and_derivatives,
    cell_nll_no_grad,
    cell_terms_in_place,
)
from ..rng import counter_uniform


def _from_uniform(
    y: Tensor, r: Tensor, spacing: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    y_hat = y - (r - 0.5) * spacing
    return y_hat, -cell_log_prob_from_constants(y_hat, inv_scale, h, c).sum(-1)


def _training_kernel(
    y: Tensor, key: Tensor, spacing: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """The training path with its dither drawn inside the kernel by the counter-based generator."""
    return _from_uniform(y, counter_uniform(key, y.shape, y.dtype), spacing, inv_scale, h, c)


@functools.cache
def _compiled_kernel():
    """:func:`_training_kernel` fused into one loop by ``torch.compile`` (compiled on first use)."""
    return torch.compile(_training_kernel)


def _training_parts(
    y: Tensor, key: Tensor, spacing: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, ...]:
    """The training path and, from the same terms, what its backward needs, without autograd:
    ``(y_hat, rate, g, q, d_h)`` (see :func:`_gradient_factors`; w = ½ − r is not kept: the
    backward draws r again from the key, a cheaper pass than storing and reading it); y_hat
    and the rate are the values of :func:`_training_kernel`."""
    r = counter_uniform(key, y.shape, y.dtype)
    y_hat = y - (r - 0.5) * spacing
    nll, g, _, q, d_h = _gradient_factors(y_hat, r, inv_scale, h, c)
    return y_hat, nll.sum(-1), g, q, d_h


def _gradient_factors(
    y_hat: Tensor, r: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, ...]:
    """``(nll, g, w, q, d_h)`` per element of the training path y_hat = y − (r − ½)Δ: the cell
    rate nll and g = ∂nll/∂y_hat, w = ∂y_hat/∂Δ = ½ − r, q = ∂nll/∂(1/b), d_h = ∂nll/∂h
    (nll the cell rate of :class:`qlatent.priors.laplace._CellNLL`, whose derivatives these are)."""
    nll, d_a, d_h = cell_nll_and_derivatives(y_hat, inv_scale, h, c)
    return nll, d_a * inv_scale * torch.sign(y_hat), 0.5 - r, d_a * y_hat.abs(), d_h


@functools.cache
def _compiled_parts():
    """:func:`_training_parts` fused into one loop by ``torch.compile`` (compiled on first use)."""
    return torch.compile(_training_parts)


def _training_backward(grad_y_hat, grad_rate, g, q, d_h, key) -> tuple[Tensor, ...]:
    """The gradients of :class:`_FusedTrainingPath` from its saved factors and the dither's
    key (w = ½ − r drawn again, the same bits): ``(∂L/∂y, ∂L/∂Δ, ∂L/∂(1/b), ∂L/∂h)``."""
    rate = grad_rate.unsqueeze(-1)
    grad_y = grad_y_hat + rate * g
    w = 0.5 - counter_uniform(key, g.shape, g.dtype)
    return grad_y, (grad_y * w).sum(0), (rate * q).sum(0), (rate * d_h).sum(0)


@functools.cache
def _compiled_backward():
    """:func:`_training_backward` fused by ``torch.compile`` (compiled on first use)."""
    return torch.compile(_training_backward)


@with_plain_twin
class _FusedTrainingPath(torch.autograd.Function):
    """The training path with its backward formed in the forward's loop (``compile=True``).

    Left to itself, ``torch.compile``'s partitioner saves y_hat and recomputes the cell rate's
    exponentials in the backward, which then costs more than the forward. Here the forward is one
    fused loop without autograd that also writes three of the four elementwise factors of the
    gradient (:func:`_training_parts`), and the backward one more loop, a multiply-add, the
    fourth factor w = ½ − r drawn again from the key and three reductions over rows
    (:func:`_training_backward`; not storing w took the compiled forward + backward from
    2.63 and 2.53 to 2.38 and 2.28 times the floor kernel, ``results/bench-lattice-ab-w``, with
    the same gradients bit for bit):

        ∂L/∂y = ∂L/∂y_hat + ∂L/∂rate · g,     ∂L/∂Δ = Σ_rows ∂L/∂y · w,
        ∂L/∂(1/b) = Σ_rows ∂L/∂rate · q,       ∂L/∂h = Σ_rows ∂L/∂rate · d_h

    (c = −expm1(−h) gets no gradient of its own: d_h includes it, as in ``_CellNLL``). Rows
    ``(N, m)`` with per-coordinate parameters ``(m,)``; first derivatives only. Forward mode
    (``jvp``) from the same factors: ẏ_hat = ẏ + w·Δ̇, ṙate = Σ_m (g·ẏ_hat + q·(1/b)˙ + d_h·ḣ).
    """

    outputs = 2  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(y, key, spacing, inv_scale, h, c, compiled: bool):
        parts = compiled_or_plain(_compiled_parts, _training_parts) if compiled else _training_parts
        # y_hat, rate, the factors g, q, d_h and the anchor
        return *parts(y, key, spacing, inv_scale, h, c), anchor(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        factors = output[2:5]
        saved = (*factors, inputs[1])
        save_for_first_order(ctx, output[5], saved, factors, saved)
        ctx.compiled = inputs[6]

    @staticmethod
    @first_order
    def backward(ctx, grad_y_hat, grad_rate, *_):
        g, q, d_h, key = saved_for_first_order(ctx)
        if grad_y_hat is None:
            grad_y_hat = torch.zeros_like(g)
        if grad_rate is None:
            grad_rate = g.new_zeros(g.shape[0])
        # the compiled kernel only on plain tensors (not those a torch.func pullback passes)
        backward = (
            compiled_or_plain(_compiled_backward, _training_backward)
            if ctx.compiled and not transform_wrapper(g)
            else _training_backward
        )
        grad_y, grad_spacing, grad_inv, grad_h = backward(grad_y_hat, grad_rate, g, q, d_h, key)
        return grad_y, None, grad_spacing, grad_inv, grad_h, None, None

    @staticmethod
    def jvp(ctx, t_y, _t_key, t_spacing, t_inv, t_h, _t_c, _):
        g, q, d_h, key = ctx.saved_tensors
        w = 0.5 - counter_uniform(key, g.shape, g.dtype)  # the same bits as the forward's
        t_y_hat = forward_tangent((torch.ones_like(g), t_y), (w, t_spacing))
        t_rate = forward_tangent((g, t_y_hat), (q, t_inv), (d_h, t_h)).sum(-1)
        return t_y_hat, t_rate, None, None, None, anchor(g)


def _training_blocks(
    y: Tensor,
    key: Tensor,
    spacing: Tensor,
    inv_scale: Tensor,
    h: Tensor,
    c: Tensor,
    rows: int,
    factors: list[Tensor] | None = None,
    sums: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The eager training path without autograd, ``(N, m) -> (y_hat (N, m), rate (N,))``, in
    blocks of ``rows`` rows: each block draws its own dither by index (the whole input's
    numbers) and writes y_hat and its rate into the outputs, so no input-sized temporary is
    formed. The values of :func:`_training_kernel`, bit for bit. With a list ``factors``, each
    block's gradient factors ``(g, w, q, d_h)`` of :func:`_gradient_factors` are appended, or
    with a ``(2, m)`` tensor ``sums`` too, only g and w, and q and d_h summed over rows into
    ``sums``."""
    n, m = y.shape
    y_hat, rate = y.new_empty(n, m), y.new_empty(n)
    ones = y.new_ones(min(rows, n)) if sums is not None else None
    for start in range(0, n, rows):
        block = slice(start, start + rows)
        r = counter_uniform(key, (min(rows, n - start), m), y.dtype, offset=start * m)
        if factors is None:
            value = torch.sub(y[block], r.sub_(0.5).mul_(spacing), out=y_hat[block])
            torch.sum(cell_nll_no_grad(value, inv_scale, h, c), -1, out=rate[block])
            continue
        shift = r.sub_(0.5)  # r − ½, exact: r is a multiple of 2^-24 in [0, 1)
        value = torch.sub(y[block], shift * spacing, out=y_hat[block])
        nll, g, w, q, d_h = _gradient_factors_in_place(value, shift, inv_scale, h, c)
        torch.sum(nll, -1, out=rate[block])
        if sums is None:
            factors += (g, w, q, d_h)
            continue
        factors += (g, w)
        # the sums over rows as matrix-vector products (faster than sum(0) on the CPU)
        sums[0].addmv_(q.T, ones[: len(q)])
        sums[1].addmv_(d_h.T, ones[: len(q)])
    return y_hat, rate


def _gradient_factors_in_place(
    y_hat: Tensor, shift: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, ...]:
    """:func:`_gradient_factors` for one block of the eager path, bit for bit, in six buffers
    and about a fifth fewer passes: each intermediate is overwritten once it is no longer
    needed, |η| is taken once, sign(η)·x is ``copysign`` and w = ½ − r = −(r − ½) is formed
    in ``shift``'s buffer. (Products are commuted and c − x is written c + (−x) where that
    saves a buffer; both are exact rewrites.) Grad mode must be off."""
    abs_eta = torch.abs(y_hat)
    d, e1, em = cell_terms_in_place(abs_eta, inv_scale, h)  # a − t, e^{t−h}, expm1(−t)
    e1.mul_(0.5)  # ½ e^{t−h}
    inner = em.square().mul_(e1).neg_().add_(c)  # Q = c − ½ e1 em²
    nll = d.sub_(torch.log(inner))  # (a − t) − log Q
    r = e1.div_(inner)  # ½ e1 / Q
    two_t = torch.add(em, 2.0, out=inner).mul_(em)  # expm1(−2t) = em (em + 2)
    d_a = torch.mul(r, two_t).neg_()
    d_h = two_t.add_(2.0).mul_(r).neg_()
    g = torch.mul(d_a, inv_scale).copysign_(y_hat)  # d_a/b · sign(η) (d_a = 0 where η = 0)
    q = abs_eta.mul_(d_a)
    return nll, g, shift.neg_(), q, d_h


@with_plain_twin
class _BlockedTrainingPath(torch.autograd.Function):
    """The eager training path in blocks of ``rows`` rows with a hand-written backward.

    The forward is :func:`_training_blocks`, which keeps each block's factors g and w of
    :func:`_training_backward` (formed in place by :func:`_gradient_factors_in_place`) and, on
    inputs of more than :data:`_FOUR_FACTOR_BLOCKS` blocks, instead of the rate's two other
    factors q and d_h only their sums over rows. Those sums are the prior's whole gradient when
    ∂L/∂rate is the same for every row, as it is for a rate summed or averaged into the loss;
    otherwise the backward forms q and d_h again, block by block, from the saved y_hat (they
    depend on y_hat alone, not on the dither) and weights them by row. ∂L/∂y is one
    ``addcmul`` per block into its output. Every temporary is one block's size, and on large
    inputs the input-sized tensors are y_hat, the rate, two kept factors and the gradient.
    Rows ``(N, m)``; first derivatives only. Forward mode (``jvp``) block by block from the
    same factors, as in :class:`_FusedTrainingPath`.
    """

    outputs = 2  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(y, key, spacing, inv_scale, h, c, rows: int):
        factors: list[Tensor] = []
        n, m = y.shape
        # (2, m) sums, or (0, m) where all four factors are kept
        sums = y.new_zeros(2 if n > _FOUR_FACTOR_BLOCKS * rows else 0, m)
        y_hat, rate = _training_blocks(
            y, key, spacing, inv_scale, h, c, rows, factors, sums if len(sums) else None
        )
        return y_hat, rate, sums, *factors, anchor(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, inv_scale, h, c, rows = inputs
        y_hat, _, sums, *factors, kept = output
        # y_hat only where the backward may form q and d_h again from it
        saved = (y_hat, sums) if len(sums) else (None, None)
        forward = (y_hat, inv_scale, h, c, *factors)
        save_for_first_order(
            ctx, kept, (*saved, inv_scale, h, c, *factors), (sums, *factors), forward
        )
        ctx.rows, ctx.shape = rows, inputs[0].shape
        ctx.per_block = 2 if len(sums) else 4  # factors kept per block

    @staticmethod
    @first_order
    def backward(ctx, grad_y_hat, grad_rate, *_):
        y_hat, sums, inv_scale, h, c, *factors = saved_for_first_order(ctx)
        n, m = ctx.shape
        if grad_y_hat is None:  # (the factors' gradients are not materialized: nor are these)
            grad_y_hat = inv_scale.new_zeros(n, m)
        if grad_rate is None:
            grad_rate = inv_scale.new_zeros(n)
        grad_y = torch.empty_like(grad_y_hat)
        grad_spacing = grad_y_hat.new_zeros(m)
        kept = 4 if sums is None else 2  # factors per block
        uniform = sums is not None and _same_for_every_row(grad_rate)
        # ∂L/∂(1/b), ∂L/∂h: the kept sums times the one ∂L/∂rate (none if n = 0), or summed below
        prior = sums * grad_rate[:1] if uniform and n else grad_y_hat.new_zeros(2, m)
        for i, start in enumerate(range(0, n, ctx.rows)):
            block = slice(start, start + ctx.rows)
            g, w, *q_d_h = factors[kept * i : kept * i + kept]
            rate = grad_rate[block]
            value = torch.addcmul(grad_y_hat[block], rate.unsqueeze(-1), g, out=grad_y[block])
            grad_spacing += (value * w).sum(0)  # sums over rows: no block-sized temporaries
            if q_d_h:
                prior[0].addmv_(q_d_h[0].T, rate)
                prior[1].addmv_(q_d_h[1].T, rate)
            elif not uniform:
                _add_prior_gradient(prior, y_hat[block], rate, inv_scale, h, c)
        return grad_y, None, grad_spacing, prior[0], prior[1], None, None

    @staticmethod
    def jvp(ctx, t_y, _t_key, t_spacing, t_inv, t_h, _t_c, _):
        y_hat, inv_scale, h, c, *factors = ctx.saved_tensors
        n, kept = ctx.shape[0], ctx.per_block
        t_y_hats, t_rates = [], []
        for i, start in enumerate(range(0, n, ctx.rows)):
            block = slice(start, start + ctx.rows)
            g, w, *q_d_h = factors[kept * i : kept * i + kept]
            if not q_d_h:  # (only their sums were kept: formed again from y_hat, as backward)
                _, d_a, d_h = cell_nll_and_derivatives(y_hat[block], inv_scale, h, c)
                q_d_h = [d_a * y_hat[block].abs(), d_h]
            t_block = forward_tangent(
                (torch.ones_like(g), None if t_y is None else t_y[block]), (w, t_spacing)
            )
            t_y_hats.append(t_block)
            t_rates.append(forward_tangent((g, t_block), (q_d_h[0], t_inv), (q_d_h[1], t_h)))
        t_y_hat = torch.cat(t_y_hats) if t_y_hats else torch.zeros_like(y_hat)
        t_rate = torch.cat(t_rates).sum(-1) if t_rates else y_hat.new_zeros(0)
        return t_y_hat, t_rate, None, *(None,) * len(factors), anchor(y_hat)


def _add_prior_gradient(
    out: Tensor, y_hat: Tensor, grad_rate: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> None:
    """Adds ``Σ_rows ∂L/∂rate · q`` to ``out[0]`` and ``Σ_rows ∂L/∂rate · d_h`` to ``out[1]``
    (∂L/∂(1/b) and ∂L/∂h) for rows whose ∂L/∂rate differ, with q and d_h of
    :func:`_gradient_factors` formed again from y_hat (they do not depend on the dither): the
    same numbers bit for bit."""
    _, d_a, d_h = cell_nll_and_derivatives(y_hat, inv_scale, h, c)
    out[0].addmv_(d_a.mul_(y_hat.abs()).T, grad_rate)  # q = d_a·|η|
    out[1].addmv_(d_h.T, grad_rate)


def _same_for_every_row(grad_rate: Tensor) -> bool:
    """Whether ∂L/∂rate is one number for all rows (a rate summed or averaged into the loss),
    so that the prior's gradient is that number times the sums over rows of q and d_h, which
    the eager training path forms in its forward instead of keeping q and d_h."""
    if grad_rate.numel() <= 1 or grad_rate.stride(0) == 0:
        return True
    low, high = torch.aminmax(grad_rate)
    return bool(low == high)


def _hard_kernel(
    y: Tensor, key: Tensor, spacing: Tensor, inv_scale: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The hard path from the dither's key: ``(y_hat, rate per row, k as int64, max |k|)``,
    with u = (r − ½)Δ, k = round((y + u)/Δ), y_hat = kΔ − u and the exact cell rate of y_hat:
    the operations of :meth:`~.lattice.DitheredLattice._hard_rows_no_grad`, in the same order. The
    reach max |k| (as float, NaN if any k is) is for the caller's overflow check, which makes
    the int64 k meaningful; no autograd. Non-empty ``y`` only (the reduction needs one)."""
    u = (counter_uniform(key, y.shape, y.dtype) - 0.5) * spacing
    k = torch.round((y + u) / spacing)
    y_hat = k * spacing - u
    rate = cell_nll_no_grad(y_hat, inv_scale, h, c).sum(-1)
    return y_hat, rate, k.to(torch.int64), k.abs().amax()


@functools.cache
def _compiled_hard_kernel():
    """:func:`_hard_kernel` fused by ``torch.compile`` (compiled on first use)."""
    return torch.compile(_hard_kernel)


#: inputs of up to this many blocks keep all four gradient factors on the eager training path
#: (:class:`_BlockedTrainingPath`); larger ones keep two and the sums over rows of the others.
#: Measured (``results/bench-lattice-scaling-ab-two-factors``): two factors run 1.16–1.35×
#: faster at 1M rows of 64, while at 16k rows, where the buffers freed in every block made the
#: allocator return memory and fault it back in on the next call, up to 20% slower
_FOUR_FACTOR_BLOCKS = 4
