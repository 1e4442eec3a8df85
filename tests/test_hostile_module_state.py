"""Module state changed through PyTorch's own mechanics: a model built on the meta device and
materialised with ``to_empty`` + ``load_state_dict`` (the large-model init pattern), dtype round
trips, copies, shared memory, and weights loaded over a module that already has a code model.
After each, the module must behave exactly as one built and loaded plainly: the same outputs on
both paths and the same file bytes, decodable by the other."""

from __future__ import annotations

import copy

import pytest
import torch

from qlatent.bottlenecks import Bottleneck, build
from test_contract import CONFIGS, VARIANTS


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _make(case: str, *, meta: bool = False) -> Bottleneck:
    name, kwargs = VARIANTS[case] if case in VARIANTS else (case, CONFIGS[case])
    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            return build(name, **kwargs)
    return build(name, **kwargs)


def _trained(case: str) -> tuple[Bottleneck, torch.Tensor]:
    """A module whose weights are not the initial ones (and whose code model, if it has one,
    is counted), with an input for it."""
    module = _make(case)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=_gen(5), dtype=p.dtype))
    y = 2.0 * torch.randn(5, module.in_dim, generator=_gen(0))
    if hasattr(module, "update"):
        module.update(y)
    return module.eval(), y


def _assert_same(module: Bottleneck, real: Bottleneck, y: torch.Tensor) -> None:
    """Eval forward, hard path and files of ``module`` equal ``real``'s, each decoding the
    other's file; the training forward last (the EMA methods update their codebook in it)."""
    module.eval(), real.eval()
    out, expected = module(y, generator=_gen()), real(y, generator=_gen())
    assert torch.equal(out.y_hat, expected.y_hat) and torch.equal(out.rate, expected.rate)
    if real.discrete:
        assert torch.equal(out.indices, expected.indices)
        k = module.quantize(y, generator=_gen())
        assert torch.equal(k, real.quantize(y, generator=_gen()))
        assert torch.equal(module.dequantize(k, generator=_gen()), expected.y_hat)
        try:
            data = real.compress(y, seed=3)
        except TypeError:  # a method without files
            pass
        else:
            assert module.compress(y, seed=3) == data
            assert torch.equal(module.decompress(data), real.decompress(data))
    module.train(), real.train()
    trained, expected = module(y, generator=_gen()), real(y, generator=_gen())
    assert torch.equal(trained.y_hat, expected.y_hat) and torch.equal(trained.rate, expected.rate)


CASES = [*CONFIGS, *VARIANTS]
_DTYPES = [torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("case", CASES)
def test_a_bottleneck_built_on_the_meta_device_loads_as_the_real_one(case):
    """``with torch.device("meta"): build(...)``, ``to_empty(device="cpu")``, then
    ``load_state_dict``: a good lattice's tables (its blocks' unit volumes, which block each
    coordinate is in, the cells' bounds), which are not saved, stayed uninitialised memory:
    IndexErrors, NaN coordinates, or a scale read from garbage."""
    real, y = _trained(case)
    module = _make(case, meta=True)
    module.to_empty(device="cpu")
    module.load_state_dict(real.state_dict())
    _assert_same(module, real, y)


@pytest.mark.parametrize("case", ["lattice[a2]", "lattice[e8+z,scale per block]"])
def test_a_good_lattice_moved_to_the_meta_device_and_back_keeps_its_tables(case):
    """``.to("meta")`` then ``to_empty`` + ``load_state_dict`` (a model offloaded and
    materialised again): the tables must not pass through the meta device, where they have no
    values to come back with."""
    real, y = _trained(case)
    module = copy.deepcopy(real).to("meta")
    module.to_empty(device="cpu")
    module.load_state_dict(real.state_dict())
    _assert_same(module, real, y)


_ROUND_TRIPS = [
    *[(case, dtype) for case in ("lattice[a2]", "lattice[d4]") for dtype in _DTYPES],
    ("lattice[bw16]", torch.bfloat16),
    ("lattice[leech]", torch.float16),
]


@pytest.mark.parametrize(("case", "dtype"), _ROUND_TRIPS, ids=[f"{c}-{d}" for c, d in _ROUND_TRIPS])
def test_a_dtype_round_trip_changes_only_the_weights(case, dtype):
    """``.half().float()`` rounds the weights, as for any module, and rounded the good lattice's
    unit-volume factors too (A2, D4, Λ16, Λ24: volumes not a power of two): the round-tripped
    module quantized on another lattice than a module loaded from its own weights, and its
    files failed to decode there or decoded to another y_hat."""
    real, y = _trained(case)
    module = copy.deepcopy(real).to(dtype).float()
    plain = _make(case)
    plain.load_state_dict(module.state_dict())
    _assert_same(module, plain, y)


@pytest.mark.parametrize("case", ["lattice[d4]", "vq_ema"])
def test_copies_shared_memory_and_frozen_weights_change_nothing(case):
    real, y = _trained(case)
    for change in (copy.deepcopy, lambda m: m.share_memory(), lambda m: m.requires_grad_(False)):
        _assert_same(change(copy.deepcopy(real)), copy.deepcopy(real), y)


@pytest.mark.parametrize("case", ["vq", "learnable_lattice"])
def test_weights_loaded_without_counts_leave_no_stale_code_model(case):
    """Weights saved without a code model (a checkpoint from before code models) loaded over a
    module with one kept the old counts, counted for the weights just replaced: the module
    compressed with them while a module loaded fresh from the same weights had no code model
    (a codebook's uniform indices, other bytes; a learnable lattice's TypeError)."""
    real, y = _trained(case)
    weights = {k: v for k, v in _make(case).state_dict().items() if not k.startswith("code_")}
    real.load_state_dict(weights)
    plain = _make(case).eval()
    plain.load_state_dict(weights)
    assert not real.code_model_ready and not plain.code_model_ready
    _assert_same(real, plain, y)
    # a state dict of none of its weights (strict=False, e.g. another part of a model) keeps them
    counted, _ = _trained(case)
    counts = counted.code_counts.clone()
    counted.load_state_dict({}, strict=False)
    assert torch.equal(counted.code_counts, counts)
