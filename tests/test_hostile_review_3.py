"""Checkpoint recomputations' row fingerprints on a device without float64 (MPS)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from qlatent.bottlenecks import BOTTLENECKS
from qlatent.bottlenecks.base import _fingerprint_device, _row_sums, _same_rows


def test_fingerprint_device_leave_mps_for_the_cpu():
    # MPS has no float64 (torch refuses to convert an MPS tensor to it, as the lattices' float64
    # products know): the float64 fingerprint of every vq_ema / soft_em_vq training forward and
    # of every forward with a generator failed there, where float32 sums had worked
    assert _fingerprint_device(torch.device("mps")) == torch.device("cpu")
    # everywhere else on the rows' own device: no copy to the host per training step
    assert _fingerprint_device(torch.device("cpu")) == torch.device("cpu")
    assert _fingerprint_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert _fingerprint_device(torch.device("meta")) == torch.device("meta")


def test_fingerprint_is_the_weighted_float64_row_sums():
    # the same fingerprint as before wherever float64 exists: (N, 2) weighted sums in float64
    rows = torch.randn(5, 7)
    sums = _row_sums(rows)
    assert sums.dtype == torch.float64 and sums.shape == (5, 2)
    assert _same_rows(sums, rows) and not _same_rows(sums, rows.flip(0))
    centred = rows - rows.mean(1, keepdim=True)  # every row sums to 0
    assert not _same_rows(_row_sums(centred), centred.roll(1, 0))


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs an MPS device")
def test_checkpointed_vq_ema_trains_on_mps():
    neck = BOTTLENECKS.build("vq_ema", dim=4, num_codes=8).to("mps").train()
    y = torch.randn(16, 4, device="mps", requires_grad=True)
    checkpoint(lambda t: neck(t).y_hat, y, use_reentrant=False).sum().backward()
    assert torch.isfinite(y.grad).all()
