"""Bottlenecks used as PyTorch users use modules: ``torch.compile`` of the module (Dynamo's
``eager`` and ``aot_eager`` backends bit for bit, inductor within float rounding), batch sizes
and widths that make Dynamo recompile, the library's own ``compile=True`` kernels, whole-module
``pickle`` / ``copy.deepcopy`` / ``torch.save``, and dtype casts after the module's tables were
built. Each copy or compiled call must give the plain module's outputs, gradients, state
updates and file bytes."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from qlatent.bottlenecks import Bottleneck, build
from test_contract import CONFIGS, VARIANTS, make
from test_contract import gen as _gen

CASES = [*CONFIGS, *VARIANTS]


def _make(case: str) -> Bottleneck:
    """The contract suite's module of ``case``, initialised from seed 0."""
    torch.manual_seed(0)
    return make(case)


def _moved(case: str, rows: int = 20) -> tuple[Bottleneck, torch.Tensor]:
    """A module whose weights are not the initial ones, with its code model counted where it
    has one, in eval mode, and an input for it."""
    module = _make(case)
    y = 2.0 * torch.randn(rows, module.in_dim, generator=_gen(2))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=_gen(3), dtype=p.dtype))
    if hasattr(module, "update"):
        module.update(y)
    return module.eval(), y


def _step(call, module: Bottleneck, y: torch.Tensor, training: bool) -> list:
    """One call of ``call`` (the module or its compiled form) in ``training`` mode with its
    backward: every output, the input's and the parameters' gradients, and the buffers after
    it (the EMA methods update their codebook in the training forward)."""
    module.train(training)
    module.zero_grad(set_to_none=True)
    x = y.clone().requires_grad_(training)
    with torch.set_grad_enabled(training):
        torch.manual_seed(5)  # the seed of any draw without the generator
        out = call(x, generator=_gen(1))
    if training:
        (out.y_hat.square().sum() + out.rate.sum() + out.aux_loss).backward()
    stats = [out.stats[k] for k in sorted(out.stats)]
    grads = [p.grad for p in module.parameters()]
    buffers = [b.clone() for b in module.buffers()]
    return [out.y_hat, out.rate, out.aux_loss, out.indices, x.grad, *stats, *grads, *buffers]


def _files(module: Bottleneck, y: torch.Tensor) -> list:
    """The eval outputs, and the file and its decoding where the module writes files."""
    found = _step(module, module, y, False)
    if module.discrete:
        found.append(module.quantize(y, generator=_gen(1)))
        try:
            data = module.compress(y, seed=5)
        except TypeError:  # a method without a code model
            return found
        found += [data, module.decompress(data)]
    return found


def _assert_identical(found: list, expected: list) -> None:
    assert len(found) == len(expected)
    for i, (a, b) in enumerate(zip(found, expected, strict=True)):
        if isinstance(b, bytes) or b is None:
            assert a == b, f"item {i}"
        else:
            assert a is not None and a.dtype == b.dtype and torch.equal(a, b), f"item {i}"


# ------------------------------------------------------------ torch.compile of the module
@pytest.mark.slow  # each case traces for seconds
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_compiled_module_gives_the_eager_numbers_at_every_batch_size(case, backend, training):
    """``torch.compile(module)`` with Dynamo's ``eager`` and ``aot_eager`` backends: y_hat,
    rate, aux loss, indices, stats, the input's and the parameters' gradients and the state
    after each call (the EMA codebooks) equal a plain copy's bit for bit, at batch sizes that
    make Dynamo recompile with a dynamic batch."""
    torch._dynamo.reset()
    module = _make(case)
    plain, traced = module, copy.deepcopy(module)
    compiled = torch.compile(traced, backend=backend)
    weights = len(list(module.parameters()))
    for rows in (3, 5, 2):
        y = 2.0 * torch.randn(rows, module.in_dim, generator=_gen(rows))
        found, expected = _step(compiled, traced, y, training), _step(plain, plain, y, training)
        if backend == "aot_eager" and training:
            # AOTAutograd's joint graph sums a weight's gradient terms in another order (A2's
            # log-scale: 1e-7 apart); the weights' gradients agree to float rounding there
            stop = len(found) - len(list(module.buffers()))
            grads = slice(stop - weights, stop)
            for a, b in zip(found[grads], expected[grads], strict=True):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
            found[grads] = expected[grads]
        _assert_identical(found, expected)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("identity", {}),
        pytest.param("vq", dict(num_codes=5), marks=pytest.mark.slow),
        pytest.param("lattice", {}, marks=pytest.mark.slow),
        pytest.param("soft_vq", dict(num_codes=5), marks=pytest.mark.slow),
    ],
)
def test_bottlenecks_of_other_widths_compile_in_one_process(name, kwargs):
    """A second bottleneck of another width compiled in the same process (a sweep over latent
    sizes): Dynamo made the channel count symbolic and failed on the input check's strides
    ("Cannot construct ConstantVariable for value of type SymInt") before any number was
    computed, for every bottleneck."""
    torch._dynamo.reset()
    for dim in (6, 8, 10):
        torch.manual_seed(0)
        module = build(name, dim=dim, **kwargs).eval()
        y = 2.0 * torch.randn(4, module.in_dim, 3, 2, generator=_gen(dim))
        traced = torch.compile(module, backend="eager")(y, generator=_gen(1))
        expected = module(y, generator=_gen(1))
        assert torch.equal(traced.y_hat, expected.y_hat)
        assert torch.equal(traced.rate, expected.rate)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs"), [("lattice", dict(dim=6)), ("vq_ema", dict(dim=6, num_codes=5))]
)
def test_inductor_compiled_module_matches_eager_within_rounding(name, kwargs):
    """The default backend (inductor's generated code): the same codes and state, y_hat, rate
    and gradients within float rounding, in both modes and at two batch sizes."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    plain = build(name, **kwargs)
    traced = copy.deepcopy(plain)
    compiled = torch.compile(traced)
    for training in (True, False):
        for rows in (3, 9):
            y = 2.0 * torch.randn(rows, plain.in_dim, generator=_gen(rows))
            found = _step(compiled, traced, y, training)
            for a, b in zip(found, _step(plain, plain, y, training), strict=True):
                if b is None or not b.is_floating_point():
                    assert (a is None and b is None) or torch.equal(a, b)
                else:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------ the library's own compile=True
_OWN_COMPILED = [
    ("vq", dict(dim=8, num_codes=37)),
    ("vq_ema", dict(dim=8, num_codes=37)),
    ("soft_em_vq", dict(dim=8, num_codes=37, num_samples=3)),
    ("lattice", dict(dim=8, lattice="e8", samples=4, prior_samples=2)),
    ("lattice", dict(dim=16, lattice="bw16", samples=4, prior_samples=2)),
    ("lattice", dict(dim=8)),
]
_OWN_IDS = ["vq", "vq_ema", "soft_em_vq", "e8", "bw16", "rectangular"]


@pytest.mark.parametrize(("name", "kwargs"), _OWN_COMPILED, ids=_OWN_IDS)
def test_a_compiled_modules_files_are_the_eager_modules_files(name, kwargs):
    """``compile=True`` codes as the eager search, bit for bit, yet the file's model digest
    read it from the module's ``repr``: a file written with ``compile=True`` named another
    model than the same weights without it, which refused it ("this file was written by a
    different model"), and the other way round."""
    torch.manual_seed(0)
    eager = build(name, **kwargs).eval()
    fused = build(name, **kwargs, compile=True).eval()
    fused.load_state_dict(eager.state_dict())
    y = 2.0 * torch.randn(20, eager.in_dim, generator=_gen(9))  # below the fused kernels' batch
    data = eager.compress(y, seed=3)
    assert fused.compress(y, seed=3) == data
    assert torch.equal(fused.decompress(data), eager.decompress(data))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), _OWN_COMPILED, ids=_OWN_IDS)
def test_the_library_compiled_kernels_give_the_eager_numbers(name, kwargs):
    """``compile=True`` against the eager module at batches below and above the fused
    kernels' thresholds: the same y_hat, indices and state bit for bit (the rectangular
    lattice's fused rate and gradients within float rounding), and the same files."""
    torch.manual_seed(0)
    eager = build(name, **kwargs)
    fused = build(name, **kwargs, compile=True)
    fused.load_state_dict(eager.state_dict())
    for training in (True, False):
        for rows in (3, 2100):
            y = 2.0 * torch.randn(rows, eager.in_dim, generator=_gen(rows))
            found, expected = _step(fused, fused, y, training), _step(eager, eager, y, training)
            for a, b in zip(found, expected, strict=True):
                if b is None or not b.is_floating_point():
                    assert (a is None and b is None) or torch.equal(a, b)
                else:
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            assert torch.equal(found[0], expected[0])  # y_hat exactly
    y = 2.0 * torch.randn(2100, eager.in_dim, generator=_gen(4))
    assert fused.eval().compress(y, seed=1) == eager.eval().compress(y, seed=1)


# ------------------------------------------------------------------ whole-module copies
def _through_torch_save(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _through_state_dict(case: str):
    """The supported way: weights through ``torch.save`` / ``torch.load(weights_only=True)``
    into a module built from the same arguments."""

    def load(module):
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        buffer.seek(0)
        fresh = _make(case)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        return fresh.eval()

    return load


@pytest.mark.parametrize("case", CASES)
def test_every_copy_of_a_counted_module_behaves_as_the_module(case):
    """``pickle``, ``copy.deepcopy``, ``torch.save`` of the whole module and the state dict
    into a fresh build, after ``update()`` and after both paths and ``compress`` built every
    cached table: the same eval and training outputs, gradients, state updates and files."""
    module, y = _moved(case)
    _files(module, y)  # build the caches before copying
    copies = {
        "pickle": lambda m: pickle.loads(pickle.dumps(m)),
        "deepcopy": copy.deepcopy,
        "torch.save": _through_torch_save,
        "state_dict": _through_state_dict(case),
    }
    expected = copy.deepcopy(module)
    reference = _files(expected, y) + _step(expected, expected, y, True)
    for how, make_copy in copies.items():
        other = make_copy(module)
        found = _files(other, y) + _step(other, other, y, True)
        try:
            _assert_identical(found, reference)
        except AssertionError as err:
            raise AssertionError(f"{how}: {err}") from None


@pytest.mark.parametrize(
    ("neck", "kwargs"),
    [
        ("vq", dict(num_codes=16)),
        ("lattice", dict(lattice="e8", samples=4, prior_samples=2)),
        ("learnable_lattice", dict(num_codes=64)),
    ],
)
def test_a_pickled_or_saved_model_writes_the_same_image_files(neck, kwargs):
    from qlatent.image_coding import compress_images, decompress_images, update_code_model
    from qlatent.models import gated_vae

    torch.manual_seed(0)
    model = gated_vae(neck, latent_dim=8, hidden=16, data_dim=20, **kwargs)
    x = torch.rand(30, 20, generator=_gen(4))
    if neck != "lattice":  # a good lattice codes with its prior
        update_code_model(model, x)
    data = compress_images(model, x, seed=3)
    images = decompress_images(model, data)
    for other in (
        pickle.loads(pickle.dumps(model)),
        copy.deepcopy(model),
        _through_torch_save(model),
    ):
        assert compress_images(other, x, seed=3) == data
        assert torch.equal(decompress_images(other, data), images)


# ----------------------------------------------------------------------- dtype casts
def _use(module: Bottleneck, y: torch.Tensor) -> None:
    """Build what a module caches: its eval forward, and its training forward where that
    leaves the state alone (the EMA methods update their codebook in it), and a file."""
    if not hasattr(module, "ema"):
        module.train()(y, generator=_gen(1))
    module.eval()(y, generator=_gen(1))
    if module.discrete:
        try:
            module.compress(y, seed=2)
        except TypeError:
            pass


@pytest.mark.parametrize("case", CASES)
def test_a_cast_after_use_leaves_nothing_of_the_old_dtype(case):
    """A module used in float32 (its tables and code model built) then cast to float64 gives
    what a module cast before any use gives, with every parameter and saved buffer float64;
    cast back after use in float64, it gives the untouched module's numbers and files."""
    module, y = _moved(case)
    fresh = copy.deepcopy(module).double()
    used = copy.deepcopy(module)
    _use(used, y)
    used.double()
    _assert_identical(_files(used, y.double()), _files(fresh, y.double()))
    saved = used.state_dict()
    assert all(not t.is_floating_point() or t.dtype == torch.float64 for t in saved.values())
    assert all(p.dtype == torch.float64 for p in used.parameters())
    _use(used, y.double())
    used.float()
    expected = copy.deepcopy(module)
    _assert_identical(_files(used, y), _files(expected, y))
    _assert_identical(_step(used, used, y, True), _step(expected, expected, y, True))


@pytest.mark.parametrize("case", ["vq", "learnable_lattice", "lattice[a2]", "lattice[e8]"])
def test_frozen_and_toggled_modules_give_the_same_numbers(case):
    """``requires_grad_(False)``, ``train(False)`` / ``eval()`` toggles and
    ``zero_grad(set_to_none=True)`` change no output, file or state."""
    module, y = _moved(case)
    expected = _files(copy.deepcopy(module), y)
    other = copy.deepcopy(module).requires_grad_(False)
    for _ in range(2):
        other.train(False).train().eval()
        other.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in other.parameters())
    _assert_identical(_files(other, y), expected)
