"""Networks, likelihood, loss, config overrides and the Theorem-1 report on a small model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch

from qlatent.config import apply_overrides, from_dict, to_dict
from qlatent.data import synthetic_binary
from qlatent.eval import codelength_report
from qlatent.losses import RateDistortionLoss, evaluate_objective
from qlatent.models import lattice_vae
from qlatent.nn import Bernoulli, GatedDense, gated_mlp
from qlatent.train import TrainConfig, fit


def test_gated_mlp_layout_and_he_init():
    torch.manual_seed(0)
    net = gated_mlp([784, 300, 300, 40])
    assert [type(m).__name__ for m in net] == ["GatedDense", "GatedDense", "Linear"]
    assert net(torch.zeros(5, 784)).shape == (5, 40)
    w = net[0].g.weight  # both halves of a gate are He-initialised: std sqrt(2 / fan_in)
    # 235k draws: a 5% band is ~30 standard errors wide, and PyTorch's default init (std
    # 1/sqrt(3·fan_in), 60% lower) falls far outside it
    assert abs(w.std().item() / math.sqrt(2 / 784) - 1) < 0.05
    with pytest.raises(ValueError):
        gated_mlp([784])


def test_gated_dense_is_linear_times_sigmoid_gate():
    layer = GatedDense(3, 2)
    x = torch.randn(4, 3)
    expected = layer.h(x) * torch.sigmoid(layer.g(x))
    torch.testing.assert_close(layer(x), expected)


def test_bernoulli_nll_matches_torch_distributions():
    logits = torch.randn(6, 10) * 5
    x = torch.bernoulli(torch.rand(6, 10))
    expected = -torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(1)
    torch.testing.assert_close(Bernoulli().nll(x, logits), expected)
    with pytest.raises(ValueError, match="shape"):
        Bernoulli().nll(x, logits[:, :5])


def test_loss_combines_terms_with_the_rate_weight():
    torch.manual_seed(1)
    model = lattice_vae(latent_dim=4, hidden=8, data_dim=12)
    x = torch.bernoulli(torch.rand(5, 12))
    out = model(x)
    losses = RateDistortionLoss(lmbda=0.5)(x, out, model.likelihood)
    distortion = model.likelihood.nll(x, out.params)
    torch.testing.assert_close(losses.distortion, distortion)
    torch.testing.assert_close(losses.rate, out.bottleneck.rate)
    torch.testing.assert_close(losses.loss, (distortion + 0.5 * out.bottleneck.rate).mean())
    with pytest.raises(ValueError):
        RateDistortionLoss(lmbda=-1)


def test_evaluate_objective_selects_the_path_and_restores_modes():
    torch.manual_seed(2)
    model = lattice_vae(latent_dim=4, hidden=8, data_dim=12).train()
    x = torch.bernoulli(torch.rand(7, 12))
    seed = torch.Generator().manual_seed
    hard = evaluate_objective(
        model, RateDistortionLoss(), x, batch_size=3, hard=True, generator=seed(0)
    )
    assert hard["rate"].shape == (7,) and hard["rate"].dtype == torch.float64
    model.eval()
    # one dither key per batch, drawn in turn from the same generator
    g = seed(0)
    expected = torch.cat(
        [model.bottleneck(model.encoder(xb), generator=g).rate for xb in x.split(3)]
    )
    torch.testing.assert_close(hard["rate"], expected.double())
    model.train()
    evaluate_objective(model, RateDistortionLoss(), x)
    assert model.training and model.bottleneck.training and model.encoder.training


def test_theorem1_report_on_a_trained_model(tmp_path):
    data = synthetic_binary(n=1200, dim=64, seed=4)
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=6, hidden=32, data_dim=64)
    fit(
        model, data, TrainConfig(epochs=4, batch_size=50, lr=3e-3, progress=False), out_dir=tmp_path
    )
    report = codelength_report(model, data["test"].repeat(20, 1), seed=5)
    # same images, independent dithers: the paired difference has mean 0 by Theorem 1
    gap = report.codelength.total - report.neg_elbo.total
    assert abs(gap) < 5 * report.gap_se
    assert report.gap_se < 0.02 * report.neg_elbo.total  # and the check is not vacuous


@dataclass
class _Inner:
    lr: float = 1e-3
    kind: Literal["a", "b"] = "a"
    patience: int | None = None
    flag: bool = False


@dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)


def test_overrides_parse_by_type_and_reject_unknown_keys():
    cfg = apply_overrides(
        _Outer(), ["inner.lr=5e-4", "inner.kind=b", "inner.patience=50", "inner.flag=true"]
    )
    assert cfg.inner == _Inner(lr=5e-4, kind="b", patience=50, flag=True)
    assert apply_overrides(cfg, ["inner.patience=none"]).inner.patience is None
    assert from_dict(_Outer, to_dict(cfg)) == cfg
    for bad in ["inner.lr=fast", "inner.kind=c", "inner.nope=1", "inner", "name.sub=1"]:
        with pytest.raises(ValueError):
            apply_overrides(_Outer(), [bad])
    with pytest.raises(ValueError, match="unknown"):
        from_dict(_Outer, {"name": "y", "extra": 1})


@pytest.mark.parametrize("section", [3, "ab", None, ["lr"]])
def test_from_dict_refuses_a_section_that_is_not_a_dict(section):
    """A section given as a number or None failed inside as a TypeError; a string's letters
    were read as unknown keys ("unknown _Inner keys: ['a', 'b']")."""
    with pytest.raises(ValueError, match="_Inner section must be a dict"):
        from_dict(_Outer, {"inner": section})
    with pytest.raises(ValueError, match="_Outer section must be a dict"):
        from_dict(_Outer, section)
