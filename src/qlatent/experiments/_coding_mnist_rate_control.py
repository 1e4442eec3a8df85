"""Rate control: a Table-1 row's test set coded with its whole lattice scaled by a factor
(:func:`spacing_scaled`, :func:`rate_control`), the decoder unchanged, and each swept row read at
the reference row's trained −log p(x | ŷ) (:func:`bits_at_distortion`, :func:`_at_reference`).
Called by :func:`~qlatent.experiments.coding_mnist.reproduce`, which re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..coding import compress, decompress, model_digest
from ..models import Autoencoder
from ._coding_mnist_code import LN2, _distortion, _hard_points
from ._coding_mnist_config import CodingMnistConfig


@contextmanager
def spacing_scaled(neck, factor: float) -> Iterator[None]:
    """Inside the block, ``neck``'s whole lattice is scaled by ``factor`` (its log-scales, per
    coordinate or per block, shifted by log ``factor``): a coarser lattice for ``factor`` > 1,
    fewer bits and more distortion, without retraining. Restored on exit."""
    saved = neck.log_spacing.detach().clone()
    try:
        with torch.no_grad():
            neck.log_spacing.add_(math.log(factor))
        yield
    finally:
        with torch.no_grad():
            neck.log_spacing.copy_(saved)


@torch.no_grad()
def rate_control(model: Autoencoder, x: torch.Tensor, cfg: CodingMnistConfig) -> list[dict]:
    """The test set coded at each of ``cfg.spacing_factors`` and at 1 (sorted by factor): per
    factor the file's bits per image, −log p(x | ŷ) of the decoded ŷ (± s.e.), their sum in nats
    and whether the decoded ŷ is the hard path's bit for bit."""
    model.eval()
    neck = model.bottleneck
    y = model.encoder(x)
    points = []
    for factor in sorted({1.0, *map(float, cfg.spacing_factors)}):
        with spacing_scaled(neck, factor):
            digest = model_digest(model)
            data = compress(neck, y, seed=cfg.seed, digest=digest)
            y_hat = decompress(neck, data, digest=digest)
            hard = _hard_points(neck, y, cfg.seed)[1]
            distortion = _distortion(model, x, y_hat).double()
        bits = 8 * len(data) / x.shape[0]
        points.append(
            {
                "factor": factor,
                "coded_bits_per_image": bits,
                "hard_distortion_nats_per_image": distortion.mean().item(),
                "hard_distortion_se": distortion.std().item() / math.sqrt(x.shape[0]),
                "total_nats_per_image": distortion.mean().item() + bits * LN2,
                "round_trip_exact": bool(torch.equal(y_hat, hard)),
            }
        )
    return points


def bits_at_distortion(points: list[dict], distortion: float) -> float | None:
    """A sweep's file size per image at ``distortion`` nats, linear between the two factors whose
    −log p(x | ŷ) bracket it; None outside the sweep (no extrapolation)."""
    pts = sorted(points, key=lambda p: p["hard_distortion_nats_per_image"])
    for lo, hi in zip(pts, pts[1:], strict=False):
        d0, d1 = lo["hard_distortion_nats_per_image"], hi["hard_distortion_nats_per_image"]
        if d0 <= distortion <= d1:
            t = 0.0 if d1 == d0 else (distortion - d0) / (d1 - d0)
            return lo["coded_bits_per_image"] + t * (
                hi["coded_bits_per_image"] - lo["coded_bits_per_image"]
            )
    return None


def _at_reference(rows: dict[str, Any], reference: str) -> None:
    """Each swept row's bits at the reference row's trained −log p(x | ŷ), in place (a reading
    kept from an earlier run is dropped first: its reference may have been re-run since)."""
    for row in rows.values():
        row.pop("rate_control_at_reference", None)
    ref = rows.get(reference)
    if ref is None or "rate_control" not in ref:
        return
    at = next(p for p in ref["rate_control"] if p["factor"] == 1.0)
    for name, row in rows.items():
        if name == reference or "rate_control" not in row:
            continue
        bits = bits_at_distortion(row["rate_control"], at["hard_distortion_nats_per_image"])
        # and the other way round: the reference's sweep at this row's trained point
        own = next(p for p in row["rate_control"] if p["factor"] == 1.0)
        ref_bits = bits_at_distortion(ref["rate_control"], own["hard_distortion_nats_per_image"])
        row["rate_control_at_reference"] = {
            "reference": reference,
            "distortion_nats_per_image": at["hard_distortion_nats_per_image"],
            "reference_bits_per_image": at["coded_bits_per_image"],
            "bits_per_image": bits,
            "difference_bits": None if bits is None else bits - at["coded_bits_per_image"],
            "reference_bits_at_own_distortion": ref_bits,
            "own_difference_bits": None
            if ref_bits is None
            else own["coded_bits_per_image"] - ref_bits,
        }
