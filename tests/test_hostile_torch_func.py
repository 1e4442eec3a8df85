"""``torch.func`` transforms over every bottleneck: ``grad`` and ``vjp`` of a ``functional_call``
give what ``torch.autograd`` gives, and what cannot run says so by name.

torch accepts a custom ``autograd.Function`` under its transforms only in the ``setup_context``
form; the library's Functions (the lattice training paths, the cell rates, the good lattices'
Monte-Carlo density, VQ's commitment loss) were written in the other form, so ``torch.func.grad``
of any lattice, good lattice or ``vq`` bottleneck failed. A transform also always records the
backward's graph, which the first-order backwards refused outright; they now refuse only a
second derivative actually taken through them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vjp

from test_contract import CONFIGS, VARIANTS, make
from test_contract import gen as _gen

#: every registered name and every good-lattice variant of the contract suite
CASES = {**{name: (name, kwargs) for name, kwargs in CONFIGS.items()}, **VARIANTS}
#: the bottlenecks whose training forward writes an EMA M-step into their buffers
EMA = ("vq_ema", "soft_em_vq")


def _make(case: str) -> torch.nn.Module:
    """The contract suite's module of ``case``, initialised from seed 0."""
    torch.manual_seed(0)
    return make(case)


def _input(module, rows: int = 5) -> torch.Tensor:
    return 2.0 * torch.randn(rows, module.in_dim, generator=_gen(1))


def _loss(out) -> torch.Tensor:
    """A loss through every output a bottleneck trains with (the decoder's part stood in for by
    a quadratic in y_hat)."""
    loss = out.y_hat.square().sum() + out.rate.sum()
    return loss if out.aux_loss is None else loss + out.aux_loss


def _floating_buffers(module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in module.named_buffers() if b.is_floating_point()}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", list(CASES))
def test_torch_func_grad_is_autograd(case, training):
    """``torch.func.grad`` over the parameters and the input equals ``torch.autograd.grad`` of
    the same forward (same generator), bit for bit; an EMA codebook's M-step lands in the
    buffers passed to the transform as in the module's own."""
    plain, module = _make(case).train(training), _make(case).train(training)
    y = _input(module)
    params = {n: p.detach() for n, p in module.named_parameters()}
    ema = training and CASES[case][0] in EMA
    buffers = _floating_buffers(module) if ema else {}

    def loss(params, buffers, y):
        tensors = {**params, **buffers}
        return _loss(functional_call(module, tensors, (y,), {"generator": _gen(2)}))

    got_params, _, got_y = grad(loss, argnums=(0, 1, 2))(params, buffers, y)

    leaf = y.clone().requires_grad_(True)
    named = dict(plain.named_parameters())
    value = _loss(plain(leaf, generator=_gen(2)))
    inputs = (leaf, *named.values())
    if value.requires_grad:
        wanted = torch.autograd.grad(value, inputs, allow_unused=True, materialize_grads=True)
    else:  # an eval forward of a codebook method: nothing differentiable reaches the loss
        wanted = [torch.zeros_like(t) for t in inputs]
    assert torch.equal(got_y, wanted[0])
    for name, expected in zip(named, wanted[1:], strict=True):
        assert torch.equal(got_params[name], expected), name
    for name, value in buffers.items():  # the passed buffers moved as the module's did
        assert torch.equal(value, plain.get_buffer(name)), name


@pytest.mark.parametrize("case", ["lattice", "vq", "lattice[e8]", "lattice[leech]", "soft_vq"])
def test_vjp_with_a_row_weighted_rate_is_autograd(case):
    """``torch.func.vjp`` with other cotangents than a summed loss: a rate weighted by row and
    y_hat's own cotangent, the rate's gradient formed row by row (the eager lattice path's
    hand-written backward takes another branch for them)."""
    plain, module = _make(case).train(), _make(case).train()
    y = _input(module, rows=7)
    weights = torch.rand(7, generator=_gen(3))
    up = torch.randn(7, module.dim, generator=_gen(4))

    def outputs(y):
        out = module(y, generator=_gen(5))
        return out.y_hat, out.rate

    _, pullback = vjp(outputs, y)
    (got,) = pullback((up, weights))
    leaf = y.clone().requires_grad_(True)
    out = plain(leaf, generator=_gen(5))
    (wanted,) = torch.autograd.grad((out.y_hat * up).sum() + (out.rate * weights).sum(), leaf)
    assert torch.equal(got, wanted)


@pytest.mark.parametrize("case", ["lattice", "gaussian", "vq", "lattice[e8]"])
def test_jacrev_of_an_eval_rate_is_the_autograd_jacobian(case):
    """``torch.func.jacrev`` (a vmap over backward passes) of the eval-mode rate: the
    Jacobian ``torch.autograd.functional.jacobian`` computes one row at a time."""
    module = _make(case).eval()
    y = _input(module, rows=3).double()
    module.double()

    def rate(y):
        return module(y, generator=_gen(6)).rate

    got = jacrev(rate)(y)
    wanted = torch.autograd.functional.jacobian(rate, y)
    assert got.shape == (3, 3, module.in_dim)
    torch.testing.assert_close(got, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("case", "function"),
    [("lattice", "_BlockedTrainingPath"), ("lattice[e8]", "_LaplaceBlockSums")],
)
def test_a_batched_backward_that_cannot_run_is_named(case, function):
    """Where a backward writes into its buffers in place, vmap cannot batch it (``jacrev`` of
    a training-mode rate, ``is_grads_batched=True``): one error naming the Function and the
    way round, where torch spoke of ``addcmul.out`` or "inplace arithmetic"."""
    module = _make(case).train()
    y = _input(module, rows=3)

    def rate(y):
        return module(y, generator=_gen(7)).rate

    with pytest.raises(RuntimeError, match=f"the backward of {function} does not run under"):
        jacrev(rate)(y)
    leaf = y.clone().requires_grad_(True)
    out = rate(leaf)
    # (the older vmap of is_grads_batched stops at another Function of the same path)
    with pytest.raises(RuntimeError, match=r"the backward of _\w+ does not run under vmap"):
        torch.autograd.grad(out, leaf, torch.eye(3), is_grads_batched=True)
    # the same Jacobian row by row
    rows = [torch.autograd.grad(rate(leaf)[i], leaf)[0] for i in range(3)]
    assert all(torch.isfinite(r).all() for r in rows)


@pytest.mark.parametrize("case", ["lattice", "vq", "lattice[e8]", "lattice[bw16]"])
def test_nested_grad_is_refused_by_name(case):
    """A second derivative through a first-order backward under nested transforms (the
    Hessian-vector form ``grad(grad(f))``) is the library's error, not a number without the
    terms through the saved factors; one ``grad`` runs."""
    module = _make(case).train()
    y = _input(module, rows=3)

    def loss(y):
        return _loss(module(y, generator=_gen(8)))

    assert torch.isfinite(grad(loss)(y)).all()
    with pytest.raises(RuntimeError, match="has first derivatives only: a second-order"):
        grad(lambda y: grad(loss)(y).square().sum())(y)


def test_a_second_derivative_through_the_saved_factors_alone_is_refused():
    """The e8 rate's gradient reaches the input only through tensors its forward saved (the
    upstream gradient of a summed rate is a constant): differentiating that gradient again
    left those terms out without a word under ``once_differentiable``; now it is the error."""
    module = _make("lattice[e8]").train()
    leaf = _input(module, rows=4).requires_grad_(True)
    rate = module(leaf, generator=_gen(9)).rate.sum()
    (first,) = torch.autograd.grad(rate, leaf, create_graph=True)
    (plain,) = torch.autograd.grad(module(leaf, generator=_gen(9)).rate.sum(), leaf)
    assert torch.equal(first.detach(), plain)
    with pytest.raises(RuntimeError, match="_LaplaceBlockSums has first derivatives only"):
        torch.autograd.grad(first.sum(), leaf)


@pytest.mark.parametrize("case", EMA)
def test_an_ema_update_into_captured_buffers_is_refused_by_name(case):
    """Inside a transform torch refuses in-place writes into captured tensors, with an error
    that names neither the module nor a way out; the EMA codebook's own error names both,
    before anything is written, and eval mode (no M-step) runs."""
    module = _make(case).train()
    before = {n: b.clone() for n, b in module.named_buffers()}
    y = _input(module)
    params = {n: p.detach() for n, p in module.named_parameters()}

    def loss(params, y):
        return _loss(functional_call(module, params, (y,), {"generator": _gen(10)}))

    with pytest.raises(RuntimeError, match=r"updates its codebook in place.*pass the floating"):
        grad(loss, argnums=(0, 1))(params, y)
    for name, value in module.named_buffers():
        assert torch.equal(value, before[name]), name
    module.eval()
    assert torch.isfinite(grad(loss, argnums=1)(params, y)).all()


#: run in a fresh interpreter (no table cached yet): transforms over every case, then every
#: tensor still alive must be a plain one, and every module must pickle
_FRESH = """
import gc, pickle, sys
sys.path.insert(0, sys.argv[1])
import torch
from torch.func import functional_call, grad
from qlatent.bottlenecks import build
from test_contract import CONFIGS, VARIANTS
cases = {**{name: (name, kwargs) for name, kwargs in CONFIGS.items()}, **VARIANTS}
modules = []
for name, kwargs in cases.values():
    for training in (True, False):
        torch.manual_seed(0)
        module = build(name, **kwargs).train(training and name not in ("vq_ema", "soft_em_vq"))
        y = torch.randn(5, module.in_dim)
        params = {n: p.detach() for n, p in module.named_parameters()}
        def loss(params, y):
            out = functional_call(module, params, (y,), {"generator": torch.Generator()})
            return out.rate.sum() + out.y_hat.square().sum()
        grad(loss, argnums=(0, 1))(params, y)
        modules.append(module)
gc.collect()
wrapped = torch._C._functorch.is_functorch_wrapped_tensor
alive = [t for t in gc.get_objects() if isinstance(t, torch.Tensor) and wrapped(t)]
print(len(alive), sum(len(pickle.dumps(m)) > 0 for m in modules), len(modules))
"""


def test_tables_first_built_inside_a_transform_are_plain_tensors():
    """A transform's tensors are wrappers that die with it: the lattice decoders' tables, the
    row-hash weights, a basis inverse and the checkpoint records first made inside ``grad``
    were kept as such, and a module holding one failed to pickle ("Cannot access storage of
    TensorWrapper"). Fresh interpreter, so that nothing is cached before the transforms."""
    tests = Path(__file__).resolve().parent
    run = subprocess.run(
        [sys.executable, "-c", _FRESH, str(tests)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    alive, pickled, total = map(int, run.stdout.split()[-3:])
    assert total == 2 * len(CASES)
    assert (alive, pickled) == (0, total)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", ["lattice", "lattice[e8]", "vq", "soft_vq", "vq_ema"])
def test_a_vmapped_ensemble_is_refused_by_name(case, training):
    """``vmap`` over stacked module states (``torch.func.stack_module_state``, an ensemble) with
    one input: torch failed inside the forward, each path on its own internals (random draws in
    vmap's default mode, in-place writes, a Function without a vmap rule), or ran; now one
    error naming the module, as for a batched input."""
    import copy

    from torch.func import stack_module_state, vmap

    members = [_make(case).train(training) for _ in range(3)]
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0])
    y = _input(base)

    def rate(params, buffers, y):
        return functional_call(base, (params, buffers), (y,), {"generator": _gen(12)}).rate

    with pytest.raises(ValueError, match=r"parameters or buffers are batched by torch.func.vmap"):
        vmap(rate, in_dims=(0, 0, None), randomness="same")(params, buffers, y)
    # one member at a time, as the error says
    for member in members:
        assert rate(dict(member.named_parameters()), dict(member.named_buffers()), y).shape == (5,)
