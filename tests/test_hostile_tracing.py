"""Tracing transforms besides ``torch.export`` / ``torch.compile`` / ``torch.func.grad``:
``make_fx`` (real and symbolic), ``torch.func.linearize`` (which traces with it) and
``torch.fx.symbolic_trace``.

Fixed here: the input's value check read values back to Python, so a symbolic ``make_fx`` failed
on every bottleneck ("Could not guard on data-dependent expression") and a real-mode graph kept
no check at all (it ran a NaN input); it is an assertion of the graph now, as under export. The
learnable lattice branched on a value and counted its rows in a tensor sized by their number,
``vq``'s training path branched on its loss being finite (both failed ``make_fx`` and
``linearize``), and ``soft_vq``'s jvp_fn from ``linearize`` failed on an in-place clamp of a
folded constant. What cannot be recorded (the EMA M-step) and ``torch.fx.symbolic_trace`` (a
Proxy in place of a tensor) are refused by name.

Also fixed here: the dithered lattices (rectangular and every good lattice) were refused under
``make_fx`` in eval mode too; they take the branches of ``torch.export`` there now
(``_utils.recording_graph``), so the graph draws each call's key and dither as its ops and
gives the eager outputs bit for bit, also symbolic. Under ``linearize`` the key and the
counter-based numbers are drawn once, while tracing: the jvp_fn ran the recorded draw again
(a random op is not folded) and, folded, the hash's in-place ops again on their own output,
so its tangents were those of another dither at each call; Leech's decoder read buffers that
``linearize`` folded before their writes. A ``SeedKeys`` (a Python call count, which a graph
would keep as one key) is refused while recording; a table first built by a symbolic trace was
kept as a fake tensor, and later eager calls failed.

The dithered lattices' training path, refused by name before ("drawn afresh by every call of
the graph", which is what each eager call does), records too: the graph gives the eager y_hat,
rate and aux loss bit for bit from the same seed, and ``linearize``'s jvp_fn ``torch.func.jvp``'s
tangents, in the input and the parameters. ``make_fx`` records the ops of a custom autograd
Function's forward and not its hand-written backward: a backward through the graph is autograd
of those ops, the eager gradients to rounding for the rectangular lattice and refused by torch
through a good lattice's rate (an in-place op of its Monte-Carlo log-sum), not other gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jvp, linearize
from torch.fx.experimental.proxy_tensor import make_fx

from qlatent._utils import proxy_tracing
from qlatent.bottlenecks import Bottleneck
from qlatent.rng import SeedKeys
from test_contract import VARIANTS, make
from test_contract import gen as _gen


def _module(case: str, training: bool = False, dtype=torch.float32) -> Bottleneck:
    torch.manual_seed(0)
    return make(case).train(training).to(dtype)


def _input(module, rows: int = 5, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return 2.0 * torch.randn(rows, module.in_dim, generator=_gen(seed), dtype=dtype)


def _functional(module):
    """``(f, state)``: f(state, y) -> (y_hat, rate) of ``module`` under a fixed generator."""
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}

    def f(state, y):
        out = functional_call(module, state, (y,), {"generator": _gen(2)})
        return out.y_hat, out.rate

    return f, state


#: (learnable_lattice in symbolic mode: its row hash's constant table is a real tensor, which
#: fake mode refuses)
_TRACED = [
    (case, mode)
    for case in ["gaussian", "vq", "soft_vq", "scalar_st", "learnable_lattice"]
    for mode in ["real", "symbolic"]
    if (case, mode) != ("learnable_lattice", "symbolic")
]


@pytest.mark.parametrize(("case", "mode"), _TRACED)
def test_make_fx_graph_replays_the_eval_forward_and_keeps_the_input_check(case, mode):
    """The traced eval forward gives the eager outputs bit for bit on other inputs (symbolic:
    most of another batch size too) and refuses a NaN input by name."""
    module = _module(case)
    f, state = _functional(module)
    graph = make_fx(f, tracing_mode=mode)(state, _input(module))
    # (soft_vq's symbolic graph fixes the batch size it was traced at)
    rows = 7 if mode == "symbolic" and case != "soft_vq" else 5
    for seed in (1, 3):
        y = _input(module, rows, seed)
        for found, expected in zip(graph(state, y), f(state, y), strict=True):
            assert torch.equal(found, expected)
    bad = _input(module, rows)
    bad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        graph(state, bad)


@pytest.mark.parametrize(
    ("case", "training"),
    [
        ("gaussian", False),
        ("vq", False),
        ("soft_vq", False),
        ("learnable_lattice", False),
        ("lattice", False),
        ("vq", True),
        ("soft_vq", True),
        ("learnable_lattice", True),
        ("scalar_st", True),
    ],
)
def test_linearize_equals_torch_func_jvp(case, training):
    """``linearize``'s jvp_fn gives ``torch.func.jvp``'s tangents bit for bit, for forwards that
    are deterministic given the module (a noisy training path draws again in jvp_fn)."""
    module = _module(case, training, torch.float64)
    y = _input(module, dtype=torch.float64)

    def f(y):
        out = module(y, generator=_gen(2))
        return out.y_hat, out.rate

    primal, jvp_fn = linearize(f, y)
    t = torch.randn(y.shape, generator=_gen(3), dtype=torch.float64)
    found = jvp_fn(t)
    _, expected = jvp(f, (y,), (t,))
    for a, b in zip(found, expected, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(primal, f(y), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("case", "message"), [("vq_ema", "training-mode forward of EMAVectorQuantizer")]
)
def test_make_fx_and_linearize_refuse_what_they_cannot_record_by_name(case, message):
    """An EMA M-step: a named RuntimeError, not torch's "trying to get value out of a tracing
    tensor". (A dithered lattice's training path was refused too; it records now, below.)"""
    module = _module(case, training=True)
    f, state = _functional(module)
    y = _input(module)
    with pytest.raises(RuntimeError, match=f"make_fx .*cannot record the {message}"):
        make_fx(f)(state, y)
    with pytest.raises(RuntimeError, match=f"linearize traces with it.*{message}"):
        linearize(lambda y: f(state, y), y)


def test_proxy_tracing_is_true_inside_make_fx_only():
    seen = []

    def f(y):
        seen.append(proxy_tracing())
        return y + 1

    f(torch.zeros(2))
    make_fx(f)(torch.zeros(2))
    assert seen == [False, True]


class _Holder(torch.nn.Module):
    def __init__(self, neck: Bottleneck) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, y):
        return 2.0 * self.neck(y).y_hat


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, name):
        return isinstance(m, Bottleneck) or super().is_leaf_module(m, name)


@pytest.mark.parametrize("case", ["vq", "lattice"])
def test_symbolic_trace_names_the_way_out_and_a_leaf_bottleneck_traces(case):
    """``torch.fx.symbolic_trace`` of a model holding a bottleneck: a RuntimeError naming it
    (was "expected a torch.Tensor, got Proxy"); as a leaf of the trace the model replays."""
    model = _Holder(_module(case))
    with pytest.raises(RuntimeError, match="symbolic_trace cannot trace into .*is_leaf_module"):
        torch.fx.symbolic_trace(model)
    graph = torch.fx.GraphModule(model, _LeafTracer().trace(model))
    y = _input(model.neck)
    torch.manual_seed(5)
    found = graph(y)
    torch.manual_seed(5)
    assert torch.equal(found, model(y))


# ------------------------------------------------------------------ dithered lattices
#: the dithered lattices of the contract suite: the rectangular one and every good lattice
DITHERED = ["lattice", *(name for name in VARIANTS if name.startswith("lattice["))]
#: those run by default (the others, seconds each, with ``-m slow``)
_QUICK = ("lattice", "lattice[e8]")


def _cases(quick=_QUICK):
    return [pytest.param(c, marks=[pytest.mark.slow] * (c not in quick)) for c in DITHERED]


def _eval_outputs(module, y, generator=None):
    out = module(y, generator=generator)
    return out.y_hat, out.rate, out.indices


def _outputs(module, y):
    """The eval path's y_hat, rate and indices, or the training path's y_hat, rate and aux."""
    out = module(y)
    return out.y_hat, out.rate, out.aux_loss if module.training else out.indices


def _assert_equal(found, expected) -> None:
    for i, (a, b) in enumerate(zip(found, expected, strict=True)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"item {i}"


_DITHERED_TRACES = [
    pytest.param(case, mode, marks=[pytest.mark.slow] * (case not in _QUICK))
    for case in DITHERED
    for mode in ["real", "symbolic"]
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "training"])
@pytest.mark.parametrize(("case", "mode"), _DITHERED_TRACES)
def test_make_fx_graph_of_a_dithered_lattice_draws_each_call_as_eager(case, mode, training):
    """The eval forward and the training forward (both were refused by name: the training
    path because each call of the graph draws another dither, which is what each eager call
    does) traced with the dither from torch's global generator: from the same seed the graph
    gives the eager y_hat, rate and indices (training: aux loss) bit for bit on other inputs
    (symbolic: another batch size), leaves the global generator where an eager call does (one
    key per call: none reused, none skipped), draws another dither from another seed, and
    refuses a NaN input. Good lattices' tables are real tensors (symbolic: torch's
    ``_allow_non_fake_inputs``; a table first built by the trace was kept as a fake tensor).
    The eager training path takes other kernels (NumPy's hash, the blocked or the fused
    Function), the same numbers."""
    module = _module(case, training)
    if mode == "symbolic" and case != "lattice":
        for lattice in getattr(module.geometry, "blocks", [module.geometry]):
            lattice.__dict__.pop("_inv_cache", None)  # (built by the trace, as in a new process)
    graph = make_fx(
        lambda y: _outputs(module, y),
        tracing_mode=mode,
        _allow_non_fake_inputs=mode == "symbolic",
    )(_input(module))
    rows = 7 if mode == "symbolic" else 5
    for seed in (1, 3):
        y = _input(module, rows, seed)
        torch.manual_seed(seed)
        found, after_graph = graph(y), torch.rand(2)
        torch.manual_seed(seed)
        expected, after_eager = _outputs(module, y), torch.rand(2)
        _assert_equal(found, expected)
        assert torch.equal(after_graph, after_eager)
        torch.manual_seed(seed + 100)
        assert not torch.equal(graph(y)[0], found[0])  # the dither is no constant of the graph
    bad = _input(module, rows)
    bad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        graph(bad)


@pytest.mark.parametrize("case", _cases())
def test_make_fx_of_quantize_and_dequantize_replays_them(case):
    module = _module(case)
    quantize = make_fx(lambda y: module.quantize(y))(_input(module))
    dequantize = make_fx(lambda k: module.dequantize(k))(module.quantize(_input(module)))
    y = _input(module, seed=4)
    torch.manual_seed(7)
    indices = quantize(y)
    torch.manual_seed(7)
    assert torch.equal(indices, module.quantize(y))
    torch.manual_seed(8)
    found = dequantize(indices)
    torch.manual_seed(8)
    assert torch.equal(found, module.dequantize(indices))


def test_make_fx_graph_draws_from_the_generator_it_was_traced_with():
    """A ``torch.Generator`` is kept by make_fx as that object: each call of the graph draws
    the next key from it, as each eager call does."""
    module = _module("lattice[e8]")
    generator = torch.Generator()
    graph = make_fx(lambda y: _eval_outputs(module, y, generator))(_input(module))
    y = _input(module, seed=3)
    generator.manual_seed(5)
    found = [graph(y), graph(y)]
    generator.manual_seed(5)
    expected = [_eval_outputs(module, y, generator), _eval_outputs(module, y, generator)]
    for a, b in zip(found, expected, strict=True):
        _assert_equal(a, b)
    assert not torch.equal(found[0][0], found[1][0])


@pytest.mark.parametrize("tool", ["make_fx", "export"])
def test_seed_keys_are_refused_while_recording(tool):
    """A SeedKeys counts its calls in Python: a graph kept the traced call's key and reused it
    on every call, where eager calls advance it. Refused; the keys are left as they were."""
    module = _module("lattice")
    keys = SeedKeys(3)

    class Keyed(torch.nn.Module):
        def forward(self, y):
            return module(y, generator=keys).y_hat

    y = _input(module)
    with pytest.raises(RuntimeError, match="SeedKeys counts its calls"):
        if tool == "make_fx":
            make_fx(Keyed())(y)
        else:
            torch.export.export(Keyed(), (y,), strict=False)
    assert keys.calls == 0
    assert torch.equal(Keyed()(y), module(y, generator=SeedKeys(3)).y_hat)


# (Leech's decoder alone needed its own change under linearize: in the default run too)
@pytest.mark.parametrize("case", _cases((*_QUICK, "lattice[leech]")))
def test_linearize_of_a_dithered_lattice_equals_jvp_at_the_primal_dither(case):
    """Tangents in the parameters (the input's are 0: the hard path is piecewise constant):
    jvp_fn equals ``torch.func.jvp`` bit for bit, at every call. It drew another dither at
    each call (the recorded key draw, and the hash's in-place ops on their folded output), and
    Leech's decoder read buffers folded before their writes."""
    module = _module(case, dtype=torch.float64)
    y = _input(module, dtype=torch.float64)
    params = {k: v.detach() for k, v in module.named_parameters()}

    def f(params):
        out = functional_call(module, params, (y,), {"generator": _gen(2)})
        return out.y_hat, out.rate

    primal, jvp_fn = linearize(f, params)
    t = {k: torch.randn(v.shape, generator=_gen(3), dtype=v.dtype) for k, v in params.items()}
    _, expected = jvp(f, (params,), (t,))
    assert all(bool(e.abs().amax() > 0) for e in expected)
    for _ in range(2):
        _assert_equal(jvp_fn(t), expected)
    _assert_equal(primal, f(params))


@pytest.mark.parametrize("case", _cases())
def test_backward_through_a_training_graph_is_autograd_of_its_recorded_ops(case):
    """make_fx records the ops of a custom autograd Function's forward, not the Function: its
    hand-written backward is no part of the graph, whose outputs (differentiable in the input
    and the module's own parameters, which the graph holds) autograd differentiates through
    the recorded ops. y_hat, plain ops, takes the eager gradients bit for bit. The rate: the
    rectangular lattice records the reference ops (no Function, as under torch.export), the
    eager gradients to rounding; a good lattice's Monte-Carlo log-sum forms its exponentials
    in place, and autograd refuses the graph's backward through it instead of giving other
    gradients than the eager module's (its graph is for forward values); its Gaussian density
    (``density="gaussian"``), plain ops, gives the eager gradients."""
    module = _module(case, training=True)
    graph = make_fx(lambda y: _outputs(module, y))(_input(module))
    y = _input(module, seed=4).requires_grad_(True)
    wrt = [y, *module.parameters()]

    def grads(function, loss):
        torch.manual_seed(7)
        return torch.autograd.grad(loss(*function(y)), wrt, materialize_grads=True)

    def distortion(y_hat, rate, aux):
        return y_hat.square().sum()

    def rate(y_hat, rate, aux):
        return rate.sum()

    found, expected = grads(graph, distortion), grads(lambda y: _outputs(module, y), distortion)
    assert bool(found[0].abs().amax() > 0) and bool(found[1].abs().amax() > 0)
    _assert_equal(found, expected)
    expected = grads(lambda y: _outputs(module, y), rate)
    if case != "lattice" and "density=gaussian" not in case:  # the Monte-Carlo log-sum
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            grads(graph, rate)
        return
    found = grads(graph, rate)
    if case == "lattice":  # its hand-written backward against autograd of the recorded ops
        assert not all(torch.equal(a, b) for a, b in zip(found, expected, strict=True))
    for a, b in zip(found, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", _cases())
def test_linearize_of_a_dithered_training_forward_equals_jvp(case):
    """Training mode, a fixed-seed generator inside the function: jvp_fn equals
    ``torch.func.jvp`` bit for bit, at every call, for tangents in the input, in the
    parameters and in both (the key and the counter-based numbers drawn once, outside the
    trace: the traced call's dither). Was refused by name."""
    module = _module(case, True, torch.float64)
    y = _input(module, dtype=torch.float64)
    params = {k: v.detach() for k, v in module.named_parameters()}

    def f(y, params):
        out = functional_call(module, params, (y,), {"generator": _gen(2)})
        return out.y_hat, out.rate

    primal, jvp_fn = linearize(f, y, params)
    t_y = torch.randn(y.shape, generator=_gen(3), dtype=y.dtype)
    t_params = {
        k: torch.randn(v.shape, generator=_gen(4), dtype=v.dtype) for k, v in params.items()
    }
    none_y, none_params = torch.zeros_like(y), {k: torch.zeros_like(v) for k, v in params.items()}
    for tangents in [(t_y, t_params), (t_y, none_params), (none_y, t_params)]:
        _, expected = jvp(f, (y, params), tangents)
        assert all(bool(e.abs().amax() > 0) for e in expected)
        for _ in range(2):
            _assert_equal(jvp_fn(*tangents), expected)
    _assert_equal(primal, f(y, params))
