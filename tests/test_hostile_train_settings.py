"""``qlatent train CONFIG``: a new run refuses a model, loss or schedule setting that its model
family or bottleneck does not use, as it refuses a data setting its data ignores; a run started
before keeps resuming, and every config the repository ships still trains.

Checked against what the run computes: a rate weight on a bottleneck whose training rate is a
constant (``vq``: log K), or an auxiliary weight on one without an auxiliary loss, leaves the
trained weights bit for bit the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_helpers import TINY_OVERRIDES, one_line_error, run_cli
from qlatent.bottlenecks import BOTTLENECKS, build
from qlatent.experiments import _custom_config, custom, text_rd
from qlatent.losses import RateDistortionLoss

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_data(monkeypatch):
    """Reading data fails the test: a refusal comes before it."""

    def read(*args, **kwargs):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(custom, "load_data", read)
    monkeypatch.setattr(custom, "load_text_data", read)


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ("synthetic", ["model.num_residual=1"]),  # an MLP has no residual layers
        ("synthetic", ["model.family=relu_mlp", "model.embed=16"]),
        ("synthetic", ["model.family=conv", "model.layers=2"]),
        ("synthetic", ["model.variance=0.5"]),  # a Bernoulli likelihood has no variance
        ("synthetic-text", ["model.family=text_gru", "model.hidden=[8,8]", "model.num_residual=3"]),
        ("synthetic-text", ["model.family=text_gru", "model.hidden=[8,8]", "model.variance=0.5"]),
    ],
)
def test_a_new_run_refuses_a_model_setting_its_family_does_not_read(
    data, setting, tmp_path, no_data
):
    """``--set model.num_residual=1`` on the gated MLP was recorded in the run's config and
    changed nothing (the paper tables refused it, ``qlatent train`` did not). Refused before
    any data is read."""
    key = setting[-1].split("=")[0]
    cfg = custom.load_config(None, [f"data.name={data}", *setting, f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " = .* has no effect"):
        custom.train(cfg)


@pytest.mark.parametrize(
    "setting",
    [
        ["bottleneck.name=vq", "loss.rate_weight=0.25"],
        ["bottleneck.name=vq_ema", "loss.rate_weight=0"],
        ["bottleneck.name=soft_vq", "loss.rate_weight=4"],
        ["bottleneck.name=identity", "loss.rate_weight=0.5"],
        ["bottleneck.name=lattice", "loss.aux_weight=0.25"],
        ["bottleneck.name=gaussian", "loss.aux_weight=2"],
        ["bottleneck.name=vq", "train.anneal_steps=100"],
        ["bottleneck.name=lattice", "loss.rate_weight=0", "train.anneal_steps=10"],
    ],
)
def test_a_new_run_refuses_a_loss_setting_its_bottleneck_does_not_use(setting, tmp_path, no_data):
    """A "sweep" of ``loss.rate_weight`` over a VQ-VAE trained the same weights at every λ
    (its rate is log K, without gradient), ``loss.aux_weight`` scales nothing in a lattice's
    loss, and annealing a rate without gradient (or at weight 0) anneals nothing."""
    key = setting[-1].split("=")[0]
    cfg = custom.load_config(None, [*TINY_OVERRIDES, *setting, f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " = .* has no effect"):
        custom.train(cfg)


def test_the_refusal_is_one_line_through_the_command(tmp_path, capsys, no_data):
    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\nname = "synthetic"\n[bottleneck]\nname = "vq"\n[loss]\nrate_weight = 0.1\n'
    )
    code, err = run_cli(["train", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line_error(err), err
    assert "loss.rate_weight = 0.1 has no effect on bottleneck.name = 'vq'" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_run_started_before_the_check_resumes_and_a_fresh_one_is_refused(tmp_path, monkeypatch):
    """Only new runs are checked: a run that recorded such a setting resumes as it began
    (the config of a resume must be the checkpoint's), while ``--fresh`` starts a new one."""
    out = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, "train.max_steps=2", "bottleneck.name=vq", "loss.rate_weight=0.5"]
    cfg = custom.load_config(None, [*overrides, f"out_dir={out}"])
    with monkeypatch.context() as m:  # the run as an earlier version started it
        m.setattr(_custom_config, "check_loss_settings", lambda *a, **k: None)
        custom.train(cfg)
    more = custom.load_config(
        None, [*overrides, "train.epochs=2", "train.max_steps=4", f"out_dir={out}"]
    )
    summary = custom.train(more)  # 40 training images in batches of 20: two updates an epoch
    assert summary["train"]["epochs"] == 2 and summary["config"]["loss"]["rate_weight"] == 0.5
    assert torch.load(out / "last.pt", weights_only=True)["state"]["step"] == 4
    with pytest.raises(ValueError, match="loss.rate_weight"):
        custom.train(more, fresh=True)


@pytest.mark.parametrize("name", BOTTLENECKS.names())
def test_the_tables_of_constant_rates_and_auxiliary_losses_match_the_bottlenecks(name):
    """Computed from each registered bottleneck's training path: its rate has a gradient
    unless it is listed in ``CONSTANT_RATE``, its auxiliary loss unless in ``NO_AUX_LOSS``."""
    torch.manual_seed(0)
    neck = build(name, dim=4).train()
    y = torch.randn(6, neck.in_dim, requires_grad=True)
    out = neck(y, generator=torch.Generator().manual_seed(1))
    inputs = [y, *(p for p in neck.parameters() if p.requires_grad)]

    def moves(term: torch.Tensor) -> bool:
        if not term.requires_grad:
            return False
        grads = torch.autograd.grad(term.sum(), inputs, allow_unused=True)
        return any(g is not None and bool(g.abs().sum() > 0) for g in grads)

    assert moves(out.rate) == (name not in custom.CONSTANT_RATE)
    assert moves(out.aux_loss) == (name not in custom.NO_AUX_LOSS)


def _weights_after_updates(name: str, rate_weight: float, aux_weight: float) -> list:
    """The weights of a tiny model with bottleneck ``name`` after three Adam updates."""
    cfg = custom.load_config(None, [*TINY_OVERRIDES, f"bottleneck.name={name}"])
    torch.manual_seed(0)
    model = custom.build_model(cfg, (1, 28, 28), 0.1).train()
    loss_fn = RateDistortionLoss(lmbda=rate_weight, aux_weight=aux_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = (torch.rand(3, 20, 784, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    g = torch.Generator().manual_seed(3)
    for xb in x:
        optimizer.zero_grad()
        loss_fn(xb, model(xb, generator=g), model.likelihood).loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("name", "weights", "same"),
    [
        ("vq", (0.25, 1.0), True),  # rate log K: no gradient
        ("identity", (0.25, 1.0), True),
        ("lattice", (1.0, 0.25), True),  # no auxiliary loss
        ("lattice", (0.25, 1.0), False),  # the weights the refusals leave alone do act
        ("vq", (1.0, 0.25), False),
    ],
)
def test_a_refused_weight_trains_the_same_weights_and_an_accepted_one_does_not(name, weights, same):
    base = _weights_after_updates(name, 1.0, 1.0)
    other = _weights_after_updates(name, *weights)
    assert all(torch.equal(a, b) for a, b in zip(base, other, strict=True)) == same


def _shipped() -> list[tuple[list[Path], list[str]]]:
    """The configs the repository ships for ``qlatent train``: the examples (the folder one
    also with the README's ``--set bottleneck.name=lattice``), the README's table row, and each
    row of the image tables that ``train`` runs on its own (base + row file)."""
    examples = ROOT / "examples"
    configs = ROOT / "src" / "qlatent" / "configs"
    shipped = [([p], []) for p in sorted(examples.glob("*.toml"))]
    shipped.append(([examples / "folder-vq.toml"], ["bottleneck.name=lattice"]))
    for table in ("lattice-mnist", "softvq-mnist"):
        base = configs / table / "base.toml"
        shipped += [([base, row], []) for row in sorted((configs / table).glob("*.toml"))]
    return shipped


def test_every_shipped_config_passes_the_checks_of_a_new_run():
    """(``llvq``'s rows are refused already for their data settings: their table's folder
    settings on FashionMNIST, and a rate weight of 0 on a codebook's constant rate.)"""
    shipped = _shipped()
    assert len(shipped) > 30
    for paths, overrides in shipped:
        cfg = custom.load_config(paths, [*overrides, "train.epochs=20"])
        custom.check_new_run(cfg)
    # every bottleneck at the default weights, and a warm-up, which early stopping reads
    for name in BOTTLENECKS.names():
        custom.check_new_run(custom.load_config(None, [f"bottleneck.name={name}"]))
    custom.check_new_run(custom.load_config(None, ["bottleneck.name=vq", "train.warmup_epochs=5"]))


@pytest.mark.parametrize("quick", [True, False])
def test_text_rd_points_share_their_schedule(quick, tmp_path):
    """text-rd fine-tunes every point on one schedule, the no-bottleneck point (whose rate is
    zero) with the same annealing: its runs pass as one sweep's, and that point alone would
    be refused as a run of its own."""
    for method, points in text_rd.POINTS.items():
        for label, *_ in points:
            cfg = text_rd.point_config(method, label, quick=quick, runs_dir=str(tmp_path))
            custom.check_new_run(cfg, shared_schedule=True)
            if (method, label) == ("identity", "fine-tuned"):
                with pytest.raises(ValueError, match="train.anneal_steps"):
                    custom.check_new_run(cfg)
            else:
                custom.check_new_run(cfg)
