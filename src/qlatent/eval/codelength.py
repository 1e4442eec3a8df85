"""Negative ELBO (training path) against the two-part codelength with real quantization.

For a dithered-lattice model, Theorem 1 and the crypto lemma say the two have the same
expectation: ``E[-log Q(x | x_e - u) + log f_U(u) - log f_{X̂-U}(x_e - u)]`` (training path) equals
``E[-log Q(x | z - u) - log P(Ẑ = z | U = u)]`` (hard path: the bits a real coder would spend on z
plus the decoder's codelength for x given z and the shared dither). Evaluating both on held-out
data is the end-to-end check that the training objective is the representation's cost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .._utils import check_count
from ..losses import RateDistortionLoss, evaluate_objective


@dataclass
class PathEstimate:
    """One path's estimate over a set of examples, in nats per example (means over examples).

    ``total`` = ``distortion`` + ``rate``, ``total_se`` its standard error of the mean (NaN for
    one example); ``distortion`` is the decoder's −log p(x | y_hat), ``rate`` the bottleneck's.
    """

    total: float
    total_se: float
    distortion: float
    rate: float


@dataclass
class CodelengthReport:
    """:func:`codelength_report`'s result: the two paths' estimates and their gap (nats per
    example), for Theorem 1 of L. A. Lastras, "Lattice Representation Learning" (arXiv
    2006.13833)."""

    neg_elbo: PathEstimate  #: training path (dither, no quantization)
    codelength: PathEstimate  #: hard path (quantize, -log P(z | u) + decoder NLL at z - u)
    relative_gap: float  #: (codelength - neg_elbo) / neg_elbo
    gap_se: float  #: standard error of (codelength - neg_elbo), nats

    def to_dict(self) -> dict:
        """The report as nested plain dicts of floats (for JSON)."""
        return asdict(self)


def _estimate(parts: dict[str, Tensor]) -> tuple[PathEstimate, Tensor]:
    total = parts["distortion"] + parts["rate"]
    se = total.std().item() / math.sqrt(total.numel()) if total.numel() > 1 else math.nan
    estimate = PathEstimate(
        total=total.mean().item(),
        total_se=se,
        distortion=parts["distortion"].mean().item(),
        rate=parts["rate"].mean().item(),
    )
    return estimate, total


def codelength_report(
    model: nn.Module, x: Tensor, *, seed: int = 0, batch_size: int = 1000
) -> CodelengthReport:
    """Both estimates on ``x`` (nats per example); the dithers of the two paths are independent.

    The training path draws its dither from a CPU generator seeded with ``seed``, the hard path
    from one seeded with ``seed + 1`` (mod 2^64), so the report is reproducible. The hard path's
    rate is what a coder sharing that generator's dither would realise; a file written by
    :func:`qlatent.coding.compress` with ``seed=seed`` takes its dither from
    :class:`qlatent.rng.SeedKeys` instead, and costs the same in expectation, not dither for
    dither (compare it with :func:`qlatent.coding.ideal_bits` at that seed: bits, whole input).
    Every module's mode is as it was afterwards.

    Raises ValueError for a ``seed`` outside torch's [−2^63, 2^64), a ``batch_size`` that is not
    a positive integer, or ``x`` that is not a tensor of at least one example (no examples made
    every number of the report NaN).
    """
    from ..train.loop import check_seed

    check_seed(seed, "seed")  # manual_seed failed with "expected a long, but got str"
    check_count(batch_size, "batch_size")
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (N >= 1, ...), got {got}")
    loss_fn = RateDistortionLoss()
    gen_train = torch.Generator().manual_seed(seed)
    gen_hard = torch.Generator().manual_seed((seed + 1) % 2**64)  # torch reads seeds mod 2^64
    train_path = evaluate_objective(
        model, loss_fn, x, batch_size=batch_size, hard=False, generator=gen_train
    )
    hard_path = evaluate_objective(
        model, loss_fn, x, batch_size=batch_size, hard=True, generator=gen_hard
    )
    neg_elbo, t_train = _estimate(train_path)
    codelength, t_hard = _estimate(hard_path)
    diff = t_hard - t_train  # same images, independent dithers: a paired difference
    return CodelengthReport(
        neg_elbo=neg_elbo,
        codelength=codelength,
        relative_gap=(codelength.total - neg_elbo.total) / neg_elbo.total,
        gap_se=diff.std().item() / math.sqrt(diff.numel()) if diff.numel() > 1 else math.nan,
    )
