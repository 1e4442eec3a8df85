"""What a softvq-mnist run leaves behind, read back: its recorded scores (:func:`_recorded`, a
record that cannot be used is written anew), a row over seeds (:data:`SEED_METRICS`,
:func:`seed_statistics`) and its saved test features for the t-SNE figure
(:func:`_saved_features`). Used by :mod:`~qlatent.experiments.softvq_mnist`, which re-exports
:func:`seed_statistics`, :data:`SEED_METRICS` and :func:`_recorded`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .._utils import terminal_text
from ..results import read_json
from ..train import CheckpointError, load
from ._cache import described, problem
from ._softvq_mnist_config import PAPER, PAPER_ROW, PERPLEXITY_ROWS

#: what to do about a test-features file that cannot be drawn
_RERUN_FEATURES = ": delete it, or run the row again with its run folder, to draw the t-SNE figure"


def _saved_features(path: Path) -> torch.Tensor:
    """The test features that a row's run saved (:func:`~.softvq_mnist.run_model`): a 2-D
    floating-point tensor of finite values; a file holding anything else is refused, naming it.
    A bare tensor without a digest, as earlier versions saved it, is still read (as data)."""
    try:
        features = load(path).get("features")  # plain data, digest checked
    except CheckpointError as err:  # damaged, or a bare tensor as earlier versions saved
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - whatever the unpickler says, the first error stands
            features = None
        if not isinstance(features, torch.Tensor):
            raise CheckpointError(f"{err}{_RERUN_FEATURES}") from None
    if (
        not isinstance(features, torch.Tensor)
        or features.dim() != 2
        or not features.is_floating_point()
        or not torch.isfinite(features).all()
    ):
        raise CheckpointError(
            f"{path}: features is {described(features)}, not a 2-D floating-point tensor of "
            f"finite values{_RERUN_FEATURES}"
        )
    return features


def _record_fields(name: str) -> dict[str, str]:
    """What a run's recorded scores must hold (:func:`~._cache.problem`): what
    :func:`seed_statistics`, the perplexity comparison and
    :func:`~._softvq_mnist_results.markdown_table` read."""
    # None: a NaN or infinity as a record holds it, which the table shows as missing (the
    # accuracies and the NMI of a finished run are numbers)
    fields = dict.fromkeys(SEED_METRICS, "number or None or missing")
    fields |= dict.fromkeys(("kmeans_acc", "nmi", "linear_acc"), "number")
    fields["wall_s"] = "number or None or missing"
    if name in PERPLEXITY_ROWS:
        fields |= dict.fromkeys(("test_perplexity", "test_nmse"), "number or None")
    return fields


def _recorded(record: Path, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The scores in ``record`` when it was written for ``config`` and holds what the table
    reads (:func:`_record_fields`); None otherwise. A record that cannot be used is written
    anew, as one that cannot be read is (:func:`~qlatent.results.read_json`): the run is
    resumed from its folder, or trained again, and says so."""
    saved = read_json(record)
    if not isinstance(saved, dict) or saved.get("config") != config:
        return None
    wrong = problem(saved, {"metrics": "table"}) or problem(
        saved["metrics"], _record_fields(name), "metrics"
    )
    if wrong:
        print(terminal_text(f"{record} cannot be used ({wrong}): running it again"), flush=True)
        return None
    return saved["metrics"]


#: the scores whose spread over seeds a row reports
SEED_METRICS = (
    "kmeans_acc",
    "nmi",
    "linear_acc",
    "linear_acc_converged",
    "test_nmse",
    "test_codes_used",
    "test_perplexity",
    "active_dims",
)


def seed_statistics(name: str, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A row over seeds: each run's scores (``runs``), per score the mean, sd (n − 1), min and
    max (``stats``), the means at the top level (where one run's scores would be), and per paper
    score whether the paper's value lies within mean ± 2 sd (``reproduced``)."""
    stats = {}
    for key in SEED_METRICS:
        values = [r[key] for r in per_seed.values() if key in r and r[key] is not None]
        if not values:
            continue
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        stats[key] = {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}
    row: dict[str, Any] = {key: value["mean"] for key, value in stats.items()}
    row.update({"runs": {str(seed): r for seed, r in per_seed.items()}, "stats": stats})
    paper = PAPER.get(PAPER_ROW.get(name, name))
    if paper is not None:
        row["reproduced"] = {
            key: abs(value - stats[key]["mean"]) <= 2 * stats[key]["sd"]
            for key, value in zip(("kmeans_acc", "nmi", "linear_acc"), paper, strict=True)
        }
        row["compared_with"] = PAPER_ROW.get(name, name)
    return row
