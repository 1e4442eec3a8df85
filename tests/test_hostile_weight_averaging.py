"""Weight averaging, second-order optimizers and pruning wrapped around bottlenecks and models.

- ``torch.optim.swa_utils.AveragedModel`` (SWA and EMA averages, ``use_buffers`` on and off)
  around a bottleneck and around an encoder + bottleneck: the averaged module codes files that
  read back exactly, has the digest of a module loaded from its saved weights, and is saved and
  loaded through ``qlatent.train.checkpoint``; ``update_bn`` on models with and without BN.
- ``torch.optim.LBFGS``, whose closure runs the forward several times per step (each draws new
  dither, each training forward of an EMA codebook runs an M-step): deterministic across two
  identical runs, gradients those of the forward the closure ran.
- ``torch.nn.utils.prune`` on a bottleneck's parameter, then ``prune.remove``: the weights
  load into a fresh module and code; an EMA codebook (a buffer) is refused by torch untouched.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from qlatent.bottlenecks import build
from qlatent.coding import compress, decompress
from qlatent.coding.codec import model_digest
from qlatent.models import Autoencoder
from qlatent.nn import Bernoulli
from qlatent.rng import SeedKeys
from qlatent.train import save_atomic
from qlatent.train.checkpoint import CheckpointError, load, load_weights

_MC = dict(samples=8, prior_samples=4, eval_samples=16, eval_prior_samples=4)
#: the discrete bottlenecks (every code model kind), small
DISCRETE: dict[str, tuple[str, dict]] = {
    "lattice": ("lattice", dict(dim=6)),
    "lattice[e8]": ("lattice", dict(dim=8, lattice="e8", **_MC)),
    "learnable_lattice": ("learnable_lattice", dict(dim=6, num_codes=64, init_range=0.7)),
    "scalar_st": ("scalar_st", dict(dim=6, levels=4)),
    "vector_st": ("vector_st", dict(dim=6, group=2, codes=4)),
    "vq": ("vq", dict(dim=6, num_codes=5)),
    "vq_ema": ("vq_ema", dict(dim=6, num_codes=5)),
    "soft_em_vq": ("soft_em_vq", dict(dim=6, num_codes=5, num_samples=3)),
}
#: every registered bottleneck with a training path (continuous ones too)
ALL = {
    **DISCRETE,
    "gaussian": ("gaussian", dict(dim=6)),
    "gaussian_dither": ("gaussian_dither", dict(dim=6)),
    "gaussian_lattice": ("gaussian_lattice", dict(dim=6)),
    "identity": ("identity", dict(dim=6)),
    "info_dropout": ("info_dropout", dict(dim=6)),
    "soft_vq": ("soft_vq", dict(dim=6, num_codes=5)),
}
AVERAGES = ["swa", "ema"]


def make(name: str):
    registered, kwargs = ALL[name]
    torch.manual_seed(0)
    return build(registered, **kwargs)


class Coded(nn.Module):
    """An encoder in front of a bottleneck: a model whose bottleneck has parameters around it
    (an EMA codebook alone has none, and ``AveragedModel`` with ``use_buffers=False`` needs
    some)."""

    def __init__(self, neck) -> None:
        super().__init__()
        self.enc = nn.Linear(5, neck.in_dim)
        self.neck = neck

    def forward(self, x, generator=None):
        return self.neck(self.enc(x), generator=generator)


def averaged(model: nn.Module, kind: str, use_buffers: bool) -> AveragedModel:
    extra = {"multi_avg_fn": get_ema_multi_avg_fn(0.9)} if kind == "ema" else {}
    return AveragedModel(model, use_buffers=use_buffers, **extra)


def loss_of(out) -> torch.Tensor:
    return 0.1 * out.rate.mean() + out.aux_loss + (out.y_hat - 0.3).square().mean()


def train_and_average(model: nn.Module, avg: AveragedModel, steps: int = 3) -> list[dict]:
    """A few SGD steps of ``model``, each followed by ``avg.update_parameters``; the model's
    state after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    snapshots = []
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        loss = loss_of(model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg.update_parameters(model)
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return snapshots


def check_codes(name: str, neck, latents: torch.Tensor, tmp_path) -> None:
    """The (averaged) bottleneck of case ``name`` learns its code model, codes a file that
    reads back exactly, and its weights saved as a checkpoint load into a fresh one with the
    same digest, which reads the file too."""
    neck.eval()
    if hasattr(neck, "update"):
        neck.update(latents)
    y = latents[:7]
    data = compress(neck, y, seed=3)
    expected = neck(y, generator=SeedKeys(3)).y_hat
    assert torch.equal(decompress(neck, data), expected)
    path = tmp_path / "averaged.pt"
    save_atomic({"model": neck.state_dict()}, path)
    fresh = make(name)
    load_weights(fresh, load(path)["model"], path)
    fresh.eval()
    assert model_digest(fresh) == model_digest(neck)
    assert torch.equal(decompress(fresh, data), expected)


def _expected_average(snapshots: list[dict], key: str, kind: str) -> torch.Tensor:
    """What SWA (the running mean) or EMA (decay 0.9, starting at the first snapshot) makes of
    the snapshots of ``key``."""
    values = [s[key].double() for s in snapshots]
    if kind == "swa":
        return torch.stack(values).mean(0)
    out = values[0]
    for v in values[1:]:
        out = 0.9 * out + 0.1 * v
    return out


@pytest.mark.parametrize("use_buffers", [False, True], ids=["params", "buffers"])
@pytest.mark.parametrize("kind", AVERAGES)
@pytest.mark.parametrize("name", list(DISCRETE))
def test_averaged_model_codes_and_reloads(name, kind, use_buffers, tmp_path):
    model = Coded(make(name))
    avg = averaged(model, kind, use_buffers)
    snapshots = train_and_average(model, avg)
    assert int(avg.n_averaged) == 3
    # the encoder's weights are the average of the model's after each step
    torch.testing.assert_close(
        avg.module.enc.weight.double(), _expected_average(snapshots, "enc.weight", kind)
    )
    latents = avg.module.enc(torch.randn(64, 5, generator=torch.Generator().manual_seed(2)))
    check_codes(name, avg.module.neck, latents.detach(), tmp_path)


@pytest.mark.parametrize("kind", AVERAGES)
@pytest.mark.parametrize("name", ["vq_ema", "soft_em_vq"])
def test_ema_codebook_is_copied_or_averaged_as_use_buffers_says(name, kind):
    """The EMA codebook lives in buffers: without ``use_buffers`` the average holds the model's
    latest codebook, with it the average of the codebooks after each step."""
    for use_buffers in (False, True):
        model = Coded(make(name))
        avg = averaged(model, kind, use_buffers)
        snapshots = train_and_average(model, avg)
        codebook = avg.module.neck.codebook.double()
        if use_buffers:
            expected = _expected_average(snapshots, "neck.ema.codebook", kind)
        else:
            expected = snapshots[-1]["neck.ema.codebook"].double()
        assert not torch.equal(
            snapshots[0]["neck.ema.codebook"], snapshots[-1]["neck.ema.codebook"]
        )
        torch.testing.assert_close(codebook, expected)


@pytest.mark.parametrize("kind", AVERAGES)
@pytest.mark.parametrize("name", ["vq_ema", "soft_em_vq", "vq", "lattice"])
def test_bare_bottleneck_averaged_with_its_buffers_codes(name, kind, tmp_path):
    """A bottleneck averaged on its own (an EMA codebook has no parameters: ``use_buffers``
    averages its buffers)."""
    neck = make(name)
    avg = averaged(neck, kind, True)
    gen = torch.Generator().manual_seed(4)
    opt = torch.optim.SGD(neck.parameters(), lr=0.05) if list(neck.parameters()) else None
    for _ in range(3):
        loss = loss_of(neck(torch.randn(16, 6, generator=gen)))
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        avg.update_parameters(neck)
    check_codes(name, avg.module, torch.randn(64, 6, generator=gen), tmp_path)


def _tables(module) -> dict[str, torch.Tensor]:
    """A good lattice's geometry constants: its non-persistent buffers and its index tables."""
    names = [*module._non_persistent_buffers_set, *module._INDEX_TABLES]
    return {name: getattr(module, name).clone() for name in names}


@pytest.mark.parametrize("kind", AVERAGES)
def test_good_lattice_averaged_without_buffers_keeps_its_geometry(kind):
    model = Coded(make("lattice[e8]"))
    avg = averaged(model, kind, False)
    snapshots = train_and_average(model, avg)
    for name, table in _tables(model.neck).items():
        assert torch.equal(getattr(avg.module.neck, name), table), name
    torch.testing.assert_close(
        avg.module.neck.log_scale.double(), _expected_average(snapshots, "neck.log_scale", kind)
    )


@pytest.mark.parametrize("kind", AVERAGES)
def test_good_lattice_geometry_survives_an_average_of_its_buffers(kind):
    """The index tables were buffers, which ``use_buffers=True`` averages: EMA's integer path
    truncated 0.9·3 + 0.1·3 to 2 (other Monte-Carlo coordinates, without a word), SWA failed
    on the bool table inside torch."""
    neck = make("lattice[e8]")
    avg = averaged(neck, kind, True)
    for _ in range(4):
        avg.update_parameters(neck)
    for name, table in _tables(neck).items():
        assert torch.equal(getattr(avg.module, name), table), name


def test_averaged_model_state_dict_through_a_checkpoint(tmp_path):
    model = Coded(make("vq_ema"))
    avg = averaged(model, "ema", True)
    train_and_average(model, avg)
    path = tmp_path / "swa.pt"
    save_atomic({"model": avg.state_dict()}, path)
    fresh = averaged(Coded(make("vq_ema")), "ema", True)
    load_weights(fresh, load(path)["model"], path)
    assert int(fresh.n_averaged) == 3
    assert model_digest(fresh.module.neck) == model_digest(avg.module.neck)
    other = averaged(Coded(make("vq")), "ema", True)  # the codebook is a parameter there
    with pytest.raises(CheckpointError, match="different model"):
        load_weights(other, load(path)["model"], path)


def test_update_bn_without_batch_norm_touches_nothing():
    model = Coded(make("vq_ema"))
    avg = averaged(model, "swa", False)
    avg.update_parameters(model)
    before = {k: v.clone() for k, v in avg.state_dict().items()}
    update_bn([torch.randn(8, 5) for _ in range(3)], avg)
    after = avg.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_update_bn_recomputes_batch_norm_around_a_lattice(tmp_path):
    torch.manual_seed(0)
    model = Autoencoder(
        nn.Sequential(nn.Linear(10, 6), nn.BatchNorm1d(6)),
        build("lattice", dim=6),
        nn.Linear(6, 10),
        Bernoulli(),
    )
    avg = AveragedModel(model)
    avg.update_parameters(model)
    loader = [torch.rand(8, 10, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    avg.eval()
    update_bn(loader, avg)
    assert not avg.training  # the mode it had
    hidden = torch.cat([avg.module.encoder[0](x) for x in loader]).detach()
    bn = avg.module.encoder[1]
    torch.testing.assert_close(bn.running_mean, hidden.mean(0))
    latents = avg.module.encoder(torch.cat(loader)).detach()
    check_codes("lattice", avg.module.bottleneck, latents, tmp_path)


# ------------------------------------------------------------------------------ LBFGS
def _lbfgs_run(name: str, with_generator: bool):
    torch.manual_seed(0)
    model = Coded(make(name))
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(9))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4, history_size=3)
    gen = torch.Generator().manual_seed(7) if with_generator else None
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = loss_of(model(x, generator=gen))
        loss.backward()
        return loss

    losses = [float(opt.step(closure).detach()) for _ in range(2)]
    return losses, model.state_dict(), len(calls)


@pytest.mark.parametrize("with_generator", [False, True], ids=["global", "generator"])
@pytest.mark.parametrize("name", list(ALL))
def test_lbfgs_runs_and_repeats_exactly(name, with_generator):
    losses, state, calls = _lbfgs_run(name, with_generator)
    again, state_again, _ = _lbfgs_run(name, with_generator)
    assert calls > 2  # several forwards per step
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses == again
    assert all(torch.equal(state[k], state_again[k]) for k in state)


@pytest.mark.parametrize("name", list(ALL))
def test_lbfgs_gradients_are_those_of_the_closures_forward(name):
    """In every closure call the gradients equal those of a copy of the model (taken before the
    forward: an EMA codebook's M-step changes it) run on the same draws."""
    torch.manual_seed(0)
    model = Coded(make(name))
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(7)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3, history_size=3)
    checked = []

    def closure():
        twin, state = copy.deepcopy(model), gen.get_state()
        opt.zero_grad()
        loss = loss_of(model(x, generator=gen))
        loss.backward()
        twin_gen = torch.Generator()
        twin_gen.set_state(state)
        params = [p for p in twin.parameters() if p.requires_grad]
        expected = torch.autograd.grad(loss_of(twin(x, generator=twin_gen)), params)
        got = [p.grad for p in model.parameters() if p.requires_grad]
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
        checked.append(1)
        return loss

    opt.step(closure)
    assert len(checked) > 1


def test_lbfgs_gradient_of_a_dithered_lattice_matches_finite_differences():
    """The dither fixed by one seed per evaluation, the rectangular lattice's training loss is
    smooth in the encoder's weights: LBFGS's gradient is its derivative (float64)."""
    torch.manual_seed(0)
    model = Coded(make("lattice")).double()
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def objective():
        return loss_of(model(x, generator=SeedKeys(5)))

    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    grads = []

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        return loss

    opt.step(closure)
    # at the final weights, the last closure's gradient against central differences
    closure()
    direction = [torch.randn_like(p) for p in model.parameters()]
    analytic = sum((g * d).sum() for g, d in zip(grads[-1], direction, strict=True))
    h = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for p, d in zip(model.parameters(), direction, strict=True):
                p.add_(sign * h * d)
            values.append(float(objective()))
            for p, d in zip(model.parameters(), direction, strict=True):
                p.sub_(sign * h * d)
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(float(analytic) - numeric) <= 1e-5 * max(1.0, abs(numeric))


def test_lbfgs_runs_one_m_step_per_closure_call():
    """Each training forward of an EMA codebook is an M-step (documented): after c closure
    calls on N rows the running count total is N (1 − λ^c)."""
    _, state, calls = _lbfgs_run("vq_ema", False)
    total = float(state["neck.ema.ema_count"].sum())
    assert total == pytest.approx(16 * (1 - 0.99**calls), rel=1e-5)


# ------------------------------------------------------------------------------ pruning
PRUNED = [
    ("vq", "codebook"),
    ("lattice", "log_scale"),
    ("lattice", "log_spacing"),
    ("lattice[e8]", "log_scale"),
    ("scalar_st", "codes"),
    ("vector_st", "logits"),
]


@pytest.mark.parametrize(("name", "parameter"), PRUNED, ids=[f"{n}.{p}" for n, p in PRUNED])
def test_pruned_then_removed_parameter_saves_loads_and_codes(name, parameter, tmp_path):
    neck = make(name)
    with torch.no_grad():  # nonzero, distinct values for the L1 ranking
        getattr(neck, parameter).add_(0.01 * torch.randn_like(getattr(neck, parameter)))
    prune.l1_unstructured(neck, parameter, amount=0.4)
    mask = getattr(neck, parameter + "_mask")
    assert int((mask == 0).sum()) > 0
    y = torch.randn(16, neck.in_dim, generator=torch.Generator().manual_seed(3))
    loss_of(neck.train()(y)).backward()
    grad = getattr(neck, parameter + "_orig").grad
    assert grad is not None and bool((grad[mask == 0] == 0).all())
    # the pruned form's weights are another model's: a clear error naming the file
    path = tmp_path / "pruned.pt"
    save_atomic({"model": neck.state_dict()}, path)
    with pytest.raises(CheckpointError, match="different model"):
        load_weights(make(name), load(path)["model"], path)
    prune.remove(neck, parameter)
    weight = getattr(neck, parameter)
    assert isinstance(weight, nn.Parameter) and bool((weight[mask == 0] == 0).all())
    check_codes(name, neck, torch.randn(64, neck.in_dim, generator=torch.Generator()), tmp_path)


def test_pruned_learnable_lattice_basis_is_refused_by_update_with_its_reason():
    neck = make("learnable_lattice")
    prune.l1_unstructured(neck, "basis", amount=0.4)
    prune.remove(neck, "basis")
    with pytest.raises(ValueError, match="spacing far below"):
        neck.update(torch.randn(64, 6))


@pytest.mark.parametrize("name", ["vq_ema", "soft_em_vq"])
def test_pruning_an_ema_codebook_is_refused_and_leaves_it_working(name):
    neck = make(name)
    keys = sorted(neck.state_dict())
    with pytest.raises(TypeError, match="codebook_orig"):
        prune.l1_unstructured(neck.ema, "codebook", amount=0.4)
    assert sorted(neck.state_dict()) == keys
    before = neck.codebook.clone()
    neck.train()(torch.randn(16, 6))
    assert not torch.equal(neck.codebook, before)  # the M-step still writes the codebook
