"""PyTorch's memory and state idioms around every registered bottleneck and a model holding one.

Meta-device construction materialised with ``to_empty`` + ``load_state_dict`` (and
``assign=True``), ``torch.__future__.set_swap_module_params_on_conversion``, saved-tensor hooks
(``saved_tensors_hooks``, ``save_on_cpu``, ``disable_saved_tensors_hooks``), a CPU autocast step
with ``GradScaler``, ``torch.nn.utils.parametrize`` on a lattice's parameters, ``FakeTensorMode``,
and ``swap_tensors`` / ``share_memory`` / ``deepcopy`` after a cast. Each either gives the plain
path's numbers bit for bit or is refused by a named error; none may leave global state changed.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils import parametrize

from qlatent.bottlenecks import BOTTLENECKS, Bottleneck, build
from qlatent.losses import RateDistortionLoss
from qlatent.models import Autoencoder
from qlatent.nn import SquaredError
from test_contract import CONFIGS, gen

#: every registered name (the contract suite's small configurations) and the good lattices
CASES: dict[str, tuple[str, dict]] = {name: (name, CONFIGS[name]) for name in BOTTLENECKS.names()}
CASES["lattice[e8]"] = ("lattice", dict(dim=8, lattice="e8"))
CASES["lattice[leech+bw16]"] = ("lattice", dict(dim=40, lattice=["leech", "bw16"]))
GOOD = ["lattice[e8]", "lattice[leech+bw16]"]


def _make(case: str, *, seed: int = 0) -> Bottleneck:
    name, kwargs = CASES[case]
    torch.manual_seed(seed)
    return build(name, **kwargs)


def _input(module: Bottleneck, seed: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return 2.0 * torch.randn(3, module.in_dim, 2, generator=gen(seed), dtype=dtype)


def _trained(case: str) -> Bottleneck:
    """The module of ``case`` with weights moved off their initial values."""
    module = _make(case)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen(5), dtype=p.dtype))
    return module


def _outputs(module: Bottleneck, y: torch.Tensor) -> list:
    """Eval then training forward (the EMA methods update their codebook in the latter), on a
    copy: y_hat, rate, aux_loss and indices of each."""
    module = copy.deepcopy(module)
    found = []
    for training in (False, True):
        out = module.train(training)(y, generator=gen(1))
        found += [out.y_hat, out.rate, out.aux_loss, out.indices]
    return found


def _assert_equal(found: list, expected: list) -> None:
    assert len(found) == len(expected)
    for a, b in zip(found, expected, strict=True):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and torch.equal(a, b)


def _tables(module: Bottleneck) -> dict[str, torch.Tensor]:
    """A good lattice's index tables (plain attributes) and non-persistent buffers."""
    names = [*getattr(module, "_INDEX_TABLES", ()), *module._non_persistent_buffers_set]
    return {n: getattr(module, n) for n in names if getattr(module, n, None) is not None}


def _gradients(module: Bottleneck, y: torch.Tensor, hooks=contextlib.nullcontext) -> list:
    """A training forward and backward under ``hooks()``: the input's and parameters' grads."""
    module = copy.deepcopy(module).train()
    x = y.clone().requires_grad_(True)
    with hooks():
        out = module(x, generator=gen(1))
        (out.y_hat.square().sum() + out.rate.sum() + out.aux_loss).backward()
    return [x.grad, *(p.grad for p in module.parameters())]


@pytest.fixture
def restore_torch_state():
    """Puts back the global settings a test changes, even when it fails."""
    device, swap = (
        torch.get_default_device(),
        torch.__future__.get_swap_module_params_on_conversion(),
    )
    yield
    torch.set_default_device(None if device == torch.device("cpu") else device)
    torch.__future__.set_swap_module_params_on_conversion(swap)


def test_every_registered_bottleneck_is_a_case():
    assert set(BOTTLENECKS.names()) <= set(CASES)


# ----------------------------------------------------------------- 1. meta-device construction
@pytest.mark.parametrize("how", ["context", "default device", "assign"])
@pytest.mark.parametrize("case", CASES)
def test_a_meta_built_bottleneck_materialised_and_loaded_is_the_real_one(
    case, how, restore_torch_state
):
    """``with torch.device("meta")`` or ``set_default_device("meta")``, then ``to_empty`` (and
    ``reset_parameters`` where a module has one) and ``load_state_dict``; or
    ``load_state_dict(assign=True)`` straight onto the meta module. A good lattice's tables,
    plain attributes moved by ``_apply`` and not saved, are built off the meta device and must
    hold the real module's values after ``to_empty``."""
    real = _trained(case)
    name, kwargs = CASES[case]
    if how == "default device":
        torch.set_default_device("meta")
        try:
            module = build(name, **kwargs)
        finally:
            torch.set_default_device(None)
    else:
        with torch.device("meta"):
            module = build(name, **kwargs)
    assert all(p.is_meta for p in module.parameters())
    if how == "assign":
        module.load_state_dict(real.state_dict(), assign=True)
    else:
        module.to_empty(device="cpu")
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        for key, table in _tables(real).items():
            assert torch.equal(_tables(module)[key], table), key
        module.load_state_dict(real.state_dict())
    assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])
    y = _input(real)
    _assert_equal(_outputs(module, y), _outputs(real, y))


def test_a_meta_built_model_materialised_and_loaded_is_the_real_one():
    real = _model("lattice[e8]")
    with torch.device("meta"):
        module = _model("lattice[e8]")
    module.to_empty(device="cpu")
    module.load_state_dict(real.state_dict())
    x = torch.randn(4, 5, generator=gen(3))
    for training in (False, True):
        found = module.train(training)(x, generator=gen(1))
        expected = real.train(training)(x, generator=gen(1))
        assert torch.equal(found.params, expected.params)
        assert torch.equal(found.bottleneck.rate, expected.bottleneck.rate)


# ---------------------------------------------------------- 2. swapping parameters on conversion
_CONVERSIONS = {
    "float64": lambda m: m.to(torch.float64),
    "half then float": lambda m: m.half().float(),
    "meta and back": lambda m: m.to("meta"),
}


@pytest.mark.parametrize("conversion", _CONVERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_conversions_that_swap_parameters_equal_the_default_ones(
    case, conversion, restore_torch_state
):
    """Under ``set_swap_module_params_on_conversion(True)`` the parameters are swapped in place
    (the same objects); the module, and a good lattice's tables (its own ``_apply``), end as
    after the default conversion."""
    real = _trained(case)
    convert = _CONVERSIONS[conversion]
    plain = convert(copy.deepcopy(real))
    swapped = copy.deepcopy(real)
    before = list(swapped.parameters())
    torch.__future__.set_swap_module_params_on_conversion(True)
    convert(swapped)
    torch.__future__.set_swap_module_params_on_conversion(False)
    assert all(a is b for a, b in zip(before, swapped.parameters(), strict=True))
    for converted in (plain, swapped):
        if conversion == "meta and back":
            converted.to_empty(device="cpu")
            converted.load_state_dict(real.state_dict())
    expected_tables = _tables(plain)
    for key, table in _tables(swapped).items():
        expected = expected_tables[key]
        assert table.dtype == expected.dtype and torch.equal(table, expected), key
    dtype = torch.float64 if conversion == "float64" else torch.float32
    y = _input(real, dtype=dtype)
    _assert_equal(_outputs(swapped, y), _outputs(plain, y))


# ------------------------------------------------------------------- 3. saved-tensor hooks
@pytest.mark.parametrize("case", CASES)
def test_saved_tensor_hooks_and_offloading_give_the_plain_gradients(case):
    """A pack hook that copies what it packs, ``save_on_cpu`` and a disabled hook stack: the
    gradients of a training step equal the plain ones bit for bit."""
    module = _trained(case)
    y = _input(module)
    expected = _gradients(module, y)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    def hooks():
        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    disabled = torch.autograd.graph.disable_saved_tensors_hooks("no saved-tensor hooks here")
    for context in (hooks, torch.autograd.graph.save_on_cpu, lambda: disabled):
        _assert_equal(_gradients(module, y, context), expected)
    assert packed  # every case saves something for its backward


def test_a_disabled_hook_stack_refuses_a_hook_with_torchs_message():
    module = _make("lattice[e8]")
    with torch.autograd.graph.disable_saved_tensors_hooks("offloading is off"):
        with pytest.raises(RuntimeError, match="offloading is off"):
            with torch.autograd.graph.save_on_cpu():
                module.train()(_input(module), generator=gen(1))


def _custom_nodes(root) -> list:
    """The custom ``torch.autograd.Function`` nodes of the graph behind ``root``."""
    seen, stack, found = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _held_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _held_tensors(v)]
    return [v for v in getattr(value, "__dict__", {}).values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("case", ["lattice", "vq", *GOOD])
def test_custom_functions_save_their_activations_where_hooks_see_them(case):
    """A pack hook (offloading, compression) applies only to what a custom Function saves with
    ``ctx.save_for_backward``; a tensor kept as a ``ctx`` attribute would bypass it. Every
    tensor a custom node holds as an attribute is a constant of the module (a good lattice's
    block-membership table), never sized by the batch."""
    module = _trained(case).train()
    y = torch.randn(3, module.in_dim, 7, generator=gen(2)).requires_grad_(True)
    out = module(y, generator=gen(1))
    loss = out.y_hat.square().sum() + out.rate.sum() + out.aux_loss
    rows = y.shape[0] * y.shape[2]  # 21: no width of these modules
    nodes = _custom_nodes(loss.grad_fn)
    assert nodes
    for node in nodes:
        for name, value in vars(node).items():
            for t in _held_tensors(value):
                assert rows not in t.shape, f"{type(node).__name__}.{name} {tuple(t.shape)}"


# ------------------------------------------------------------ 4. mixed precision on the CPU
def _model(case: str) -> Autoencoder:
    torch.manual_seed(0)
    bottleneck = _make(case)
    encoder = nn.Linear(5, bottleneck.in_dim)
    decoder = nn.Linear(bottleneck.dim, 5)
    return Autoencoder(encoder, bottleneck, decoder, SquaredError())


@pytest.mark.parametrize("case", CASES)
def test_an_autocast_step_with_a_grad_scaler_updates_the_model(case):
    """``torch.autocast("cpu", bfloat16)`` forward and loss, ``GradScaler("cpu")`` backward and
    step: the bottleneck computes in float32, gradients are finite, the weights move."""
    model = _model(case).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 5, generator=gen(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, generator=gen(1))
        loss = RateDistortionLoss()(x, out, model.likelihood).loss
    assert out.bottleneck.y_hat.dtype == torch.float32
    assert out.bottleneck.rate.dtype == torch.float32
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        assert torch.isfinite(p.grad).all(), name
        if p.grad.any():
            assert not torch.equal(p, before[name]), name
    assert not torch.equal(model.encoder.weight, before["encoder.weight"])


# ------------------------------------------------------------------------ 5. parametrizations
class _Magnitude(nn.Module):
    """A positive parametrization: the stored values' magnitudes."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.abs()

    def right_inverse(self, t: torch.Tensor) -> torch.Tensor:
        return t


@pytest.mark.parametrize(
    ("case", "name"), [("learnable_lattice", "basis"), ("lattice[e8]", "log_scale")]
)
def test_a_parametrized_lattice_trains_saves_and_codes_as_its_values(case, name):
    """A lattice whose ``name`` is parametrized reads it through the parametrization: its
    training and eval outputs, its state dict reloaded into another parametrized module, and
    its files are those of the plain module holding the parametrized values."""
    module = _trained(case)
    if case == "learnable_lattice":  # a basis of both signs, so that |·| changes it
        with torch.no_grad():
            module.basis[::2].neg_()
    holder = copy.deepcopy(module)
    with torch.no_grad():
        getattr(holder, name).abs_()
    parametrize.register_parametrization(module, name, _Magnitude())
    y = _input(module)
    _assert_equal(_outputs(module, y), _outputs(holder, y))
    stored = module.parametrizations[name].original
    grads = _gradients(module, y)
    assert torch.isfinite(torch.cat([g.flatten() for g in grads if g is not None])).all()
    found = _gradients(module, y)
    _assert_equal(found, grads)  # (deterministic given the generator)
    _assert_equal(found[:1], _gradients(holder, y)[:1])  # the input's gradient
    again = _make(case, seed=3)
    parametrize.register_parametrization(again, name, _Magnitude())
    again.load_state_dict(module.state_dict())
    assert torch.equal(again.parametrizations[name].original, stored)
    _assert_equal(_outputs(again, y), _outputs(holder, y))
    if case == "learnable_lattice":
        module.update(y), holder.update(y)
    module.eval(), holder.eval()
    data = module.compress(y, seed=4)
    assert torch.equal(module.decompress(data), holder.decompress(holder.compress(y, seed=4)))


# ------------------------------------------------------------------------ 6. FakeTensorMode
def _global_state() -> tuple:
    return (
        torch.get_default_device(),
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
        torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE),
        torch.random.get_rng_state(),
    )


def _same_state(a: tuple, b: tuple) -> bool:
    return a[:4] == b[:4] and torch.equal(a[4], b[4])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES)
def test_fake_tensor_mode_is_refused_by_name_and_changes_no_global_state(case, training):
    """Under ``FakeTensorMode`` (memory estimators) a forward failed deep in torch with
    "DataDependentOutputException: aten._local_scalar_dense.default": a bottleneck reads its
    input's values. It is a ValueError naming the fake tensor, for a fake input and for a real
    one under the mode, and the generator, the global RNG and the torch settings are as before."""
    module = _make(case).train(training)
    y = _input(module)
    generator = gen(1)
    state, drawn = _global_state(), generator.get_state()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        for given in (mode.from_tensor(y), y):
            with pytest.raises(ValueError, match="fake tensor"):
                module(given, generator=generator)
        fake = mode.from_tensor(y)
    with pytest.raises(ValueError, match="fake tensor"):
        module(fake, generator=generator)  # a fake tensor outside its mode
    assert _same_state(_global_state(), state)
    assert torch.equal(generator.get_state(), drawn)
    _assert_equal(_outputs(module, y), _outputs(_make(case).train(training), y))


def test_a_model_under_fake_tensor_mode_is_refused_at_its_bottleneck():
    model = _model("lattice[e8]")
    state = _global_state()
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake, pytest.raises(ValueError, match="DitheredGoodLattice got a fake"):
        model(torch.randn(4, 5), generator=gen(1))
    assert _same_state(_global_state(), state)


# ---------------------------------------------- 7. swap_tensors, share_memory, deepcopy of a cast
@pytest.mark.parametrize("case", CASES)
def test_copies_and_swaps_of_a_float64_module_are_the_module(case):
    """After ``.to(float64)``: ``deepcopy`` and ``share_memory()`` give the same outputs, and
    ``torch.utils.swap_tensors`` of every parameter and buffer with another module's makes
    each compute as the other did."""
    module = _trained(case).to(torch.float64)
    other = _make(case, seed=7).to(torch.float64)
    y = _input(module, dtype=torch.float64)
    expected, expected_other = _outputs(module, y), _outputs(other, y)
    assert expected[0].dtype == torch.float64
    _assert_equal(_outputs(copy.deepcopy(module), y), expected)
    _assert_equal(_outputs(copy.deepcopy(module).share_memory(), y), expected)
    theirs = dict([*other.named_parameters(), *other.named_buffers()])
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        torch.utils.swap_tensors(t, theirs[name])
    _assert_equal(_outputs(module, y), expected_other)
    _assert_equal(_outputs(other, y), expected)
