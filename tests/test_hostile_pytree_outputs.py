"""``BottleneckOutput`` and ``AutoencoderOutput`` as pytree nodes (registered for
``torch.export``), under the machinery that reads a module's outputs: ``torch.utils.checkpoint``
in both flavours, ``DistributedDataParallel`` on gloo (which flattens the outputs of a module with
``find_unused_parameters`` or ``static_graph`` through its ``_DDPSink``), ``copy.deepcopy`` and
``pickle``, ``torch.compile``, ``torch.func.functional_call`` and ``torch.func.grad`` with the
output as auxiliary value, and ``torch.utils._pytree.tree_map`` (``indices`` None, ``stats``).

Expected everywhere: the numbers of the plain call (bit for bit in float64 unless a test says
otherwise), with the output's fields where they were (None stays None, ``stats`` a dict).

Fixed by the registration: DDP with ``static_graph=True`` never all-reduced the gradients of a
module returning a dataclass (the ranks drifted apart silently), and ``torch.func.grad(...,
has_aux=True)`` refused an output as its auxiliary value. Fixed here: ``RateDistortionLoss``
skipped module backward hooks with only a warning; registering one is now a TypeError.

The DDP test launches this file twice as a script (``WORLD_SIZE=2``, ranks 0 and 1).
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils.checkpoint import checkpoint

from qlatent.bottlenecks import Bottleneck, BottleneckOutput
from qlatent.losses import LossOutput, RateDistortionLoss
from qlatent.models import AutoencoderOutput, gated_vae
from run_helpers import launch_two_ranks
from test_contract import gen as _gen
from test_contract import make

#: a rectangular lattice (stats, no indices on its dithered path), a good lattice, a codebook
#: (indices on its training path, an aux loss), a Gaussian VAE (a zero aux loss)
QUICK = ["lattice", "lattice[e8]", "vq", "gaussian"]
FLAVOURS = ["reentrant", "non_reentrant"]


def _neck(case: str) -> Bottleneck:
    torch.manual_seed(0)
    return make(case).double().train()


def _input(neck: Bottleneck, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(5, neck.in_dim, generator=_gen(seed), dtype=torch.float64)


def _model(neck: str = "lattice") -> nn.Module:
    torch.manual_seed(0)
    kwargs = {} if neck in ("lattice", "gaussian") else {"num_codes": 8}
    return gated_vae(neck, latent_dim=4, hidden=8, data_dim=16, **kwargs).double().train()


def _data(seed: int = 3) -> torch.Tensor:
    return torch.rand(6, 16, generator=_gen(seed), dtype=torch.float64).bernoulli()


def _fields(out: BottleneckOutput) -> list:
    return [out.y_hat, out.rate, out.aux_loss, out.indices, *out.stats.values()]


def _same(a: list, b: list) -> bool:
    """Two lists of tensors (or ``None``) equal entry by entry, dtypes included."""
    return len(a) == len(b) and all(
        (u is None and v is None)
        or (u is not None and v is not None and u.dtype == v.dtype and torch.equal(u, v))
        for u, v in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------ checkpoint
def _neck_step(neck: Bottleneck, y: torch.Tensor, flavour: str | None) -> tuple[list, list]:
    """A step of ``neck`` on ``y``, the output object returned through the checkpoint where the
    flavour takes one (non-reentrant) and its tensors as a tuple where it does not: the
    output's fields, then the input's and every parameter's gradient."""
    y = y.clone().requires_grad_()
    generator = _gen(1)
    if flavour is None:
        out = neck(y, generator=generator)
    elif flavour == "non_reentrant":
        out = checkpoint(lambda v: neck(v, generator=generator), y, use_reentrant=False)
    else:  # the reentrant flavour passes tensors only, as its top-level outputs

        def block(v):
            got = neck(v, generator=generator)
            return got.y_hat, got.rate, got.aux_loss

        y_hat, rate, aux = checkpoint(block, y, use_reentrant=True)
        out = BottleneckOutput(y_hat, rate, aux)
    loss = out.y_hat.square().sum() + out.rate.sum() + out.aux_loss
    loss.backward()
    fields = [t.detach() for t in (out.y_hat, out.rate, out.aux_loss)]
    return fields, [y.grad, *(p.grad for p in neck.parameters())]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", QUICK)
def test_a_checkpointed_bottleneck_gives_the_plain_step(case, flavour):
    """A checkpoint around a bottleneck: its outputs, the input's gradient and the parameters'
    gradients are the plain step's, bit for bit."""
    expected = _neck_step(_neck(case), _input(_neck(case)), None)
    neck = _neck(case)
    found = _neck_step(neck, _input(neck), flavour)
    assert _same(found[0], expected[0]) and _same(found[1], expected[1])


def test_a_reentrant_checkpoint_returning_an_output_object_gives_its_values_without_a_graph():
    """The reentrant flavour returns a non-tensor output unchanged from its autograd Function,
    which runs the block without a graph: a BottleneckOutput comes back with the plain values
    and no graph (torch's, as before the registration; the loss then refuses ``backward``).
    Return its tensors as a tuple there, or use the non-reentrant flavour."""
    neck = _neck("lattice")
    y = _input(neck).requires_grad_()
    plain = neck(y, generator=_gen(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's reminder to pass use_reentrant)
        out = checkpoint(lambda v: neck(v, generator=_gen(1)), y, use_reentrant=True)
    assert type(out) is BottleneckOutput
    assert _same(_fields(out), [t.detach() if t is not None else t for t in _fields(plain)])
    assert not out.y_hat.requires_grad and not out.rate.requires_grad


def _model_step(model: nn.Module, flavour: str | None) -> list:
    x = _data().requires_grad_()  # (the reentrant flavour needs an input with a gradient)
    generator = _gen(1)
    if flavour is None:
        out = model(x, generator=generator)
    elif flavour == "non_reentrant":
        out = checkpoint(lambda v: model(v, generator=generator), x, use_reentrant=False)
    else:

        def block(v):
            got = model(v, generator=generator)
            return got.params, got.bottleneck.y_hat, got.bottleneck.rate, got.bottleneck.aux_loss

        params, *neck = checkpoint(block, x, use_reentrant=True)
        out = AutoencoderOutput(params, BottleneckOutput(*neck))
    # (the target detached: x's gradient then comes from the block alone, not summed with the
    # likelihood's in an order that differs under the reentrant flavour)
    losses = RateDistortionLoss()(x.detach(), out, model.likelihood)
    losses.loss.backward()
    return [losses.loss.detach(), x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_checkpointed_model_gives_the_plain_step(flavour):
    """A checkpoint around a whole model (the non-reentrant one returning its
    AutoencoderOutput): the loss and every gradient are the plain step's."""
    assert _same(_model_step(_model(), flavour), _model_step(_model(), None))


# ------------------------------------------------------------- DistributedDataParallel
#: (find_unused_parameters, static_graph) per run
_DDP_RUNS = [(False, False), (True, False), (False, True)]
_OUTPUT = {"bottleneck": "BottleneckOutput", "model": "AutoencoderOutput"}


class _Around(nn.Module):
    """An encoder and a bottleneck, returning the bottleneck's output object."""

    def __init__(self, neck: Bottleneck) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, neck.in_dim, dtype=torch.float64)
        self.neck = neck

    def forward(self, x, generator=None):
        return self.neck(self.encoder(x), generator=generator)


def _ddp_case(kind: str) -> tuple[nn.Module, torch.Tensor, object]:
    """The module, this rank's half of the batch, and the step's loss of an output."""
    rank = int(os.environ["RANK"])
    if kind == "bottleneck":
        torch.manual_seed(0)
        module = _Around(make("lattice").double().train())
        x = torch.randn(8, 4, generator=_gen(0), dtype=torch.float64)

        def loss(out, x):
            return out.y_hat.square().sum() + out.rate.sum() + out.aux_loss

    else:
        module = _model()
        x = torch.rand(8, 16, generator=_gen(0), dtype=torch.float64).bernoulli()

        def loss(out, x):
            return RateDistortionLoss()(x, out, module.likelihood).loss

    return module, x[4 * rank : 4 * (rank + 1)], loss


def _ddp_worker(out_dir: str) -> None:
    """One rank: for each kind of module and each DDP setting, two steps under DDP and two on
    a plain copy whose gradients are averaged by hand; saves both, and the DDP outputs."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    record = {}
    for kind in ("bottleneck", "model"):
        for unused, static in _DDP_RUNS:
            module, x, loss = _ddp_case(kind)
            plain = copy.deepcopy(module)
            ddp = nn.parallel.DistributedDataParallel(
                module, find_unused_parameters=unused, static_graph=static
            )
            for step in range(2):
                for net, params in ((ddp, module.parameters()), (plain, plain.parameters())):
                    out = net(x, generator=_gen(10 + rank + step))
                    loss(out, x).backward()
                    params = list(params)
                    if net is plain:  # the average DDP forms
                        for p in params:
                            dist.all_reduce(p.grad)
                            p.grad /= dist.get_world_size()
                    name = "ddp" if net is ddp else "plain"
                    neck = out if kind == "bottleneck" else out.bottleneck
                    record[kind, unused, static, step, name] = {
                        "type": type(out).__name__,
                        "fields": [t if t is None else t.detach() for t in _ddp_fields(out)],
                        "neck": (neck.indices is None, float(neck.aux_loss), type(neck.stats)),
                        "grads": [p.grad.clone() for p in params],
                    }
                    for p in params:
                        p.grad = None
    torch.save(record, Path(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _two_ranks(out: Path) -> list[dict]:
    launch_two_ranks([__file__, str(out)])
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _ddp_fields(out) -> list:
    if isinstance(out, AutoencoderOutput):
        return [out.params, *_fields(out.bottleneck)]
    return _fields(out)


def test_ddp_on_gloo_gives_each_rank_the_averaged_gradient_and_the_plain_outputs(tmp_path):
    """DDP around a bottleneck (a dithered lattice: indices None, a zero aux loss, a stats
    dict) and around a model, with ``find_unused_parameters`` off and on and with
    ``static_graph``: two steps' gradients are, on both ranks, the hand-averaged gradients of
    a plain copy, and the outputs are the plain copy's, fields in place. Unregistered,
    ``static_graph=True`` left the dataclass out of DDP's ``_DDPSink``, whose backward
    schedules the first step's all-reduce: the ranks kept their own gradients."""
    ranks = _two_ranks(tmp_path)
    for rank, record in enumerate(ranks):
        assert len(record) == 2 * len(_DDP_RUNS) * 2 * 2
        for (kind, unused, static, step, name), got in record.items():
            if name != "ddp":
                continue
            where = f"rank {rank} {kind} unused={unused} static={static} step {step}"
            plain = record[kind, unused, static, step, "plain"]
            assert _same(got["grads"], plain["grads"]), where
            assert _same(got["grads"], ranks[0][kind, unused, static, step, name]["grads"]), where
            assert got["type"] == plain["type"] == _OUTPUT[kind], where
            assert _same(got["fields"], plain["fields"]), where
            assert got["neck"] == (True, 0.0, dict), where


# --------------------------------------------------------- copies, tree_map, torch.func
def test_outputs_deepcopy_and_pickle_as_before():
    """An output without a graph (the hard path, with indices; a training path under no_grad,
    indices None) survives ``deepcopy`` and ``pickle`` whole; one with a graph is torch's
    refusal to copy a non-leaf tensor, and its ``tree_map`` detached copy copies."""
    neck = _neck("vq")
    y = _input(neck)
    with torch.no_grad():
        hard = neck.eval()(y)
        soft = _neck("lattice")(_input(_neck("lattice")), generator=_gen(1))
    for out in (hard, soft, AutoencoderOutput(y, hard)):
        for copied in (copy.deepcopy(out), pickle.loads(pickle.dumps(out))):
            assert type(copied) is type(out)
            assert _same(pytree.tree_leaves(copied), pytree.tree_leaves(out))
    assert soft.indices is None and pickle.loads(pickle.dumps(soft)).indices is None
    live = _neck("lattice")(_input(_neck("lattice")).requires_grad_(), generator=_gen(1))
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(live)
    detached = copy.deepcopy(pytree.tree_map(torch.Tensor.detach, live))
    assert type(detached) is BottleneckOutput and detached.indices is None
    assert _same(pytree.tree_leaves(detached), [t.detach() for t in pytree.tree_leaves(live)])


def test_tree_map_keeps_none_fields_and_the_stats_dict():
    """``tree_map`` over an output visits its tensors (the stats' values included, None fields
    skipped) and rebuilds the same dataclass, None where None was, ``stats`` a dict with the
    same keys; flatten and unflatten give the output back, also nested in an
    AutoencoderOutput."""
    neck = _neck("lattice")
    out = neck(_input(neck), generator=_gen(1))
    assert out.indices is None and out.stats
    doubled = pytree.tree_map(lambda t: 2 * t, out)
    assert type(doubled) is BottleneckOutput and doubled.indices is None
    assert isinstance(doubled.stats, dict) and doubled.stats.keys() == out.stats.keys()
    assert _same(
        [t for t in _fields(doubled) if t is not None],
        [2 * t for t in _fields(out) if t is not None],
    )
    assert len(pytree.tree_leaves(out)) == 3 + len(out.stats)
    model_out = AutoencoderOutput(params=out.y_hat.exp(), bottleneck=out)
    leaves, spec = pytree.tree_flatten(model_out)
    assert len(leaves) == 4 + len(out.stats)
    back = pytree.tree_unflatten(leaves, spec)
    assert type(back) is AutoencoderOutput and back.bottleneck.indices is None
    assert _same(_ddp_fields(back), _ddp_fields(model_out))
    hard = _neck("vq").eval()(_input(_neck("vq")))
    assert _same(pytree.tree_leaves(pytree.tree_map(torch.clone, hard)), pytree.tree_leaves(hard))


@pytest.mark.parametrize("case", ["lattice", "vq"])
def test_functional_call_returns_the_output_of_the_swapped_parameters(case):
    """``torch.func.functional_call`` with other parameters returns the output object of a
    module holding them; on a model, its AutoencoderOutput."""
    neck = _neck(case)
    y = _input(neck)
    swapped = {name: p.detach() * 1.25 for name, p in neck.named_parameters()}
    holder = copy.deepcopy(neck)
    holder.load_state_dict(swapped, strict=False)
    out = torch.func.functional_call(neck, swapped, (y,), {"generator": _gen(1)})
    assert type(out) is BottleneckOutput
    assert _same(_fields(out), _fields(holder(y, generator=_gen(1))))
    model = _model(case)
    x = _data()
    params = {name: p.detach() + 0.01 for name, p in model.named_parameters()}
    other = copy.deepcopy(model)
    other.load_state_dict(params, strict=False)
    found = torch.func.functional_call(model, params, (x,), {"generator": _gen(1)})
    assert type(found) is AutoencoderOutput
    assert _same(_ddp_fields(found), _ddp_fields(other(x, generator=_gen(1))))


def test_grad_with_the_output_as_auxiliary_value_gives_plain_tensors():
    """``torch.func.grad(..., has_aux=True)`` takes the output object as its auxiliary value
    (unregistered: "Expected tensors, got unsupported type BottleneckOutput"): it comes back
    with plain tensors, None and the stats dict in place, equal to the eager call's, and the
    gradient is autograd's."""
    neck = _neck("lattice")
    y = _input(neck)

    def rate(v):
        out = neck(v, generator=_gen(1))
        return out.rate.sum(), out

    grad, aux = torch.func.grad(rate, has_aux=True)(y)
    leaf = y.clone().requires_grad_()
    eager = neck(leaf, generator=_gen(1))
    eager.rate.sum().backward()
    assert type(aux) is BottleneckOutput and aux.indices is None
    assert isinstance(aux.stats, dict) and aux.stats.keys() == eager.stats.keys()
    leaves = pytree.tree_leaves(aux)
    assert not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in leaves)
    assert _same([t.detach() for t in leaves], [t.detach() for t in pytree.tree_leaves(eager)])
    assert torch.equal(grad, leaf.grad)


# ------------------------------------------------------------------ torch.compile
def _compiled_step(model: nn.Module, compiled) -> tuple:
    x = _data().to(next(model.parameters()).dtype)
    out = compiled(x, generator=_gen(1))
    losses = RateDistortionLoss()(x, out, model.likelihood)
    losses.loss.backward()
    return out, losses.loss.detach(), [p.grad for p in model.parameters()]


def test_a_compiled_model_returns_its_output_with_the_eager_numbers():
    """``torch.compile(model, fullgraph=False)`` through AOT autograd (``aot_eager``): an
    AutoencoderOutput with the bottleneck's output inside (indices None, the stats dict), the
    eager loss and gradients bit for bit."""
    model = _model()
    out, loss, grads = _compiled_step(
        model, torch.compile(model, fullgraph=False, backend="aot_eager")
    )
    eager = _model()
    expected, expected_loss, expected_grads = _compiled_step(eager, eager)
    assert type(out) is AutoencoderOutput and type(out.bottleneck) is BottleneckOutput
    assert (
        out.bottleneck.indices is None
        and out.bottleneck.stats.keys() == expected.bottleneck.stats.keys()
    )
    assert torch.equal(loss, expected_loss) and _same(grads, expected_grads)


@pytest.mark.slow  # inductor compiles for seconds
@pytest.mark.parametrize("neck", ["lattice", "gaussian"])
def test_an_inductor_compiled_vae_matches_eager_within_rounding(neck):
    """The default backend: the same output structure, loss and gradients up to its fused
    float rounding."""
    model = _model(neck).float()
    out, loss, grads = _compiled_step(model, torch.compile(model, fullgraph=False))
    eager = _model(neck).float()
    expected, expected_loss, expected_grads = _compiled_step(eager, eager)
    assert type(out) is AutoencoderOutput and out.bottleneck.indices is None
    torch.testing.assert_close(loss, expected_loss)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- the loss's hooks
@pytest.mark.parametrize(
    "register",
    ["register_full_backward_hook", "register_full_backward_pre_hook", "register_backward_hook"],
)
def test_the_loss_refuses_module_backward_hooks_where_they_are_registered(register):
    """``RateDistortionLoss`` returns a ``LossOutput``, on which torch never runs a module
    backward hook: the full hook and the pre-hook were skipped with only a warning, the legacy
    hook failed inside the forward ("'LossOutput' object is not subscriptable"). Registering
    one is the TypeError the models give; forward hooks and tensor hooks still work."""
    loss_fn = RateDistortionLoss()
    with pytest.raises(
        TypeError, match="RateDistortionLoss returns a LossOutput.*out.loss.register_hook"
    ):
        getattr(loss_fn, register)(lambda *args: None)
    model = _model()
    x = _data()
    seen = []
    loss_fn.register_forward_hook(lambda m, args, out: seen.append(type(out).__name__))
    losses = loss_fn(x, model(x, generator=_gen(1)), model.likelihood)
    assert isinstance(losses, LossOutput)
    losses.loss.register_hook(lambda grad: seen.append(float(grad)))
    losses.loss.backward()
    assert seen == ["LossOutput", 1.0]


if __name__ == "__main__":
    _ddp_worker(sys.argv[1])


def test_the_loss_output_is_an_auxiliary_value_of_torch_func_grad():
    """``LossOutput`` is a pytree node like the other outputs: ``grad(..., has_aux=True)``
    returns it with plain tensors (torch refused an unregistered dataclass as the auxiliary
    value), and the gradient is autograd's."""
    from qlatent.losses import LossOutput

    def f(x):
        out = LossOutput(x.square().sum(), x, x.abs(), x.new_zeros(()))
        return out.loss, out

    x = torch.randn(4, dtype=torch.float64)
    gradient, aux = torch.func.grad(f, has_aux=True)(x)
    assert isinstance(aux, LossOutput) and torch.equal(aux.rate, x.abs())
    assert torch.equal(gradient, 2 * x)
