"""Bottlenecks and models under PyTorch's global modes and module wrappers: a float64 default
dtype, deterministic algorithms, anomaly detection, gradient scaling, ``nn.DataParallel``,
``torch.func.functional_call``, parametrizations, and the grad-mode switches.

Each mode must leave the numbers alone: outputs, gradients, buffer updates and files are those
of the plain call (bit for bit unless a test says otherwise). Every test restores the global
state it changes.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from qlatent.bottlenecks import Bottleneck
from qlatent.bottlenecks import _codebook_search as codebook_module
from qlatent.bottlenecks import _lattice_estimate as good_lattice_module
from qlatent.bottlenecks import lattice as lattice_module
from qlatent.image_coding import compress_images, update_code_model
from qlatent.models import gated_vae
from test_contract import CONFIGS, make
from test_contract import gen as _gen

#: every registered name, and the good-lattice families whose custom backwards differ (a prior
#: per block, a Gaussian prior with its own cell function, the box proposal)
CASES = [
    *CONFIGS,
    "lattice[e8]",
    "lattice[e8,gaussian]",
    "lattice[e8,box]",
    "lattice[e8+z,scale per block]",
]


def _make(case: str) -> Bottleneck:
    """The contract suite's module of ``case``, initialised from seed 0."""
    torch.manual_seed(0)
    return make(case)


def _input(module: Bottleneck, seed: int = 2) -> torch.Tensor:
    """``(4, in_dim, 3, 2)``: 24 rows, enough for the blocked and chunked paths below."""
    return 2.0 * torch.randn(4, module.in_dim, 3, 2, generator=_gen(seed))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks and chunks of a few rows, so that the lattice's blocked backward, the codebook's
    chunked search and the good lattice's chunked density run on small inputs."""
    monkeypatch.setattr(lattice_module, "_BLOCK_ELEMENTS", 12)
    monkeypatch.setattr(codebook_module, "_CHUNK_ELEMENTS", 16)
    monkeypatch.setattr(codebook_module, "_MIN_CHUNK_ROWS", 4)
    monkeypatch.setattr(good_lattice_module, "_DENSITY_CHUNK", 64)


def _step(module: nn.Module, y: torch.Tensor, training: bool, *, scale: float = 1.0) -> dict:
    """One forward with its backward: outputs, the input's and parameters' gradients, and the
    buffers after it (the EMA methods update theirs in a training forward). ``module`` may be
    a wrapper of the bottleneck (its names then carry the wrapper's prefix)."""
    module.train(training)
    module.zero_grad(set_to_none=True)
    x = y.clone().requires_grad_(True)
    torch.manual_seed(5)  # any draw without the generator
    out = module(x, generator=_gen(1))
    loss = out.y_hat.square().sum() + out.rate.sum() + out.aux_loss
    if loss.requires_grad:
        (scale * loss).backward()
    found = {
        "y_hat": out.y_hat.detach(),
        "rate": out.rate.detach(),
        "aux": out.aux_loss.detach(),
        "indices": out.indices,
        "x.grad": x.grad,
    }
    found.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    found.update({f"buffer {n}": b.clone() for n, b in module.named_buffers()})
    return found


def _assert_same(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if value is None:
            assert found[key] is None, key
        else:
            assert found[key].dtype == value.dtype, key
            assert torch.equal(found[key], value), key


def _files(module: Bottleneck, y: torch.Tensor) -> tuple[bytes, torch.Tensor] | None:
    """The eval-mode file of ``y`` and its decoding, where the method writes files."""
    module.eval()
    if hasattr(module, "update"):
        module.update(y)
    try:
        data = module.compress(y, seed=3)
    except TypeError:  # no code model: no files
        return None
    return data, module.decompress(data)


# ---------------------------------------------------------------------- float64 default
@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("case", CASES)
def test_a_bottleneck_built_under_a_float64_default_is_the_float32_one_cast(case):
    """Built under ``torch.set_default_dtype(torch.float64)``, a bottleneck holds what one built
    in float32 holds after ``.double()``, every table included: a good lattice's cell reach and
    block-membership tables followed the default dtype (float64) while its other tables, and
    those of a cast module, are float32. With the float32 module's weights it then trains, codes
    and decodes as the cast module, also while the float64 default is in force. (Its random
    initial weights are another draw: torch draws float64 numbers from its generator otherwise.)"""
    cast = _make(case).double()
    with _default_dtype(torch.float64):
        built = _make(case)
    tensors = dict(built.named_buffers()) | dict(built.named_parameters())
    expected = dict(cast.named_buffers()) | dict(cast.named_parameters())
    assert {k: t.dtype for k, t in tensors.items()} == {k: t.dtype for k, t in expected.items()}
    for name in built._non_persistent_buffers_set:  # the geometry's constants
        assert torch.equal(tensors[name], expected[name]), name
    built.load_state_dict(cast.state_dict())
    y = _input(cast).double()
    for training in (True, False):
        with _default_dtype(torch.float64):
            found = _step(copy.deepcopy(built), y, training)
        _assert_same(found, _step(copy.deepcopy(cast), y, training))
    expected_file = _files(cast, y)
    if expected_file is not None:
        with _default_dtype(torch.float64):
            data, y_hat = _files(built, y)
        assert data == expected_file[0]
        assert torch.equal(y_hat, expected_file[1])


@pytest.mark.parametrize("case", ["lattice", "vq_ema", "lattice[e8]"])
def test_a_float32_bottleneck_under_a_float64_default_trains_as_without_it(case):
    """A float32 module's training step (outputs, gradients, EMA update) does not change with
    the caller's default dtype: nothing it computes is made in the default dtype."""
    module = _make(case)
    y = _input(module)
    with _default_dtype(torch.float64):
        found = _step(copy.deepcopy(module), y, True)
    _assert_same(found, _step(copy.deepcopy(module), y, True))


def _tiny_vae(bottleneck: str = "vq", **kwargs):
    torch.manual_seed(0)
    return gated_vae(bottleneck, latent_dim=4, hidden=8, data_dim=12, **kwargs)


@pytest.mark.parametrize("call", ["compress_images", "update_code_model"])
def test_images_of_another_dtype_are_refused_naming_their_dtype(call):
    """Images made under a float64 default dtype (``torch.tensor(pixels)``), or float64 from
    NumPy, fed to a float32 model were refused as "images of shape (12,) do not fit this
    model's encoder": their shape fits, their dtype does not. Images of a wrong shape are still
    named by their shape."""
    model = _tiny_vae(num_codes=5)
    x = torch.rand(5, 12, generator=_gen(0))
    run = {
        "compress_images": lambda images: compress_images(model, images, seed=1),
        "update_code_model": lambda images: update_code_model(model, images),
    }[call]
    with _default_dtype(torch.float64):
        images = torch.tensor(x.tolist())
    with pytest.raises(ValueError, match=r"dtype torch\.float64 .*x\.to\(torch\.float32\)"):
        run(images)
    with pytest.raises(ValueError, match=r"images of shape \(13,\) do not fit"):
        run(torch.rand(5, 13))
    run(images.float())  # converted as the message says, they are coded


# -------------------------------------------------- deterministic algorithms, anomaly mode
@contextlib.contextmanager
def _deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@contextlib.contextmanager
def _anomaly():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Anomaly Detection has been enabled ..."
        with torch.autograd.detect_anomaly(check_nan=True):
            yield


@pytest.mark.parametrize("mode", ["deterministic", "anomaly"])
@pytest.mark.parametrize("case", CASES)
def test_deterministic_algorithms_and_anomaly_detection_change_nothing(case, mode, small_blocks):
    """Under ``torch.use_deterministic_algorithms(True)`` (which also fills new tensors with
    NaN) and ``torch.autograd.detect_anomaly`` no op raises (the EMA's in-place updates, the
    custom backwards, the index additions over blocks of rows), no backward output is NaN, and
    training steps (blocked and chunked paths included) and files are the plain ones."""
    module = _make(case)
    y = _input(module)
    expected = [_step(copy.deepcopy(module), y, training) for training in (True, False)]
    expected_file = _files(copy.deepcopy(module), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from torch about our ops fails the test
        with _deterministic() if mode == "deterministic" else _anomaly():
            found = [_step(copy.deepcopy(module), y, training) for training in (True, False)]
            found_file = _files(copy.deepcopy(module), y)
    for got, want in zip(found, expected, strict=True):
        _assert_same(got, want)
    if expected_file is not None:
        assert found_file[0] == expected_file[0]
        assert torch.equal(found_file[1], expected_file[1])


def test_a_model_trains_under_anomaly_detection_and_deterministic_algorithms():
    """A whole autoencoder with an EMA codebook: loss and every gradient are the plain ones."""
    from qlatent.losses import RateDistortionLoss

    model = _tiny_vae("vq_ema", num_codes=5)
    x = torch.rand(6, 12, generator=_gen(2))

    def step(context) -> list[torch.Tensor]:
        m = copy.deepcopy(model).train()
        with context():
            out = m(x, generator=_gen(1))
            loss = RateDistortionLoss()(x, out, m.likelihood).loss
            loss.backward()
        return [loss.detach(), *(p.grad for p in m.parameters()), *m.buffers()]

    expected = step(contextlib.nullcontext)
    for context in (_anomaly, _deterministic):
        found = step(context)
        assert len(found) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(found, expected, strict=True))


# ------------------------------------------------------------------------ gradient scaling
@pytest.mark.parametrize("case", CASES)
def test_a_scaled_loss_gives_the_scaled_gradients(case, small_blocks):
    """The custom backwards are linear in the incoming gradient: a loss scaled by 2^24, as
    ``torch.amp.GradScaler`` scales it, gives finite gradients that are exactly 2^24 times the
    plain ones (to within the subnormal range, so its unscale gives the plain gradients), and
    the forward is unchanged."""
    scale = 2.0**24
    module = _make(case)
    y = _input(module)
    expected = _step(copy.deepcopy(module), y, True)
    found = _step(copy.deepcopy(module), y, True, scale=scale)
    for key, value in expected.items():
        if value is None:
            assert found[key] is None, key
        elif key == "x.grad" or key.startswith("grad "):
            assert found[key].isfinite().all(), key
            # exact, but for the plain gradient's entries whose products ran through subnormal
            # numbers (soft VQ's far codewords: 1e-37 off by 1e-43)
            tiny = torch.finfo(value.dtype).tiny
            torch.testing.assert_close(found[key] / scale, value, rtol=0, atol=tiny, msg=key)
        else:
            assert torch.equal(found[key], value), key


@pytest.mark.parametrize("case", ["lattice", "vq", "scalar_st", "lattice[e8]"])
def test_a_bfloat16_bottleneck_steps_with_grad_scaler(case):
    """A bfloat16 bottleneck stepped with ``torch.amp.GradScaler("cpu")``: the unscaled
    gradients are the unscaled loss's (bfloat16 keeps float32's range, so 2^16 overflows
    nothing), finite, and the scaler takes the step. (A float16 module's gradients are refused
    by the scaler itself: "Attempting to unscale FP16 gradients".)"""
    module = _make(case).to(torch.bfloat16).train()
    y = _input(module).to(torch.bfloat16)
    expected = _step(copy.deepcopy(module), y, True)
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.0)
    out = module(y.clone().requires_grad_(True), generator=_gen(1))
    scaler.scale(out.y_hat.square().sum() + out.rate.sum() + out.aux_loss).backward()
    scaler.unscale_(optimizer)
    for name, p in module.named_parameters():
        assert p.grad.isfinite().all(), name
        # the scale is a power of two: only bfloat16's rounding of the scaled products differs
        torch.testing.assert_close(p.grad, expected[f"grad {name}"], rtol=2e-2, atol=1e-6)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0**16  # no inf or NaN found: the scale is kept


# --------------------------------------------------------------------------- wrappers
@pytest.mark.parametrize("case", CASES)
def test_functional_call_uses_the_passed_weights_and_updates_the_passed_buffers(case):
    """``torch.func.functional_call`` with other weights and buffers, after forwards that
    could have left a cached copy of the module's own: outputs and gradients are those of a
    module holding the passed values, and an EMA update lands in the passed buffers, as in that
    module's; the module's own tensors are untouched."""
    module = _make(case)
    y = _input(module)
    for training in (True, False):  # warm whatever a forward caches
        module.train(training)(y, generator=_gen(7))
    state = {n: t.clone() for n, t in module.state_dict().items()}
    passed = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and name in state:  # positive steps keep EMA counts valid
            step = torch.randn(t.shape, generator=_gen(3), dtype=t.dtype).abs()
            moved = t.detach() + 0.3 * step
            passed[name] = moved.requires_grad_(t.requires_grad)
    for training in (True, False):
        holder = copy.deepcopy(module)
        with torch.no_grad():
            for name, t in [*holder.named_parameters(), *holder.named_buffers()]:
                if name in passed:
                    t.copy_(passed[name])
        values = {n: t.detach().clone().requires_grad_(t.requires_grad) for n, t in passed.items()}
        x = y.clone().requires_grad_(True)
        out = functional_call(module.train(training), values, (x,), {"generator": _gen(1)})
        grads = _gradients(out, [x, *(t for t in values.values() if t.requires_grad)])
        expected_out = holder.train(training)(x, generator=_gen(1))
        trained = [p for n, p in holder.named_parameters() if n in values and p.requires_grad]
        expected = _gradients(expected_out, [x, *trained])
        assert torch.equal(out.y_hat, expected_out.y_hat)
        assert torch.equal(out.rate, expected_out.rate)
        assert torch.equal(out.aux_loss, expected_out.aux_loss)
        for a, b in zip(grads, expected, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
        for name, t in holder.named_buffers():
            if name in values:
                assert torch.equal(values[name], t), name
    for name, t in module.state_dict().items():
        assert torch.equal(t, state[name]), name


def _gradients(out, inputs: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """The gradients of the test loss of ``out`` with respect to ``inputs``."""
    loss = out.y_hat.square().sum() + out.rate.sum() + out.aux_loss
    if not loss.requires_grad:  # a hard path without gradients
        return (None,) * len(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


class _Scaled(nn.Module):
    """A parametrization: the stored tensor times 1.25."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return 1.25 * t


@pytest.mark.parametrize("case", ["lattice", "vq", "soft_vq", "scalar_st", "lattice[e8]"])
def test_a_parametrized_bottleneck_is_the_module_holding_the_parametrized_values(case):
    """``torch.nn.utils.parametrize`` on a bottleneck's own parameters: the bottleneck reads
    them through the parametrization at every call (outputs as a module holding 1.25 times the
    values, gradients of the stored ones 1.25 times that module's), and its files decode to
    that module's reconstruction. (The files themselves differ: a file names its module, and
    the parametrized one is another class with other state-dict keys.)"""
    module = _make(case)
    y = _input(module)
    module(y, generator=_gen(7))  # warm whatever a forward caches
    names = [n for n, p in module.named_parameters() if "." not in n]
    holder = copy.deepcopy(module)
    with torch.no_grad():
        for name in names:
            getattr(holder, name).mul_(1.25)
    for name in names:
        parametrize.register_parametrization(module, name, _Scaled())
    for training in (True, False):
        found = _step(module, y, training)
        expected = _step(holder, y, training)
        for name in names:
            stored = module.parametrizations[name].original.grad
            plain = expected.pop(f"grad {name}")
            found.pop(f"grad parametrizations.{name}.original")
            if plain is None:
                assert stored is None
            else:
                torch.testing.assert_close(stored, 1.25 * plain, rtol=1e-6, atol=0)
        found = {
            k.replace("parametrizations.", "").replace(".original", ""): v for k, v in found.items()
        }
        _assert_same(found, expected)
    expected_file = _files(holder, y)
    if expected_file is not None:
        data, y_hat = _files(module, y)
        assert torch.equal(y_hat, expected_file[1])


@pytest.mark.parametrize("case", ["lattice", "vq_ema", "gaussian", "lattice[e8]"])
def test_data_parallel_on_the_cpu_is_the_module(case):
    """``nn.DataParallel`` without accelerators calls the module itself: the generator keyword
    reaches it, and outputs, gradients and EMA updates are the plain ones."""
    module = _make(case)
    y = _input(module)
    for training in (True, False):
        wrapped = nn.DataParallel(copy.deepcopy(module))
        found = {k.replace("module.", ""): v for k, v in _step(wrapped, y, training).items()}
        _assert_same(found, _step(copy.deepcopy(module), y, training))


def test_weight_norm_on_the_encoder_and_clipping_keep_the_gradients():
    """A weight-normalised encoder layer in front of the bottleneck (``parametrizations.
    weight_norm``) gives the plain model's loss, and ``clip_grad_norm_`` over every parameter
    finds finite gradients (``error_if_nonfinite``) through the custom backwards."""
    from qlatent.losses import RateDistortionLoss

    for bottleneck, kwargs in [("lattice", {}), ("vq", dict(num_codes=5))]:
        model = _tiny_vae(bottleneck, **kwargs).train()
        x = torch.rand(6, 12, generator=_gen(2))

        def loss_of(m, x=x):
            out = m(x, generator=_gen(1))
            return RateDistortionLoss()(x, out, m.likelihood).loss

        expected = loss_of(copy.deepcopy(model))
        normed = copy.deepcopy(model)
        last = [m for m in normed.encoder.modules() if isinstance(m, nn.Linear)][-1]
        nn.utils.parametrizations.weight_norm(last)
        loss = loss_of(normed)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(normed.parameters(), 1.0, error_if_nonfinite=True)
        assert norm.isfinite() and norm > 0


# -------------------------------------------------------------------------- grad modes
@contextlib.contextmanager
def _grad_inside_no_grad():
    with torch.no_grad(), torch.enable_grad():
        yield


@pytest.mark.parametrize("case", CASES)
def test_grad_modes_and_inputs_without_grad(case):
    """In training mode: under ``torch.no_grad`` the outputs and the EMA update are the plain
    ones and carry no graph; ``torch.enable_grad`` inside an outer ``no_grad`` is the plain
    step; an input that does not require grad (a frozen encoder's output) still sends the
    rate's and aux loss's gradients to the bottleneck's own parameters."""
    module = _make(case)
    y = _input(module)
    expected = _step(copy.deepcopy(module), y, True)

    no_grad = copy.deepcopy(module).train()
    with torch.no_grad():
        out = no_grad(y, generator=_gen(1))
    assert not out.rate.requires_grad and not out.aux_loss.requires_grad
    assert out.y_hat.grad_fn is None
    assert torch.equal(out.y_hat, expected["y_hat"]) and torch.equal(out.rate, expected["rate"])
    for name, b in no_grad.named_buffers():
        assert torch.equal(b, expected[f"buffer {name}"]), name

    inner = copy.deepcopy(module)
    with _grad_inside_no_grad():
        found = _step(inner, y, True)
    _assert_same(found, expected)

    frozen_input = copy.deepcopy(module).train()
    out = frozen_input(y.clone(), generator=_gen(1))
    loss = out.y_hat.square().sum() + out.rate.sum() + out.aux_loss
    if any(p.requires_grad for p in frozen_input.parameters()) and loss.requires_grad:
        loss.backward()
    for name, p in frozen_input.named_parameters():
        want = expected[f"grad {name}"]
        assert (p.grad is None and want is None) or torch.equal(p.grad, want), name
