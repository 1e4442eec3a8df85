"""Forward-mode AD through every bottleneck: ``torch.func.jvp``, ``jacfwd`` and the dual numbers of
``torch.autograd.forward_ad``.

The library's custom ``autograd.Function``s (the lattice training paths, the cell rates, the good
lattices' Monte-Carlo density, VQ's commitment loss, the Gaussian tails) had no ``jvp`` rule, so
forward mode was torch's NotImplementedError for every lattice, good lattice and ``vq``. They
have one now, formed from the same derivatives as their backward; checked here against reverse
mode (the dot-product identity uᵀ(J v) = (Jᵀu)ᵀ v), against the Jacobian reverse mode builds row
by row, and between the two ways of running forward mode. A second derivative through them
(forward over reverse, ``hessian``) stays the library's named refusal.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch.func import functional_call, jacfwd, jvp, vjp

import qlatent.bottlenecks._lattice_kernels as lattice_kernels
import qlatent.bottlenecks.lattice as lattice_module
from qlatent.priors import laplace_cell_log_prob
from qlatent.priors.gaussian import gaussian_cell_log_prob
from test_contract import CONFIGS, VARIANTS, make
from test_contract import gen as _gen

#: every registered name and every good-lattice variant of the contract suite
CASES = {**{name: (name, kwargs) for name, kwargs in CONFIGS.items()}, **VARIANTS}
#: the bottlenecks whose training forward writes an EMA M-step into their buffers
EMA = ("vq_ema", "soft_em_vq")


def _make(case: str, training: bool) -> torch.nn.Module:
    """The contract suite's module of ``case`` in float64, initialised from seed 0."""
    torch.manual_seed(0)
    return make(case).double().train(training)


def _input(module, rows: int = 5) -> torch.Tensor:
    return 2.0 * torch.randn(rows, module.in_dim, generator=_gen(1), dtype=torch.float64)


def _outputs(out) -> tuple[torch.Tensor, ...]:
    """The differentiable outputs a bottleneck trains with."""
    return (out.y_hat, out.rate) + (() if out.aux_loss is None else (out.aux_loss,))


def _function(module, case: str, training: bool):
    """``(f, primals)``: f(params, buffers, y) -> the outputs under a fixed generator; an EMA
    codebook's floating buffers are passed (its M-step writes into them), as copies per call."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    ema = training and CASES[case][0] in EMA
    buffers = {n: b.detach() for n, b in module.named_buffers() if b.is_floating_point()}
    buffers = buffers if ema else {}

    def f(params, buffers, y):
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}
        return _outputs(functional_call(module, state, (y,), {"generator": _gen(2)}))

    return f, (params, buffers, _input(module))


def _tangents(primals, seed: int = 3):
    gen = _gen(seed)
    params, buffers, y = primals
    return (
        {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()},
        {n: torch.zeros_like(b) for n, b in buffers.items()},  # (no derivative through an EMA)
        torch.randn(y.shape, generator=gen, dtype=y.dtype),
    )


def _dot(a, b) -> torch.Tensor:
    """Σ a·b over matching tensors of two pytrees (dicts or tuples of tensors)."""
    if isinstance(a, dict):
        return sum((_dot(a[k], b[k]) for k in a), torch.zeros((), dtype=torch.float64))
    if isinstance(a, tuple | list):
        return sum(
            (_dot(x, y) for x, y in zip(a, b, strict=True)), torch.zeros((), dtype=torch.float64)
        )
    return (a * b).sum()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", list(CASES))
def test_jvp_is_the_transpose_of_vjp(case, training):
    """uᵀ(J v) from ``torch.func.jvp`` equals (Jᵀu)ᵀ v from ``torch.func.vjp`` for random u and v
    over the parameters and the input (float64, to the rounding): the forward-mode rules are
    the derivatives the backward passes use."""
    module = _make(case, training)
    f, primals = _function(module, case, training)
    tangents = _tangents(primals)
    outputs, forward = jvp(f, primals, tangents)
    _, pullback = vjp(f, *primals)
    gen = _gen(4)
    cotangents = tuple(torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs)
    backward = pullback(cotangents)
    lhs = _dot(cotangents, forward)
    rhs = _dot(backward[0], tangents[0]) + _dot(backward[2], tangents[2])
    assert all(torch.isfinite(t).all() for t in forward)
    torch.testing.assert_close(lhs, rhs, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "case", ["lattice", "vq", "lattice[e8]", "lattice[e8,gaussian]", "lattice[leech]", "soft_vq"]
)
def test_dual_numbers_equal_torch_func_jvp(case, training):
    """The dual numbers of ``torch.autograd.forward_ad`` (which run the Functions' plain twins)
    give ``torch.func.jvp``'s tangents bit for bit; outside a dual level a forward keeps no
    tensors for forward mode."""
    module = _make(case, training)
    f, primals = _function(module, case, training)
    tangents = _tangents(primals)
    _, wanted = jvp(f, primals, tangents)
    params, buffers, y = primals
    with forward_ad.dual_level():
        dual_params = {n: forward_ad.make_dual(p, tangents[0][n]) for n, p in params.items()}
        dual_y = forward_ad.make_dual(y, tangents[2])
        got = [forward_ad.unpack_dual(o).tangent for o in f(dual_params, buffers, dual_y)]
    for g, w in zip(got, wanted, strict=True):  # (a constant output has no tangent: None)
        assert torch.equal(torch.zeros_like(w) if g is None else g, w)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", [c for c in CASES if c not in EMA])
def test_jacfwd_of_the_rate_is_the_reverse_jacobian(case, training):
    """``jacfwd`` (a vmap over tangents; the Functions' own inputs are not batched) of the rate
    with respect to the input equals the Jacobian reverse mode builds one row at a time."""
    module = _make(case, training)
    y = _input(module, rows=4)

    def rate(y):
        return module(y, generator=_gen(5)).rate

    got = jacfwd(rate, randomness="same")(y)
    wanted = torch.autograd.functional.jacobian(rate, y)
    assert got.shape == (4, 4, module.in_dim)
    torch.testing.assert_close(got, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", ["lattice", "lattice[e8,box]", "lattice[e8+z,scale per block]"])
def test_forward_mode_runs_under_no_grad(case, training):
    """``torch.no_grad`` does not stop forward mode, and there the rectangular lattice took its
    kernels without autograd, whose ``out=`` writes forward mode refuses (NotImplementedError),
    as did the good lattices' cell test of the proposal's draws; now the same tangents as with
    grad enabled, to the rounding (the no-grad cell rate sums in another order)."""
    module = _make(case, training)
    f, primals = _function(module, case, training)
    tangents = _tangents(primals)
    _, wanted = jvp(f, primals, tangents)
    with torch.no_grad():
        _, got = jvp(f, primals, tangents)
    for g, w in zip(got, wanted, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-13)


def test_the_blocked_path_with_row_sums_only(monkeypatch):
    """On inputs of many blocks the eager lattice path keeps only the row sums of two rate
    factors; its ``jvp`` forms them again per block from y_hat (checked against ``vjp``)."""
    monkeypatch.setattr(lattice_module, "_block_rows", lambda dim, device: 2)
    monkeypatch.setattr(lattice_kernels, "_FOUR_FACTOR_BLOCKS", 1)
    module = _make("lattice", True)
    y = _input(module, rows=9)
    spacing, scale = module.log_spacing.detach(), module.log_scale.detach()

    def f(log_spacing, log_scale, y):
        state = {"log_spacing": log_spacing, "log_scale": log_scale}
        out = functional_call(module, state, (y,), {"generator": _gen(6)})
        return out.y_hat, out.rate

    primals = (spacing, scale, y)
    tangents = tuple(
        torch.randn(p.shape, generator=_gen(7 + i), dtype=p.dtype) for i, p in enumerate(primals)
    )
    outputs, forward = jvp(f, primals, tangents)
    _, pullback = vjp(f, *primals)
    cotangents = tuple(torch.randn(o.shape, generator=_gen(10), dtype=o.dtype) for o in outputs)
    torch.testing.assert_close(
        _dot(cotangents, forward), _dot(pullback(cotangents), tangents), rtol=1e-11, atol=1e-11
    )


@pytest.mark.parametrize("prior", ["laplace", "gaussian"])
def test_a_prior_cell_rate_has_forward_mode_and_refuses_vmap_by_name(prior):
    """The public cell probabilities: ``jacfwd`` in the spacing equals ``jacrev``; a ``vmap``
    over their inputs (no batching rule) is one error naming the Function, where torch spoke
    of overriding a ``vmap`` staticmethod."""
    cell = laplace_cell_log_prob if prior == "laplace" else gaussian_cell_log_prob
    eta = torch.randn(4, 3, generator=_gen(11), dtype=torch.float64)
    spacing = torch.rand(3, generator=_gen(12), dtype=torch.float64) + 0.5
    scale = torch.rand(3, generator=_gen(13), dtype=torch.float64) + 0.5

    def log_p(spacing):
        return cell(eta, spacing, scale)

    torch.testing.assert_close(
        jacfwd(log_p)(spacing), torch.func.jacrev(log_p)(spacing), rtol=1e-12, atol=1e-12
    )
    batched = eta.unsqueeze(0).expand(2, 4, 3)
    with pytest.raises(RuntimeError, match=r"does not run under vmap over its inputs"):
        torch.func.vmap(lambda e: cell(e, spacing, scale))(batched)


@pytest.mark.parametrize("case", ["lattice", "lattice[e8]", "lattice[bw16]"])
def test_forward_over_reverse_is_refused_by_name(case):
    """A second derivative by forward over reverse: ``jvp`` of ``grad`` (a Hessian-vector
    product, what ``hessian`` vmaps) and dual numbers through ``torch.autograd.grad``. The
    first was torch's NotImplementedError (no forward rules), and with them would stop at an
    internal assertion (the good lattices' block sums read a tensor of the inner level); the
    second would give the gradient a tangent of None or of zeros where the Hessian is not
    zero. Both are the named refusal."""
    module = _make(case, True)
    y = _input(module, rows=4)

    def loss(y):
        return module(y, generator=_gen(14)).rate.sum()

    with pytest.raises(RuntimeError, match="has first derivatives only: a second-order"):
        jvp(torch.func.grad(loss), (y,), (torch.ones_like(y),))
    leaf = y.clone().requires_grad_(True)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(leaf, torch.ones_like(y))
        value = loss(dual)
        with pytest.raises(RuntimeError, match="has first derivatives only: a second-order"):
            torch.autograd.grad(value, dual)
    # outside a dual level the same backward runs
    (first,) = torch.autograd.grad(loss(leaf), leaf)
    assert torch.isfinite(first).all()


def test_vq_under_dual_numbers_does_not_write_into_the_gathered_codewords():
    """``vq`` writes y_hat into the buffer of the codewords it gathered (one allocation fewer);
    a buffer written in place would need its tangent rewritten in place too, so under forward
    mode it writes a new one: the tangent of y_hat is that of z (straight through)."""
    module = _make("vq", True)
    y = _input(module)
    tangent = torch.randn(y.shape, generator=_gen(15), dtype=y.dtype)
    with forward_ad.dual_level():
        out = module(forward_ad.make_dual(y, tangent), generator=_gen(16))
        got = forward_ad.unpack_dual(out.y_hat).tangent
    assert torch.equal(got, tangent)


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_mode_of_a_compiled_lattice(training):
    """``compile=True``: under forward mode the Functions run eagerly (torch.compile takes them
    without their ``jvp``), with the tangents of the module built without it, to the rounding."""
    torch.manual_seed(0)
    compiled = make("lattice").double().train(training)
    torch.manual_seed(0)
    plain = make("lattice").double().train(training)
    compiled.compile = True
    y = _input(plain)
    tangent = torch.randn(y.shape, generator=_gen(17), dtype=y.dtype)
    got = jvp(lambda y: _outputs(compiled(y, generator=_gen(18))), (y,), (tangent,))[1]
    wanted = jvp(lambda y: _outputs(plain(y, generator=_gen(18))), (y,), (tangent,))[1]
    for g, w in zip(got, wanted, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-13)
