"""Bottlenecks under the module machinery researchers attach from outside: module forward and
backward hooks (on the bottleneck, around it, and global ones), ``torch.nn.utils.parametrize``
on its parameters and buffers (``weight_norm``, ``orthogonal``, ``spectral_norm`` on matrices),
``torch.utils.checkpoint`` around an encoder and a bottleneck, frozen parameters, grad-mode
nesting, and ``.double()`` / ``.float()`` round trips.

Expected everywhere: the numbers of the plain call (outputs, gradients, buffers; bit for bit in
float64 unless a test says otherwise), or one clear error where something cannot work.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.nn.utils import parametrizations, parametrize
from torch.utils.checkpoint import checkpoint

from qlatent.bottlenecks import Bottleneck
from test_contract import NAMES, make
from test_contract import gen as _gen

FLAVOURS = ["reentrant", "non_reentrant"]
#: quick cases of every kind of training path: dithered (rectangular and good lattices), noisy,
#: straight-through, soft, EMA (hard and soft EM)
QUICK = [
    "lattice",
    "lattice[e8]",
    "gaussian",
    "gaussian_dither",
    "learnable_lattice",
    "scalar_st",
    "soft_vq",
    "vq",
    "vq_ema",
    "soft_em_vq",
]


def _neck(case: str) -> Bottleneck:
    """The contract suite's module of ``case`` in float64 (equal means equal), from seed 0."""
    torch.manual_seed(0)
    return make(case).double()


def _input(module: Bottleneck, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(5, module.in_dim, generator=_gen(seed), dtype=torch.float64)


def _same(a, b) -> bool:
    """Two lists of tensors (or ``None``) equal entry by entry."""
    return len(a) == len(b) and all(
        (u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))
        for u, v in zip(a, b, strict=True)
    )


def _step(neck: Bottleneck, y: torch.Tensor, flavour: str | None = None) -> list:
    """One training step of ``neck`` on ``y`` (checkpointed in ``flavour`` if given): the
    input's gradient, every parameter's gradient, then every buffer."""
    y = y.clone().requires_grad_()
    generator = _gen(1)

    def block(inputs):
        out = neck(inputs, generator=generator)
        return out.y_hat, out.rate, out.aux_loss

    if flavour is None:
        y_hat, rate, aux = block(y)
    else:
        y_hat, rate, aux = checkpoint(block, y, use_reentrant=flavour == "reentrant")
    loss = y_hat.square().sum() + rate.sum() + aux
    if loss.requires_grad:  # (not a hard path that passes no gradient)
        loss.backward()
    return [y.grad, *(p.grad for p in neck.parameters()), *(b.clone() for b in neck.buffers())]


# ------------------------------------------------------------- module backward hooks
class _Around(nn.Module):
    """An encoder and a bottleneck as one module returning a tuple of tensors, the form on
    which torch runs module backward hooks."""

    def __init__(self, neck: Bottleneck) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, neck.in_dim, dtype=torch.float64)
        self.neck = neck

    def forward(self, x, generator=None):
        out = self.neck(self.encoder(x), generator=generator)
        return out.y_hat, out.rate, out.aux_loss


def _around_step(model: _Around, x: torch.Tensor, flavour: str | None) -> tuple[list, tuple]:
    x = x.clone().requires_grad_()
    generator = _gen(1)
    if flavour is None:
        outputs = model(x, generator=generator)
    else:
        outputs = checkpoint(
            lambda v: model(v, generator=generator), x, use_reentrant=flavour == "reentrant"
        )
    y_hat, rate, aux = outputs
    (y_hat.square().sum() + rate.sum() + aux).backward()
    found = [x.grad, *(p.grad for p in model.parameters()), *(b.clone() for b in model.buffers())]
    return found, tuple(t.detach() for t in outputs)


@pytest.mark.parametrize("flavour", [None, *FLAVOURS])
@pytest.mark.parametrize("case", QUICK)
def test_full_backward_hooks_around_a_bottleneck_see_the_plain_gradients(case, flavour):
    """Full backward hooks (and pre-hooks) on the encoder in front of a bottleneck and on a
    module around both wrap the tensors in ``BackwardHookFunction``, which then feed the
    bottleneck's custom autograd Functions: the hooks see the plain gradients (the encoder's
    output gradient, the input's, the outputs' own) and the step is the plain one, also
    checkpointed."""
    torch.manual_seed(0)
    model = _Around(_neck(case)).train()
    x = torch.randn(6, 4, generator=_gen(0), dtype=torch.float64)
    plain = copy.deepcopy(model)
    kept = {}

    def keep(module, args, out):
        out.retain_grad()
        kept["y"] = out

    plain.encoder.register_forward_hook(keep)
    expected, _ = _around_step(plain, x, None)

    seen = {}
    model.encoder.register_full_backward_hook(
        lambda module, grad_in, grad_out: seen.__setitem__("encoder", grad_out[0])
    )
    model.register_full_backward_hook(
        lambda module, grad_in, grad_out: seen.__setitem__("input", grad_in[0])
    )
    model.register_full_backward_pre_hook(
        lambda module, grad_out: seen.__setitem__("outputs", grad_out)
    )
    found, (y_hat, rate, aux) = _around_step(model, x, flavour)
    assert _same(found, expected)
    assert torch.equal(seen["encoder"], kept["y"].grad)
    assert torch.equal(seen["input"], expected[0])
    grad_y_hat, grad_rate, grad_aux = seen["outputs"]
    assert torch.equal(grad_y_hat, 2 * y_hat)
    for grad, value in ((grad_rate, rate), (grad_aux, aux)):  # None where it has no graph
        assert grad is None or torch.equal(grad, torch.ones_like(value))


@pytest.mark.parametrize("case", ["lattice", "lattice[e8]", "vq_ema", "soft_vq"])
def test_global_module_hooks_leave_the_step_alone(case):
    """Hooks registered for every module (``register_module_full_backward_hook``,
    ``register_module_forward_pre_hook``) also reach the bottleneck, which no registration
    of its own can refuse: torch wraps its input and skips its backward hook with a warning;
    the step is the plain one, in both checkpoint flavours too."""
    neck = _neck(case).train()
    y = _input(neck)
    expected = _step(copy.deepcopy(neck), y)
    fired = []
    handles = [
        module_hooks.register_module_full_backward_hook(
            lambda module, grad_in, grad_out: fired.append(type(module).__name__)
        ),
        module_hooks.register_module_forward_pre_hook(lambda module, args: None),
    ]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for flavour in (None, *FLAVOURS):
                assert _same(_step(copy.deepcopy(neck), y, flavour), expected), flavour
    finally:
        for handle in handles:
            handle.remove()
    assert type(neck).__name__ not in fired
    assert any("For backward hooks to be called" in str(w.message) for w in caught)


def _models():
    from qlatent.bottlenecks import build
    from qlatent.models import gated_vae
    from qlatent.models.text import TextAutoencoder
    from qlatent.nn.text import TextModelConfig

    cfg = TextModelConfig(
        vocab_size=10, embed=4, encoder_hidden=4, code_dim=3, decoder_hidden=4, max_tokens=5
    )
    return {
        "autoencoder": gated_vae("lattice", latent_dim=3, hidden=8, data_dim=6),
        "text": TextAutoencoder(build("identity", dim=3), cfg),
    }


@pytest.mark.parametrize(
    "register",
    ["register_full_backward_hook", "register_full_backward_pre_hook", "register_backward_hook"],
)
@pytest.mark.parametrize("model", ["autoencoder", "text"])
def test_a_model_refuses_module_backward_hooks_where_they_are_registered(model, register):
    """A model containing a bottleneck returns an ``AutoencoderOutput``, on which torch never
    runs a module backward hook: the full hook and the pre-hook were skipped with only a
    warning (a gradient monitor that silently saw nothing), the legacy hook failed inside the
    forward ("'AutoencoderOutput' object is not subscriptable"). Registering one is the
    TypeError, as on a bottleneck; forward hooks and its parts' backward hooks still work."""
    module = _models()[model]
    with pytest.raises(TypeError, match="AutoencoderOutput.*register_hook"):
        getattr(module, register)(lambda *args: None)
    if model == "autoencoder":
        seen = []
        module.register_forward_hook(lambda m, args, out: seen.append(type(out).__name__))
        module.encoder.register_full_backward_hook(lambda m, gi, go: seen.append("encoder"))
        module(torch.rand(3, 6)).params.sum().backward()
        assert seen == ["AutoencoderOutput", "encoder"]


def test_a_forward_pre_hook_may_supply_the_generator_also_under_checkpoint():
    """A forward pre-hook with keyword arguments that hands the bottleneck its generator
    gives the explicit call's output, and its checkpointed step the plain one."""
    neck = _neck("lattice[e8]").train()
    y = _input(neck)
    expected = _step(copy.deepcopy(neck), y)
    hooked = copy.deepcopy(neck)
    generators = []

    def supply(module, args, kwargs):
        if not generators:  # one generator per step: its forward and the re-run share it
            generators.append(_gen(1))
        return args, {**kwargs, "generator": generators[0]}

    hooked.register_forward_pre_hook(supply, with_kwargs=True)
    assert torch.equal(hooked(y).y_hat, copy.deepcopy(neck)(y, generator=_gen(1)).y_hat)
    for flavour in FLAVOURS:
        generators.clear()
        hooked.zero_grad(set_to_none=True)
        found = _step(hooked, y, flavour)  # the hook replaces _step's own generator
        assert _same(found, expected), flavour


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", ["vq_ema", "soft_em_vq"])
def test_a_checkpointed_ema_step_updates_once_though_forward_hooks_fire_twice(case, flavour):
    """Activation checkpointing re-runs the forward in backward: a forward hook may fire twice
    (torch's doing), but the EMA codebook moves once and the re-run's output is the first
    forward's, so buffers and gradients equal the plain step (the double M-step of old)."""
    neck = _neck(case).train()
    y = _input(neck)
    expected = _step(copy.deepcopy(neck), y)
    outputs = []
    neck.register_forward_hook(lambda module, args, out: outputs.append(out.y_hat.detach()))
    found = _step(neck, y, flavour)
    assert _same(found, expected)
    # (the non-reentrant flavour may stop a re-run once it has what backward needs)
    assert len(outputs) in (1, 2) and all(torch.equal(out, outputs[0]) for out in outputs)


@pytest.mark.parametrize("case", ["lattice", "vq_ema"])
def test_a_cast_between_a_checkpointed_forward_and_its_backward_is_one_clear_error(case):
    """The recorded forwards live in the old dtype: a cast between the checkpointed forward
    and its backward is refused naming the cause, not a silent other dither or codebook."""
    neck = _neck(case).train()
    y = _input(neck).requires_grad_()

    def block(v):
        out = neck(v, generator=_gen(1))
        return out.y_hat.square().sum() + out.aux_loss  # the commitment term needs a re-run

    loss = checkpoint(block, y, use_reentrant=False)
    neck.float().double()
    with pytest.raises(RuntimeError, match="move or cast"):
        loss.backward()


# ------------------------------------------------------------------ parametrizations
class _Exp(nn.Module):
    """A positive parametrization: the stored tensor's exponential."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.exp()

    def right_inverse(self, t: torch.Tensor) -> torch.Tensor:
        return t.log()


def _apply_parametrization(owner: nn.Module, leaf: str, kind: str) -> None:
    if kind == "weight_norm":
        parametrizations.weight_norm(owner, leaf, dim=0)
    elif kind == "orthogonal":
        parametrizations.orthogonal(owner, leaf)
    elif kind == "spectral_norm":
        parametrizations.spectral_norm(owner, leaf)
        owner.parametrizations[leaf].eval()  # no power iteration: the same value at each read
    else:
        with torch.no_grad():  # positive values, kept by right_inverse
            getattr(owner, leaf).abs_().add_(0.5)
        parametrize.register_parametrization(owner, leaf, _Exp())


#: (case, the parametrized tensor, the parametrization): a learnable lattice's basis, codebooks,
#: the dithered lattices' log-scales and log-spacings, matrices of linear maps
_PARAMETRIZED = [
    ("learnable_lattice", "basis", "weight_norm"),
    ("learnable_lattice", "basis", "exp"),
    ("vq", "codebook", "spectral_norm"),
    ("soft_vq", "codebook", "orthogonal"),
    ("soft_vq", "codebook", "weight_norm"),
    ("vector_st", "codes", "weight_norm"),
    ("gaussian_dither", "encode_map.weight", "orthogonal"),
    ("gaussian_dither", "decode_map.weight", "weight_norm"),
    ("gaussian_lattice", "logvar", "exp"),
    ("lattice", "log_scale", "exp"),
    ("lattice[e8]", "log_spacing", "exp"),
    ("lattice[e8+z,scale per block]", "log_scale", "exp"),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("case", "name", "kind"), _PARAMETRIZED)
def test_parametrized_tensors_get_the_chain_rule_gradients(case, name, kind, training):
    """A parametrized parameter: the input's gradient is that of a module holding the
    parametrized value, and the stored tensors' gradients are that module's
    gradient pulled back through the parametrization (the chain rule, by ``autograd.grad``)."""
    neck = _neck(case).train(training)
    owner_name, _, leaf = name.rpartition(".")
    holder = copy.deepcopy(neck)
    owner = neck.get_submodule(owner_name)
    _apply_parametrization(owner, leaf, kind)
    with torch.no_grad():
        holder.get_parameter(name).copy_(getattr(owner, leaf))
    y = _input(neck)
    found, expected = _step(neck, y), _step(holder, y)
    # (to rounding: an orthogonal matrix is a transposed view, a product over other strides)
    assert (found[0] is None) == (expected[0] is None)
    if found[0] is not None:
        torch.testing.assert_close(found[0], expected[0], rtol=1e-12, atol=1e-14)
    stored = list(owner.parametrizations[leaf].parameters())
    stored = [t for t in stored if t.requires_grad]
    gradient = holder.get_parameter(name).grad
    if gradient is None:
        assert all(t.grad is None for t in stored)
        return
    inputs = [t.detach().requires_grad_() for t in stored]
    with torch.enable_grad():
        value = owner.parametrizations[leaf][0](*inputs)
    pulled = torch.autograd.grad(value, inputs, gradient)
    for t, want in zip(stored, pulled, strict=True):
        torch.testing.assert_close(t.grad, want, rtol=1e-10, atol=1e-12)


def test_a_positive_parametrization_matches_finite_differences():
    """The gradient of a lattice's parametrized log-scale (an exponential on top of the
    stored log) against central finite differences of the training loss in float64."""
    neck = _neck("lattice").train()
    _apply_parametrization(neck, "log_scale", "exp")
    y = _input(neck)

    def loss() -> torch.Tensor:
        out = neck(y, generator=_gen(1))
        return out.y_hat.square().sum() + out.rate.sum()

    stored = neck.parametrizations.log_scale.original
    loss().backward()
    eps = 1e-6
    numeric = torch.zeros_like(stored)
    with torch.no_grad():
        for i in range(stored.numel()):
            stored[i] += eps
            up = loss()
            stored[i] -= 2 * eps
            down = loss()
            stored[i] += eps
            numeric[i] = (up - down) / (2 * eps)
    torch.testing.assert_close(stored.grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    "case", ["lattice", "lattice[e8]", "gaussian_lattice", "soft_vq", "learnable_lattice", "vq"]
)
def test_a_parametrized_bottleneck_checkpointed_is_the_plain_step(case, flavour):
    """Every own parameter behind an exponential parametrization, the step checkpointed in
    either flavour: the plain parametrized step bit for bit."""
    neck = _neck(case).train()
    for name in [n for n, _ in neck.named_parameters() if "." not in n]:
        _apply_parametrization(neck, name, "exp")
    y = _input(neck)
    assert _same(_step(copy.deepcopy(neck), y, flavour), _step(copy.deepcopy(neck), y))


@pytest.mark.parametrize("buffer", ["codebook", "ema_count", "ema_sum"])
@pytest.mark.parametrize("case", ["vq_ema", "soft_em_vq"])
def test_a_parametrized_ema_buffer_is_refused_by_the_m_step(case, buffer):
    """An EMA codebook's buffers are written in place by each training-mode M-step; behind a
    parametrization (recomputed at every read) the writes went into a temporary and were lost
    without a word, the codebook never moving, and ``.double()`` failed with KeyError('ema_count').
    The training forward is now a RuntimeError naming the buffer, leaving the buffers alone;
    eval mode (which only reads) and casts work."""
    neck = _neck(case)
    holder = copy.deepcopy(neck)
    parametrize.register_parametrization(neck.ema, buffer, nn.Identity())
    before = [b.clone() for b in neck.buffers()]
    y = _input(neck)
    with pytest.raises(RuntimeError, match=f"buffers \\['{buffer}'\\] are parametrized"):
        neck.train()(y, generator=_gen(1))
    assert _same([b.clone() for b in neck.buffers()], before)
    neck.eval().float().double()
    holder.eval()
    out, want = neck(y, generator=_gen(1)), holder(y, generator=_gen(1))
    assert torch.equal(out.y_hat, want.y_hat) and torch.equal(out.indices, want.indices)


# ------------------------------------------------- frozen parameters, grad modes, casts
@pytest.mark.parametrize("flavour", [None, "non_reentrant"])
@pytest.mark.parametrize("case", NAMES)
def test_frozen_parameters_change_only_their_own_gradients(case, flavour):
    """``requires_grad_(False)`` on the whole bottleneck or on one parameter: the input's
    gradient, the other parameters' gradients and the buffers are those of the plain step,
    the frozen ones get none (the custom backwards skip them, they do not return garbage)."""
    neck = _neck(case).train()
    y = _input(neck)
    expected = _step(copy.deepcopy(neck), y)
    names = [n for n, _ in neck.named_parameters()]
    frozen = copy.deepcopy(neck).requires_grad_(False)
    want = [expected[0], *(None for _ in names), *expected[1 + len(names) :]]
    assert _same(_step(frozen, y, flavour), want)
    for i, name in enumerate(names):
        one = copy.deepcopy(neck)
        one.get_parameter(name).requires_grad_(False)
        want = list(expected)
        want[1 + i] = None
        assert _same(_step(one, y, flavour), want), name


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", ["lattice[e8]", "vq_ema", "soft_em_vq", "gaussian"])
def test_enable_grad_inside_no_grad_around_a_checkpoint_is_the_plain_step(case, flavour):
    """``torch.enable_grad()`` inside ``torch.no_grad()`` around a checkpointed step is the
    plain step; the same checkpoint under ``no_grad`` alone builds no graph and moves an EMA
    codebook once, as the plain ``no_grad`` forward does."""
    neck = _neck(case).train()
    y = _input(neck)
    expected = _step(copy.deepcopy(neck), y)
    inner = copy.deepcopy(neck)
    with torch.no_grad(), torch.enable_grad():
        assert _same(_step(inner, y, flavour), expected)
    plain, checkpointed = copy.deepcopy(neck), copy.deepcopy(neck)
    with torch.no_grad():
        want = plain(y, generator=_gen(1)).y_hat
        got = checkpoint(
            lambda v: checkpointed(v, generator=_gen(1)).y_hat,
            y,
            use_reentrant=flavour == "reentrant",
        )
    assert not got.requires_grad and torch.equal(got, want)
    assert _same(list(checkpointed.buffers()), list(plain.buffers()))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", NAMES)
def test_a_float64_round_trip_gives_the_float32_forward(case, training):
    """``.double()``, a float64 forward (which fills whatever a forward caches), then
    ``.float()``: a float32 forward and step equal those of a module never cast."""
    torch.manual_seed(0)
    neck = make(case).train(training)
    y = _input(neck).float()
    expected = copy.deepcopy(neck)(y, generator=_gen(1))
    cast = copy.deepcopy(neck).double()
    with torch.no_grad():
        cast.eval()(y.double(), generator=_gen(1))  # eval: no M-step of an EMA codebook
    cast.train(training).float()
    stepped = copy.deepcopy(cast)
    out = cast(y, generator=_gen(1))
    assert out.y_hat.dtype == torch.float32
    assert torch.equal(out.y_hat, expected.y_hat) and torch.equal(out.rate, expected.rate)
    assert torch.equal(out.aux_loss, expected.aux_loss)
    if training:
        assert _same(_step(stepped, y), _step(copy.deepcopy(neck), y))
