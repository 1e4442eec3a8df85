"""Bias of a trained good-lattice model's Monte-Carlo log-density against its sample counts.

The Table-1 protocol (``qlatent reproduce lattice-mnist``) measures the bias of ``log f̂`` at the
training and eval counts of each good-lattice row and asks that it stay under 0.1 nat per image.
The Leech rows miss that at their eval counts. This script measures, on a trained row's best
checkpoint, how the bias falls as the counts (cell points S_u, proposal draws S_q) grow, and what
each count costs: per count pair, the bias of ``log f̂`` against a (16384, 4096) reference with the
tilted proposal at the training path's y_hat of the first ``--images`` test images (as the
protocol does: 4 repeats, plain and with the delta-method correction), and the wall time of one
``log_density`` call on those images, from which the time of the protocol's IWAE-1000 on 10k
images is scaled (the IWAE calls ``log_density`` once per importance sample; its other work,
the encoder and decoder, is not counted). With ``--iwae-images N``, the IWAE-1000 NLL of the
first N test images is also computed at each count pair (the same posterior samples, only the
log-density's points differ), with its paired difference from the first pair: how much the
reported IWAE reads high at the row's own counts. ``--proposal`` measures the counts under
another proposal of the row's prior than the one it was trained with (e.g. ``box`` for a row
trained with plain prior draws). One seed (0) for the draws.

    python examples/trained-log-density-bias.py --runs ~/.cache/qlatent/runs-v2
        [--model leech_tilted_lattice] [--images 200] [--counts 512,4 1024,8 2048,16 4096,32]
        [--proposal box] [--iwae-images 0] [--out results/trained-log-density-bias.json]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from qlatent.bottlenecks.good_lattice import monte_carlo_counts
from qlatent.data import DataError
from qlatent.results import provenance, write_json

REFERENCE = (16384, 4096)
IWAE_SAMPLES, TEST_IMAGES = 1000, 10000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the lattice-mnist runs folder")
    parser.add_argument("--model", default="leech_tilted_lattice")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument(
        "--counts",
        type=monte_carlo_counts,
        nargs="+",
        default=[(512, 4), (1024, 8), (2048, 16), (4096, 32)],
    )
    parser.add_argument(
        "--proposal",
        choices=("prior", "box", "tilted"),
        default=None,
        help="the proposal of the prior's draws (default: the row's own)",
    )
    parser.add_argument("--iwae-images", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/trained-log-density-bias.json"))
    args = parser.parse_args()
    if args.images < 1 or args.iwae_images < 0:
        parser.error(
            f"need --images >= 1 and --iwae-images >= 0, got {args.images} and {args.iwae_images}"
        )
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    command = (
        f"python examples/trained-log-density-bias.py --runs {args.runs} --model {args.model} "
        f"--images {args.images} --counts {' '.join(f'{a},{b}' for a, b in args.counts)}"
        + (f" --proposal {args.proposal}" if args.proposal else "")
        + f" --iwae-images {args.iwae_images} --out {args.out}"
    )
    started = provenance(command)  # the tree as it was when the run began
    t0 = time.perf_counter()
    from qlatent.bottlenecks.good_lattice import log_density_bias
    from qlatent.eval import iwae_nll
    from qlatent.experiments import coding_mnist

    try:
        model, info, data = coding_mnist.trained_table1_model(args.model, args.runs, args.data_dir)
    except (ValueError, OSError, DataError) as err:  # an unknown row, no checkpoint
        parser.error(str(err))
    neck = model.bottleneck
    if args.proposal is not None:
        try:  # the library's check: "box" needs the Laplace prior
            neck.proposal = args.proposal
        except ValueError as err:
            parser.error(str(err))
    torch.manual_seed(0)
    with torch.no_grad():  # the training path's y_hat, where the protocol measures the bias
        v = model.train()(data["test"][: args.images]).bottleneck.y_hat
    model.eval()
    counts_of_row = {  # before the IWAE below sets the eval counts
        "train_samples": [neck.samples, neck.prior_samples],
        "eval_samples": [neck.eval_samples, neck.eval_prior_samples],
    }
    rows, first_nll = [], None
    for counts in tqdm(args.counts, desc="count pairs"):
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            neck.log_density(v, *counts, gen)
        call_s = time.perf_counter() - start
        plain = log_density_bias(neck, v, counts, REFERENCE, reference_proposal="tilted")
        fixed = log_density_bias(
            neck, v, counts, REFERENCE, debias=True, reference_proposal="tilted"
        )
        rows.append(
            {
                "samples": list(counts),
                "plain_bias_nats": plain["bias_nats"],
                "plain_bias_se": plain["bias_se"],
                "debiased_bias_nats": fixed["bias_nats"],
                "debiased_bias_se": fixed["bias_se"],
                "log_density_s_per_image": call_s / v.shape[0],
                "iwae1000_log_density_hours": call_s
                / v.shape[0]
                * IWAE_SAMPLES
                * TEST_IMAGES
                / 3600,
            }
        )
        r = rows[-1]
        if args.iwae_images > 0:
            neck.eval_samples, neck.eval_prior_samples = counts
            torch.manual_seed(0)  # the log-density's points
            start = time.perf_counter()
            nll = iwae_nll(
                model,
                data["test"][: args.iwae_images],
                num_samples=IWAE_SAMPLES,
                generator=torch.Generator().manual_seed(1),  # the posterior samples
                progress=False,
            )
            first_nll = nll if first_nll is None else first_nll
            diff = nll - first_nll
            r["iwae1000_nll"] = nll.mean().item()
            r["iwae1000_nll_se"] = (nll.std() / math.sqrt(nll.numel())).item()
            r["iwae1000_minus_first"] = diff.mean().item()
            r["iwae1000_minus_first_se"] = (diff.std() / math.sqrt(diff.numel())).item()
            r["iwae_wall_s"] = time.perf_counter() - start
            tqdm.write(
                f"{counts!s:>12}  IWAE-1000 on {args.iwae_images} images {r['iwae1000_nll']:.3f}, "
                f"{r['iwae1000_minus_first']:+.3f} ± {r['iwae1000_minus_first_se']:.3f} from "
                f"{tuple(args.counts[0])}"
            )
        tqdm.write(
            f"{counts!s:>12}  plain {r['plain_bias_nats']:+.3f} ± {r['plain_bias_se']:.3f}  "
            f"debiased {r['debiased_bias_nats']:+.3f} ± {r['debiased_bias_se']:.3f}  "
            f"IWAE-1000 log-density ≈ {r['iwae1000_log_density_hours']:.1f} h"
        )
    payload = {
        **started,
        "model": args.model,
        "lattice": neck.geometry.name,
        "proposal": neck.proposal,
        **counts_of_row,
        "checkpoint": info["checkpoint"],
        "checkpoint_epoch": info.get("checkpoint_epoch"),
        "config_since_trained": info.get("config_since_trained", []),
        "images": int(v.shape[0]),
        "iwae_images": args.iwae_images,
        "split": "test",
        "reference_samples": list(REFERENCE),
        "reference_proposal": "tilted",
        "repeats": 4,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
        "notes": "bias of log f-hat per image (nats; negative: the rate is overestimated); "
        "iwae1000_log_density_hours scales one log_density call to 1000 samples x 10k images; "
        "iwae1000_* on the first iwae_images test images, the same posterior samples at every "
        "count pair; train_samples, eval_samples and (without --proposal) proposal are those "
        "the checkpoint's run recorded, which the model is built from (config_since_trained: "
        "what the row's config in this tree has changed since)",
    }
    write_json(payload, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
