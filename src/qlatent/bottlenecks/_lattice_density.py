"""The sums behind the Monte-Carlo density of a good lattice (:mod:`.good_lattice`).

- :class:`_LaplaceBlockSums`, :class:`_BalanceWeight`, :class:`_LogSum` — the estimate's
  full-size steps as autograd Functions with closed-form backwards (first derivatives, and
  forward mode), called through :func:`_laplace_block_sums`, :func:`_balance_weight` and
  :func:`_log_sum` by :mod:`._lattice_estimate`.
- The blocks they sum over (:class:`_Cells`, :class:`_BlockSums`) and the tables a good lattice
  keeps of them (:func:`geometry_tables`, :func:`mc_cells`, :func:`membership_of`,
  :func:`subset_geometry`) are :mod:`._lattice_cells`'s, reachable here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._utils import (
    anchor,
    apply_function,
    first_order,
    forward_tangent,
    recording_graph,
    save_for_first_order,
    saved_for_first_order,
    with_plain_twin,
)
from ._lattice_cells import (  # noqa: F401  (the blocks' tables, where good_lattice reads them)
    _BlockSums,
    _Cells,
    _Tables,
    geometry_tables,
    mc_cells,
    membership_of,
    subset_geometry,
)


@with_plain_twin
class _LaplaceBlockSums(torch.autograd.Function):
    """Σ_{i ∈ b} c_i·|v_ni + w_is| per block: ``v`` ``(N, m)``, ``w`` ``(m, S)``, ``c`` ``(m,)``
    (the inverse prior scales), ``sums`` the blocks' :class:`_BlockSums` (or their ``(m,
    blocks)`` 0/1 matrix), ``block_of`` ``(m,)`` each coordinate's block -> ``(N, blocks, S)``.
    ``scratch``: optional, at least ``(N, m, S)``, where v + w is formed when no input needs a
    gradient (its contents are overwritten).

    The backward, with t = v + w, G the upstream gradient ``(N, blocks, S)`` and H its rows
    copied out to the coordinates, H_nis = G_{n,b(i),s}·sgn(t_nis):

        ∂/∂v_ni = c_i Σ_s H_nis,   ∂/∂w_is = c_i Σ_n H_nis,   ∂/∂c_i = Σ_{n,s} H_nis·t_nis

    (H·t = G·|t|): a row gather, two elementwise passes and three reductions, where autograd
    went through the broadcast sum, |t| and a block-sum product whose inner dimension is the
    number of blocks (slow for both 2 and 19 blocks). First derivatives only; forward mode
    (``jvp``) as Σ_{i ∈ b} c_i·sgn(t_nis)·(v̇_ni + ẇ_is) + ċ_i·|t_nis|.
    """

    outputs = 1  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(
        v: Tensor,
        w: Tensor,
        c: Tensor,
        sums: _BlockSums | Tensor,
        block_of: Tensor,
        scratch: Tensor | None,
        derivatives: bool,
    ):
        sums = _BlockSums.of(sums)
        if derivatives:  # an input of the first three needs a gradient: t = v + w is kept
            t = v.unsqueeze(2) + w
            return sums.points(t.abs(), c, temporary=True), t, anchor(v)
        # nothing to differentiate (the hard path, IWAE): |t| in place, in ``scratch``
        out = None if scratch is None else scratch[: v.shape[0]]
        t = torch.add(v.unsqueeze(2), w, out=out).abs_()
        return sums.points(t, c, temporary=True), None, anchor(v)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, _, c, sums, block_of, _, _ = inputs
        _, t, kept = output
        save_for_first_order(ctx, kept, (t, c, block_of), (t,), (*inputs[:3], block_of))
        ctx.sums = _BlockSums.of(sums)

    @staticmethod
    @first_order
    def backward(ctx, grad: Tensor, *_):
        t, c, block_of = saved_for_first_order(ctx)
        # H = G_b(i)·sgn(t): the signs' buffer weighted in place run by run, where the runs are
        # known, rather than G copied out to the coordinates and a second full-size buffer
        if ctx.sums.spreads:
            h = ctx.sums.spread_(t.sgn(), grad)
        else:
            h = grad.index_select(1, block_of).mul_(t.sgn())
        grad_v = h.sum(2).mul_(c) if ctx.needs_input_grad[0] else None
        grad_w = h.sum(0).mul_(c.unsqueeze(1)) if ctx.needs_input_grad[1] else None
        grad_c = h.mul_(t).sum((0, 2)) if ctx.needs_input_grad[2] else None
        return grad_v, grad_w, grad_c, None, None, None, None

    @staticmethod
    def jvp(ctx, t_v, t_w, t_c, *_):
        v, w, c, block_of = ctx.saved_tensors
        t = v.unsqueeze(2) + w
        moved = forward_tangent((torch.ones_like(t), _unsqueeze(t_v, 2)), (torch.ones_like(t), t_w))
        terms = forward_tangent((t.sgn() * c.unsqueeze(1), moved), (t.abs(), _unsqueeze(t_c, 1)))
        # summed by block through the saved ``block_of``: the block sums' matrix is no saved
        # tensor, and under nested transforms it may belong to another level than this one's
        blocks = t.new_zeros(t.shape[0], ctx.sums.count, t.shape[2])
        return blocks.index_add(1, block_of, terms), None, anchor(v)


def _unsqueeze(t: Tensor | None, dim: int) -> Tensor | None:
    return None if t is None else t.unsqueeze(dim)


def _laplace_block_sums(
    v: Tensor,
    w: Tensor,
    c: Tensor,
    sums: _BlockSums | Tensor,
    block_of: Tensor,
    scratch: Tensor | None = None,
) -> Tensor:
    """:class:`_LaplaceBlockSums` of these arguments, ``(N, blocks, S)``."""
    derivatives = v.requires_grad or w.requires_grad or c.requires_grad
    return apply_function(_LaplaceBlockSums, v, w, c, sums, block_of, scratch, derivatives)[0]


@with_plain_twin
class _BalanceWeight(torch.autograd.Function):
    """The balance heuristic's log-term of one point, log p − log(S_u/V + S_q·q), from
    ``log_p`` ``(N, blocks, S)``, ``log_uniform`` = log(S_u/V) ``(blocks, 1)``, ``log_q0``
    ``(N, blocks, S)`` (the proposal's log-density, without gradient in the density) and ``shift`` =
    log S_q − log|D| ``(blocks, 1)`` -> ``(N, blocks, S)``, with a closed-form backward.

    With d = log_q0 + shift − log_uniform, the term is log p − log_uniform − log(1 + e^d), so

        ∂/∂log p = 1,   ∂/∂log_uniform = −σ(−d),   ∂/∂shift = −σ(d)

    and the two per-block gradients are sums over rows and points of G·σ(d) and of G: one
    ``sigmoid`` and one reduction in the backward, where autograd through ``logaddexp``, the
    shift's broadcast sum and the difference formed two exponentials, a negation and three
    reductions over the full size. Forward mode (``jvp``) from the same three derivatives.
    """

    outputs = 1  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(log_p: Tensor, log_uniform: Tensor, log_q0: Tensor, shift: Tensor):
        d = log_q0 + (shift - log_uniform)
        # log(1 + e^d) as log1p(exp(d)), d clamped to where e^d is a normal number: below, e^d
        # counts as the smallest (exp leaves its vectorized path for smaller results, many
        # times slower on them); above, log(1 + e^d) = d to the rounding. Timed apart on a
        # trained E8^5 model's terms, 40% of them below the range, in half the time of
        # ``logaddexp(d, 0)``
        info = torch.finfo(d.dtype)
        low, high = math.log(info.tiny) + 1.0, math.log(info.max) - 1.0
        softplus = d.clamp(min=low, max=high).exp_().log1p_()
        # (always under torch.export, which cannot branch on a value: it adds zeros there)
        if d.numel() and (recording_graph() or bool(d.amax() > high)):
            softplus.add_((d - high).clamp_(min=0.0))
        return torch.sub(log_p, softplus).sub_(log_uniform), d, anchor(d)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, log_uniform, _, shift = inputs
        _, d, kept = output
        save_for_first_order(ctx, kept, (d,), (d,), (d,))
        ctx.shapes = log_uniform.shape, shift.shape

    @staticmethod
    @first_order
    def backward(ctx, grad: Tensor, *_):
        (d,) = saved_for_first_order(ctx)
        uniform_shape, shift_shape = ctx.shapes
        grad_uniform = grad_q0 = grad_shift = None
        if any(ctx.needs_input_grad[1:]):
            q_part = torch.sigmoid(d).mul_(grad)  # G·σ(d)
            if ctx.needs_input_grad[1]:
                grad_uniform = q_part.sum_to_size(uniform_shape) - grad.sum_to_size(uniform_shape)
            if ctx.needs_input_grad[3]:
                grad_shift = -q_part.sum_to_size(shift_shape)
            if ctx.needs_input_grad[2]:  # not in the density, whose proposal has no gradient
                grad_q0 = q_part.neg_()
        return grad, grad_uniform, grad_q0, grad_shift

    @staticmethod
    def jvp(ctx, t_log_p, t_uniform, t_q0, t_shift):
        (d,) = ctx.saved_tensors
        q_part = torch.sigmoid(d)
        tangent = forward_tangent(
            (torch.ones_like(d), t_log_p),
            (q_part - 1.0, t_uniform),
            (-q_part, t_q0),
            (-q_part, t_shift),
        )
        return tangent, None, anchor(d)


def _balance_weight(log_p: Tensor, log_uniform: Tensor, log_q0: Tensor, shift: Tensor) -> Tensor:
    """:class:`_BalanceWeight` of these arguments, ``(N, blocks, S)``."""
    return apply_function(_BalanceWeight, log_p, log_uniform, log_q0, shift)[0]


@with_plain_twin
class _LogSum(torch.autograd.Function):
    """log P̂ = log Σ_k exp(t_k) over the last dim of ``terms`` ``(N, blocks, samples + draws)``
    -> ``(N, blocks)``, plus, with ``debias``, the delta-method correction ½·V̂ar(P̂)/P̂², the
    variance estimated from the terms themselves: the first ``samples`` come from antithetic cell
    points (point k and k + samples/2 are a pair w, −w, so a pair's sum is one independent unit),
    the rest from independent proposal draws (one unit each). A closed-form backward.

    With ω_k = exp(t_k − log P̂) and the units a_j of each group (pair sums; single draws), the
    correction is V = Σ_groups n/(n − 1)·Σ_j (a_j − ā)². Since ∂V/∂ω_k = g_k =
    2n/(n − 1)·(a_j(k) − ā) and ∂ω_k/∂t_l = ω_k(δ_kl − ω_l),

        ∂(log P̂ + V/2)/∂t_l = ω_l·(1 + g_l/2 − Σ_k g_k ω_k / 2) = ω_l·(1 + g_l/2 − V)

    (Σ_k g_k ω_k = Σ_j g_j a_j = 2V, the centred units summing to zero). The forward forms the
    exponentials once, for the sum and for ω; the backward is two elementwise passes over ω,
    where autograd through ``logsumexp`` and the variance took about eight, each with its own
    ``exp`` or temporary. log P̂ is ``torch.logsumexp``'s own formula (the maximum, the sum of
    exp(t − max), its log plus the maximum) but for terms more than about 63 (float32) or 684
    (float64) nats below the largest, which count as that far below it: their share of the sum
    is below the rounding of its largest term, and their ω, which is below it too, is kept
    above the smallest normal number. Forward mode (``jvp``): Σ_l of the backward's factor of
    t_l times ṫ_l.
    """

    outputs = 1  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(terms: Tensor, samples: int, debias: bool):
        peak = terms.amax(2, keepdim=True)
        empty = peak == -math.inf  # every term −inf: P̂ = 0, log P̂ = −inf and ω = 0
        peak = torch.where(torch.isfinite(peak), peak, 0.0)
        # exp(t − max) no lower than e^floor: ``exp`` leaves its vectorized path for results
        # below the dtype's smallest normal number (many times slower on them), and
        # terms that far below the largest change no sum (K·e^floor ≪ the rounding of 1).
        # float16's smallest normal number is too large for that (24 nats above it is above
        # the largest term: every term counted as the largest, and every rate was 0), so
        # there the floor is 24 nats below its rounding of 1, where exp gives 0
        info = torch.finfo(terms.dtype)
        floor = min(math.log(info.tiny) + 24.0, math.log(info.eps) - 24.0)
        omega = torch.sub(terms, peak).clamp_(min=floor).exp_()
        total = omega.sum(2, keepdim=True)
        log_sum = total.log().add_(peak).squeeze(2)
        omega.div_(total)
        if recording_graph() or bool(empty.any()):  # (export: no value to branch on)
            log_sum.masked_fill_(empty.squeeze(2), -math.inf)
            omega.masked_fill_(empty, 0.0)
        slopes = []
        if debias:
            half = samples // 2
            variance, pair_slope = _group_slopes(omega[..., :half] + omega[..., half:samples])
            slopes.append(pair_slope)
            if terms.shape[2] > samples:
                draw_variance, draw_slope = _group_slopes(omega[..., samples:])
                variance = variance + draw_variance
                slopes.append(draw_slope)
            log_sum = log_sum + 0.5 * variance
            return log_sum, omega, variance, *slopes, anchor(terms)
        return log_sum, omega, anchor(terms)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, *factors, kept = output  # ω, and with debias the variance and the groups' slopes
        save_for_first_order(ctx, kept, factors, factors, factors)
        ctx.samples = inputs[1]

    @staticmethod
    @first_order
    def backward(ctx, grad: Tensor, *_):
        return _LogSum.gradient(saved_for_first_order(ctx), ctx.samples, grad), None, None

    @staticmethod
    def jvp(ctx, t_terms, *_):
        omega = ctx.saved_tensors[0]
        ones = omega.new_ones(omega.shape[:2])
        tangent = (_LogSum.gradient(ctx.saved_tensors, ctx.samples, ones) * t_terms).sum(2)
        return tangent, *(None,) * len(ctx.saved_tensors), anchor(omega)

    @staticmethod
    def gradient(saved: Sequence[Tensor], samples: int, grad: Tensor) -> Tensor:
        """∂L/∂terms ``(N, blocks, K)`` from the saved factors and ``grad`` = ∂L/∂log P̂
        ``(N, blocks)``."""
        omega, *rest = saved
        grad = grad.unsqueeze(2)
        if not rest:
            return omega * grad
        variance, pair_slope, *draw_slope = rest
        out = omega * (grad * (1.0 - variance.unsqueeze(2)))
        half_grad = 0.5 * grad
        half = samples // 2
        weight = pair_slope * half_grad  # one factor for both points of a pair
        out[..., :half].addcmul_(omega[..., :half], weight)
        out[..., half:samples].addcmul_(omega[..., half:samples], weight)
        if draw_slope:
            out[..., samples:].addcmul_(omega[..., samples:], draw_slope[0] * half_grad)
        return out


def _log_sum(terms: Tensor, samples: int, debias: bool) -> Tensor:
    """:class:`_LogSum` of these arguments: log P̂ ``(N, blocks)``."""
    return apply_function(_LogSum, terms, samples, debias)[0]


def _group_slopes(units: Tensor) -> tuple[Tensor, Tensor]:
    """The unbiased estimate n/(n − 1)·Σ_j (a_j − ā)² of the variance of the sum of the n units
    of ``units`` ``(N, blocks, n)``, over the last dim, and its derivative with respect to each
    unit, 2n/(n − 1)·(a_j − ā) ``(N, blocks, n)`` (zeros when n < 2: a group of one unit adds 0)."""
    n = units.shape[2]
    if n < 2:
        return units.new_zeros(units.shape[:2]), torch.zeros_like(units)
    centred = units - units.mean(2, keepdim=True)
    variance = centred.square().sum(2) * (n / (n - 1))
    return variance, centred.mul_(2 * n / (n - 1))
