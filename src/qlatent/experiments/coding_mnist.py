"""The rate as a file: code the 10,000 binarized-MNIST test images with trained models.

Two models share the gated-MLP encoder and decoder of the lattice paper (``qlatent.models``):

- the **rectangular-lattice VAE** (m = 40, the demo's configuration). Its symbols are coded with
  the exact probability of their dithered cell under the Laplace prior, so the file's size should
  be the summed hard-path rate −log2 P(z | u) plus the ANS coder's few bits and the header, and,
  by Theorem 1, match the training-path rate estimate within Monte-Carlo error;
- a **VQ-VAE** (one codeword index per image, K = 512). After training, ``update()`` counts its
  indices over the training images, and the test indices are coded with those frequencies
  (the counted code model), against the fixed rate log2 K of coding them uniformly;
- the **Table-1 lattice VAEs** of ``qlatent reproduce lattice-mnist`` (``rect_lattice``,
  ``e8_lattice``, ``leech_lattice``, the rows with a scale per coordinate, ``e8_coord_lattice``
  and ``leech_coord_lattice``, the E8 row trained with the debiased rate,
  ``e8_debias_lattice``, and the Leech row with the tilted proposal, ``leech_tilted_lattice``),
  read from their runs (``table1_runs``; trained here on
  the synthetic set with ``--quick``). A good lattice's point is coded by its coset (E8, Λ16,
  Λ24; :class:`qlatent.coding.models.GoodLattice`); its ideal
  −log2 P(z | u), the prior's mass on the Voronoi cell around z − u, has no closed form and is
  estimated by Monte Carlo on the first ``ideal_images`` images, with its standard error over
  ``ideal_repeats`` independent estimates.

Each model is trained (or resumed) by the shared training loop; then the test set is compressed
into one file, decoded, and the decoded ``y_hat`` compared with the hard path bit for bit. The
dither is that of :class:`qlatent.rng.SeedKeys` with the configured seed.
Throughput counts symbols (lattice coordinates or codeword indices) per second of entropy
coding alone, networks excluded.

Rate control (``spacing_factors``): a Table-1 row is also coded with its whole lattice scaled by
each factor, the decoder unchanged, which traces file size against −log p(x | ŷ) around the
trained point; each swept row is then read at the reference row's trained −log p(x | ŷ) (and the
reference at the row's), so two lattices are compared at equal reconstruction likelihood.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch

from .._size import check_size
from .._utils import expanded, terminal_text
from ..bench.timing import time_cases
from ..coding import CODE_MODELS, compress, decompress, ideal_bits, model_digest, unpack
from ..config import apply_overrides, to_dict
from ..losses import RateDistortionLoss, evaluate_objective
from ..models import Autoencoder, gated_vae
from ..results import RESULTS_DIR, cell, finite, provenance, read_json, write_json, write_text
from ..rng import SeedKeys
from ..train import TrainConfig, fit
from ._cache import problem
from .custom import MAX_EVAL_COUNT, check_eval_seed, check_positive, check_reproduce
from .lattice_vae import load_data

LN2 = math.log(2.0)


#: counts whose estimates are reported with their s.e. or standard deviation
_SPREAD_COUNTS = ("train_rate_repeats", "hard_rate_seeds", "good_hard_rate_seeds", "ideal_repeats")


@dataclass
class CodingMnistConfig:
    data: Literal["binarized-mnist", "synthetic"] = "binarized-mnist"
    latent_dim: int = 40
    hidden: int = 300
    num_codes: int = 512  #: K of the VQ-VAE
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15))
    seed: int = 0  #: the dither's seed, stored in the file
    train_rate_repeats: int = 10  #: independent training-path dithers for Theorem 1's estimate
    hard_rate_seeds: int = 20  #: dither seeds over which the hard-path rate's spread is measured
    timing_repeats: int = 20  #: timed compress / decompress calls per model (medians reported)
    #: the runs folder of `qlatent reproduce lattice-mnist` that the Table-1 rows are read from
    table1_runs: str = "runs"
    good_hard_rate_seeds: int = 3  #: hard_rate_seeds for the good lattices (Monte-Carlo rates)
    ideal_images: int = 1000  #: images of the Monte-Carlo ideal −log2 P(z | u)
    ideal_repeats: int = 3  #: independent Monte-Carlo estimates of it (for its s.e.)
    ideal_samples: int = 2048  #: uniform cell points per estimate
    ideal_prior_samples: int = 256  #: proposal draws per estimate
    #: good lattices: also the Monte-Carlo rates (hard rate, Theorem 1, the ideal); false codes
    #: the test set and checks the round trip only (faster where the Monte-Carlo rates are slow)
    monte_carlo: bool = True
    #: rate control: also code each Table-1 row with its whole lattice scaled by each of these
    #: factors (files, exactness and −log p(x | ŷ) only; the decoder is not retrained), e.g.
    #: [0.98, 0.99, 1.01, 1.02]; empty: no sweep
    spacing_factors: list[float] = field(default_factory=list)
    #: the row whose trained point the other rows' sweeps are read at (equal −log p(x | ŷ))
    rate_control_reference: str = "rect_lattice"

    def __post_init__(self) -> None:
        # here, not after the training: 0 or a negative count averages nothing (an error, or a
        # NaN in the results), and a seed the coder refuses fails once every model is trained
        check_positive(self, "", ("latent_dim", "hidden", "num_codes", "ideal_images"))
        counts = (
            "train_rate_repeats",
            "hard_rate_seeds",
            "timing_repeats",
            "good_hard_rate_seeds",
            "ideal_repeats",
            "ideal_samples",
            "ideal_prior_samples",
        )
        check_positive(self, "", counts, at_most=MAX_EVAL_COUNT)
        for name in _SPREAD_COUNTS:  # one estimate has no spread: its s.e. would read 0
            if getattr(self, name) < 2:
                raise ValueError(
                    f"{name} must be at least 2 (its spread is reported), got {getattr(self, name)}"
                )
        check_eval_seed(self.seed, "seed")
        factors = self.spacing_factors
        if not isinstance(factors, list) or not all(
            isinstance(f, int | float) and not isinstance(f, bool) and 0.5 <= f <= 2.0
            for f in factors
        ):
            raise ValueError(
                f"spacing_factors must be a list of numbers in [0.5, 2], got {factors!r}"
            )


def config(*, quick: bool, overrides: list[str] | None = None) -> CodingMnistConfig:
    cfg = CodingMnistConfig()
    if quick:
        cfg.data = "synthetic"
        cfg.hidden = 32
        cfg.train = TrainConfig(epochs=2, batch_size=100)
        cfg.train_rate_repeats = 3
        cfg.hard_rate_seeds = 3
        cfg.good_hard_rate_seeds = 2
        cfg.timing_repeats = 2
        cfg.ideal_images = 50
        cfg.ideal_repeats = 2
        cfg.ideal_samples = 256
        cfg.ideal_prior_samples = 32
    cfg = apply_overrides(cfg, overrides or [])
    for name in ("lattice", "vq"):  # sizes counted before the data is read
        check_size(lambda n=name: _model(n, cfg, seeded=False), f"the {name} model")
    return cfg


#: rows read from `qlatent reproduce lattice-mnist`'s checkpoints
TABLE1 = (
    "rect_lattice",
    "e8_lattice",
    "leech_lattice",
    "e8_coord_lattice",
    "leech_coord_lattice",
    "e8_debias_lattice",
    "leech_tilted_lattice",
    "e8z_lattice",
    # Gaussian prior: every block in a triangular basis (Z blocks at the exact rate)
    "rect_gauss_lattice",
    "e8_gauss_lattice",
    "leechz_gauss_lattice",
    "rect_gl_lattice",
    "e8_gl_lattice",
    "leechz_gl_lattice",
    "leeche8_gl_lattice",
    "e8z_gl_lattice",
    "e8z8_gl_lattice",
)
MODELS = ("lattice", "vq", *TABLE1)


def _table1_model(
    name: str, cfg: CodingMnistConfig, data, *, quick: bool, runs_dir: Path
) -> tuple[Autoencoder, dict[str, Any]]:
    """A Table-1 row's trained model: its best checkpoint from the lattice-mnist runs, or, with
    ``quick``, trained here with the quick lattice-mnist config on this table's data."""
    from ..train import CheckpointError, load, load_weights
    from . import lattice_mnist

    lcfg = lattice_mnist.model_config(name, quick=quick, overrides=["train.progress=false"])
    model = lattice_mnist.build_model(lcfg, data["train"].shape[1])
    if quick:
        folder = runs_dir / "coding-mnist-quick" / name
        result = fit(model, data, lcfg.train, out_dir=folder, run_config=to_dict(lcfg))
        return model, {"checkpoint": str(folder / "best.pt"), "train_wall_s": result.wall_s}
    folder = expanded(cfg.table1_runs) / "lattice-mnist" / name
    best = folder / "best.pt"
    if not best.is_file():
        raise ValueError(
            f"no checkpoint {best}: train the row with `qlatent reproduce lattice-mnist --models "
            f"{name}` first, or point --set table1_runs=DIR at its runs folder"
        )
    ckpt = load(best)
    load_weights(model, ckpt.get("model"), best)
    wrong = problem(ckpt, {"epoch": "integer or None or missing"})
    if wrong:  # recorded in the results
        raise CheckpointError(f"{best}: {wrong}")
    info = {"checkpoint": str(best), "checkpoint_epoch": ckpt.get("epoch")}
    if (folder / "last.pt").is_file():
        # where the row's run stands, for the record only: what cannot be read is said so
        try:
            last = load(folder / "last.pt")
            wrong = problem(last, {"state": "table"}) or problem(
                last["state"], {"epoch": "integer", "stopped": "string"}, "state"
            )
        except CheckpointError as err:
            wrong = str(err)
        if wrong:
            info["run_state"] = f"unreadable ({wrong})"
        else:
            info["run_epochs"] = last["state"]["epoch"]
            info["run_stopped"] = last["state"]["stopped"] or "in progress"
    info["bottleneck_args"] = lcfg.model.bottleneck_args
    return model, info


def trained_table1_model(
    name: str, runs_dir: str | Path, data_dir: str | None = None
) -> tuple[Autoencoder, dict[str, Any], dict[str, torch.Tensor]]:
    """A trained Table-1 row for analysis: ``(model, checkpoint info, MNIST splits)``, the model
    from its best checkpoint under ``runs_dir`` (a lattice-mnist runs folder), the data as this
    table loads it (binarized MNIST, ``data_dir`` the download cache)."""
    cfg = config(quick=False, overrides=[f"table1_runs={runs_dir}"])
    data = load_data(cfg, data_dir)
    model, info = _table1_model(name, cfg, data, quick=False, runs_dir=Path(runs_dir))
    return model, info, data


def _model(name: str, cfg: CodingMnistConfig, *, seeded: bool = True) -> Autoencoder:
    if seeded:
        torch.manual_seed(cfg.train.seed)
    if name == "lattice":
        return gated_vae("lattice", latent_dim=cfg.latent_dim, hidden=cfg.hidden)
    return gated_vae("vq", latent_dim=cfg.latent_dim, hidden=cfg.hidden, num_codes=cfg.num_codes)


@torch.no_grad()
def code_test_set(model: Autoencoder, x: torch.Tensor, cfg: CodingMnistConfig) -> dict[str, Any]:
    """Compress and decompress ``x``; sizes, rates, exactness and throughput."""
    model.eval()
    neck = model.bottleneck
    y = model.encoder(x)
    digest = model_digest(model)
    data = compress(neck, y, seed=cfg.seed, digest=digest)
    y_hat = decompress(neck, data, digest=digest)
    timing = time_cases(  # medians over interleaved blocks of calls, after one untimed call
        {
            "encode": lambda: compress(neck, y, seed=cfg.seed, digest=digest),
            "decode": lambda: decompress(neck, data, digest=digest),
        },
        repeats=cfg.timing_repeats,
        block=5,
        warmup=1,
    )
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
        rates = []
        for r in range(cfg.train_rate_repeats):
            t = evaluate_objective(
                model, RateDistortionLoss(), x, hard=False,
                generator=torch.Generator().manual_seed(10_000 + r),
            )  # fmt: skip
            rates.append(t["rate"].mean().item() / LN2)
        mean = statistics.fmean(rates)
        out["train_rate_bits_per_image"] = mean
        out["train_rate_se"] = statistics.stdev(rates) / math.sqrt(len(rates))
        out["train_rate_repeats"] = len(rates)
        out["coded_minus_train_rate_bits"] = coded_bits / n - mean
        # the file's hard rate is one dither's draw: its spread over seeds says how far from the
        # estimate a single file may land, and their mean is Theorem 1's expectation again
        seeds = cfg.good_hard_rate_seeds if good else cfg.hard_rate_seeds
        hard_rates = [
            neck(y, generator=SeedKeys(s)).rate.double().mean().item() / LN2 for s in range(seeds)
        ]
        out["hard_rate_over_seeds"] = {
            "seeds": len(hard_rates),
            "mean": statistics.fmean(hard_rates),
            "sd": statistics.stdev(hard_rates),
        }
        if good:
            out.update(_monte_carlo_ideal(neck, y, y_hat, cfg, payload_bits=8 * len(payload)))
    return out


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


def figure_rate_control(rows: dict[str, Any], path: Path) -> Path | None:
    """Coded bits per image against −log p(x | ŷ) of each swept row (its trained point ringed);
    None when no row was swept."""
    from ..eval.plots import save_figure, subplots

    swept = {name: r["rate_control"] for name, r in rows.items() if "rate_control" in r}
    if not swept:
        return None
    fig, ax = subplots(figsize=(6, 4))
    for name, points in swept.items():
        d = [p["hard_distortion_nats_per_image"] for p in points]
        b = [p["coded_bits_per_image"] for p in points]
        ax.plot(d, b, marker=".", label=name)
        trained = next(p for p in points if p["factor"] == 1.0)
        ax.plot(
            trained["hard_distortion_nats_per_image"], trained["coded_bits_per_image"], "o",
            mfc="none", ms=9, color=ax.lines[-1].get_color(),
        )  # fmt: skip
    ax.set_xlabel("−log p(x | ŷ), nats per image (decoded from the file)")
    ax.set_ylabel("file size, bits per image")
    ax.set_title("binarized MNIST test set: the lattice scaled by a factor (ringed: 1)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


#: the fields of a row that :func:`figure_coded_bits` reads (None: a NaN or infinity as the
#: results file holds it, drawn as missing)
_FIGURE_FIELDS = {
    "images": "integer",
    "header_bytes": "integer",
    "coded_bits_per_image": "number or None",
    "ideal_bits_per_image": "number or None",
    "hard_rate_bits_per_image": "number or None or missing",
    "round_trip_exact": "flag",
}
#: what the left panel of :func:`figure_coded_bits` draws of a row: bar, tick, diamond
_MARKED = ("coded_bits_per_image", "ideal_bits_per_image", "hard_rate_bits_per_image")
_DATA_NAMES = {"binarized-mnist": "binarized MNIST", "synthetic": "synthetic"}


def _figure_problem(payload: Any) -> str | None:
    """What keeps ``payload`` from being drawn by :func:`figure_coded_bits`, or None."""
    wrong = problem(payload, {"rows": "table", "config": "table"}, "the payload")
    wrong = wrong or problem(payload["config"], {"data": "string"}, "config")
    if wrong is None and not payload["rows"]:
        return "the payload holds no row"
    for name, row in payload["rows"].items() if wrong is None else ():
        row_wrong = problem(row, _FIGURE_FIELDS, "row")
        if row_wrong is None and row["images"] < 1:
            row_wrong = f"row.images is {row['images']}, not a count of at least 1"
        if row_wrong:
            return f"the row {name!r} cannot be drawn ({row_wrong})"
    return wrong


def figure_coded_bits(payload: dict[str, Any], path: str | Path) -> Path:
    """Each row's file against the bits its code model promises, from ``payload`` alone
    (:func:`reproduce`'s, or its JSON file read back; no checkpoint): ValueError naming the first
    field that keeps it from being drawn.

    Left, the file's bits per image (header and checksum included), rows sorted, with the ideal
    Σ −log2 P(symbol) of its code model and the hard-path rate marked and the overhead over the
    ideal written beside each bar; right, that overhead in bits per image, split into the fixed
    header and checksum (its bytes over the images) and what the coder adds to the ideal.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ..eval.plots import save_figure, subplots

    wrong = _figure_problem(payload)
    if wrong:
        raise ValueError(f"coding-mnist results: {wrong}")
    # smallest file at the top; a row without a finite size (none is expected) at the bottom
    order = sorted(payload["rows"].items(), key=lambda item: _sort_key(item[1]))
    height = 2.0 + 0.32 * len(order)  # inches: title, axis labels and legend, then the rows
    fig, (ax, ax_over) = subplots(
        1, 2, figsize=(12, height), sharey=True,
        gridspec_kw={"width_ratios": [3, 2]},
    )  # fmt: skip
    # the furthest end of a bar or a marker: the text beside them needs room beyond it
    right = max((r[k] for _, r in order for k in _MARKED if finite(r.get(k))), default=1.0)
    over_right = 0.0
    for i, (_, r) in enumerate(order):
        coded, ideal, hard = (r.get(key) for key in _MARKED)
        header = 8 * r["header_bytes"] / r["images"]
        colour = "tab:blue" if r["round_trip_exact"] else "tab:red"
        if finite(coded):
            ax.barh(i, coded, height=0.7, color=colour, alpha=0.55)
        if finite(ideal):
            ax.plot(ideal, i, "|", color="k", ms=12, mew=2)
        if finite(hard):
            ax.plot(hard, i, "D", mfc="none", color="tab:orange", ms=5)
        over = coded - ideal if finite(coded) and finite(ideal) else None
        percent = 100 * over / ideal if over is not None and ideal > 0 else None
        end = max((v for v in (coded, ideal, hard) if finite(v)), default=0.0)
        text = cell(coded, ".2f") + (f"  ({percent:+.3f}%)" if finite(percent) else "")
        if not r["round_trip_exact"]:
            text += "  not decoded exactly"
        ax.text(end + 0.015 * right, i, text, va="center", fontsize=8)
        ax_over.barh(i, header, height=0.7, color="0.85", hatch="///", edgecolor="0.55")
        if over is not None:  # the coder's part, from the header's end (leftwards if below 0)
            ax_over.barh(i, over - header, left=header, height=0.7, color=colour, alpha=0.8)
            coder = 100 * (over - header) / ideal if ideal > 0 else None
            if finite(coder):
                ax_over.text(max(over, header), i, f" coder {coder:+.3f}%", va="center",
                             fontsize=7)  # fmt: skip
        over_right = max(over_right, header, over or 0.0)
    ax.set_yticks(range(len(order)), [name for name, _ in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25 * right)
    ax.set_xlabel("bits per image (in parentheses: the file over the ideal)")
    ax.set_title("the file beside the ideal of its code model", fontsize=9)
    ax_over.axvline(0, color="k", lw=0.8)
    ax_over.set_xlim(min(0.0, *ax_over.get_xlim()), 1.35 * over_right)
    ax_over.set_xlabel("file − ideal, bits per image")
    ax_over.set_title("where the overhead goes", fontsize=9)
    headers = "/".join(str(b) for b in sorted({r["header_bytes"] for _, r in order}))
    handles = [
        Patch(color="tab:blue", alpha=0.55, label="the file: its bytes × 8 / images"),
        Line2D([], [], ls="", marker="|", color="k", ms=12, mew=2,
               label="ideal: Σ −log2 P(symbol) under the file's code model"),
        Line2D([], [], ls="", marker="D", mfc="none", color="tab:orange", ms=5,
               label="hard-path rate −log2 P(z | u) (VQ: log2 K, its rate in training)"),
        Patch(facecolor="0.85", hatch="///", edgecolor="0.55",
              label=f"header and checksum ({headers} bytes per file)"),
        Patch(color="tab:blue", alpha=0.8, label="what the coder adds to the ideal"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    images = " / ".join(f"{k:,}" for k in sorted({r["images"] for _, r in order}))
    data = _DATA_NAMES.get(payload["config"]["data"], payload["config"]["data"])
    exact = all(r["round_trip_exact"] for _, r in order)
    fig.suptitle(
        f"{data} test set, {images} images: each row's test set coded into one file and "
        + ("decoded back bit for bit" if exact else "decoded back (red: not bit for bit)"),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1))  # the legend's half inch below the axes
    return save_figure(fig, path)


def _sort_key(row: dict[str, Any]) -> tuple[bool, float]:
    coded = row["coded_bits_per_image"]
    return (not finite(coded), coded if finite(coded) else 0.0)


def _timed_code(model: Autoencoder, x: torch.Tensor, cfg: CodingMnistConfig) -> dict[str, Any]:
    """:func:`code_test_set` with its wall time (``code_wall_s``)."""
    start = time.perf_counter()
    return {**code_test_set(model, x, cfg), "code_wall_s": time.perf_counter() - start}


#: the fields of a results row that the tables, the figure and the rate-control readings use
#: (None: a NaN or infinity as the results file holds it, which the tables show as missing;
#: the figure and the readings at the reference take numbers)
_ROW_FIELDS = {
    "code_model": "string",
    "coded_bits_per_image": "number or None",
    "ideal_bits_per_image": "number or None",
    "overhead_percent": "number or None",
    "round_trip_exact": "flag",
    "encode_symbols_per_s": "number or None",
    "decode_symbols_per_s": "number or None",
    "train_rate_bits_per_image": "number or None or missing",
    "hard_distortion_nats_per_image": "number or None or missing",
    "hard_rate_bits_per_image": "number or None or missing",
    "rate_control": "list or missing",
}
_SWEEP_FIELDS = {
    "factor": "number",
    "coded_bits_per_image": "number",
    "hard_distortion_nats_per_image": "number",
    "hard_distortion_se": "number or None",
    "total_nats_per_image": "number or None",
    "round_trip_exact": "flag",
}


def _row_problem(row: Any) -> str | None:
    """What keeps a kept row from being tabled and read at the reference, or None."""
    wrong = problem(row, _ROW_FIELDS, "row")
    if wrong is None and "train_rate_bits_per_image" in row:
        wrong = problem(row, {"train_rate_se": "number or None"}, "row")
    if wrong is None and "mc_ideal_bits_per_image" in row:
        fields = ("mc_ideal_bits_per_image", "mc_ideal_se")
        fields += ("model_over_ideal_percent", "model_over_ideal_se_percent")
        fields = dict.fromkeys(fields, "number or None") | {"mc_ideal_images": "number"}
        wrong = problem(row, fields, "row")
    for point in row.get("rate_control", []) if wrong is None else []:
        wrong = wrong or problem(point, _SWEEP_FIELDS, "a rate_control point")
    if wrong is None and "rate_control" in row:
        if not any(point["factor"] == 1.0 for point in row["rate_control"]):
            wrong = "its rate_control holds no point at factor 1"
    return wrong


def kept_rows(previous: Path, names: list[str]) -> dict[str, Any]:
    """The rows of the results file ``previous`` that this run does not redo (``names``), with
    their own provenance; none where the file is missing or unreadable (it is written anew). A
    row without the fields the tables read (:func:`_row_problem`) is dropped, and said so."""
    saved = read_json(previous)
    rows = saved.get("rows") if isinstance(saved, dict) else None
    kept = {}
    for name, row in rows.items() if isinstance(rows, dict) else []:
        if name in names:
            continue
        wrong = _row_problem(row)
        if wrong is None:
            kept[name] = row
        else:
            print(terminal_text(f"{previous}: dropping the row {name!r} ({wrong})"), flush=True)
    return kept


def reproduce(
    *,
    quick: bool = False,
    models: list[str] | None = None,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
    runs_dir: str | Path = "runs",
    results_dir: str | Path = RESULTS_DIR,
    command: str = "",
) -> dict[str, Any]:
    """Train (resumable) and code; ``<results>/coding-mnist[-quick].json``."""
    check_reproduce(
        quick=quick,
        overrides=overrides,
        runs_dir=runs_dir,
        results_dir=results_dir,
        data_dir=data_dir,
        command=command,
        models=models,
    )
    stem = "coding-mnist" + ("-quick" if quick else "")
    cfg = config(quick=quick, overrides=overrides)
    names = list(models or ("lattice", "vq"))
    for name in names:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {list(MODELS)}")
    data = load_data(cfg, data_dir)  # the demo's data: binarized MNIST or the synthetic set
    previous = Path(results_dir) / f"{stem}.json"
    rows = kept_rows(previous, names)
    # the tree as it is when the run starts (an edit made while it runs is not what ran)
    started = provenance(command)
    for name in names:
        print(f"== {name} ==", flush=True)
        if name in TABLE1:
            model, info = _table1_model(name, cfg, data, quick=quick, runs_dir=Path(runs_dir))
            rows[name] = {**_timed_code(model, data["test"], cfg), **info, "provenance": started}
            if cfg.spacing_factors:
                rows[name]["rate_control"] = rate_control(model, data["test"], cfg)
            continue
        model = _model(name, cfg)
        result = fit(model, data, cfg.train, out_dir=Path(runs_dir) / stem / name,
                     run_config=to_dict(cfg))  # fmt: skip
        if name == "vq":  # learn the index frequencies from the training images
            model.eval()
            with torch.no_grad():
                model.bottleneck.update(model.encoder(xb) for xb in data["train"].split(2000))
        rows[name] = {
            **_timed_code(model, data["test"], cfg),
            "train_wall_s": result.wall_s,
            "train_epochs": len(result.history),
            "provenance": started,
        }
    _at_reference(rows, cfg.rate_control_reference)
    payload = {
        **started,
        "rows": rows,
        "notes": {
            "coded_bits_per_image": "file size × 8 / images, header and checksum included",
            "code_wall_s": "seconds to code the test set and measure every column of the row "
            "(timing repeats and Monte-Carlo rates included, training excluded)",
            "hard_rate_bits_per_image": "mean exact −log2 P(z | u) of the coded symbols "
            "(lattice) or log2 K (VQ, its fixed rate), same dither as the file",
            "ideal_bits_per_image": "Σ −log2 P(symbol) under the code model the file uses: the "
            "hard rate for the lattice; for VQ the index frequencies counted by update() over "
            "the training images; for a good lattice the coordinate-by-coordinate model's own "
            "information content; overhead_percent is measured against it",
            "mc_ideal_bits_per_image": "good lattices: the ideal −log2 P(z | u) (the prior's "
            "mass on the Voronoi cell around z − u) of the file's points on the first "
            "mc_ideal_images test images, by Monte Carlo (multiple importance sampling, capped "
            "at 1; mc_ideal_samples uniform and proposal points from mc_ideal_proposal, the "
            "bottleneck's own box where a row does not say), mean ± s.e. over "
            "mc_ideal_repeats independent estimates; model_over_ideal_percent compares the code "
            "model's bits on the same images with it",
            "hard_distortion_nats_per_image": "−log p(x | ŷ) of the decoded ŷ, mean over the "
            "test images (± hard_distortion_se)",
            "train_rate_bits_per_image": "Theorem 1's training-path estimate, mean over "
            "independent dithers, with its standard error",
            "throughput": "symbols per second of a whole compress / decompress call (networks "
            "excluded), median of timing_repeats calls in interleaved blocks of 5, one process",
            "rate_control": "the row's test set coded with its whole lattice scaled by each "
            "factor (1: as trained; the decoder is not retrained): file bits per image and "
            "−log p(x | ŷ) of the decoded ŷ; rate_control_at_reference reads that sweep "
            "(linearly between the two factors that bracket it) at the reference row's trained "
            "−log p(x | ŷ), and the reference's sweep at the row's own trained point "
            "(own_difference_bits: the row's file minus the reference's there)",
            "compressai_reference": "CompressAI's EntropyBottleneck on this machine: about 13 M "
            "symbols/s encode, 7 M decode, 0.026% overhead (quoted; compressai cannot be "
            "installed beside this torch)",
        },
        "config": to_dict(cfg),
    }
    write_json(payload, Path(results_dir) / f"{stem}.json")
    tables = [markdown_table(payload), rate_control_table(payload)]
    write_text("\n\n".join(t for t in tables if t) + "\n", Path(results_dir) / f"{stem}.md")
    figure_rate_control(rows, Path(results_dir) / f"{stem}-rate-control.png")
    figure_coded_bits(payload, Path(results_dir) / f"{stem}.png")
    return payload


def _payload_problem(payload: Any) -> str | None:
    """What keeps a results payload from being tabled (:func:`markdown_table`,
    :func:`rate_control_table`), or None."""
    wrong = problem(payload, {"rows": "table"}, "the payload")
    for name, row in payload["rows"].items() if wrong is None else ():
        row_wrong = _row_problem(row)
        if row_wrong:
            return f"the row {name!r} cannot be tabled ({row_wrong})"
    return wrong


def _check_payload(payload: Any) -> None:
    wrong = _payload_problem(payload)
    if wrong:
        raise ValueError(f"coding-mnist results: {wrong}")


def markdown_table(payload: dict[str, Any]) -> str:
    """The coding table of ``payload`` (:func:`reproduce`'s, or its JSON file read back);
    ValueError naming the first field that keeps it from being one."""
    _check_payload(payload)
    # the "|" of −log p(x|ŷ) escaped: bare, it splits the header into one column more than the
    # rows have, which shifts every label after it (GitHub shows no table at all)
    lines = [
        "| model | code model | coded bits/image | model bits | ideal (MC) | hard rate "
        "| Theorem 1 estimate | overhead | model − ideal | −log p(x\\|ŷ) | exact "
        "| encode M sym/s | decode M sym/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["rows"].items():
        est = (
            f"{cell(r['train_rate_bits_per_image'], '.3f')} ± {cell(r['train_rate_se'], '.3f')}"
            if "train_rate_bits_per_image" in r
            else "–"
        )
        ideal, gap = "–", "–"
        if "mc_ideal_bits_per_image" in r:
            # three decimals, as the other rates: at two, standard errors of a few thousandths
            # read "± 0.00", as the exact zero of a row whose blocks are all coded exactly
            ideal = (
                f"{cell(r['mc_ideal_bits_per_image'], '.3f')} ± {cell(r['mc_ideal_se'], '.3f')} "
                f"({r['mc_ideal_images']} images)"
            )
            gap = (
                f"{cell(r['model_over_ideal_percent'], '.3f')}% ± "
                f"{cell(r['model_over_ideal_se_percent'], '.3f')}"
            )
        lines.append(
            f"| {name} | {r['code_model']} | {cell(r['coded_bits_per_image'], '.3f')} "
            f"| {cell(r['ideal_bits_per_image'], '.3f')} | {ideal} "
            f"| {cell(r.get('hard_rate_bits_per_image'), '.3f')} "
            f"| {est} | {cell(r['overhead_percent'], '.3f')}% | {gap} "
            f"| {cell(r.get('hard_distortion_nats_per_image'), '.2f')} | {r['round_trip_exact']} "
            f"| {_millions(r['encode_symbols_per_s'])} | {_millions(r['decode_symbols_per_s'])} |"
        )
    return "\n".join(lines)


def _millions(value: float | None) -> str:
    """``value`` in millions, or missing (:func:`~qlatent.results.cell`)."""
    return cell(value / 1e6 if finite(value) else None, ".2f")


def rate_control_table(payload: dict[str, Any]) -> str:
    """The rate-control sweeps, one line per row and factor ("" when no row was swept)."""
    _check_payload(payload)
    lines = []
    for name, r in payload["rows"].items():
        for p in r.get("rate_control", []):
            lines.append(
                f"| {name} | {p['factor']:.3f} | {p['coded_bits_per_image']:.3f} "
                f"| {p['hard_distortion_nats_per_image']:.3f} ± "
                f"{cell(p['hard_distortion_se'], '.3f')} "
                f"| {cell(p['total_nats_per_image'], '.3f')} | {p['round_trip_exact']} |"
            )
        at = r.get("rate_control_at_reference")
        if at and finite(at["bits_per_image"]):
            lines.append(
                f"| {name} at {at['reference']}'s {cell(at['distortion_nats_per_image'], '.3f')} "
                f"nats | | {cell(at['bits_per_image'], '.3f')} "
                f"({cell(at['difference_bits'], '+.3f')} against {at['reference']}) | | | |"
            )
        if at and finite(at.get("reference_bits_at_own_distortion")):
            own = next(p for p in r["rate_control"] if p["factor"] == 1.0)
            lines.append(
                f"| {at['reference']} at {name}'s {own['hard_distortion_nats_per_image']:.3f} "
                f"nats | | {cell(at['reference_bits_at_own_distortion'], '.3f')} "
                f"({name} {cell(at['own_difference_bits'], '+.3f')} against it) | | | |"
            )
    if not lines:
        return ""
    head = [  # the "|" of −log p(x|ŷ) escaped, as in markdown_table
        "| model | lattice scale factor | coded bits/image | −log p(x\\|ŷ) | total nats | exact |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines)
