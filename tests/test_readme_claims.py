"""Claims of the README's "Hostile input and edge cases" and "Training" sections that no other
test pinned, each checked as the README states it.

Checked: ``SquaredError`` and ``model.variance`` take both ends of the documented range
[1e-30, 1e30] (1e30 itself was refused, so a config the parser accepted failed when its model
was built); Soft VQ clamps its log-scales to ±¼·log(max) and its logits to the lowest finite
value, changing nothing inside; ``decompress`` refuses more than 2^27 values by default; a
``.qlc`` file's checksum is checked before its model digest; joining a torchrun world waits
300 s by default; validation is the negative ELBO (rate at weight 1) whatever rate weight a
run trains with; a model may hold 2^30 numbers and no more.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from qlatent import coding
from qlatent._size import check_size
from qlatent.bottlenecks import build
from qlatent.bottlenecks.soft_vq import soft_assignment_logits
from qlatent.data import synthetic_binary
from qlatent.experiments.custom import build_model, load_config
from qlatent.losses import RateDistortionLoss
from qlatent.models import gated_vae
from qlatent.nn.likelihoods import SquaredError
from qlatent.train import TrainConfig, distributed, fit


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ the variance's documented range
@pytest.mark.parametrize("variance", [1e-30, 1e30])
def test_squared_error_takes_both_ends_of_its_range(variance):
    """README: "`SquaredError`'s variance lies in [1e-30, 1e30]". The upper end was computed as
    1 / 1e-30 = 9.999999999999999e29, which refused 1e30 with a message naming 1e+30 as allowed."""
    x, out = torch.rand(3, 5, generator=gen(0)), torch.randn(3, 5, generator=gen(1))
    nll = SquaredError(variance=variance).nll(x, out)
    torch.testing.assert_close(nll, ((out - x) ** 2).sum(1) / variance)


@pytest.mark.parametrize("variance", [math.nextafter(1e-30, 0), math.nextafter(1e30, math.inf)])
def test_squared_error_refuses_just_outside_its_range(variance):
    with pytest.raises(ValueError, match=r"variance must be a number in \[1e-30, 1e\+30\]"):
        SquaredError(variance=variance)


def test_a_config_variance_of_1e30_builds_its_model():
    """README: "`model.variance` is 0 or in [1e-30, 1e30]": the config took 1e30, and building
    the model from it then failed in ``SquaredError``."""
    cfg = load_config(
        None,
        [
            "data.name=synthetic",
            "model.family=relu_mlp",
            "model.hidden=[8]",
            "model.latent_dim=4",
            "model.likelihood=squared_error",
            "model.variance=1e30",
        ],
    )
    model = build_model(cfg, (1, 4, 4), 0.25)
    assert model.likelihood.variance == 1e30


# --------------------------------------------------------------------- Soft VQ's clamps
def test_soft_vq_log_scales_are_clamped_at_a_quarter_of_log_max():
    """README: "`soft_vq` clamps its log-scales to ±¼·log(max) (±22.2 in float32) and its
    logits to the lowest finite value, which changes nothing inside those ranges"."""
    finfo = torch.finfo(torch.float32)
    reach = 0.25 * math.log(finfo.max)
    assert reach == pytest.approx(22.18, abs=0.005)
    z = torch.randn(4, 3, generator=gen(2))
    codebook = torch.randn(5, 3, generator=gen(3))
    # inside the range: eq. 5 written out in float64
    log_sigma = torch.empty(4, 5).uniform_(-3.0, 3.0, generator=gen(4))
    d2 = ((z.double()[:, None] - codebook.double()[None]) ** 2).sum(-1)
    expected = -3 * log_sigma.double() - d2 / (2 * torch.exp(2 * log_sigma.double()))
    got = soft_assignment_logits(z, log_sigma, codebook)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    # beyond it: the clamped value's logits, bit for bit
    for side in (1.0, -1.0):
        far = soft_assignment_logits(z, torch.full((4, 5), side * 1e4), codebook)
        edge = soft_assignment_logits(z, torch.full((4, 5), side * reach), codebook)
        assert torch.equal(far, edge) and torch.isfinite(far).all()
    # a row far from every codeword under the smallest scale: the lowest finite logit, a
    # uniform assignment instead of NaN
    logits = soft_assignment_logits(torch.full((1, 3), 1e18), torch.full((1, 5), -reach), codebook)
    assert torch.equal(logits, torch.full((1, 5), finfo.min))
    torch.testing.assert_close(logits.softmax(1), torch.full((1, 5), 0.2))


# ----------------------------------------------------------------------------- .qlc files
def test_decompress_refuses_more_than_2_27_values_by_default():
    """README: "more than `max_elements` values (default 2^27, an argument of `decompress`)";
    the command line's ``--max-elements`` has the same default."""
    from qlatent.cli import build_parser

    default = inspect.signature(coding.decompress).parameters["max_elements"].default
    assert default == 2**27
    args = build_parser().parse_args(["decompress", "in.qlc", "--checkpoint", "c.pt", "-o", "o"])
    assert args.max_elements == 2**27


def test_the_checksum_is_checked_before_the_model_digest():
    """README: "Magic, version, lengths and a CRC-32 are checked first, then the model digest":
    a damaged file handed to another model is reported as damaged, not as another model's."""
    torch.manual_seed(0)
    writer, reader = build("lattice", dim=4).eval(), build("lattice", dim=4).eval()
    with torch.no_grad():
        reader.log_scale.add_(0.5)  # other weights: another digest
    data = coding.compress(writer, torch.randn(6, 4, generator=gen(5)), seed=3)
    with pytest.raises(coding.CodingError, match="different model"):
        coding.decompress(reader, data)
    damaged = bytearray(data)
    damaged[-5] ^= 0x01  # the payload's last byte, before the CRC
    with pytest.raises(coding.CodingError, match="checksum mismatch"):
        coding.decompress(reader, bytes(damaged))


# ------------------------------------------------------------------------------ training
def test_joining_a_world_waits_300_seconds_by_default(monkeypatch):
    """README: "bounded by `QLATENT_DIST_TIMEOUT` seconds (default 300)"."""
    monkeypatch.delenv("QLATENT_DIST_TIMEOUT", raising=False)
    assert distributed._join_timeout() == 300.0
    monkeypatch.setenv("QLATENT_DIST_TIMEOUT", "7.5")
    assert distributed._join_timeout() == 7.5


def test_validation_is_the_negative_elbo_whatever_the_rate_weight(tmp_path):
    """README (Training): the best model is "best on that negative ELBO, distortion + rate at
    weight 1, whatever `loss.rate_weight` a run trains with". Trained at λ = 0.1, the recorded
    validation objective is still distortion + rate, recomputed here on the final weights."""
    torch.manual_seed(0)
    data = synthetic_binary(n=120, dim=12, seed=3)
    model = gated_vae("vq", latent_dim=4, hidden=16, data_dim=12)  # deterministic train path
    cfg = TrainConfig(epochs=1, batch_size=25, eval_batch_size=20, lr=1e-3, progress=False)
    result = fit(model, data, cfg, out_dir=tmp_path, loss_fn=RateDistortionLoss(lmbda=0.1))
    record = result.history[-1]
    model.train()
    with torch.no_grad():
        out = model(data["val"])
        distortion = model.likelihood.nll(data["val"], out.params).double()
        rate = out.bottleneck.rate.double()
    assert rate.mean().item() > 1.0  # a rate term large enough for the weight to show
    assert record["val_objective"] == pytest.approx((distortion + rate).mean().item(), rel=1e-6)
    weighted = (distortion + 0.1 * rate).mean().item()
    assert record["val_objective"] != pytest.approx(weighted, rel=1e-3)


# --------------------------------------------------------------------------- model sizes
def test_a_model_may_hold_2_30_numbers_and_no_more():
    """README: a model "that would hold more than 2^30 numbers (`MAX_MODEL_NUMBERS`, 4 GiB of
    float32 ...) is a ValueError naming its count", counted on the meta device (nothing here
    is allocated)."""
    check_size(lambda: nn.Linear(2**15, 2**15, bias=False))  # 2^30 numbers exactly
    with pytest.raises(ValueError, match="1,073,774,592 numbers, more than the 1,073,741,824"):
        check_size(lambda: nn.Linear(2**15, 2**15))  # and the 2^15 of its bias


@pytest.mark.parametrize("name", ["vq_ema", "soft_em_vq"])
def test_an_ema_decay_set_on_the_quantizer_is_checked_and_used(name):
    """The README: "A bottleneck's settings are checked when they are assigned after
    construction too (an EMA decay of 1.5 ...)". ``neck.decay = 1.5`` on the quantizer itself
    made an attribute nothing read, while its codebook went on at 0.99. It reaches the
    codebook, checked."""
    from qlatent.bottlenecks import build

    neck = build(name, dim=2, num_codes=3)
    with pytest.raises(ValueError, match="decay"):
        neck.decay = 1.5
    neck.decay, neck.eps = 0.5, 1e-3
    assert (neck.ema.decay, neck.ema.eps) == (0.5, 1e-3)
    assert (neck.decay, neck.eps) == (0.5, 1e-3)
