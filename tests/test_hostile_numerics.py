"""Hostile numerics: inputs and settings at the edges of the floating-point range, attributes
changed after construction, views far larger than their storage.

Each case is a defect found by pushing a method past ordinary values: soft EM's logits −d/T
overflowing at a tiny temperature (``torch.multinomial`` failed, or the entropy was NaN), its
VIB term unable to backpropagate once the M-step had rewritten the codebook, ``num_codes`` of a
built codebook reassigned without a word, the input check copying an expanded view in full,
k-means and the linear probe scoring features near 1e200 (or 1e-200) with warnings only, or none.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.bottlenecks.soft_em_vq import log_posterior
from qlatent.eval import downstream
from qlatent.eval.downstream import (
    PROBE_MAX_FEATURE,
    kmeans_scores,
    linear_probe,
    linear_probe_converged,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ soft EM at the float extremes
@pytest.mark.parametrize(
    ("dtype", "offset"),
    [(torch.float32, 1e5), (torch.float64, 1e150)],
    ids=["float32", "float64"],
)
def test_soft_em_tiny_temperature_far_from_the_codebook_is_the_nearest_codeword(dtype, offset):
    # d/T passes the dtype's range for every code: the logits were all −∞ (NaN probabilities)
    torch.manual_seed(0)
    sem = build("soft_em_vq", dim=8, num_codes=16, temperature=1e-30, vib_weight=1.0).to(dtype)
    direction = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen(1)), dim=1)
    y = (offset * direction.to(dtype)).requires_grad_()
    # ‖y‖² is common to every code: the nearest maximises 2 y·e − ‖e‖² (float64 suffices)
    codebook = sem.codebook.double()
    nearest = (codebook.square().sum(1) - 2 * y.detach().double() @ codebook.t()).argmin(1)
    out = sem(y, generator=gen(2))
    (out.y_hat.sum() + out.aux_loss).backward()
    # every sample of a row is its nearest code: the first M-step counts exactly those
    expected = (1 - sem.ema.decay) * torch.bincount(nearest, minlength=16).to(dtype)
    torch.testing.assert_close(sem.ema.ema_count, expected)
    assert out.stats["posterior_entropy"].item() == 0.0
    assert math.isfinite(out.aux_loss.item())
    assert bool(y.grad.isfinite().all())
    assert bool(sem.codebook.isfinite().all())


def test_soft_em_small_temperature_far_input_keeps_the_distances_differences():
    # at |y| = 1e6 float32 rounds ‖y‖² by ~1e5: the expansion's logits tied several codes
    torch.manual_seed(0)
    sem = build("soft_em_vq", dim=8, num_codes=16, temperature=1e-6)
    y = torch.randn(4, 8, generator=gen(3)) + 1e6
    out = sem(y, generator=gen(4))
    assert out.stats["posterior_entropy"].item() == 0.0


def test_soft_em_vib_term_reaches_the_encoder():
    # the M-step rewrote the codebook the distances had saved for backward: an autograd error
    # on every call with vib_weight > 0
    y = torch.randn(20, 3, generator=gen(5))
    grads = []
    for vib_weight in (0.0, 1.0):
        torch.manual_seed(6)
        sem = build("soft_em_vq", dim=3, num_codes=5, temperature=0.5, vib_weight=vib_weight)
        x = y.clone().requires_grad_()
        sem(x, generator=gen(7)).aux_loss.backward()
        grads.append(x.grad)
    assert bool(grads[1].isfinite().all())
    assert (grads[1] - grads[0]).abs().max() > 1e-4  # the VIB term's own gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_posterior_is_the_softmax_of_the_distances_on_ordinary_inputs(dtype):
    z = torch.randn(50, 4, generator=gen(8), dtype=dtype)
    codebook = torch.randn(7, 4, generator=gen(9), dtype=dtype)
    # float32 rounds each distance by about eps·‖z‖², which 1/T scales up
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else {}
    for temperature in (1.0, 0.05):
        distances = (z.double().unsqueeze(1) - codebook.double()).square().sum(-1)
        expected = torch.log_softmax(-distances / temperature, dim=1).to(dtype)
        torch.testing.assert_close(log_posterior(z, codebook, temperature), expected, **tolerance)


# --------------------------------------------------------- structural attributes are fixed
@pytest.mark.parametrize(
    ("name", "kwargs", "path", "argument"),
    [
        ("vq", dict(dim=4, num_codes=8), "num_codes", "num_codes"),
        ("vq_ema", dict(dim=4, num_codes=8), "num_codes", "num_codes"),
        ("vq_ema", dict(dim=4, num_codes=8), "ema.num_codes", "num_codes"),
        ("soft_em_vq", dict(dim=4, num_codes=8), "num_codes", "num_codes"),
        ("soft_vq", dict(dim=4, num_codes=8), "num_codes", "num_codes"),
        ("learnable_lattice", dict(dim=4, num_codes=8), "num_codes", "num_codes"),
        ("vector_st", dict(dim=4), "num_codes", "codes"),
        ("vector_st", dict(dim=4), "group", "group"),
        ("scalar_st", dict(dim=4), "num_codes", "levels"),
        ("vq", dict(dim=4), "dim", "dim"),
        ("soft_vq", dict(dim=4, num_codes=8), "in_dim", "in_dim"),
        ("lattice", dict(dim=4), "prior_name", "prior"),
        ("lattice", dict(dim=8, lattice="e8"), "lattice_spec", "lattice"),
        ("lattice", dict(dim=8, lattice="e8"), "scale_per", "scale_per"),
    ],
)
def test_structural_attributes_are_read_only_after_construction(name, kwargs, path, argument):
    bottleneck = build(name, **kwargs)
    *parents, attr = path.split(".")
    owner = bottleneck
    for parent in parents:
        owner = getattr(owner, parent)
    before = getattr(owner, attr)
    with pytest.raises(AttributeError, match=f"{attr} of .* is fixed at construction.*{argument}="):
        setattr(owner, attr, 3)
    assert getattr(owner, attr) == before


def test_changed_num_codes_no_longer_disagrees_with_the_codebook():
    vq = build("vq", dim=4, num_codes=8)
    with pytest.raises(AttributeError, match="build a new one with num_codes=16"):
        vq.num_codes = 16
    vq.eval()
    # the rate and the index check still describe the 8 codes the codebook holds
    assert vq(torch.randn(2, 4, generator=gen(10))).rate[0].item() == pytest.approx(math.log(8))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\)"):
        vq.dequantize(torch.tensor([8]))


# ---------------------------------------------------- an expanded view is checked cheaply
def test_input_check_reads_an_expanded_views_stored_values_only():
    # 2^46 numbers in view, 64 stored: a copy of the view cannot even be allocated
    vq = build("vq", dim=64)
    vq._check_input(torch.zeros(1, 64).expand(2**40, 64))
    bad = torch.zeros(1, 64)
    bad[0, 3] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        vq._check_input(bad.expand(2**40, 64))
    with pytest.raises(ValueError, match="beyond this bottleneck's limit"):
        vq._check_input(torch.full((1, 64, 1), 1e30).expand(2**20, 64, 2**20))


# ------------------------------------------------ downstream features past the float range
def _blobs(scale: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(3, 4))[labels] * 10 + rng.normal(size=(60, 4))
    return x * scale, labels


def test_kmeans_refuses_features_whose_squares_overflow():
    x, labels = _blobs(1e200)
    bound = math.sqrt(np.finfo(np.float64).max / (4 * 60 * 4))  # N = 60 rows of d = 4
    with pytest.raises(ValueError, match=re.escape(f"beyond {bound:.3g} (the squared distances")):
        kmeans_scores(x, labels, n_clusters=3, n_init=2)
    x, labels = _blobs(1e150)  # within the bound: clustered as at scale 1
    assert kmeans_scores(x, labels, n_clusters=3, n_init=2)["kmeans_acc"] == 1.0


def test_linear_probe_refuses_features_its_float32_adam_cannot_square():
    x, labels = _blobs(1e40)
    with pytest.raises(ValueError, match=r"train_features reach magnitude .* beyond 1\.15e\+18"):
        linear_probe(x, labels, x / 1e40, labels, steps=10)
    with pytest.raises(ValueError, match="test_features reach magnitude"):
        linear_probe(x / 1e40, labels, x, labels, steps=10)
    x, labels = _blobs(PROBE_MAX_FEATURE / 20)  # within the bound: still learns
    assert linear_probe(x, labels, x, labels, steps=300)["linear_acc"] > 0.9


def test_converged_probe_refuses_features_whose_squares_overflow():
    x, labels = _blobs(1e160)
    with pytest.raises(ValueError, match="train_features reach magnitude"):
        linear_probe_converged(x, labels, x, labels, Cs=(1.0,))


def test_kmeans_and_the_converged_probe_refuse_features_whose_squares_underflow():
    """At 1e-170 k-means and at 1e-200 the standardized probe scored chance without a word; at
    1e-150 (above the bound) both score as at scale 1, and all-zero features are not refused."""
    x, labels = _blobs(1e-170)
    with pytest.raises(ValueError, match=r"^features reach only magnitude .* below 1\.49e-154 "):
        kmeans_scores(x, labels, n_clusters=3, n_init=2)
    with pytest.raises(ValueError, match=r"^test_features reach only magnitude .*variances"):
        linear_probe_converged(x / 1e-170, labels, x, labels, Cs=(1.0,))
    x, labels = _blobs(1e-150)
    assert kmeans_scores(x, labels, n_clusters=3, n_init=2)["kmeans_acc"] == 1.0
    assert linear_probe_converged(x, labels, x, labels, Cs=(1.0,))["linear_acc"] == 1.0
    zeros = np.zeros_like(x)
    assert kmeans_scores(zeros, labels, n_clusters=1, n_init=1)["inertia"] == 0.0


def test_downstream_report_refuses_the_probes_features_before_kmeans(monkeypatch):
    def no_kmeans(*args, **kwargs):
        raise AssertionError("k-means ran on features the probe refuses")

    monkeypatch.setattr(downstream, "KMeans", no_kmeans)
    x, labels = _blobs(1e20)
    with pytest.raises(ValueError, match="train_features reach magnitude"):
        downstream.downstream_report(x, labels, x / 1e20, labels, n_init=1, probe_steps=10)
