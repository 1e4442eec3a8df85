"""EMA codebooks (``vq_ema``, ``soft_em_vq``) under ``torch.utils.checkpoint`` in the cases the
record of training-mode forwards missed: a checkpoint nested in another (its forward is
recomputed twice in one backward pass), and a module pickled before the record existed. Each
checkpointed step is compared with the same step run without checkpointing, bit for bit in
float64: the input's gradient, every buffer (one M-step per forward, Roy et al. 2018,
arXiv 1805.11063) and the caller's generator."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from qlatent.bottlenecks import build

NAMES = ["vq_ema", "soft_em_vq"]
# torch's reentrant checkpoint warns when the outer recomputation calls it under no_grad
pytestmark = pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")


def _neck(name: str):
    torch.manual_seed(0)
    extra = dict(num_samples=3, temperature=0.5, vib_weight=0.1) if name == "soft_em_vq" else {}
    return build(name, dim=3, num_codes=5, decay=0.8, **extra).double()


def _inputs() -> torch.Tensor:
    return torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _step(neck, nesting: tuple[bool, bool] | None):
    """One training step of ``neck`` inside two blocks; ``nesting`` = (inner, outer)
    ``use_reentrant`` flags when both blocks are checkpointed, ``None`` for a plain step.
    Returns the input's gradient, the buffers and the generator's state after the step."""
    generator = torch.Generator().manual_seed(1)
    weights = torch.arange(1.0, 4.0, dtype=torch.float64)

    def inner(y):
        out = neck(y, generator=generator)
        return out.y_hat + out.aux_loss

    def outer(y):
        z = y * 1.5
        return (
            inner(z) if nesting is None else checkpoint(inner, z, use_reentrant=nesting[0])
        ) * weights

    y = _inputs().requires_grad_()
    out = outer(y) if nesting is None else checkpoint(outer, y, use_reentrant=nesting[1])
    out.square().sum().backward()
    state = {k: v.clone() for k, v in neck.state_dict().items()}
    return y.grad, state, generator.get_state()


def _assert_same_step(got, expected) -> None:
    assert torch.equal(got[0], expected[0])
    assert got[1].keys() == expected[1].keys()
    for key in expected[1]:
        assert torch.equal(got[1][key], expected[1][key]), key
    assert torch.equal(got[2], expected[2])


@pytest.mark.parametrize("inner", [True, False], ids=["inner-reentrant", "inner-plain"])
@pytest.mark.parametrize("outer", [True, False], ids=["outer-reentrant", "outer-plain"])
@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_inside_a_checkpoint_equals_the_plain_step(name, inner, outer):
    """The inner forward is recomputed in the outer recomputation and again in its own: both
    times with the original forward's codebook (and samples), no M-step. It raised
    RuntimeError ("matches none of its last 4 training-mode forwards") the second time."""
    expected = _step(_neck(name), None)
    _assert_same_step(_step(_neck(name), (inner, outer)), expected)


@pytest.mark.parametrize("name", NAMES)
def test_a_module_pickled_before_the_record_trains_checkpointed(name):
    """A module saved whole (``torch.save`` / pickle) before the forwards were recorded has no
    record in its pickled state: its training-mode forward, a checkpointed step and a cast
    raised AttributeError ('EMACodebook' object has no attribute '_steps')."""
    expected = _step(_neck(name), None)
    old = _neck(name)
    del old.ema.__dict__["_steps"]  # the state such a pickle holds
    loaded = pickle.loads(pickle.dumps(old))
    _assert_same_step(_step(loaded, (False, False)), expected)
    again = pickle.loads(pickle.dumps(old))
    _assert_same_step(_step(copy.deepcopy(again).float().double(), None), expected)


@pytest.mark.parametrize("name", [*NAMES, "lattice"])
def test_rows_that_all_sum_to_zero_are_told_apart(name):
    """A LayerNorm before the bottleneck makes every row sum to 0: a fingerprint of plain row
    sums took a later forward of another batch (a training-mode forward under no_grad between
    the checkpointed forward and its backward) for the one being recomputed, which then used
    that forward's codebook or dither. The gradient equals the step without checkpointing."""

    def run(checkpointed: bool):
        torch.manual_seed(0)
        encoder = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6)).double()
        neck = build(name, dim=6, **({} if name == "lattice" else {"num_codes": 5})).double()
        generator = torch.Generator().manual_seed(1)
        a, b = torch.randn(2, 8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

        def block(x):
            out = neck(encoder(x), generator=generator)
            return out.y_hat.square().sum() + out.rate.sum() + out.aux_loss

        loss = checkpoint(block, a, use_reentrant=False) if checkpointed else block(a)
        with torch.no_grad():
            neck(encoder(b), generator=generator)  # another batch, also zero-sum rows
        loss.backward()
        return [p.grad.clone() for p in encoder.parameters()]

    for got, expected in zip(run(True), run(False), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("name", [*NAMES, "lattice"])
def test_a_copy_leaves_the_recorded_forwards_behind(name):
    """Pickled or deep-copied, a module carries no recorded forward (a copy has none of its own
    to recompute): a whole ``vq_ema`` saved after training held its last codebooks, three
    times its size. The original keeps its record, and its checkpointed step still works."""
    neck = build(name, dim=3, **({} if name == "lattice" else {"num_codes": 5})).double()
    fresh = len(pickle.dumps(neck))
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        neck(torch.randn(400, 3, dtype=torch.float64), generator=generator)
    assert len(pickle.dumps(neck)) < fresh + 1024  # the record is 4 × (rows + codebook)
    twin = copy.deepcopy(neck)
    for module in (twin, pickle.loads(pickle.dumps(neck))):
        records = [m.__dict__.get(k) for m in module.modules() for k in ("_steps", "_draws")]
        assert all(r is not None and len(r) == 0 for r in records if r is not None)
    y = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    out = checkpoint(lambda v: neck(v, generator=generator).y_hat.sum(), y, use_reentrant=False)
    out.backward()  # the original's record of this forward is found
    assert y.grad is not None
