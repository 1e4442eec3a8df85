"""Bottlenecks and models deployed through ``torch.export.export`` (strict and non-strict): the
exported program's eval (hard) path gives the eager outputs bit for bit, it still refuses a bad
input (as a RuntimeError of the program, naming the check), and exporting leaves the eager module
as it was (a table first built while exporting was kept as a fake tensor).

Fixed here: the input's value check and the lattice checks read values back to Python (export
failed on them), ``BottleneckOutput`` / ``AutoencoderOutput`` were no pytree nodes (export of a
bottleneck or a model refused its output), the good lattices branched on values and sized a
tensor by a count of rows, and their cached tables were kept as fake tensors.

Also fixed here: the learnable lattice's eval path branched on a value (a tiny basis
coordinate) and counted its distinct code vectors in a tensor sized by their number; the
rectangular lattice's training path (and its hard path exported under ``torch.no_grad``)
recorded the no-autograd kernels' ``out=`` writes, which failed in the program wherever its
parameters require grad, as did ``vq``'s training path (y_hat written into the codewords'
buffer, which strict export refused as a dirty input). What cannot be recorded faithfully is
refused by name, where it failed deep inside torch or, worse, ran and differed from the module:
``torch.jit.trace`` of a dithered lattice (its counter-based dither) and of the EMA quantizers'
training forward (the M-step), and ``torch.export`` of the latter. The straight-through
quantizers failed ``torch.jit.trace`` on an internal assertion of torch (a ``scatter_`` with a
Python ``bool`` value, which TorchScript has no overload for); they trace now."""

from __future__ import annotations

import pytest
import torch

from qlatent.models import lattice_vae
from test_contract import CONFIGS, VARIANTS, make
from test_contract import gen as _gen

#: the default handful: a rectangular lattice, a good lattice, a codebook, a Gaussian VAE
QUICK = ["lattice", "lattice[e8]", "vq", "gaussian"]
ALL = [*CONFIGS, *VARIANTS]
#: (case, strict) whose non-strict program gives the rate to the rounding, not bit for bit: the
#: eager module taking the export branches gives its own bits, so the last bit (3.8e-6 of a
#: rate of 36 nats in float32) moves in the program's own ATen graph of the Monte-Carlo density
ROUNDED = {("lattice[bw16]", False), ("lattice[leech]", False)}


def _module(
    case: str, training: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, torch.Tensor]:
    """The contract suite's module of ``case`` (seed 0) and a 3-row input."""
    torch.manual_seed(0)
    module = make(case).train(training).to(dtype)
    return module, 2.0 * torch.randn(3, module.in_dim, generator=_gen(2), dtype=dtype)


def _outputs(out) -> list:
    return [out.y_hat, out.rate, out.aux_loss, out.indices]


def _assert_same(found: list, expected: list, rounded: bool = False, rtol: float = 1e-6) -> None:
    """Equal bit for bit; ``rounded``: floating outputs to ``rtol`` (the non-strict program's
    own ATen graph of the good lattices' Monte-Carlo density, as documented)."""
    for i, (a, b) in enumerate(zip(found, expected, strict=True)):
        assert (a is None) == (b is None), f"item {i}"
        if b is not None and rounded and b.is_floating_point():
            torch.testing.assert_close(a, b, rtol=rtol, atol=0, msg=f"item {i}")
        elif b is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), f"item {i}"


def _run_both(program, module, x) -> tuple[list, list]:
    """The program's and the module's outputs on ``x``, each from the same global seed."""
    torch.manual_seed(1)
    found = _outputs(program(x))
    torch.manual_seed(1)
    return found, _outputs(module(x))


def _assert_same_model_outputs(program, model, x) -> None:
    """A model's program and the model give the same AutoencoderOutput on ``x`` (logits,
    codes and rate), each from the same global seed."""
    torch.manual_seed(1)
    found = program(x)
    torch.manual_seed(1)
    expected = model(x)
    assert torch.equal(found.params, expected.params)
    _assert_same(_outputs(found.bottleneck), _outputs(expected.bottleneck))


def _check_export(case: str, strict: bool, training: bool = False) -> None:
    """Export ``case``, run the program and the eager module from the same global seed (the
    dither of a call without a generator), and run the eager module again: all equal."""
    module, y = _module(case, training)
    torch.manual_seed(1)
    before = _outputs(module(y))
    program = torch.export.export(module, (y,), strict=strict).module()
    torch.manual_seed(1)
    found = program(y)
    torch.manual_seed(1)
    after = _outputs(module(y))
    _assert_same(_outputs(found), before, rounded=(case, strict) in ROUNDED, rtol=2e-7)
    _assert_same(after, before)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("case", QUICK)
def test_exported_eval_path_gives_the_eager_outputs(case, strict):
    """The hard path exported as a program returning a BottleneckOutput: y_hat, rate, aux loss
    and indices equal the eager module's; the module itself works as before after the export."""
    _check_export(case, strict)


@pytest.mark.parametrize("case", ["lattice", "lattice[e8]", "gaussian", "vq"])
def test_exported_training_path_draws_the_same_dither(case):
    """The dithered training path exports too: the dither drawn from torch's default generator
    is an op of the program, so the same seed gives the eager numbers."""
    _check_export(case, strict=False, training=True)


@pytest.mark.parametrize(
    ("bad", "message"), [(float("nan"), "NaN or Inf"), (1e30, "magnitudes beyond")]
)
def test_exported_program_refuses_bad_input_by_name(bad, message):
    """The input's value check is an assertion of the program (the eager module's ValueError
    cannot be traced): a NaN or an input past the limit is refused, not quantized to garbage."""
    module, y = _module("lattice")
    program = torch.export.export(module, (y,), strict=False).module()
    y[1, 2] = bad
    with pytest.raises(RuntimeError, match=message):
        program(y)
    with pytest.raises(ValueError):
        module(y)


def test_a_good_lattice_exported_first_in_a_process_leaves_its_tables_real():
    """A fresh E8 (its tables not yet built in this module) exported non-strict, then called
    eagerly: the tables built while exporting were fake tensors, and the eager call failed."""
    torch.manual_seed(0)
    module = make("lattice[e8]").eval()
    for lattice in getattr(module.geometry, "blocks", [module.geometry]):
        lattice.__dict__.pop("_inv_cache", None)
    y = 2.0 * torch.randn(3, module.in_dim, generator=_gen(2))
    torch.export.export(module, (y,), strict=False)
    assert not any(
        isinstance(v, torch._subclasses.FakeTensor)
        for lattice in getattr(module.geometry, "blocks", [module.geometry])
        for v in vars(lattice).values()
    )
    out = module(y, generator=_gen(1))
    assert torch.isfinite(out.rate).all()


def test_exported_lattice_vae_reconstructs_as_eager():
    """The lattice paper's MNIST model (small widths) in eval mode, exported as the user does:
    its AutoencoderOutput comes back, with the eager logits, code and rate."""
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=6, hidden=16, data_dim=20).eval()
    x = torch.rand(4, 20, generator=_gen(3))
    program = torch.export.export(model, (x,), strict=False).module()
    _assert_same_model_outputs(program, model, x)


# ------------------------------------------------------------------ every bottleneck
@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("case", ALL)
def test_every_bottleneck_exports_its_eval_path(case, strict):
    """The sweep over every registered bottleneck and lattice variant: exported eval paths give
    the eager outputs, and the module works as before after its export."""
    _check_export(case, strict)


# ------------------------------------------------------------------ refused by name, or fixed
class _Outputs(torch.nn.Module):
    """A bottleneck's forward as the tuple of tensors ``torch.jit.trace`` takes."""

    def __init__(self, bottleneck: torch.nn.Module) -> None:
        super().__init__()
        self.bottleneck = bottleneck

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in _outputs(self.bottleneck(y)) if t is not None)


@pytest.mark.parametrize("case", ["vq_ema", "soft_em_vq"])
def test_trace_refuses_an_ema_training_forward_and_runs_no_m_step(case):
    """The M-step's Python decisions and its decay were fixed in a trace, which still ran (and
    each traced check ran one more M-step): refused before any, naming the way out."""
    module, y = _module(case, training=True)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    name = type(module).__name__
    with pytest.raises(RuntimeError, match=f"torch.jit.trace cannot .*of {name}.*eval mode"):
        torch.jit.trace(_Outputs(module), (y,))
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_export_refuses_an_ema_training_forward_by_name(strict):
    """Non-strict export failed on the M-step's branch on a value (a data-dependent guard)."""
    module, y = _module("vq_ema", training=True)
    with pytest.raises(RuntimeError, match="torch.export cannot record the training-mode"):
        torch.export.export(module, (y,), strict=strict)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "training"])
@pytest.mark.parametrize("case", ["lattice", "lattice[e8]"])
def test_trace_of_a_dithered_lattice_names_torch_export(case, training):
    """The counter-based dither's argument check failed on the traced shapes (and the CPU
    hash, in NumPy, would have been a constant of the trace): one error naming the route."""
    module, y = _module(case, training)
    with pytest.raises(RuntimeError, match="torch.jit.trace cannot record.*torch.export.export"):
        torch.jit.trace(_Outputs(module), (y,))


def test_trace_of_a_lattice_quantize_is_refused_too():
    module, y = _module("lattice")

    class Quantize(torch.nn.Module):
        def forward(self, y):
            return module.quantize(y)

    with pytest.raises(RuntimeError, match="eval-mode forward of DitheredLattice"):
        torch.jit.trace(Quantize(), (y,))


@pytest.mark.parametrize(
    ("case", "training"),
    [("scalar_st", False), ("scalar_st", True), ("vector_st", False), ("vector_st", True)]
    + [("vq_ema", False)],
)
def test_traceable_forwards_replay_the_eager_module(case, training):
    """A trace of these runs on another input (and batch size) as the module does. The
    straight-through quantizers failed inside torch ("INTERNAL ASSERT FAILED ... aten::scatter_":
    their usage stat's ``scatter_`` with a bool value); an EMA quantizer's way out, eval mode."""
    module, y = _module(case, training)
    traced = torch.jit.trace(_Outputs(module), (y,), check_trace=False)
    other = 2.0 * torch.randn(5, module.in_dim, generator=_gen(5))
    for found, expected in zip(traced(other), _Outputs(module)(other), strict=True):
        assert torch.equal(found, expected)


def test_exported_learnable_lattice_gives_the_eager_outputs_and_stats():
    """A tiny basis coordinate was a branch on a value, and the distinct code vectors were
    counted into a tensor sized by their number: export failed on both. The program gives the
    eager outputs and usage stats (exact counts, the same perplexity bits) on repeated rows."""
    module, y = _module("learnable_lattice")
    with torch.no_grad():
        module.basis[2] = 1e-20  # below the smallest spacing: replaced, its sign kept
    for strict in (False, True):
        program = torch.export.export(module, (y,), strict=strict).module()
        for seed in range(3):
            x = 0.3 * torch.randint(-1, 2, (3, module.in_dim), generator=_gen(seed)).float()
            x[2] = x[0]  # a repeated code vector
            found, expected = program(x), module(x)
            _assert_same(_outputs(found), _outputs(expected))
            assert expected.stats["codes_used"] <= 2
            for name, value in expected.stats.items():
                assert torch.equal(found.stats[name], value), name


def test_padded_row_counts_is_exact_where_hashes_collide(monkeypatch):
    """Distinct rows of one hash (all weights 0: every row collides) stay apart and equal rows
    together, whatever order they come in."""
    from qlatent.bottlenecks import _codebook, _codebook_counts

    def colliding(dim, device):
        return torch.zeros(dim, dtype=torch.int64, device=device)

    monkeypatch.setattr(_codebook_counts, "_exported_hash_weights", colliding)
    rows = torch.tensor([[1, 2], [0, 5], [1, 2], [3, 3], [0, 5], [1, 2]])
    counts = _codebook.padded_row_counts(rows)
    assert counts.shape == (6,)
    assert sorted(counts[counts > 0].tolist()) == [1, 2, 3]


def test_lattice_exported_without_grad_runs_with_grad():
    """Exported under ``torch.no_grad``, the program held the kernels' ``out=`` writes and
    failed when run with grad enabled (its parameters require grad): now the eager outputs."""
    for training in (False, True):
        module, y = _module("lattice", training)
        with torch.no_grad():
            program = torch.export.export(module, (y,), strict=False).module()
        torch.manual_seed(1)
        found = program(y)
        torch.manual_seed(1)
        _assert_same(_outputs(found), _outputs(module(y)))


def test_lattice_training_program_backpropagates_as_eager():
    """The training path exported non-strict (with the reference ops) takes the eager
    gradients, to rounding (autograd through the ops against a hand-written backward)."""
    module, y = _module("lattice", training=True)
    y.requires_grad_(True)
    program = torch.export.export(module, (y,), strict=False).module()
    grads = []
    for model in (program, module):
        torch.manual_seed(1)
        out = model(y)
        loss = out.rate.sum() + out.y_hat.square().sum()
        grads.append(torch.autograd.grad(loss, [*model.parameters(), y]))
    for found, expected in zip(*grads, strict=True):
        torch.testing.assert_close(found, expected)


@pytest.mark.parametrize("neck", ["lattice", "vq"])
def test_compiled_mnist_vae_still_gives_the_eager_numbers(neck):
    """``torch.compile`` (Dynamo, eager backend) of the MNIST VAEs, a lattice one and a vq one,
    in both modes: the paths chosen while exporting or tracing are not taken, and the logits,
    y_hat, rate and (training) gradients are the eager ones."""
    from qlatent.models import gated_vae

    for training in (True, False):
        torch.manual_seed(0)
        if neck == "lattice":
            model = lattice_vae(latent_dim=6, hidden=16, data_dim=20)
        else:
            model = gated_vae("vq", num_codes=5, latent_dim=8, hidden=16, data_dim=20)
        model.train(training)
        x = torch.rand(4, 20, generator=_gen(3))
        results = []
        for run in (torch.compile(model, backend="eager"), model):
            torch.manual_seed(1)
            out = run(x)
            tensors = [out.params, out.bottleneck.y_hat, out.bottleneck.rate]
            if training:
                loss = out.params.sum() + out.bottleneck.rate.sum() + out.bottleneck.aux_loss
                tensors += torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
            results.append(tensors)
        for found, expected in zip(*results, strict=True):
            assert (found is None) == (expected is None)
            assert found is None or torch.equal(found, expected)
