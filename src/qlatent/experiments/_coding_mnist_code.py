"""The test set coded into one file and decoded back (:func:`code_test_set`, timed by
:func:`_timed_code`): sizes, rates, exactness and throughput (:func:`_coding_times`), Theorem 1's
training-path estimate (:func:`_train_rate`), the hard rate's spread over dithers
(:func:`_hard_rate_over_seeds`) and, for a good lattice, the Monte-Carlo ideal −log2 P(z | u)
(:func:`_monte_carlo_ideal`); with the hard path's points (:func:`_hard_points`) and
−log p(x | ŷ) (:func:`_distortion`) that the rate-control sweep reads too. Called by
:func:`~qlatent.experiments.coding_mnist.reproduce`, which re-exports :func:`code_test_set` and
:data:`LN2`.
"""

from __future__ import annotations

import math
import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch

from ..bench.timing import time_cases
from ..coding import CODE_MODELS, compress, decompress, ideal_bits, model_digest, unpack
from ..losses import RateDistortionLoss, evaluate_objective
from ..models import Autoencoder
from ..rng import SeedKeys
from ._coding_mnist_config import CodingMnistConfig

LN2 = math.log(2.0)


@torch.no_grad()
def code_test_set(model: Autoencoder, x: torch.Tensor, cfg: CodingMnistConfig) -> dict[str, Any]:
    """Compress and decompress ``x``; sizes, rates, exactness and throughput."""
    model.eval()
    neck = model.bottleneck
    y = model.encoder(x)
    digest = model_digest(model)
    data = compress(neck, y, seed=cfg.seed, digest=digest)
    y_hat = decompress(neck, data, digest=digest)
    timing = _coding_times(neck, y, data, cfg, digest)
    encode_s, decode_s = timing["encode"]["median_s"], timing["decode"]["median_s"]
    good = hasattr(neck, "log_density")  # a good lattice: Monte-Carlo rates
    if good and not cfg.monte_carlo:  # the hard path's points without its Monte-Carlo rate
        indices, y_hard = _hard_points(neck, y, cfg.seed)
        hard = SimpleNamespace(y_hat=y_hard, indices=indices, rate=None)
    else:
        hard = neck(y, generator=SeedKeys(cfg.seed))
    distortion = _distortion(model, x, y_hat)
    header, payload = unpack(data)
    n = x.shape[0]
    symbols = hard.indices.numel()
    hard_bits = math.nan if hard.rate is None else hard.rate.double().sum().item() / LN2
    model_bits = ideal_bits(neck, y, seed=cfg.seed)
    coded_bits = 8 * len(data)
    out = {
        "images": n,
        "symbols": symbols,
        "file_bytes": len(data),
        "header_bytes": header.size,
        "code_model": CODE_MODELS[header.code_model],
        "coded_bits_per_image": coded_bits / n,
        "payload_bits_per_image": 8 * len(payload) / n,
        "hard_rate_bits_per_image": hard_bits / n,
        "ideal_bits_per_image": model_bits / n,
        "overhead_percent": 100.0 * (coded_bits - model_bits) / model_bits,
        "payload_overhead_percent": 100.0 * (8 * len(payload) - model_bits) / model_bits,
        "round_trip_exact": bool(torch.equal(y_hat, hard.y_hat)),
        "hard_distortion_nats_per_image": distortion.double().mean().item(),
        "hard_distortion_se": distortion.double().std().item() / math.sqrt(n),
        "distinct_codes": int(torch.unique(hard.indices.reshape(n, -1), dim=0).shape[0]),
        "encode_symbols_per_s": symbols / encode_s,
        "decode_symbols_per_s": symbols / decode_s,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "timing": timing,
    }
    if good and not cfg.monte_carlo:
        out["hard_rate_bits_per_image"] = None
    elif neck.discrete and hasattr(neck, "log_scale"):  # the lattice: Theorem 1's estimate
        out.update(_train_rate(model, x, cfg, coded_bits_per_image=coded_bits / n))
        # the file's hard rate is one dither's draw: its spread over seeds says how far from the
        # estimate a single file may land, and their mean is Theorem 1's expectation again
        seeds = cfg.good_hard_rate_seeds if good else cfg.hard_rate_seeds
        out["hard_rate_over_seeds"] = _hard_rate_over_seeds(neck, y, seeds)
        if good:
            out.update(_monte_carlo_ideal(neck, y, y_hat, cfg, payload_bits=8 * len(payload)))
    return out


def _coding_times(
    neck, y: torch.Tensor, data: bytes, cfg: CodingMnistConfig, digest: bytes
) -> dict[str, Any]:
    """The times of coding ``y`` into ``data`` and of decoding it back (``encode``, ``decode``:
    :func:`~qlatent.bench.timing.time_cases` over ``timing_repeats`` blocks)."""
    return time_cases(  # medians over interleaved blocks of calls, after one untimed call
        {
            "encode": lambda: compress(neck, y, seed=cfg.seed, digest=digest),
            "decode": lambda: decompress(neck, data, digest=digest),
        },
        repeats=cfg.timing_repeats,
        block=5,
        warmup=1,
    )


def _train_rate(
    model: Autoencoder, x: torch.Tensor, cfg: CodingMnistConfig, *, coded_bits_per_image: float
) -> dict[str, Any]:
    """Theorem 1's training-path rate estimate of ``x`` (bits per image), mean and s.e. over
    ``train_rate_repeats`` dithers, and how far the file's ``coded_bits_per_image`` lies above
    it."""
    rates = []
    for r in range(cfg.train_rate_repeats):
        t = evaluate_objective(
            model, RateDistortionLoss(), x, hard=False,
            generator=torch.Generator().manual_seed(10_000 + r),
        )  # fmt: skip
        rates.append(t["rate"].mean().item() / LN2)
    mean = statistics.fmean(rates)
    return {
        "train_rate_bits_per_image": mean,
        "train_rate_se": statistics.stdev(rates) / math.sqrt(len(rates)),
        "train_rate_repeats": len(rates),
        "coded_minus_train_rate_bits": coded_bits_per_image - mean,
    }


def _hard_rate_over_seeds(neck, y: torch.Tensor, seeds: int) -> dict[str, Any]:
    """The hard path's rate of ``y`` (bits per image) under the dithers of seeds 0 to
    ``seeds`` − 1: their number, mean and sd."""
    hard_rates = [
        neck(y, generator=SeedKeys(s)).rate.double().mean().item() / LN2 for s in range(seeds)
    ]
    return {
        "seeds": len(hard_rates),
        "mean": statistics.fmean(hard_rates),
        "sd": statistics.stdev(hard_rates),
    }


@torch.no_grad()
def _monte_carlo_ideal(neck, y, y_hat, cfg: CodingMnistConfig, *, payload_bits: int) -> dict:
    """The ideal −log2 P(z | u) of the file's points on the first ``ideal_images`` images, by
    Monte Carlo (the cell's prior mass, multiple importance sampling, capped at 1; under a
    Laplace prior with the tilted proposal, whose estimate is the least biased in 24 dimensions),
    mean and s.e. over ``ideal_repeats`` independent estimates; next to the code model's own bits
    on the same images."""
    count = min(cfg.ideal_images, y.shape[0])
    sub = y_hat[:count].reshape(count, -1)
    log_v = float(neck.log_volume())
    estimates = []
    proposal = "tilted" if neck.prior_name == "laplace" else neck.proposal
    with neck.proposal_set_to(proposal):
        for r in range(cfg.ideal_repeats):
            generator = torch.Generator().manual_seed(20_000 + r)
            log_f = neck.log_density(sub, cfg.ideal_samples, cfg.ideal_prior_samples, generator)
            estimates.append(float((-log_v - log_f).double().sum()) / LN2 / count)
    mc = statistics.fmean(estimates)
    se = statistics.stdev(estimates) / math.sqrt(len(estimates))
    model_bits = ideal_bits(neck, y[:count], seed=cfg.seed) / count
    all_model = ideal_bits(neck, y, seed=cfg.seed)
    payload_over_model = payload_bits / all_model - 1
    model_over_ideal = model_bits / mc - 1
    return {
        "mc_ideal_images": count,
        "mc_ideal_bits_per_image": mc,
        "mc_ideal_se": se,
        "mc_ideal_repeats": len(estimates),
        "mc_ideal_samples": [cfg.ideal_samples, cfg.ideal_prior_samples],
        "mc_ideal_proposal": proposal,
        "model_bits_per_image_on_those": model_bits,
        "model_over_ideal_percent": 100 * model_over_ideal,
        "model_over_ideal_se_percent": 100 * model_bits * se / mc**2,
        "payload_over_model_percent": 100 * payload_over_model,
        "file_payload_over_ideal_percent": 100
        * ((1 + payload_over_model) * (1 + model_over_ideal) - 1),
    }


def _hard_points(neck, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The hard path's indices and y_hat under the file's dither (fresh keys of ``seed`` for
    each call, so both draw the same dither), without its rate."""
    indices = neck.quantize(y, generator=SeedKeys(seed))
    return indices, neck.dequantize(indices, generator=SeedKeys(seed))


def _distortion(model: Autoencoder, x: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """−log p(x | ŷ) per image, ``(N,)``, decoded in chunks of 1,000."""
    return torch.cat(
        [model.likelihood.nll(xb, model.decoder(yb)) for xb, yb in zip(
            x.split(1000), y_hat.split(1000), strict=True
        )]
    )  # fmt: skip


def _timed_code(model: Autoencoder, x: torch.Tensor, cfg: CodingMnistConfig) -> dict[str, Any]:
    """:func:`code_test_set` with its wall time (``code_wall_s``)."""
    start = time.perf_counter()
    return {**code_test_set(model, x, cfg), "code_wall_s": time.perf_counter() - start}
