"""How much of a good-lattice row's gradient noise is the Monte-Carlo rate's, on a trained model.

The good-lattice rows of Table 1 estimate their rate by Monte Carlo, so their gradients carry a
noise the rectangular lattice's closed form does not. This script measures it on a trained row's
best checkpoint, in training mode, at batch size 100 (the protocol's): for a few fixed pairs of
a batch and a dither, the variance of the loss gradient (negative ELBO per image) over the
Monte-Carlo draws alone, against the variance of the same gradient over batches, dithers and
draws together (minibatch noise as training sees it), both as the trace of the covariance, for the
encoder's and the bottleneck's parameters, at each pair of counts (cell points, proposal draws).
A Monte-Carlo share well below one means the estimate does not slow training by its noise.

    python examples/gradient-noise.py --runs ~/.cache/qlatent/runs-v6-long
        [--model e8z_lattice] [--counts 512,32 2048,128] [--repeats 12]
        [--out results/gradient-noise.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from qlatent.data import DataError
from qlatent.results import provenance, write_json

BATCH = 100  # the Table-1 protocol's batch size


def _counts(text: str) -> tuple[int, int]:
    try:
        s_u, s_q = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S_u,S_q (two integers), got {text!r}") from None
    if s_u < 2 or s_u % 2 or s_q < 0:
        raise argparse.ArgumentTypeError(f"S_u must be even and >= 2, S_q >= 0, got {text!r}")
    return s_u, s_q


def gradients(model, x, dither_seed: int, draw_seed: int, counts: tuple[int, int]):
    """The loss gradient, flattened, for the encoder's and the bottleneck's parameters, with the
    dither drawn from ``dither_seed`` and the Monte-Carlo points from ``draw_seed``."""
    neck = model.bottleneck
    model.zero_grad(set_to_none=True)
    y = model.encoder(x)
    u = neck._unit_dither(y.shape[0], torch.Generator().manual_seed(dither_seed), y.dtype)
    y_hat = y - u * neck._coordinate_scale()
    draws = torch.Generator().manual_seed(draw_seed)
    log_f = neck.log_density(y_hat, *counts, draws, debias=neck.debias)
    rate = -neck.log_volume() - log_f
    distortion = model.likelihood.nll(x, model.decoder(y_hat))
    (distortion + rate).mean().backward()
    out = {}
    for part in ("encoder", "bottleneck"):
        grads = [p.grad.flatten() for n, p in model.named_parameters() if n.startswith(part)]
        out[part] = torch.cat(grads).clone()
    return out


def trace_variance(samples: list[torch.Tensor]) -> float:
    g = torch.stack(samples)
    return float((g - g.mean(0)).square().sum(1).sum() / (len(samples) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the lattice-mnist runs folder")
    parser.add_argument("--model", default="e8z_lattice")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--counts", type=_counts, nargs="+", default=[(512, 32), (2048, 128)])
    parser.add_argument("--pairs", type=int, default=4, help="fixed (batch, dither) pairs")
    parser.add_argument("--repeats", type=int, default=12, help="gradients per variance")
    parser.add_argument("--out", type=Path, default=Path("results/gradient-noise.json"))
    args = parser.parse_args()
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    if args.pairs < 1 or args.repeats < 2:
        parser.error("--pairs must be at least 1 and --repeats at least 2")
    command = (
        f"python examples/gradient-noise.py --runs {args.runs} --model {args.model} --counts "
        f"{' '.join(f'{a},{b}' for a, b in args.counts)} --pairs {args.pairs} --repeats "
        f"{args.repeats} --out {args.out}"
    )
    started = provenance(command)
    t0 = time.perf_counter()
    from qlatent.experiments import coding_mnist

    try:
        model, info, data = coding_mnist.trained_table1_model(args.model, args.runs, args.data_dir)
    except (ValueError, OSError, DataError) as err:  # an unknown row, no checkpoint
        parser.error(str(err))
    if not hasattr(model.bottleneck, "log_density"):
        parser.error(f"{args.model} has no Monte-Carlo rate (not a good-lattice row)")
    model.train()
    x_all = data["train"]
    order = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(0))
    batch = [x_all[order[i * BATCH : (i + 1) * BATCH]] for i in range(args.pairs + args.repeats)]
    rows = []
    for counts in args.counts:
        draws = {"encoder": [], "bottleneck": []}
        for p in range(args.pairs):  # draws alone: batch and dither fixed
            grads = [gradients(model, batch[p], 1000 + p, k, counts) for k in range(args.repeats)]
            for part in draws:
                draws[part].append(trace_variance([g[part] for g in grads]))
        total = [
            gradients(model, batch[args.pairs + k], 2000 + k, 3000 + k, counts)
            for k in range(args.repeats)
        ]
        row = {"cell_points": counts[0], "proposal_draws": counts[1]}
        for part in draws:
            mc = sum(draws[part]) / len(draws[part])
            everything = trace_variance([g[part] for g in total])
            row[part] = {"monte_carlo": mc, "total": everything, "share": mc / everything}
        rows.append(row)
        print(
            f"counts {counts}: Monte-Carlo share of the gradient variance, encoder "
            f"{row['encoder']['share']:.3f}, bottleneck {row['bottleneck']['share']:.3f}",
            flush=True,
        )
    payload = {
        **started,
        "model": args.model,
        "checkpoint": info,
        "batch_size": BATCH,
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
