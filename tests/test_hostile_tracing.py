"""Tracing transforms besides ``torch.export`` / ``torch.compile`` / ``torch.func.grad``:
``make_fx`` (real and symbolic), ``torch.func.linearize`` (which traces with it) and
``torch.fx.symbolic_trace``.

Fixed here: the input's value check read values back to Python, so a symbolic ``make_fx`` failed
on every bottleneck ("Could not guard on data-dependent expression") and a real-mode graph kept
no check at all (it ran a NaN input); it is an assertion of the graph now, as under export. The
learnable lattice branched on a value and counted its rows in a tensor sized by their number,
``vq``'s training path branched on its loss being finite (both failed ``make_fx`` and
``linearize``), and ``soft_vq``'s jvp_fn from ``linearize`` failed on an in-place clamp of a
folded constant. What cannot be recorded (the dithered lattices' per-call key, the EMA M-step)
and ``torch.fx.symbolic_trace`` (a Proxy in place of a tensor) are refused by name.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jvp, linearize
from torch.fx.experimental.proxy_tensor import make_fx

from qlatent._utils import proxy_tracing
from qlatent.bottlenecks import Bottleneck
from test_contract import gen as _gen
from test_contract import make


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
    ("case", "training", "message"),
    [
        ("lattice", False, "eval-mode forward of DitheredLattice"),
        ("lattice[e8]", True, "training-mode forward of DitheredGoodLattice"),
        ("vq_ema", True, "training-mode forward of EMAVectorQuantizer"),
    ],
)
def test_make_fx_and_linearize_refuse_what_they_cannot_record_by_name(case, training, message):
    """A dithered lattice's per-call key (read back to Python, its hash in NumPy) and an EMA
    M-step: a named RuntimeError, not torch's "trying to get value out of a tracing tensor"."""
    module = _module(case, training)
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
