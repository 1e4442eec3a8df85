"""Exported programs of dithered lattices with an unbounded batch, of modules built with
``compile=True``, and of a whole training objective (model + ``RateDistortionLoss``).

Fixed here: the dither's counter check of ``qlatent.rng.counter_uniform`` was a guard on the
batch size, so a batch dimension exported as an unbounded ``torch.export.Dim`` failed (the
rectangular lattice and Leech inside torch's own suggestion code, "Expected op to be '==',
got <"; E8 asking for a ``max``); it is an assertion of the program now, which refuses a
larger input when it runs. With ``compile=True`` E8 (and Λ16's dither) branched on the row
count to their fused decoders, which bounded a dynamic batch to 15 rows; exported, they take
the decoders of ``compile=False`` (the same program). ``vector_st`` / ``scalar_st`` split the
rows into blocks, which bounded the batch too. The Bernoulli likelihood read its data's range
back to Python, so no training loss of an MNIST model exported; its check is an assertion of
the program now. (The rectangular lattice, ``vq`` and the good lattices' Leech decoder already
took their recordable paths under export with ``compile=True``: tested here as they are.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

from qlatent.bottlenecks import build
from qlatent.losses import RateDistortionLoss
from qlatent.models import gated_vae
from qlatent.rng import counter_uniform, draw_key
from test_contract import VARIANTS, make
from test_contract import gen as _gen
from test_hostile_export import _assert_same, _outputs, _run_both

#: the batch sizes a dynamic program runs on (the example has 3 rows)
SIZES = (1, 7, 1000)
COUNTERS = "2\\^31 numbers per key"


def _unbounded(module, y, strict: bool):
    return torch.export.export(module, (y,), dynamic_shapes=({0: Dim("batch")},), strict=strict)


# ------------------------------------------------------------------ an unbounded batch
_UNBOUNDED = [
    # slow: the good lattices (seconds per export), and the strict straight-through exports
    pytest.param(case, strict, training, marks=[pytest.mark.slow] * (slow or (strict and st)))
    for case, slow, st in [
        ("lattice", False, False),
        ("lattice[e8]", True, False),
        ("lattice[bw16]", True, False),
        ("lattice[leech]", True, False),
        ("scalar_st", False, True),
        ("vector_st", False, True),
    ]
    for strict in (False, True)
    for training in (False, True)
]


@pytest.mark.parametrize(("case", "strict", "training"), _UNBOUNDED)
def test_unbounded_batch_exports_and_runs_as_eager(case, strict, training):
    """A ``Dim`` without a ``max`` exports (it failed inside torch for the rectangular
    lattice and Leech, asked for a bound for E8, Λ16 and the straight-through quantizers) and
    the program runs 1, 7 and 1000 rows as the module: the same dither bits."""
    torch.manual_seed(0)
    module = make(case).train(training)
    y = 2.0 * torch.randn(3, module.in_dim, generator=_gen(2))
    program = _unbounded(module, y, strict).module()
    rounded = not strict and case.startswith("lattice[")
    for size in SIZES:
        x = 2.0 * torch.randn(size, module.in_dim, generator=_gen(size))
        _assert_same(*_run_both(program, module, x), rounded=rounded)


class _Draw(nn.Module):
    """The dither's draw alone: one counter per element of ``y``."""

    def forward(self, y):
        return y + counter_uniform(draw_key(None), tuple(y.shape), y.dtype)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_program_refuses_more_counters_than_a_key_holds(strict):
    """Exported with an unbounded batch, the draw's bound is an assertion of the program: a
    batch of 2^31 elements (an expanded view, nothing allocated) is one RuntimeError naming
    it; below the bound the program draws the eager bits. Eagerly still a ValueError."""
    y = torch.zeros(3, 6)
    program = _unbounded(_Draw(), y, strict).module()
    x = torch.rand(1000, 6, generator=_gen(1))
    torch.manual_seed(1)
    found = program(x)
    torch.manual_seed(1)
    assert torch.equal(found, _Draw()(x))
    with pytest.raises(RuntimeError, match=COUNTERS):
        program(torch.zeros(1, 6).expand(2**31 // 6 + 1, 6))
    with pytest.raises(ValueError, match="at most 2\\^31 numbers"):
        counter_uniform(draw_key(None), (2**31 // 6 + 1, 6))


def test_lattice_program_holds_the_counter_assertion():
    """The rectangular lattice's program (training and hard path) carries the draw's bound
    as an assertion of its graph, not as a bound of its batch."""
    torch.manual_seed(0)
    for training in (False, True):
        module = make("lattice").train(training)
        exported = _unbounded(module, torch.zeros(3, module.in_dim), strict=False)
        assert "2^31 numbers per key" in exported.graph_module.code
        (constraint,) = exported.range_constraints.values()
        assert constraint.upper > 2**40  # unbounded (int_oo)


# ------------------------------------------------------------------ compile=True
_COMPILED = {
    "lattice": ("lattice", dict(dim=6)),
    "lattice[e8]": VARIANTS["lattice[e8]"],
    "lattice[bw16]": VARIANTS["lattice[bw16]"],
    "lattice[leech]": VARIANTS["lattice[leech]"],
    "vq": ("vq", dict(dim=6, num_codes=5)),
    "vq_ema": ("vq_ema", dict(dim=6, num_codes=5)),
}


def _pair(case: str, training: bool) -> tuple[nn.Module, nn.Module]:
    """``(compile=True, compile=False)`` modules of one state."""
    name, kwargs = _COMPILED[case]
    torch.manual_seed(0)
    plain = build(name, **kwargs).train(training)
    compiled = build(name, compile=True, **kwargs).train(training)
    compiled.load_state_dict(plain.state_dict())
    return compiled, plain


def _no_compiled_calls(monkeypatch) -> None:
    """Every compiled kernel's getter raises: a path that would call one fails."""
    import qlatent.bottlenecks._codebook_search as codebook
    import qlatent.bottlenecks._lattice_kernels as lattice_kernels
    import qlatent.bottlenecks.lattice as lattice
    import qlatent.lattices.bw16 as bw16
    import qlatent.lattices.e8 as e8
    import qlatent.lattices.leech as leech

    def refuse():
        raise AssertionError("a compiled kernel was called while exporting")

    for module, name in [
        (e8, "compiled_decode"),
        (bw16, "compiled_decode"),
        (leech, "compiled_decode"),
        (codebook, "_compiled_first_nearest"),
        (lattice, "_compiled_kernel"),
        (lattice_kernels, "_compiled_parts"),
        (lattice, "_compiled_hard_kernel"),
    ]:
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize(
    ("case", "training"),
    # (an EMA codebook's training forward is refused for export by name)
    [
        (case, training)
        for case in _COMPILED
        for training in (False, True)
        if case != "vq_ema" or not training
    ],
)
def test_compile_true_takes_the_plain_path_while_exporting(case, training, monkeypatch):
    """With ``is_exporting`` patched to True a ``compile=True`` module calls no compiled
    kernel on 300 rows (past every ``_COMPILED_MIN_ROWS``) and gives the numbers of
    ``compile=False``: E8 and Λ16's dither took the fused decoders there."""
    compiled, plain = _pair(case, training)
    y = 2.0 * torch.randn(300, plain.in_dim, generator=_gen(5))
    torch.manual_seed(1)
    expected = _outputs(plain(y))
    _no_compiled_calls(monkeypatch)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.manual_seed(1)
    _assert_same(_outputs(compiled(y)), expected)


_COMPILED_EXPORTS = [
    pytest.param(case, strict, training, marks=[pytest.mark.slow] * slow)
    for case, strict, training, slow in [
        ("lattice[e8]", False, False, False),
        ("lattice", False, True, False),
        ("vq", False, False, False),
        ("lattice[e8]", True, False, True),
        ("lattice[e8]", False, True, True),
        ("lattice[bw16]", False, False, True),
        ("lattice[bw16]", True, True, True),
        ("lattice[leech]", False, False, True),
        ("lattice", True, False, True),
        ("vq", True, True, True),
        ("vq_ema", False, False, True),
    ]
]


@pytest.mark.parametrize(("case", "strict", "training"), _COMPILED_EXPORTS)
def test_compile_true_module_exports_the_plain_program(case, strict, training):
    """A ``compile=True`` module exported with an unbounded batch (E8 was held to 15 rows)
    gives the program of its ``compile=False`` twin bit for bit, on 1, 7 and 1000 rows, and
    the eager ``compile=False`` module's numbers (to the rounding of a non-strict good
    lattice's graph)."""
    compiled, plain = _pair(case, training)
    y = 2.0 * torch.randn(3, plain.in_dim, generator=_gen(2))
    program = _unbounded(compiled, y, strict).module()
    twin = _unbounded(plain, y, strict).module()
    rounded = not strict and case.startswith("lattice[")
    for size in SIZES:
        x = 2.0 * torch.randn(size, plain.in_dim, generator=_gen(size))
        found, expected = _run_both(program, plain, x)
        _assert_same(found, expected, rounded=rounded)
        _assert_same(found, _run_both(twin, plain, x)[0])


# ------------------------------------------------------------------ a training objective
class _Objective(nn.Module):
    """A whole training loss as one module: model forward, then the rate-distortion loss."""

    def __init__(self, model: nn.Module, loss: RateDistortionLoss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x):
        return self.loss(x, self.model(x), self.model.likelihood)


def _objective(bottleneck: str, training: bool) -> _Objective:
    torch.manual_seed(0)
    model = gated_vae(bottleneck, latent_dim=8, hidden=16, data_dim=20).train(training)
    return _Objective(model, RateDistortionLoss(lmbda=0.5, aux_weight=2.0))


def _losses(out) -> list:
    return [out.loss, out.distortion, out.rate, out.aux_loss]


_OBJECTIVES = [
    pytest.param(bottleneck, strict, training, marks=[pytest.mark.slow] * slow)
    for bottleneck, strict, training, slow in [
        ("lattice", False, True, False),
        ("lattice", False, False, False),
        ("vq", False, True, False),
        ("lattice", True, True, True),
        ("vq", True, False, True),
        ("gaussian", False, True, True),
    ]
]


@pytest.mark.parametrize(("bottleneck", "strict", "training"), _OBJECTIVES)
def test_training_loss_exports_and_gives_the_eager_loss(bottleneck, strict, training):
    """Model + ``RateDistortionLoss`` exported with an unbounded batch (the Bernoulli data
    check failed the export: "Could not guard on data-dependent expression"): the program's
    loss, distortion, rate and aux loss equal the eager ones on 1, 7 and 1000 images."""
    objective = _objective(bottleneck, training)
    x = torch.rand(4, 20, generator=_gen(3))
    program = _unbounded(objective, x, strict).module()
    for size in SIZES:
        x = torch.rand(size, 20, generator=_gen(size))
        torch.manual_seed(1)
        found = _losses(program(x))
        torch.manual_seed(1)
        expected = _losses(objective(x))
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            assert a.shape == b.shape and torch.equal(a, b), f"item {i}"


def test_exported_loss_refuses_data_outside_the_unit_interval():
    """The Bernoulli data check is an assertion of the program, by name, as eagerly a
    ValueError (NaN data: the bottleneck's input check names it first, in both)."""
    objective = _objective("lattice", training=True)
    x = torch.rand(4, 20, generator=_gen(3))
    program = torch.export.export(objective, (x,), strict=False).module()
    for bad, message in [
        (1.5, r"Bernoulli data must lie in \[0, 1\]"),
        (-0.25, r"Bernoulli data must lie in \[0, 1\]"),
        (float("nan"), "NaN or Inf"),
    ]:
        x[1, 2] = bad
        with pytest.raises(RuntimeError, match=message):
            program(x)
        with pytest.raises(ValueError, match=message):
            objective(x)
