"""Whether each proposal's Monte-Carlo density has the right gradient, on a trained Table-1 model.

The estimate P̂ of the cell probability is unbiased, so E[∇P̂] = ∇P whatever the proposal: a
proposal whose average gradient differs from another's beyond noise leaves something out (a
draw held fixed while the cell moves over it misses the surface term). For a trained good-lattice
row (default ``e8_debias_lattice``), on the training path's y_hat of the first 100 test images,
this averages over repeats the gradient of Σ_rows P̂/P_ref (P_ref a large-S tilted estimate,
held fixed) with respect to the block scales, y_hat and the prior scales, for the prior, box and
tilted proposals and for the uniform cell points alone (no proposal draws: they move with the
cell by construction), and reports each proposal's z-scores against the uniform points:
(mean difference) / (its standard error). One seed for the images' dither; repeats differ in
their Monte-Carlo draws.

    python examples/proposal-gradients.py [--model e8_debias_lattice]
        [--runs-dir ~/.cache/qlatent/runs-v2] [--data-dir ~/.cache/qlatent]
        [--out results/proposal-gradients.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from qlatent.data import DataError
from qlatent.experiments import lattice_mnist
from qlatent.experiments.lattice_vae import load_data
from qlatent.results import provenance, write_json
from qlatent.train import load, load_weights

ROWS, COUNTS, UNIFORM, REPEATS, REFERENCE = 100, (2048, 128), 8192, 8, (4096, 512)


def gradients(neck, y_hat, log_ref, samples, prior_samples, proposal, seed) -> torch.Tensor:
    """One repeat's gradient of Σ P̂/P_ref, flattened as (block scales, y_hat, prior scales)."""
    v = y_hat.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    with neck.proposal_set_to(proposal):
        log_f = neck.log_density(v, samples, prior_samples, generator, cap=False)
    ratio = (log_f - log_ref).exp().sum()
    grads = torch.autograd.grad(ratio, [neck.log_spacing, v, neck.log_scale])
    return torch.cat([g.reshape(-1) for g in grads])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="e8_debias_lattice")
    parser.add_argument("--runs-dir", type=Path, default=Path("~/.cache/qlatent/runs-v2"))
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/qlatent"))
    parser.add_argument("--out", type=Path, default=Path("results/proposal-gradients.json"))
    args = parser.parse_args()
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    start = time.perf_counter()
    try:
        cfg = lattice_mnist.model_config(
            args.model, quick=False, overrides=["train.progress=false"]
        )
        best = args.runs_dir.expanduser() / "lattice-mnist" / args.model / "best.pt"
        state = load(best)["model"]
    except (ValueError, OSError, DataError) as err:  # an unknown row, no checkpoint
        parser.error(str(err))
    data = load_data(cfg, args.data_dir.expanduser())
    model = lattice_mnist.build_model(cfg, data["train"].shape[1])
    load_weights(model, state, best)
    neck = model.bottleneck
    with torch.no_grad():
        y = model.encoder(data["test"][:ROWS])
        u = neck._unit_dither(ROWS, torch.Generator().manual_seed(0), y.dtype)
        y_hat = y - u * neck._coordinate_scale()
        with neck.proposal_set_to("tilted"):
            log_ref = neck.log_density(y_hat, *REFERENCE, torch.Generator().manual_seed(1))

    def average(samples, prior_samples, proposal, offset):
        runs = [
            gradients(neck, y_hat, log_ref, samples, prior_samples, proposal, offset + r)
            for r in range(REPEATS)
        ]
        g = torch.stack(runs)
        return g.mean(0), g.var(0) / REPEATS

    blocks, m = neck.log_spacing.numel(), neck.dim
    ref_mean, ref_var = average(UNIFORM, 0, None, 100)
    rows = []
    for i, proposal in enumerate(("prior", "box", "tilted")):
        mean, var = average(*COUNTS, proposal, 1000 * (i + 1))
        z = (mean - ref_mean) / (var + ref_var).sqrt()
        parts = {
            "block_scale": z[:blocks],
            "y_hat": z[blocks : blocks + ROWS * m],
            "prior_scale": z[blocks + ROWS * m :],
        }
        row = {"proposal": proposal}
        for name, part in parts.items():
            row[f"{name}_max_abs_z"] = part.abs().max().item()
            row[f"{name}_frac_abs_z_over_3"] = (part.abs() > 3).float().mean().item()
        row["block_scale_z"] = [round(t, 2) for t in parts["block_scale"].tolist()]
        row["block_scale_gradient"] = [round(t, 2) for t in mean[:blocks].tolist()]
        rows.append(row)
        print(
            f"{proposal:>6}: block-scale z {row['block_scale_z']}, y_hat |z|>3 "
            f"{row['y_hat_frac_abs_z_over_3']:.3f}, prior-scale |z|>3 "
            f"{row['prior_scale_frac_abs_z_over_3']:.3f}",
            flush=True,
        )
    payload = {
        **provenance(f"python examples/proposal-gradients.py --model {args.model}"),
        "threads": torch.get_num_threads(),
        "checkpoint": str(best),
        "setup": {
            "rows": ROWS,
            "counts": list(COUNTS),
            "uniform_reference_samples": UNIFORM,
            "repeats": REPEATS,
            "p_ref": {"proposal": "tilted", "samples": list(REFERENCE)},
            "dither_seed": 0,
        },
        "uniform_block_scale_gradient": [round(t, 2) for t in ref_mean[:blocks].tolist()],
        "rows": rows,
        "wall_s": time.perf_counter() - start,
    }
    write_json(payload, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
