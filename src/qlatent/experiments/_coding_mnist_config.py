"""The coding-mnist table's config (:class:`CodingMnistConfig`, with the quick settings of
:func:`config`), its rows (:data:`TABLE1`, the lattice-mnist rows read from their checkpoints,
and :data:`MODELS`) and the two models it trains itself (:func:`_model`: the rectangular-lattice
VAE and the VQ-VAE). :mod:`~qlatent.experiments.coding_mnist` re-exports every public name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .._size import check_size
from ..config import apply_overrides
from ..models import Autoencoder, gated_vae
from ..train import TrainConfig
from .custom import MAX_EVAL_COUNT, check_eval_seed, check_positive

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


def _model(name: str, cfg: CodingMnistConfig, *, seeded: bool = True) -> Autoencoder:
    if seeded:
        torch.manual_seed(cfg.train.seed)
    if name == "lattice":
        return gated_vae("lattice", latent_dim=cfg.latent_dim, hidden=cfg.hidden)
    return gated_vae("vq", latent_dim=cfg.latent_dim, hidden=cfg.hidden, num_codes=cfg.num_codes)
