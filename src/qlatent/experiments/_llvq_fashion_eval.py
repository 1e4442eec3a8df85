"""Training and scoring one row of the LL-VQ table: test MSE, code counts, quantizer size and the
test set coded to bytes, each cached in the row's run folder. Used by
:func:`qlatent.experiments.llvq_fashion.reproduce`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..coding import compress, decompress, ideal_bits, unpack
from ..config import to_dict
from ..eval import code_usage
from ..losses import RateDistortionLoss
from ..models import Autoencoder
from ..train import fit, save_atomic
from ._cache import problem, read_cache, refused
from ._llvq_fashion_config import LLVQConfig, build_model


def quantizer_size(bottleneck: torch.nn.Module) -> dict[str, int]:
    """Learned parameters, and the numbers that define the quantizer at test time (parameters
    plus an EMA codebook kept in a buffer; not the EMA's running counts and sums)."""
    trainable = sum(p.numel() for p in bottleneck.parameters())
    ema = getattr(bottleneck, "ema", None)
    return {
        "quantizer_params": trainable + (ema.codebook.numel() if ema is not None else 0),
        "quantizer_trainable_params": trainable,
    }


@torch.no_grad()
def test_mse(model: Autoencoder, x: torch.Tensor, batch_size: int = 500) -> float:
    """Mean squared error per pixel on the hard path."""
    model.eval()
    total = 0.0
    for xb in x.split(batch_size):
        total += (model.reconstruct(xb) - xb).square().sum().item()
    return total / x.numel()


#: what a cached evaluation must hold (:func:`~._cache.problem`): what the table reads
_METRIC_FIELDS = {
    "test_mse": "number",
    **dict.fromkeys(
        ("unique_codes_trainval", "total_vectors", "unique_codes_test", "total_vectors_test"),
        "integer",
    ),
    **dict.fromkeys(("quantizer_params", "quantizer_trainable_params"), "integer"),
}
#: what a cached coding of the test set that was coded must hold
_CODED_FIELDS = {"coded_bits_per_image": "number", "round_trip_exact": "flag"}


def run_row(
    name: str,
    schedule: str,
    cfg: LLVQConfig,
    data: dict[str, torch.Tensor],
    out_dir: Path,
    *,
    folder_split: str | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Train (or resume) one row under one schedule; score it (cached in ``eval.pt``).

    ``folder_split`` (:func:`~qlatent.experiments.custom.folder_split` of an image folder's
    data) is saved with the run, so that resuming it on a folder whose files changed since,
    and whose splits are drawn anew, is refused. Returns the row's metrics and its
    reconstructions of the first test images."""
    channels = data["train"].shape[1]
    pixels = data["train"][0].numel()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, channels, pixels)
    loss_fn = RateDistortionLoss(lmbda=0.0, aux_weight=1.0)
    split = {"train": data["train"], "val": data["val"]}
    run_config = to_dict(cfg)
    if folder_split is not None:
        run_config["derived"] = {"folder_split": folder_split}
    result = fit(model, split, cfg.train, out_dir=out_dir, loss_fn=loss_fn, run_config=run_config)

    cache, key = out_dir / "eval.pt", {"config": to_dict(cfg), "steps": result.history[-1]["step"]}
    metrics = read_cache(cache, {"key": key}, "metrics", _METRIC_FIELDS)
    if metrics is None:
        trainval = code_usage(model, [data["train"], data["val"]])
        test_usage = code_usage(model, [data["test"]])
        metrics = {
            "test_mse": test_mse(model, data["test"]),
            "unique_codes_trainval": trainval.unique_codes,
            "total_vectors": trainval.total_vectors,
            "unique_codes_test": test_usage.unique_codes,
            "total_vectors_test": test_usage.total_vectors,
            **quantizer_size(model.bottleneck),
        }
        spacing = getattr(model.bottleneck, "spacing", None)
        if spacing is not None:
            metrics["spacing_mean"] = spacing.mean().item()
            metrics["spacing_min"] = spacing.min().item()
            metrics["spacing_max"] = spacing.max().item()
        save_atomic({"key": key, "metrics": metrics}, cache)
    coding_cache = out_dir / "coding.pt"
    coding = read_cache(coding_cache, {"key": key}, "coding", {"coded": "flag"})
    wrong = problem(coding, _CODED_FIELDS, "coding") if coding and coding["coded"] else None
    if wrong:
        raise refused(coding_cache, wrong)
    if coding is None:
        coding = code_test_images(model, [data["train"], data["val"]], data["test"])
        save_atomic({"key": key, "coding": coding}, coding_cache)
    row = {
        **metrics,
        "coding": coding,
        "train_steps": result.history[-1]["step"],
        "wall_s": result.wall_s,
        "stopped": result.stopped,
        # the distortion is Σ (x̂ − x)² / pixels per image: the validation set's MSE per pixel
        "final_val_mse": result.history[-1]["val_distortion"],
        "val_mse_per_epoch": [h["val_distortion"] for h in result.history],
    }
    model.eval()
    with torch.no_grad():
        recon = model.reconstruct(data["test"][: cfg.figure_images])
    return row, recon


@torch.no_grad()
def code_test_images(
    model: Autoencoder, fit_on: list[torch.Tensor], test: torch.Tensor, batch_size: int = 500
) -> dict[str, Any]:
    """The test set's codes as one file: the bottleneck's counted code model is learned from
    ``fit_on`` (``update()``), then the test latents are compressed, decompressed and checked
    against the hard path. Bits per image include the header."""
    model.eval()
    neck = model.bottleneck
    try:
        neck.update(model.encoder(xb) for x in fit_on for xb in x.split(batch_size))
    except ValueError as err:  # e.g. a spacing so fine that a coordinate spans > 2^16 values
        return {"coded": False, "reason": str(err)}
    y = torch.cat([model.encoder(xb) for xb in test.split(batch_size)])
    started = time.perf_counter()
    data = compress(neck, y, seed=0)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    y_hat = decompress(neck, data)
    decode_s = time.perf_counter() - started
    n = test.shape[0]
    ideal = ideal_bits(neck, y, seed=0)
    return {
        "coded": True,
        "coded_bits_per_image": 8 * len(data) / n,
        "ideal_bits_per_image": ideal / n,
        "payload_bits": 8 * len(unpack(data)[1]),
        "ideal_bits": ideal,
        "payload_overhead_percent": 100 * (8 * len(unpack(data)[1]) - ideal) / ideal,
        "fixed_rate_bits_per_image": (
            y[:, 0].numel() / n * math.log2(neck.num_codes) if neck.index_kind == "scalar" else None
        ),
        "round_trip_exact": bool(torch.equal(y_hat, neck(y).y_hat)),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }
