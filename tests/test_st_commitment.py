"""``scalar_st`` / ``vector_st`` with ``commitment=β``: DESIGN.md §3.3's VQ-style codebook +
commitment terms as an option beside the paper's quantizer (appendix A.2), which stays the default.

Checked: the auxiliary loss against its definition ‖c − sg(y)‖² + β‖y − sg(c)‖² (means over the
elements, the nearest code vectors found by brute force), which gradient each term carries, the
default bit for bit as it was, the refused values, the ``repr`` and model digest, the state dict
and pickle round trips, and the config path (``loss.aux_weight`` accepted with the option only).
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from cli_helpers import TINY_OVERRIDES
from qlatent.bottlenecks import build
from qlatent.bottlenecks.scalar_st import ScalarST
from qlatent.bottlenecks.vector_st import VectorST
from qlatent.coding.codec import model_digest
from qlatent.experiments import custom

#: (name, constructor arguments without commitment) of both quantizers, small
CASES = [
    ("scalar_st", dict(dim=6, levels=4, init_range=0.8)),
    ("vector_st", dict(dim=6, group=2, codes=4, init_range=0.8)),
    ("vector_st", dict(dim=6, group=3, codes=5)),  # M not a k-th power: drawn code vectors
]
IDS = ["scalar", "vector-k2", "vector-k3-drawn"]


def _pair(name: str, kwargs: dict, beta: float | None) -> tuple:
    """``(default module, module with commitment=beta)`` holding the same weights."""
    torch.manual_seed(0)
    plain = build(name, **kwargs)
    with torch.no_grad():  # move the codes off their grid so that ties are unlikely
        plain.codes.add_(0.05 * torch.randn_like(plain.codes))
        plain.logits.copy_(torch.randn_like(plain.logits))
    option = build(name, **kwargs, commitment=beta)
    option.load_state_dict(plain.state_dict())
    return plain.train(), option.train()


def _nearest_codes(neck: VectorST, rows: torch.Tensor) -> torch.Tensor:
    """``(R, N)``: each group's nearest code vector by brute force (an explicit loop)."""
    k, groups = neck.group, neck.dim // neck.group
    out = torch.empty_like(rows)
    for g in range(groups):
        part = rows[:, g * k : (g + 1) * k]  # (R, k)
        dist = ((part[:, None, :] - neck.codes[g][None]) ** 2).sum(-1)  # (R, M)
        out[:, g * k : (g + 1) * k] = neck.codes[g][dist.argmin(1)].detach()
    return out


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, N, *spatial)`` -> ``(B·H·W, N)``."""
    return x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() > 2 else x


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
@pytest.mark.parametrize("spatial", [(), (3, 2)], ids=["BN", "BNHW"])
@pytest.mark.parametrize("beta", [0.25, 0.0, 2.0])
def test_aux_loss_is_the_codebook_plus_commitment_terms(name, kwargs, spatial, beta):
    _, neck = _pair(name, kwargs, beta)
    y = 1.3 * torch.randn(5, neck.dim, *spatial, generator=torch.Generator().manual_seed(1))
    out = neck(y)
    q = _nearest_codes(neck, _rows(y))
    assert torch.equal(_rows(out.y_hat), q)  # the forward value is the nearest code vector
    e = q - _rows(y)
    expected = (1.0 + beta) * e.double().square().mean()
    assert out.aux_loss.shape == ()
    assert out.aux_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.aux_loss.item() > 0
    # eval mode: the hard path, no auxiliary loss (as vq's)
    assert neck.eval()(y).aux_loss.item() == 0.0


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
@pytest.mark.parametrize("beta", [0.25, 0.0])
def test_aux_loss_trains_the_codes_and_the_commitment_term_reaches_the_encoder(name, kwargs, beta):
    """∂aux/∂c = 2(c − y)/n on the chosen code vectors (the codebook term), ∂aux/∂y =
    −2β(c − y)/n (the commitment term alone: zero at β = 0), nothing to the logits."""
    _, neck = _pair(name, kwargs, beta)
    y = torch.randn(7, neck.dim, generator=torch.Generator().manual_seed(2), requires_grad=True)
    out = neck(y)
    g_y, g_codes, g_logits = torch.autograd.grad(
        out.aux_loss, [y, neck.codes, neck.logits], allow_unused=True
    )
    # the same gradients from the formula written out with detach
    codes = neck.codes.detach().clone().requires_grad_(True)
    k_idx = (y.detach().reshape(7, -1, neck.group)[:, :, None] - codes.detach()) ** 2
    k_idx = k_idx.sum(-1).argmin(-1)  # (R, G)
    q = codes[torch.arange(codes.shape[0]), k_idx].reshape(7, neck.dim)
    y2 = y.detach().clone().requires_grad_(True)
    direct = (q - y2.detach()).square().mean() + beta * (y2 - q.detach()).square().mean()
    want_y, want_codes = torch.autograd.grad(direct, [y2, codes])
    torch.testing.assert_close(g_codes, want_codes, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_y, want_y, rtol=1e-5, atol=1e-7)
    assert g_codes.abs().sum() > 0  # the codes learn from the auxiliary loss alone
    if beta == 0:
        assert torch.equal(g_y, torch.zeros_like(g_y))  # the codebook term leaves y alone
    else:
        assert g_y.abs().sum() > 0
    assert g_logits is None or torch.equal(g_logits, torch.zeros_like(g_logits))


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_the_default_is_the_papers_quantizer_bit_for_bit(name, kwargs):
    """``commitment=None`` (and leaving it out) is the quantizer as it was: zero aux without a
    graph, y_hat = c + (y − sg(y)); the option changes only ``aux_loss``: y_hat, rate, indices
    and the gradients of y_hat and rate are the same bit for bit."""
    plain, option = _pair(name, kwargs, 0.5)
    explicit = build(name, **kwargs, commitment=None)
    explicit.load_state_dict(plain.state_dict())
    assert plain.commitment is None and explicit.commitment is None
    y = torch.randn(4, plain.dim, 2, generator=torch.Generator().manual_seed(3))
    results = []
    for neck in (plain, explicit.train(), option):
        x = y.clone().requires_grad_(True)
        out = neck(x)
        w = torch.randn_like(out.y_hat, generator=torch.Generator().manual_seed(4))
        grads = torch.autograd.grad((w * out.y_hat).sum() + out.rate.sum(), [x, *neck.parameters()])
        results.append((out, grads))
    (a, grads_a), (b, grads_b), (c, grads_c) = results
    w = torch.randn_like(a.y_hat, generator=torch.Generator().manual_seed(4))
    for out in (a, b):
        assert not out.aux_loss.requires_grad and out.aux_loss.item() == 0.0
    assert c.aux_loss.item() > 0
    for other, grads in ((b, grads_b), (c, grads_c)):
        assert torch.equal(other.y_hat, a.y_hat) and torch.equal(other.rate, a.rate)
        assert all(torch.equal(g, h) for g, h in zip(grads, grads_a, strict=True))
    # the forward written out: the codes get the decoder's gradient, y the straight-through one
    assert torch.equal(grads_a[0], w)
    assert grads_a[1].abs().sum() > 0  # the codes


@pytest.mark.parametrize("name", ["scalar_st", "vector_st"])
@pytest.mark.parametrize("bad", [True, False, math.nan, -0.1, math.inf, -math.inf, 1e31, "0.25"])
def test_bad_commitments_are_refused(name, bad):
    with pytest.raises(ValueError, match="commitment"):
        build(name, dim=4, commitment=bad)
    neck = build(name, dim=4, commitment=0.25)
    with pytest.raises(ValueError, match="commitment"):
        neck.commitment = bad  # checked after construction too
    assert neck.commitment == 0.25
    neck.commitment = None  # back to the paper's quantizer
    assert neck.train()(torch.randn(3, 4)).aux_loss.item() == 0.0


def test_repr_names_the_option_and_the_digest_ignores_it():
    """A module at the default shows the ``repr`` it always had (the digests of its files);
    a set β is shown, yet names the same code (a training loss's weight)."""
    plain = ScalarST(dim=4, levels=3)
    assert repr(plain) == "ScalarST(dim=4, levels=3, init_range=1.0)"
    assert repr(VectorST(dim=4)) == "VectorST(dim=4, group=2, codes=4, init_range=1.0)"
    option = ScalarST(dim=4, levels=3, commitment=0.25)
    option.load_state_dict(plain.state_dict())
    assert repr(option) == "ScalarST(dim=4, levels=3, init_range=1.0, commitment=0.25)"
    assert "commitment=0.0" in repr(VectorST(dim=4, commitment=0))
    assert model_digest(option) == model_digest(plain)


@pytest.mark.parametrize("name", ["scalar_st", "vector_st"])
def test_saved_weights_and_pickles_load_either_way(name):
    """The option is no weight: a state dict moves between the two; a whole module pickled
    before the option existed (no ``commitment`` in its ``__dict__``) loads as the default."""
    plain = build(name, dim=4)
    option = build(name, dim=4, commitment=1.0)
    option.load_state_dict(plain.state_dict())  # strict: same keys, no identity refused
    plain.load_state_dict(option.state_dict())
    assert option.commitment == 1.0 and plain.commitment is None

    old = pickle.loads(pickle.dumps(plain))
    del old.__dict__["commitment"]  # as pickled before the option
    revived = pickle.loads(pickle.dumps(old))
    assert revived.commitment is None
    assert revived.train()(torch.randn(2, 4)).aux_loss.item() == 0.0
    assert pickle.loads(pickle.dumps(option)).commitment == 1.0


TINY = [*TINY_OVERRIDES, "train.max_steps=1"]  # a run of one update on 60 synthetic images


@pytest.mark.parametrize("name", ["scalar_st", "vector_st"])
def test_loss_aux_weight_is_accepted_with_the_option_only(name):
    with_option = custom.load_config(
        None, [*TINY, f"bottleneck.name={name}", "bottleneck.args.commitment=0.25"]
    )
    weighted = custom.load_config(
        None,
        [*TINY, f"bottleneck.name={name}", "bottleneck.args.commitment=0.25", "loss.aux_weight=2"],
    )
    without = custom.load_config(None, [*TINY, f"bottleneck.name={name}", "loss.aux_weight=2"])
    assert custom.has_aux_loss(with_option.bottleneck)
    assert not custom.has_aux_loss(without.bottleneck)
    custom.check_new_run(weighted)
    with pytest.raises(ValueError, match=r"loss\.aux_weight.*bottleneck\.args\.commitment"):
        custom.check_new_run(without)
    # the default weight and no option: accepted as before
    custom.check_new_run(custom.load_config(None, [*TINY, f"bottleneck.name={name}"]))
    # a bad β from a config is refused as the config is read, before any data
    with pytest.raises(ValueError, match="commitment must be a non-negative number"):
        custom.load_config(
            None, [*TINY, f"bottleneck.name={name}", "bottleneck.args.commitment=-1"]
        )


def test_a_run_with_the_option_trains_and_its_checkpoint_round_trips(tmp_path):
    """``qlatent train`` with ``commitment`` and ``loss.aux_weight`` runs; its checkpoint
    rebuilds the option, and the same checkpoint saved without it (as before the option)
    rebuilds the paper's quantizer from the same weights."""
    out = tmp_path / "run"
    cfg = custom.load_config(
        None,
        [
            *TINY,
            "bottleneck.name=scalar_st",
            "bottleneck.args.levels=3",
            "bottleneck.args.commitment=0.25",
            "loss.aux_weight=0.5",
            f"out_dir={out}",
        ],
    )
    custom.train(cfg)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    model, loaded = custom.model_from_checkpoint(ckpt)
    assert model.bottleneck.commitment == 0.25 and loaded.loss.aux_weight == 0.5
    ckpt["run_config"]["bottleneck"]["args"].pop("commitment")
    ckpt["run_config"]["loss"]["aux_weight"] = 1.0
    older, _ = custom.model_from_checkpoint(ckpt)
    assert older.bottleneck.commitment is None and older.bottleneck.num_codes == 3
    for a, b in zip(model.state_dict().values(), older.state_dict().values(), strict=True):
        assert torch.equal(a, b)
