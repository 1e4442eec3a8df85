"""Good-lattice files whose cells are far wider than their prior's scale.

A cell some 745 prior scales wide makes the geometric magnitude ratio r = e^(−Δ/b) underflow
to 0 in float64; ``compress`` and ``ideal_bits`` then failed on a bare "math domain error"
(log2 of 0) as soon as a coordinate's magnitude was above 0, which one SGD step at a large
learning rate reaches. The ratio's logarithm is used instead: the file still decodes to the
hard path, and the ideal length is finite and at least the file's share a magnitude costs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import compress, decompress, ideal_bits
from qlatent.rng import SeedKeys


@pytest.mark.parametrize("lattice,dim", [("d3*", 3), ("e8", 8), ("bw16", 16)])
def test_a_cell_hundreds_of_prior_scales_wide_still_codes(lattice, dim):
    bn = build("lattice", dim=dim, lattice=lattice)
    with torch.no_grad():
        bn.log_spacing.fill_(9.5)  # Δ ≈ 13,360
        bn.log_scale.fill_(2.0)  # b ≈ 7.4: Δ / b ≈ 1,800, e^(−Δ/b) = 0 in float64
    bn.eval()
    y = torch.randn(40, dim, generator=torch.Generator().manual_seed(0)) * 3e4
    k = bn.quantize(y, generator=SeedKeys(5))
    assert bool((k != 0).any())  # magnitudes above 0: the case that failed
    data = compress(bn, y, seed=5)
    assert torch.equal(decompress(bn, data), bn(y, generator=SeedKeys(5)).y_hat)
    bits = ideal_bits(bn, y, seed=5)
    # a magnitude t costs t·Δ/(b·ln 2) bits under the model: thousands of bits per step
    assert math.isfinite(bits) and bits > 1e4


def test_a_moderate_ratio_keeps_the_geometric_length():
    """Where r does not underflow, the length from log r is the geometric law's,
    −Σ log2(r^t (1 − r)), as log2(r) gave it (to rounding); no magnitude above 0 costs only
    the (1 − r) factors, also when r underflows."""
    from qlatent.coding.models import _geometric_op

    values = np.array([0, 3, 1, 0, 7], dtype=np.int64)
    for r in (0.9, 0.3, 1e-5, 1e-300):
        expected = -float(sum(t * math.log2(r) + math.log2(1 - r) for t in values))
        bits = _geometric_op(values, None, math.log(r)).bits
        assert bits == pytest.approx(expected, rel=1e-12)
    zeros = np.zeros(4, dtype=np.int64)
    assert _geometric_op(zeros, None, -1e4).bits == 0.0
