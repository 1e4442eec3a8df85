"""Random bottlenecks under ``torch.utils.checkpoint`` with the caller's own ``generator=``.

Torch restores only its global RNG for the forward it recomputes in backward; a generator
handed to the bottleneck (a ``torch.Generator`` or a ``qlatent.rng.SeedKeys``) was drawn from
a second time there: the recomputed dither / noise differed from the output's (wrong gradients
for every method below) and the caller's generator ended up advanced twice (the next step
differed). Every training step here is compared with the same step run without checkpointing:
outputs, rates, aux losses, the gradients of the input, the encoder and the bottleneck's
parameters, its buffers, and the caller's generator afterwards, over two steps, in both
checkpoint flavours (base class docstring of :class:`qlatent.bottlenecks.Bottleneck`)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from qlatent.bottlenecks import BOTTLENECKS, build
from qlatent.rng import SeedKeys

#: every registered bottleneck whose training path draws: id -> (name, constructor arguments)
RANDOM = {
    "gaussian": ("gaussian", dict(dim=3)),
    "gaussian_lattice": ("gaussian_lattice", dict(dim=3)),
    "gaussian_dither": ("gaussian_dither", dict(dim=3)),
    "info_dropout": ("info_dropout", dict(dim=3)),
    "lattice": ("lattice", dict(dim=3)),
    "lattice_e8": ("lattice", dict(dim=8, lattice="e8", samples=16, prior_samples=4)),
    "soft_vq": ("soft_vq", dict(dim=3, num_codes=5)),
    "soft_em_vq": ("soft_em_vq", dict(dim=3, num_codes=5, num_samples=3, decay=0.8)),
}
#: the registered bottlenecks whose training path draws nothing (checked below)
DETERMINISTIC = {
    "identity": dict(dim=3),
    "learnable_lattice": dict(dim=3),
    "scalar_st": dict(dim=3),
    "vector_st": dict(dim=4),
    "vq": dict(dim=3, num_codes=5),
    "vq_ema": dict(dim=3, num_codes=5),
}
#: the methods whose dither takes keys from a SeedKeys (the others refuse one)
KEYED = ("lattice", "lattice_e8")
FLAVOURS = ["reentrant", "non_reentrant"]


def _model(case: str):
    """A one-layer encoder and the bottleneck, float64 (equal means equal), training mode."""
    name, kwargs = RANDOM[case]
    torch.manual_seed(0)
    neck = build(name, **kwargs).double()
    return torch.nn.Linear(5, neck.in_dim).double(), neck


def _run(block, x, mode: str | None):
    """``block(x)`` plainly (``mode`` None) or through ``torch.utils.checkpoint`` of either
    flavour."""
    if mode is None:
        return block(x)
    return checkpoint(block, x, use_reentrant=mode == "reentrant")


def _generator(kind: str | None):
    if kind == "torch":
        return torch.Generator().manual_seed(3)
    return SeedKeys(3) if kind == "seed_keys" else None


def _generator_state(generator):
    if generator is None:
        return torch.get_rng_state()
    return (
        torch.tensor(generator.calls) if isinstance(generator, SeedKeys) else generator.get_state()
    )


def _batch(seed: int, shape=(7, 5)) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_()


def _step(enc, neck, x, flavour, generator):
    """One step (forward, loss on y_hat, rate and aux, backward), encoder and bottleneck
    checkpointed as one block when ``flavour`` is given; every number it produced."""

    def block(inputs):
        out = neck(enc(inputs.movedim(1, -1)).movedim(-1, 1), generator=generator)
        return out.y_hat, out.rate, out.aux_loss

    torch.manual_seed(100)  # the global RNG too: generator=None draws from it
    if flavour is None:
        y_hat, rate, aux = block(x)
    else:
        y_hat, rate, aux = checkpoint(block, x, use_reentrant=flavour == "reentrant")
    (y_hat.square().sum() + rate.sum() + aux).backward()
    grads = [x.grad, enc.weight.grad, enc.bias.grad]
    grads += [p.grad for p in neck.parameters() if p.grad is not None]
    got = [y_hat.detach(), rate.detach(), aux.detach(), *(g.clone() for g in grads)]
    got += [b.clone() for b in neck.buffers()]
    enc.zero_grad(set_to_none=True)
    neck.zero_grad(set_to_none=True)
    return got, _generator_state(generator)


def _steps(case, flavour, kind, shape=(7, 5), steps=2):
    enc, neck = _model(case)
    generator = _generator(kind)
    return [_step(enc, neck, _batch(10 + s, shape), flavour, generator) for s in range(steps)]


def _assert_same(got, expected) -> None:
    assert len(got) == len(expected)
    for step, ((values, state), (want, want_state)) in enumerate(zip(got, expected, strict=True)):
        assert len(values) == len(want), f"step {step}: other gradients"
        for i, (a, b) in enumerate(zip(values, want, strict=True)):
            assert torch.equal(a, b), f"step {step}, value {i}: max diff {(a - b).abs().max()}"
        assert torch.equal(state, want_state), f"step {step}: the generator's state differs"


_CASES = [
    pytest.param(case, kind, id=f"{case}-{kind}")
    for case in RANDOM
    for kind in ("torch", "seed_keys", None)
    if kind != "seed_keys" or case in KEYED
]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(("case", "kind"), _CASES)
def test_two_checkpointed_steps_equal_two_plain_steps(case, kind, flavour):
    """The recomputation draws what its forward drew and leaves the caller's generator as the
    plain step leaves it, so both steps give the same numbers bit for bit."""
    _assert_same(_steps(case, flavour, kind), _steps(case, None, kind))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", ["lattice", "gaussian_dither"])
def test_spatial_inputs_checkpointed(case, flavour):
    """Inputs ``(B, D, H, W)``: the rows the base class sees are recognised as well."""
    expected = _steps(case, None, "torch", shape=(2, 5, 3, 2))
    _assert_same(_steps(case, flavour, "torch", shape=(2, 5, 3, 2)), expected)


@pytest.mark.parametrize("kind", ["torch", "seed_keys"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_eval_mode_lattice_checkpointed_draws_its_dither_once(flavour, kind):
    """The hard path draws its dither from the generator too: under a checkpoint (grad on, so
    the block is recomputed) the same y_hat, rate and spacing gradient, generator once advanced."""
    results = []
    for mode in (None, flavour):
        enc, neck = _model("lattice")
        neck.eval()
        generator = _generator(kind)
        for seed in (1, 2):
            x = _batch(seed)

            def block(inputs, neck=neck, enc=enc, generator=generator):
                out = neck(enc(inputs), generator=generator)
                return out.y_hat, out.rate

            y_hat, rate = _run(block, x, mode)
            (y_hat.square().sum() + rate.sum()).backward()
            grad = neck.log_spacing.grad.clone()
            neck.zero_grad(set_to_none=True)
            results.append((y_hat.detach(), rate.detach(), grad, _generator_state(generator)))
    half = len(results) // 2
    for plain, checked in zip(results[:half], results[half:], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(plain, checked, strict=True))


@pytest.mark.parametrize("same_input", [False, True], ids=["two_inputs", "one_input_twice"])
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", ["gaussian_dither", "lattice"])
def test_two_checkpointed_forwards_before_one_backward(case, flavour, same_input):
    """Each recomputation finds its own forward's draws (the engine recomputes the later one
    first; with one input twice the two forwards still drew different noise)."""
    results = []
    for mode in (None, flavour):
        enc, neck = _model(case)
        generator = torch.Generator().manual_seed(3)
        x1 = _batch(1)
        x2 = (x1.detach() if same_input else _batch(2).detach()).clone().requires_grad_()
        loss = 0.0
        for x in (x1, x2):

            def block(inputs, neck=neck, enc=enc, generator=generator):
                out = neck(enc(inputs), generator=generator)
                return out.y_hat, out.rate

            y_hat, rate = _run(block, x, mode)
            loss = loss + y_hat.square().sum() + rate.sum()
        loss.backward()
        results.append((x1.grad, x2.grad, enc.weight.grad, generator.get_state()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("outer", FLAVOURS)
@pytest.mark.parametrize("inner", FLAVOURS)
def test_a_checkpoint_inside_a_checkpoint(inner, outer):
    """Nested checkpoints recompute the bottleneck twice in one backward pass (in the outer
    recomputation, then in the inner one): both times with the original draws."""
    results = []
    for mode in ("plain", "nested"):
        enc, neck = _model("gaussian_dither")
        generator = torch.Generator().manual_seed(3)
        x = _batch(1)

        def block(inputs, neck=neck, enc=enc, generator=generator):
            return neck(enc(inputs), generator=generator).y_hat

        if mode == "plain":
            y_hat = block(x)
        else:

            def outer_block(inputs, block=block):
                return checkpoint(block, inputs, use_reentrant=inner == "reentrant") * 1.0

            y_hat = checkpoint(outer_block, x, use_reentrant=outer == "reentrant")
        y_hat.square().sum().backward()
        results.append((y_hat.detach(), x.grad, neck.logvar.grad, generator.get_state()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_a_recomputation_that_rounds_differently_still_finds_its_forward():
    """A recomputation on an accelerator may round the encoder's output differently (here
    one part in 10^9): still the original noise, the plain gradient."""
    results = []
    for mode in (None, "non_reentrant"):
        enc, neck = _model("gaussian")
        generator = torch.Generator().manual_seed(3)
        calls = []

        def block(inputs, neck=neck, enc=enc, generator=generator, calls=calls):
            calls.append(None)
            return neck(enc(inputs) * (1 + 1e-9 * (len(calls) - 1)), generator=generator).y_hat

        x = _batch(1)
        y_hat = block(x) if mode is None else checkpoint(block, x, use_reentrant=False)
        y_hat.square().sum().backward()
        results.append((x.grad, generator.get_state()))
    assert len(calls) == 2
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-7, atol=0)
    assert torch.equal(results[1][1], results[0][1])


@pytest.mark.parametrize("between", ["more_forwards", "cast"])
def test_a_recomputation_of_a_forgotten_forward_is_refused(between):
    """More forwards with the generator between a checkpointed forward and its backward than
    the bottleneck keeps, or a cast in between: a clear RuntimeError, not other noise."""
    enc, neck = _model("gaussian_dither")
    generator = torch.Generator().manual_seed(3)
    x = _batch(1)
    y_hat = checkpoint(lambda v: neck(enc(v), generator=generator).y_hat, x, use_reentrant=False)
    if between == "cast":
        neck.float().double()
    else:
        for seed in range(2, 3 + neck.RECOMPUTABLE):
            neck(enc(_batch(seed)).detach(), generator=generator)
    with pytest.raises(RuntimeError, match="matches none of its last"):
        y_hat.square().sum().backward()


def test_a_recomputation_within_the_kept_forwards_is_found():
    """The bound of the refusal above: ``RECOMPUTABLE - 1`` forwards in between are fine."""
    results = []
    for mode in (None, "non_reentrant"):
        enc, neck = _model("gaussian_dither")
        generator = torch.Generator().manual_seed(3)
        x = _batch(1)

        def block(v, neck=neck, enc=enc, generator=generator):
            return neck(enc(v), generator=generator).y_hat

        y_hat = block(x) if mode is None else checkpoint(block, x, use_reentrant=False)
        for seed in range(2, 1 + neck.RECOMPUTABLE):
            neck(enc(_batch(seed)).detach(), generator=generator)
        y_hat.square().sum().backward()
        results.append((x.grad, generator.get_state()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_every_registered_bottleneck_is_classified():
    """A new method must be listed here, among the random or the deterministic ones."""
    assert set(BOTTLENECKS.names()) == {name for name, _ in RANDOM.values()} | set(DETERMINISTIC)


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_the_deterministic_training_paths_draw_nothing(name):
    """The methods left out of the checkpoint comparison above draw nothing in training mode:
    neither the caller's generator nor torch's global one moves."""
    torch.manual_seed(0)
    neck = build(name, **DETERMINISTIC[name]).double()
    generator = torch.Generator().manual_seed(3)
    before, global_before = generator.get_state(), torch.get_rng_state()
    out = neck(_batch(1, (7, neck.in_dim)), generator=generator)
    (out.y_hat.square().sum() + out.aux_loss).backward()
    assert torch.equal(generator.get_state(), before)
    assert torch.equal(torch.get_rng_state(), global_before)


@pytest.mark.parametrize("case", list(RANDOM))
def test_the_random_training_paths_draw_from_the_generator(case):
    """The other side of the classification: each method listed as random moves the caller's
    generator in a training-mode forward (so the comparison above tests something)."""
    _, neck = _model(case)
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    neck(_batch(1, (7, neck.in_dim)), generator=generator)
    assert not torch.equal(generator.get_state(), before)
