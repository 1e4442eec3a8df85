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

import sys
from pathlib import Path
from typing import Any

import torch

from .._utils import expanded
from ..config import to_dict
from ..models import Autoencoder
from ..results import RESULTS_DIR, provenance, write_json, write_text
from ..train import fit
from ._cache import problem
from ._coding_mnist_code import LN2 as LN2
from ._coding_mnist_code import _timed_code
from ._coding_mnist_code import code_test_set as code_test_set
from ._coding_mnist_config import MODELS, TABLE1, CodingMnistConfig, _model, config
from ._coding_mnist_figures import figure_coded_bits, figure_rate_control
from ._coding_mnist_rate_control import _at_reference, rate_control
from ._coding_mnist_rate_control import bits_at_distortion as bits_at_distortion
from ._coding_mnist_rate_control import spacing_scaled as spacing_scaled
from ._coding_mnist_results import _NOTES, kept_rows, markdown_table, rate_control_table
from ._coding_mnist_results import _row_problem as _row_problem
from .custom import check_reproduce
from .lattice_vae import load_data


def _table1_model(
    name: str, cfg: CodingMnistConfig, data, *, quick: bool, runs_dir: Path
) -> tuple[Autoencoder, dict[str, Any]]:
    """A Table-1 row's trained model: its best checkpoint from the lattice-mnist runs, or, with
    ``quick``, trained here with the quick lattice-mnist config on this table's data."""
    from ..train import CheckpointError, load, load_weights
    from . import lattice_mnist

    lcfg = lattice_mnist.model_config(name, quick=quick, overrides=["train.progress=false"])
    if quick:
        model = lattice_mnist.build_model(lcfg, data["train"].shape[1])
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
    wrong = problem(ckpt, {"epoch": "integer or None or missing"})
    if wrong:  # recorded in the results
        raise CheckpointError(f"{best}: {wrong}")
    # the model as the run trained it, not as this tree configures the row now
    lcfg, changes = lattice_mnist.trained_config(lcfg, ckpt, best)
    model = lattice_mnist.build_model(lcfg, data["train"].shape[1])
    load_weights(model, ckpt.get("model"), best)
    info = {"checkpoint": str(best), "checkpoint_epoch": ckpt.get("epoch")}
    if changes:
        info["config_since_trained"] = changes
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
    from its best checkpoint under ``runs_dir`` (a lattice-mnist runs folder) as that run
    configured it (what has changed since is in the info's ``config_since_trained`` and printed
    on stderr), the data as this table loads it (binarized MNIST, ``data_dir`` the download
    cache)."""
    cfg = config(quick=False, overrides=[f"table1_runs={runs_dir}"])
    data = load_data(cfg, data_dir)
    model, info = _table1_model(name, cfg, data, quick=False, runs_dir=Path(runs_dir))
    if info.get("config_since_trained"):
        since = "; ".join(info["config_since_trained"])
        print(f"{info['checkpoint']}: trained with {since}", file=sys.stderr)
    return model, info, data


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
        "notes": dict(_NOTES),
        "config": to_dict(cfg),
    }
    write_json(payload, Path(results_dir) / f"{stem}.json")
    tables = [markdown_table(payload), rate_control_table(payload)]
    write_text("\n\n".join(t for t in tables if t) + "\n", Path(results_dir) / f"{stem}.md")
    figure_rate_control(rows, Path(results_dir) / f"{stem}-rate-control.png")
    figure_coded_bits(payload, Path(results_dir) / f"{stem}.png")
    return payload
