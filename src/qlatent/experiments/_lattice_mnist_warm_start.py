"""Warm starts of a lattice-mnist row from another row's best checkpoint: a good-lattice row from
the trained Gaussian-lattice VAE (:func:`gaussian_lattice_start`, which the analysis scripts under
``examples/`` call too) and the run's own record of where it started (:func:`_warm_start`, called
by :func:`~qlatent.experiments.lattice_mnist.run_model`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._utils import write_atomic
from ..bottlenecks.gaussian_lattice import GaussianLattice
from ..results import read_json
from ..train import CheckpointError, load, load_weights
from ._cache import problem
from ._lattice_mnist_config import LatticeMnistConfig


def gaussian_lattice_start(
    model, gl_state: dict[str, Any], source: str = "checkpoint", *, by_sigma: bool = True
) -> Tensor:
    """Start a good-lattice row from a trained Gaussian-lattice VAE (``gl_state``, its weights):
    the same encoder and decoder, the noise N(0, σ_i²) replaced by the dither of the row's
    lattice. Returns the order in which the encoder's coordinates were handed to the lattice.

    The Gaussian-lattice VAE's KL(N(μ, σ²) ‖ N(0, I)) is Theorem 1's rate for Gaussian "dither"
    with X̂ ~ N(0, 1 − σ_i²) per coordinate (X̂ + N is then N(0, 1)). Here the lattice is scaled
    coordinate by coordinate (``spacing_per = "coordinate"``) so that its dither has variance
    σ_i² along coordinate i (c_i²·G(Λ_b) = σ_i² for a unit-volume block b of normalized second
    moment G), and the prior gets the variance 1 − σ_i² (a Gaussian's standard deviation, a
    Laplace's scale √((1 − σ_i²)/2)). The coordinates go to the blocks in order of σ_i, least
    noisy first (``by_sigma=False``: in the encoder's order), so that the first blocks of a sum
    such as E8^3 ⊕ Z^16 take the most active coordinates; the permutation is written into the
    encoder's last layer and the decoder's first, so the model is the Gaussian-lattice VAE's up
    to the noise's shape (``examples/lattice-plugin.py`` measures its −ELBO untrained).
    """
    from ..bottlenecks.good_lattice import DitheredGoodLattice
    from ..lattices import LITERATURE_NSM

    neck = model.bottleneck
    if (
        not isinstance(neck, DitheredGoodLattice)
        or neck.spacing_per != "coordinate"
        or neck.scale_per != "coordinate"
    ):
        raise ValueError(
            "a Gaussian-lattice start needs a good-lattice bottleneck with spacing_per and "
            "scale_per 'coordinate' (a cell scale and a prior scale to match each σ_i)"
        )
    logvar = gl_state.get("bottleneck.logvar") if isinstance(gl_state, dict) else None
    if not isinstance(logvar, Tensor) or logvar.shape != (neck.dim,):
        raise CheckpointError(f"{source} holds no Gaussian-lattice VAE of dimension {neck.dim}")
    if not torch.isfinite(logvar).all():
        raise CheckpointError(f"{source}: the Gaussian-lattice variances are not finite")
    sigma = (0.5 * logvar.double()).exp()
    order = torch.argsort(sigma, stable=True) if by_sigma else torch.arange(neck.dim)
    weights = {k: v for k, v in gl_state.items() if k.startswith(("encoder.", "decoder."))}
    last = f"encoder.{len(model.encoder) - 1}"
    for key in (f"{last}.weight", f"{last}.bias"):
        if key not in weights:
            raise CheckpointError(f"{source} holds no encoder output layer {key}")
        weights[key] = weights[key][order]
    first = [k for k in weights if k.startswith("decoder.0.") and k.endswith("weight")]
    for key in first:
        weights[key] = weights[key][:, order]
    state = {**model.state_dict(), **weights}
    load_weights(model, state, source)
    blocks = neck.geometry.blocks
    nsm = torch.cat(
        [torch.full((b.dim,), LITERATURE_NSM.get(b.name.lower()) or float(b.nsm())) for b in blocks]
    ).double()
    variance = (1.0 - sigma[order].square()).clamp_min(1e-6)
    scale = variance.sqrt() if neck.prior_name == "gaussian" else (variance / 2).sqrt()
    with torch.no_grad():
        neck.log_spacing.copy_((sigma[order] / nsm.sqrt()).log())
        neck.log_scale.copy_(scale.log())
    return order


def _warm_start(model, cfg: LatticeMnistConfig, out_dir: Path) -> dict[str, Any]:
    """Start ``model`` from the best checkpoint of row ``cfg.init_from`` in the same runs folder
    (on a fresh run; a resumed one continues from its own checkpoint). Returns where it came
    from, which ``out_dir/init.json`` keeps for the resumed runs' results."""
    record = out_dir / "init.json"
    if (out_dir / "last.pt").is_file():
        saved = read_json(record)
        return (
            saved if isinstance(saved, dict) else {"row": cfg.init_from, "checkpoint": "unrecorded"}
        )
    source = out_dir.parent / str(cfg.init_from) / "best.pt"
    if not source.is_file():
        raise ValueError(
            f"no checkpoint {source} to start from: train the row first (`qlatent reproduce "
            f"lattice-mnist --models {cfg.init_from}` with the same --runs-dir)"
        )
    ckpt = load(source)
    wrong = problem(ckpt, {"epoch": "integer or None or missing"})
    if wrong:  # recorded in init.json and the results
        raise CheckpointError(f"{source}: {wrong}")
    if isinstance(model.bottleneck, GaussianLattice):
        # the same model trained on: its weights as they are, coordinates in their own order
        load_weights(model, ckpt.get("model"), source)
        order = torch.arange(model.bottleneck.logvar.numel())
    else:
        order = gaussian_lattice_start(model, ckpt.get("model"), str(source))
    start = {
        "row": cfg.init_from,
        "checkpoint": str(source),
        "checkpoint_epoch": ckpt.get("epoch"),
        "coordinate_order": order.tolist(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(record, (json.dumps(start, indent=1) + "\n").encode())  # as the checkpoints
    return start
