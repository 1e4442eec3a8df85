"""Forward mode through the bottlenecks, second round: the corners of ``jvp`` that the first
file (``test_hostile_forward_mode.py``) does not reach.

Options and shapes (several blocks, ``debias``, the tilted proposal, spatial and empty inputs)
against reverse mode by the dot-product identity uᵀ(J v) = (Jᵀu)ᵀ v; the ``debias`` log-sum
also against finite differences; tangents on the EMA buffers only; grad-mode nesting and
autocast; and the second derivatives formed by differentiating a tangent again (reverse over
forward, forward over forward), which gave 0 or lost terms without a word and are now the
library's named refusal, while the Gaussian tails, whose derivatives are differentiable
operations, keep their exact second derivatives.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp

from qlatent.bottlenecks import build
from qlatent.bottlenecks._lattice_density import _log_sum
from qlatent.priors import laplace_cell_log_prob
from qlatent.priors.gaussian import gaussian_cell_log_prob
from test_contract import gen, make
from test_hostile_forward_mode import _dot, _outputs

_MC = dict(samples=8, prior_samples=4, eval_samples=16, eval_prior_samples=4)
#: lattice options the contract suite's variants do not combine
OPTIONS = {
    "e8^2": dict(dim=16, lattice=["e8", "e8"]),
    "leech+z+z": dict(dim=26, lattice=["leech", "z", "z"]),
    "e8,debias": dict(dim=8, lattice="e8", debias=True),
    "e8,debias,gaussian": dict(dim=8, lattice="e8", debias=True, prior="gaussian"),
    "e8,tilted,debias": dict(dim=8, lattice="e8", proposal="tilted", debias=True),
    "e8,box,debias": dict(dim=8, lattice="e8", proposal="box", debias=True),
    "e8^2,scale per block,debias": dict(
        dim=16, lattice=["e8", "e8"], scale_per="block", debias=True
    ),
}
REFUSED = "has first derivatives only: a second-order"


def _randn_like(tree, seed: int):
    g = gen(seed)
    if isinstance(tree, dict):
        return {n: torch.randn(t.shape, generator=g, dtype=t.dtype) for n, t in tree.items()}
    return tuple(torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tree)


def _transpose_identity(f, primals, tangents) -> None:
    """uᵀ(J v) from ``jvp`` equals (Jᵀu)ᵀ v from ``vjp`` (float64, to the rounding)."""
    outputs, forward = jvp(f, primals, tangents)
    _, pullback = vjp(f, *primals)
    cotangents = _randn_like(outputs, 4)
    assert all(torch.isfinite(t).all() for t in forward)
    lhs = _dot(cotangents, forward)
    rhs = _dot(list(pullback(cotangents)), list(tangents))
    torch.testing.assert_close(lhs, rhs, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 2), (0,)], ids=["BD", "BDHW", "empty"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_jvp_is_the_transpose_of_vjp_for_the_lattice_options(option, training, shape):
    """Several blocks, ``debias`` (the log-sum's variance branch), the tilted and box proposals
    and per-block scales; rows, spatial inputs and an empty batch."""
    torch.manual_seed(0)
    module = build("lattice", **OPTIONS[option], **_MC).double().train(training)
    params = {n: p.detach() for n, p in module.named_parameters()}
    y = 2.0 * torch.randn(shape[0], module.in_dim, *shape[1:], generator=gen(1)).double()

    def f(params, y):
        return _outputs(functional_call(module, params, (y,), {"generator": gen(2)}))

    _transpose_identity(f, (params, y), (_randn_like(params, 3), _randn_like((y,), 5)[0]))


@pytest.mark.parametrize("draws", [0, 3], ids=["pairs", "pairs+draws"])
@pytest.mark.parametrize("debias", [False, True], ids=["plain", "debias"])
def test_log_sum_jvp_against_vjp_and_finite_differences(debias, draws):
    """The Monte-Carlo log-sum on its own, with rows whose terms are all or partly −inf (an
    empty cell estimate): the forward tangent is finite, the transpose of the backward, and
    the central difference of the values (the debias branch's variance term included)."""
    terms = 30.0 * torch.randn(3, 2, 8 + draws, generator=gen(1), dtype=torch.float64)
    terms[0, 1] = -math.inf
    terms[1, 0, :3] = -math.inf
    tangent = torch.randn(terms.shape, generator=gen(2), dtype=torch.float64)

    def f(terms):
        return _log_sum(terms, 8, debias)

    value, forward = jvp(f, (terms,), (tangent,))
    assert torch.isfinite(forward).all() and forward[0, 1] == 0
    _, pullback = vjp(f, terms)
    u = torch.randn(value.shape, generator=gen(3), dtype=torch.float64)
    torch.testing.assert_close((u * forward).sum(), (pullback(u)[0] * tangent).sum())
    eps = 1e-6
    central = (f(terms + eps * tangent) - f(terms - eps * tangent)) / (2 * eps)
    finite = torch.isfinite(value)
    torch.testing.assert_close(forward[finite], central[finite], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["vq_ema", "soft_em_vq"])
def test_tangents_on_the_ema_buffers_only(case):
    """An EMA codebook's buffers as the only inputs with tangents (the codebook's own tangent
    reaches y_hat and the commitment loss; the statistics' through the M-step's write)."""
    torch.manual_seed(0)
    module = make(case).double().train()
    buffers = {n: b.detach() for n, b in module.named_buffers() if b.is_floating_point()}
    params = {n: p.detach() for n, p in module.named_parameters()}
    y = 2.0 * torch.randn(5, module.in_dim, generator=gen(1), dtype=torch.float64)

    def f(buffers):
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}
        return _outputs(functional_call(module, state, (y,), {"generator": gen(2)}))

    tangents = _randn_like(buffers, 7)
    outputs, forward = jvp(f, (buffers,), (tangents,))
    assert any(t.abs().max() > 0 for t in forward)
    _, pullback = vjp(f, buffers)
    cotangents = _randn_like(outputs, 4)
    torch.testing.assert_close(
        _dot(cotangents, forward), _dot(pullback(cotangents)[0], tangents), rtol=1e-11, atol=1e-11
    )


@pytest.mark.parametrize("case", ["lattice", "lattice[e8]", "vq", "lattice[e8,gaussian]"])
def test_grad_mode_nesting_and_autocast_do_not_change_the_tangents(case):
    """``no_grad`` around ``enable_grad``, ``inference_mode`` (which ``torch.func.jvp`` runs
    through) and CPU autocast (off inside a bottleneck) give the tangents of grad mode."""
    torch.manual_seed(0)
    module = make(case).float().train()
    y = 2.0 * torch.randn(5, module.in_dim, generator=gen(1))
    tangent = torch.randn(y.shape, generator=gen(3))

    def tangents():
        return jvp(lambda y: _outputs(module(y, generator=gen(2))), (y,), (tangent,))[1]

    wanted = tangents()
    with torch.no_grad(), torch.enable_grad():
        nested = tangents()
    with torch.inference_mode():
        inference = tangents()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = tangents()
    for got in (nested, inference, autocast):
        for g, w in zip(got, wanted, strict=True):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["lattice", "lattice[e8]", "vq"])
def test_dual_numbers_on_a_module_whose_parameters_require_grad(case):
    """Dual numbers through a module as it is trained (its parameters require grad, grad mode
    on): the tangents of ``torch.func.jvp``, and a plain backward after the level has closed
    gives the gradient of a forward that never had tangents."""
    torch.manual_seed(0)
    module = make(case).double().train()
    y = 2.0 * torch.randn(5, module.in_dim, generator=gen(1), dtype=torch.float64)
    tangent = torch.randn(y.shape, generator=gen(3), dtype=torch.float64)
    _, wanted = jvp(lambda y: _outputs(module(y, generator=gen(2))), (y,), (tangent,))
    leaf = y.clone().requires_grad_(True)
    with forward_ad.dual_level():
        out = _outputs(module(forward_ad.make_dual(leaf, tangent), generator=gen(2)))
        got = [forward_ad.unpack_dual(o).tangent for o in out]
    for g, w in zip(got, wanted, strict=True):
        torch.testing.assert_close(torch.zeros_like(w) if g is None else g, w, rtol=0, atol=0)
    (after,) = torch.autograd.grad(sum(o.sum() for o in out), leaf)
    (plain,) = torch.autograd.grad(
        sum(o.sum() for o in _outputs(module(leaf, generator=gen(2)))), leaf
    )
    assert torch.equal(after, plain)


def test_no_tensor_is_kept_for_forward_mode_with_the_graph():
    """Outside a dual level or transform the training forward keeps nothing for ``jvp`` on
    its graph's nodes (the custom Functions' ``saved_for_forward`` is empty)."""
    torch.manual_seed(0)
    module = make("lattice[e8+z,scale per block]").double().train()
    y = torch.randn(5, module.in_dim, generator=gen(1), dtype=torch.float64).requires_grad_()
    out = module(y, generator=gen(2))
    seen, stack, custom = set(), [out.rate.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "saved_for_forward"):
            custom.append(node)
            assert not node.saved_for_forward, type(node).__name__
        stack += [n for n, _ in node.next_functions]
    assert len(custom) >= 4  # the cell rate, the block sums, the balance weights, the log-sum


def _lattice_rate(case: str):
    torch.manual_seed(0)
    module = make(case).double().train()
    y = 2.0 * torch.randn(3, module.in_dim, generator=gen(1), dtype=torch.float64)

    def rate(y):
        out = module(y, generator=gen(5))
        return out.rate.sum() + (0.0 if out.aux_loss is None else out.aux_loss)

    return rate, y


@pytest.mark.parametrize("case", ["lattice", "vq", "lattice[e8]", "lattice[e8+z,scale per block]"])
def test_reverse_over_forward_is_refused_by_name(case):
    """``grad`` of a ``jvp``, ``jacrev`` of ``jacfwd``, a ``jvp`` of a ``jvp`` and a backward
    of a dual number's tangent: the ``jvp`` rules' factors are constants to them, so they gave
    0 (the rectangular lattice's Hessian is not 0) or dropped terms without a word."""
    rate, y = _lattice_rate(case)
    ones = torch.ones_like(y)

    def tangent(y):
        return jvp(rate, (y,), (ones,))[1]

    with pytest.raises(RuntimeError, match=REFUSED):
        grad(tangent)(y)
    with pytest.raises(RuntimeError, match=REFUSED):
        jacrev(jacfwd(rate, randomness="same"))(y)
    with pytest.raises(RuntimeError, match=REFUSED):
        jvp(tangent, (y,), (ones,))
    leaf = y.clone().requires_grad_(True)
    with forward_ad.dual_level():
        value = forward_ad.unpack_dual(rate(forward_ad.make_dual(leaf, ones))).tangent
    with pytest.raises(RuntimeError, match=REFUSED):
        torch.autograd.grad(value, leaf)


def test_the_laplace_cell_rate_refuses_reverse_over_forward_and_the_gaussian_differentiates():
    """The public cell probabilities: Laplace's rate is first-order (reverse over forward
    refused, as forward over reverse is); the Gaussian tails' derivatives are differentiable
    operations, so ``jacrev(jacfwd)`` is its Hessian (against central differences)."""
    eta = 2.0 * torch.randn(4, 3, generator=gen(11), dtype=torch.float64)
    spacing = torch.rand(3, generator=gen(12), dtype=torch.float64) + 0.5
    scale = torch.rand(3, generator=gen(13), dtype=torch.float64) + 0.5
    with pytest.raises(RuntimeError, match=REFUSED):
        jacrev(jacfwd(lambda s: laplace_cell_log_prob(eta, s, scale).sum()))(spacing)

    def log_p(s):
        return gaussian_cell_log_prob(eta, s, scale).sum()

    hessian = jacrev(jacfwd(log_p))(spacing)
    eps = 1e-5
    basis = torch.eye(3, dtype=torch.float64)
    central = torch.stack(
        [
            (jacfwd(log_p)(spacing + eps * e) - jacfwd(log_p)(spacing - eps * e)) / (2 * eps)
            for e in basis
        ]
    )
    assert hessian.abs().max() > 0.1
    torch.testing.assert_close(hessian, central, rtol=1e-6, atol=1e-7)


def test_a_dual_level_without_tangents_does_not_refuse_the_backward():
    """Inside a dual level a forward whose inputs carry no tangents is a plain first-order
    forward: its backward runs (the refusal is for one whose forward carried tangents)."""
    rate, y = _lattice_rate("lattice[e8]")
    leaf = y.clone().requires_grad_(True)
    with forward_ad.dual_level():
        (inside,) = torch.autograd.grad(rate(leaf), leaf)
    (outside,) = torch.autograd.grad(rate(leaf), leaf)
    assert torch.equal(inside, outside)
