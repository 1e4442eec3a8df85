"""Exported bottlenecks and models put to further use: a dynamic batch size, a saved and loaded
program, grad modes, ``torch.compile`` of the program, the program's input checks, and the
export branches against the eager ones.

Fixed here: every loop over cache-sized blocks of rows (the rectangular lattice's hard path,
the good lattices' density chunks, the E8 / BW16 / Leech / glued decoders, the codebook search)
and every branch on the row count fixed or bounded a dynamic batch size (``torch.export.Dim``):
export failed ("specialized it to be a constant (3)"; for ``vq`` an assertion inside torch,
"Expected op to be '==', got <"), and the exported usage counts of the learnable lattice held
the batch at 3 rows or more. Exported, each is one block of every row. Where each chunk draws
its own proposal key (``proposal="box"`` or ``"tilted"``) a larger batch would take other draws
than the module: the program is bounded to one chunk there, by name of the bound."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch.export import Dim

from qlatent.models import lattice_vae
from test_contract import CONFIGS, VARIANTS
from test_contract import gen as _gen
from test_hostile_export import (
    QUICK,
    _assert_same,
    _assert_same_model_outputs,
    _module,
    _outputs,
    _run_both,
)

#: the same, a good lattice's exports (seconds each) left to ``-m slow``
SLOW_E8 = pytest.param("lattice[e8]", marks=pytest.mark.slow)
QUICKER = ["lattice", SLOW_E8, "vq", "gaussian"]
ALL = [*CONFIGS, *VARIANTS]
#: the batch sizes a dynamic program runs on (the example has 3 rows)
SIZES = (1, 7, 1000)


def _dynamic(module, y, strict: bool, max: int = 1 << 16):
    batch = Dim("batch", min=1, max=max)  # (bounded: the dither's counters stay below 2^31)
    return torch.export.export(module, (y,), dynamic_shapes=({0: batch},), strict=strict)


# ------------------------------------------------------------------ a dynamic batch size
_DYNAMIC = [
    pytest.param(
        case,
        strict,
        training,
        marks=[pytest.mark.slow] * (slow == 2 or (slow and case == "lattice[e8]")),
    )
    for case in [*QUICK, "learnable_lattice"]
    # slow: 1 for E8 (seconds per export), 2 for every case
    for strict, training, slow in [
        (False, False, 0),
        (True, False, 1),
        (False, True, 1),
        (True, True, 2),
    ]
    # (learnable_lattice's training path is the same in both: strict only)
    if not (case == "learnable_lattice" and training and not strict)
]


@pytest.mark.parametrize(("case", "strict", "training"), _DYNAMIC)
def test_dynamic_batch_program_runs_every_batch_size_as_eager(case, strict, training):
    """Exported with a dynamic batch dimension, the program runs 1, 7 and 1000 rows (the
    blocked paths' several blocks) as the module does; (B, D, H, W) input too."""
    module, y = _module(case, training)
    program = _dynamic(module, y, strict).module()
    rounded = case == "lattice[e8]"  # (the Monte-Carlo sums of a larger graph)
    for size in SIZES:
        x = 2.0 * torch.randn(size, module.in_dim, generator=_gen(size))
        _assert_same(*_run_both(program, module, x), rounded=rounded)
    spatial = 2.0 * torch.randn(2, module.in_dim, 4, 5, generator=_gen(9))
    program = torch.export.export(
        module, (spatial,), dynamic_shapes=({0: Dim("b", max=64), 2: Dim("h", max=64)},)
    ).module()
    other = 2.0 * torch.randn(5, module.in_dim, 3, 5, generator=_gen(10))
    _assert_same(*_run_both(program, module, other), rounded=rounded)


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("case", ALL)
def test_every_bottleneck_exports_a_dynamic_batch(case, strict):
    module, y = _module(case)
    program = _dynamic(module, y, strict, max=4096).module()  # (a box proposal: one chunk)
    rounded = not strict and case.startswith("lattice[")
    for size in SIZES:
        x = 2.0 * torch.randn(size, module.in_dim, generator=_gen(size))
        _assert_same(*_run_both(program, module, x), rounded=rounded)


def test_a_box_proposal_program_is_bounded_to_one_chunk_of_draws():
    """Each chunk of the density draws its own key: a dynamic program of one chunk would draw
    other numbers than the module for a larger batch, so export names the bound (26214 rows
    here); within it the program gives the module's numbers."""
    module, y = _module("lattice[e8,box]")
    with pytest.raises(Exception, match="26214"):
        _dynamic(module, y, strict=False, max=1 << 16)
    program = _dynamic(module, y, strict=False, max=1000).module()
    x = 2.0 * torch.randn(1000, module.in_dim, generator=_gen(4))
    _assert_same(*_run_both(program, module, x), rounded=True)


def test_padded_row_counts_of_one_and_two_rows():
    """The run starts compare each row with the one before it (a roll): one row, two equal
    rows, two distinct rows."""
    from qlatent.bottlenecks._codebook import padded_row_counts

    assert padded_row_counts(torch.tensor([[4, 1]])).tolist() == [1]
    assert padded_row_counts(torch.tensor([[4, 1], [4, 1]])).tolist() == [2, 0]
    assert padded_row_counts(torch.tensor([[4, 1], [1, 4]])).tolist() == [1, 1]


def test_dynamic_batch_mnist_vae_as_eager():
    """The lattice MNIST model (small widths) exported with a dynamic batch, run on 1, 7 and
    1000 images: the eager logits, y_hat and rate."""
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=6, hidden=16, data_dim=20).eval()
    x = torch.rand(4, 20, generator=_gen(3))
    program = _dynamic(model, x, strict=False).module()
    for size in SIZES:
        _assert_same_model_outputs(program, model, torch.rand(size, 20, generator=_gen(size)))


# ------------------------------------------------------------------ the program in use
@pytest.mark.parametrize("case", QUICKER)
def test_saved_and_loaded_program_in_every_grad_mode(case):
    """A ``.pt2`` round trip (``torch.export.save`` / ``load``); the loaded program under
    ``no_grad`` and ``inference_mode`` and compiled (``torch.compile``, eager backend) gives the
    module's outputs; the program's state is the module's."""
    module, y = _module(case)
    exported = torch.export.export(module, (y,), strict=False)
    assert exported.state_dict.keys() == module.state_dict().keys()
    for name, value in module.state_dict().items():
        assert torch.equal(exported.state_dict[name], value), name
    file = io.BytesIO()
    torch.export.save(exported, file)
    file.seek(0)
    program = torch.export.load(file).module()
    expected = _run_both(program, module, y)[1]
    for context in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with context():
            torch.manual_seed(1)
            _assert_same(_outputs(program(y)), expected)
    compiled = torch.compile(program, backend="eager")
    torch.manual_seed(1)
    _assert_same(_outputs(compiled(y)), expected)


@pytest.mark.parametrize("case", QUICKER)
def test_float64_module_exports_its_numbers(case):
    """A module moved to float64 (``module.to``) exports float64 outputs equal to eager."""
    module, y = _module(case, dtype=torch.float64)
    program = torch.export.export(module, (y,), strict=False).module()
    found, expected = _run_both(program, module, y)
    assert found[0].dtype == torch.float64
    _assert_same(found, expected)


@pytest.mark.parametrize("case", QUICK)
def test_program_refuses_bad_values_and_a_wrong_channel_count(case):
    """NaN, Inf and too large an input are refused by the program of every kind, by name; a
    wrong channel count by the program's shape guard."""
    module, y = _module(case)
    program = torch.export.export(module, (y,), strict=False).module()
    for bad, message in [
        (float("nan"), "NaN or Inf"),
        (float("inf"), "NaN or Inf"),
        (1e30, "magnitudes beyond"),
    ]:
        x = y.clone()
        x[2, 1] = bad
        with pytest.raises(RuntimeError, match=message):
            program(x)
    with pytest.raises(Exception, match=rf"size\(\)\[1\] == {module.in_dim}"):
        program(torch.zeros(3, module.in_dim + 1))


# ------------------------------------------------------------------ the export branches
@pytest.mark.parametrize(
    ("case", "training"),
    # (an EMA codebook's training forward is refused by name for export)
    [(c, t) for c in ALL for t in (False, True) if not (t and c in ("vq_ema", "soft_em_vq"))],
)
def test_export_branches_give_the_eager_numbers(case, training, monkeypatch):
    """The eager module taking the export branches (``is_exporting`` patched to True) gives
    the eager outputs and stats bit for bit, for (B, D) and (B, D, H, W) input: what the
    programs' tests allow to the rounding is the graph's, not the branches'."""
    module, _ = _module(case, training)
    for y in (
        2.0 * torch.randn(5, module.in_dim, generator=_gen(2)),
        2.0 * torch.randn(2, module.in_dim, 3, 2, generator=_gen(3)),
    ):
        torch.manual_seed(1)
        expected = module(y)
        with monkeypatch.context() as patch:
            patch.setattr(torch.compiler, "is_exporting", lambda: True)
            torch.manual_seed(1)
            found = module(y)
        _assert_same(_outputs(found), _outputs(expected))
        assert found.stats.keys() == expected.stats.keys()
        for name, value in expected.stats.items():
            assert torch.equal(found.stats[name], value), name


@pytest.mark.parametrize("case", ["lattice[e8]", "lattice[bw16]", "lattice[leech]", "vq"])
def test_export_branches_of_more_rows_than_a_block(case, monkeypatch):
    """The export branches decode every row in one call where eagerly a loop runs over
    blocks: the same numbers over several blocks (40000 rows)."""
    module, _ = _module(case)
    y = 2.0 * torch.randn(40000 if case != "lattice[leech]" else 5000, module.in_dim)
    torch.manual_seed(1)
    expected = module(y)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.manual_seed(1)
    _assert_same(_outputs(module(y)), _outputs(expected))


# ------------------------------------------------------------------ the module after export
@pytest.mark.parametrize("case", QUICKER)
def test_module_stays_plain_after_exports_in_every_mode(case):
    """Exports in eval and training mode, strict and not, with and without grad: the module's
    attributes hold no fake tensor, it pickles and gives its numbers as before."""
    module, y = _module(case)
    torch.manual_seed(1)
    before = _outputs(module(y))
    for training in (False, True):
        module.train(training)
        for strict in (False, True):
            for context in (torch.no_grad, torch.enable_grad):
                with context():
                    torch.export.export(module, (y,), strict=strict)
    module.eval()
    fake = torch._subclasses.FakeTensor
    for sub in module.modules():
        for value in vars(sub).values():
            assert not isinstance(value, fake)
        geometry = getattr(sub, "geometry", None)
        for lattice in getattr(geometry, "blocks", [geometry] if geometry is not None else []):
            assert not any(isinstance(v, fake) for v in vars(lattice).values())
    copy = pickle.loads(pickle.dumps(module))
    for run in (module, copy):
        torch.manual_seed(1)
        _assert_same(_outputs(run(y)), before)
