"""Bottlenecks whose training-mode forward changes state (the EMA codebooks of ``vq_ema`` and
``soft_em_vq``) inside a caller's own PyTorch model: activation checkpointing in both flavours,
grad modes, eval mode, several forwards before one backward, gradient accumulation, copies,
state-dict round trips and dtype casts. The M-step must happen exactly once per training-mode
forward (as the class docstrings say), never in a recomputation, and be checked against the
EMA formula of Roy et al. 2018 (arXiv 1805.11063) computed here by brute force, or against a
twin module run without the mechanism under test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from qlatent.bottlenecks import build

NAMES = ["vq_ema", "soft_em_vq"]
DECAY, EPS, K, D = 0.8, 1e-5, 5, 3


def _neck(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    extra = dict(num_samples=3, temperature=0.5, vib_weight=0.1) if name == "soft_em_vq" else {}
    return build(name, dim=D, num_codes=K, decay=DECAY, eps=EPS, **extra).to(dtype)


def _model(name: str):
    """An encoder (one linear layer) and the bottleneck, in float64 so that equal means equal."""
    torch.manual_seed(0)
    return torch.nn.Linear(4, D).double(), _neck(name)


def _batch(seed: int, rows: int = 16) -> torch.Tensor:
    return torch.randn(rows, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _buffers(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_equal_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _hand_m_step(state: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
    """One hard-EM M-step by brute force: nearest codewords from all pairwise distances, EMA of
    one-hot counts and sums, Laplace-smoothed counts, codebook = sums / smoothed counts."""
    codebook = state["ema.codebook"]
    nearest = (y[:, None, :] - codebook[None]).square().sum(-1).argmin(1)
    one_hot = torch.nn.functional.one_hot(nearest, K).to(y.dtype)
    count = DECAY * state["ema.ema_count"] + (1 - DECAY) * one_hot.sum(0)
    sums = DECAY * state["ema.ema_sum"] + (1 - DECAY) * one_hot.t() @ y
    total = count.sum()
    smoothed = (count + EPS) / (total + K * EPS) * total
    return {"ema.codebook": sums / smoothed[:, None], "ema.ema_count": count, "ema.ema_sum": sums}


def _assert_state_is(neck, expected: dict[str, torch.Tensor]) -> None:
    for key, value in expected.items():
        torch.testing.assert_close(neck.state_dict()[key], value, rtol=1e-12, atol=1e-12)


def _block(enc, neck, generator=None):
    """Encoder + bottleneck as one function of the input, as a caller checkpoints it."""

    def block(inputs):
        out = neck(enc(inputs), generator=generator)
        return out.y_hat, out.aux_loss

    return block


def _train_step(enc, neck, x, *, flavour: str | None, generator=None):
    """One training step of encoder + bottleneck, optionally checkpointed as one block; returns
    the outputs and the gradients of the input and the encoder weight."""
    x = x.clone().requires_grad_()
    block = _block(enc, neck, generator)
    torch.manual_seed(7)
    if flavour is None:
        y_hat, aux = block(x)
    else:
        y_hat, aux = checkpoint(block, x, use_reentrant=flavour == "reentrant")
    (y_hat.square().sum() + aux).backward()
    return y_hat.detach(), aux.detach(), x.grad, enc.weight.grad.clone()


# ------------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("flavour", ["reentrant", "non_reentrant"])
@pytest.mark.parametrize("name", NAMES)
def test_a_checkpointed_step_updates_once_and_gives_the_plain_gradients(name, flavour):
    """The recomputation in backward repeats the forward it recomputes: no second M-step, and
    the codebook (and soft EM's samples) of the original forward, so buffers, outputs and
    gradients equal the step without checkpointing; for hard EM the buffers are also one M-step
    of the hand formula."""
    plain_enc, plain = _model(name)
    enc, neck = _model(name)
    before = _buffers(neck)
    x = _batch(1)
    reference = _train_step(plain_enc, plain, x, flavour=None)
    got = _train_step(enc, neck, x, flavour=flavour)
    _assert_equal_state(neck, plain)
    for a, b in zip(got, reference, strict=True):
        assert torch.equal(a, b)
    if name == "vq_ema":
        with torch.no_grad():
            _assert_state_is(neck, _hand_m_step(before, enc(x)))


@pytest.mark.parametrize("flavour", ["reentrant", "non_reentrant"])
def test_a_checkpointed_soft_em_step_draws_its_generator_once(flavour):
    """soft EM's recomputation reuses the original samples: the caller's generator advances as
    in a step without checkpointing, so the next step samples the same codes."""
    states = []
    for mode in (None, flavour):
        enc, neck = _model("soft_em_vq")
        gen = torch.Generator().manual_seed(3)
        results = [_train_step(enc, neck, _batch(s), flavour=mode, generator=gen) for s in (1, 2)]
        states.append((gen.get_state(), _buffers(neck), results))
    (gen_a, buf_a, res_a), (gen_b, buf_b, res_b) = states
    assert torch.equal(gen_a, gen_b)
    assert all(torch.equal(buf_a[k], buf_b[k]) for k in buf_a)
    for step_a, step_b in zip(res_a, res_b, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(step_a, step_b, strict=True))


@pytest.mark.parametrize("same_input", [False, True], ids=["two_inputs", "one_input_twice"])
@pytest.mark.parametrize("flavour", ["reentrant", "non_reentrant"])
@pytest.mark.parametrize("name", NAMES)
def test_two_checkpointed_forwards_before_one_backward(name, flavour, same_input):
    """Each recomputation finds its own forward's codebook (the second forward quantized with
    the codebook the first one's M-step had moved): two M-steps and the plain gradients."""
    results = []
    for mode in (None, flavour):
        enc, neck = _model(name)
        x1 = _batch(1).requires_grad_()
        x2 = (x1.detach() if same_input else _batch(2)).clone().requires_grad_()
        torch.manual_seed(7)
        loss = 0.0
        block = _block(enc, neck)
        for x in (x1, x2):
            y_hat, aux = (
                block(x)
                if mode is None
                else checkpoint(block, x, use_reentrant=mode == "reentrant")
            )
            loss = loss + y_hat.square().sum() + aux
        loss.backward()
        results.append((neck, x1.grad, x2.grad, enc.weight.grad))
    (plain, *plain_grads), (neck, *grads) = results
    _assert_equal_state(neck, plain)
    for a, b in zip(grads, plain_grads, strict=True):
        assert torch.equal(a, b)


def test_a_recomputation_that_rounds_differently_still_finds_its_forward():
    """An accelerator may recompute the encoder's output with other rounding (atomic
    additions): here one part in 10^9 more in the recomputation. It is still recognised (one
    M-step, the codebook of its forward), where another batch is not (next test)."""
    enc, neck = _model("vq_ema")
    plain = copy.deepcopy(neck)
    calls = []

    def block(inputs):
        calls.append(None)
        return neck(enc(inputs) * (1 + 1e-9 * (len(calls) - 1))).y_hat

    x = _batch(1).requires_grad_()
    checkpoint(block, x, use_reentrant=False).square().sum().backward()
    assert len(calls) == 2
    with torch.no_grad():
        plain(enc(x))
    _assert_equal_state(neck, plain)


@pytest.mark.parametrize("name", NAMES)
def test_a_recomputation_of_a_forgotten_forward_is_refused(name):
    """More training-mode forwards between a checkpointed forward and its backward than the
    codebook keeps: a clear RuntimeError, not a recomputation with another step's codebook."""
    enc, neck = _model(name)
    x = _batch(1).requires_grad_()
    y_hat = checkpoint(lambda v: neck(enc(v)).y_hat, x, use_reentrant=False)
    for seed in range(2, 3 + neck.ema.RECOMPUTABLE):
        neck(enc(_batch(seed)).detach())
    with pytest.raises(RuntimeError, match="matches none of its last"):
        y_hat.square().sum().backward()


# -------------------------------------------------------------------------------- grad modes
@pytest.mark.parametrize(
    "context", ["no_grad", "inference_mode", "never_backpropagated", "backpropagated"]
)
def test_every_training_mode_forward_is_one_m_step(context):
    """The docstring's "each training-mode forward performs one M-step": under no_grad, under
    inference_mode and without a backward as with one; the hand formula twice over."""
    neck = _neck("vq_ema")
    expected = _buffers(neck)
    for seed in (1, 2):
        y = _batch(seed)[:, :D]
        expected = _hand_m_step(expected, y)
        if context == "no_grad":
            with torch.no_grad():
                neck(y)
        elif context == "inference_mode":
            with torch.inference_mode():
                neck(y)
        elif context == "never_backpropagated":
            neck(y.requires_grad_())
        else:
            out = neck(y.requires_grad_())
            (out.y_hat.sum() + out.aux_loss).backward()
        _assert_state_is(neck, expected)


@pytest.mark.parametrize("name", NAMES)
def test_an_eval_mode_forward_changes_no_buffer(name):
    neck = _neck(name)
    neck(_batch(0)[:, :D])  # trained once, so the buffers are not the initial ones
    before = _buffers(neck)
    neck.eval()
    neck(_batch(1)[:, :D].requires_grad_())
    with torch.no_grad():
        neck(_batch(2)[:, :D])
    assert all(torch.equal(v, before[k]) for k, v in neck.state_dict().items())


@pytest.mark.parametrize("name", NAMES)
def test_two_forwards_before_one_backward_equal_two_separate_steps(name):
    """Each forward's loss uses the codebook before its own M-step: the summed backward equals
    the gradients of two forward-backward steps."""
    y1, y2 = _batch(1)[:, :D], _batch(2)[:, :D]
    joint, separate = _neck(name), _neck(name)
    a, b = y1.clone().requires_grad_(), y2.clone().requires_grad_()
    torch.manual_seed(7)
    losses = [(o.y_hat.square().sum() + o.aux_loss) for o in (joint(a), joint(b))]
    sum(losses).backward()
    torch.manual_seed(7)
    grads = []
    for y in (y1, y2):
        y = y.clone().requires_grad_()
        out = separate(y)
        (out.y_hat.square().sum() + out.aux_loss).backward()
        grads.append(y.grad)
    _assert_equal_state(joint, separate)
    assert torch.equal(a.grad, grads[0]) and torch.equal(b.grad, grads[1])


def test_gradient_accumulation_is_one_m_step_per_micro_batch():
    """Four micro-batches, one optimizer step: four M-steps of decay λ each (the docstring's
    statement), which differ from one M-step on their union."""
    neck = _neck("vq_ema")
    start = _buffers(neck)
    batch = torch.randn(32, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = dict(start)
    for micro in batch.chunk(4):
        expected = _hand_m_step(expected, micro)
        out = neck(micro.clone().requires_grad_())
        (out.aux_loss / 4).backward()
    _assert_state_is(neck, expected)
    union = _hand_m_step(start, batch)
    assert not torch.allclose(neck.ema.ema_count, union["ema.ema_count"])


# ------------------------------------------------------------------ copies, loads and casts
def _continue(neck, seed: int):
    gen = torch.Generator().manual_seed(seed)
    y = _batch(seed)[:, :D].to(neck.codebook.dtype).requires_grad_()
    out = neck(y, generator=gen)
    (out.y_hat.square().sum() + out.aux_loss).backward()
    return out.y_hat.detach(), y.grad


@pytest.mark.parametrize("how", ["deepcopy", "state_dict", "float64_and_back"])
@pytest.mark.parametrize("name", NAMES)
def test_a_copy_made_mid_training_continues_as_its_twin(name, how):
    """Mid-training copies keep the buffers exactly, and the next step (output, gradient and
    M-step) is the uncopied twin's."""
    twin = _neck(name, torch.float32)
    for seed in (1, 2):
        _continue(twin, seed)
    if how == "deepcopy":
        other = copy.deepcopy(twin)
    elif how == "state_dict":
        other = _neck(name, torch.float32)
        other.load_state_dict(twin.state_dict())
    else:
        other = copy.deepcopy(twin).to(torch.float64).to(torch.float32)
    _assert_equal_state(other, twin)
    for a, b in zip(_continue(other, 3), _continue(twin, 3), strict=True):
        assert torch.equal(a, b)
    _assert_equal_state(other, twin)


@pytest.mark.parametrize("name", NAMES)
def test_a_half_round_trip_keeps_the_statistics_and_the_next_m_step(name):
    """``.half()`` rounds the codebook (it follows the module's dtype) but keeps the running
    counts and sums in float32, so after ``.float()`` the next M-step, which recomputes the
    codebook from them, gives the twin's codebook bit for bit (data near the codewords, so
    the rounding changes no assignment)."""
    twin = _neck(name, torch.float32)
    torch.manual_seed(1)
    y = (twin.codebook[torch.arange(40) % K] + 0.01 * torch.randn(40, D)).detach()
    twin(y)
    other = copy.deepcopy(twin).half().float()
    for key in ("ema.ema_count", "ema.ema_sum"):
        assert torch.equal(other.state_dict()[key], twin.state_dict()[key])
    assert torch.equal(other.codebook, twin.codebook.half().float())
    torch.manual_seed(2)
    other(y)
    torch.manual_seed(2)
    twin(y)
    _assert_equal_state(other, twin)
