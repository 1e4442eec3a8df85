"""Seed-to-seed spread of a Table-1 row: the same protocol run with other training seeds.

Each extra seed is one run of ``qlatent reproduce lattice-mnist --models ROW --set
train.seed=SEED --runs-dir DIR --results-dir OUT_SEED`` (its own results folder, so that
``results/lattice-mnist.json`` is not touched). This reads the row from the committed table (the
protocol's seed, 2020) and from each extra seed's ``lattice-mnist.json``, and writes per metric the
values, their mean and sample standard deviation, and each other row of the committed table as a
difference from the row's mean in units of that standard deviation.

    python examples/lattice-mnist-seeds.py --row rect_lattice \\
        --seed-results 2021=DIR1/lattice-mnist.json 2022=DIR2/lattice-mnist.json \\
        [--table results/lattice-mnist.json] [--out results/lattice-mnist-seeds]

The seeds' own JSON files are copied into the output folder beside ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from qlatent.results import provenance, write_json

METRICS = ("test_nll_iwae1000", "test_neg_elbo", "test_rate", "test_codelength_hard")
PROTOCOL_SEED = 2020


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", required=True)
    parser.add_argument("--seed-results", nargs="+", required=True, metavar="SEED=JSON")
    parser.add_argument("--table", default="results/lattice-mnist.json")
    parser.add_argument("--out", default="results/lattice-mnist-seeds")
    args = parser.parse_args()

    table = json.loads(Path(args.table).read_text())["models"]
    runs = {PROTOCOL_SEED: table[args.row]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for item in args.seed_results:
        seed, _, path = item.partition("=")
        runs[int(seed)] = json.loads(Path(path).read_text())["models"][args.row]
        shutil.copyfile(path, out / f"{args.row}-seed{seed}.json")
    spread = {}
    for metric in METRICS:
        values = {seed: row[metric] for seed, row in runs.items() if metric in row}
        if len(values) < 2:
            continue
        mean, sd = statistics.mean(values.values()), statistics.stdev(values.values())
        others = {
            name: {
                "value": row[metric],
                "minus_mean": row[metric] - mean,
                "in_sd": (row[metric] - mean) / sd if sd > 0 else None,
            }
            for name, row in table.items()
            if name != args.row and metric in row
        }
        spread[metric] = {"values": values, "mean": mean, "sd": sd, "others": others}
        listed = ", ".join(f"{v:.2f}" for v in values.values())
        print(f"{metric}: {listed} -> {mean:.2f} ± {sd:.2f}")
    payload = {
        **provenance(" ".join(["python", *sys.argv])),
        "row": args.row,
        "seeds": sorted(runs),
        "wall_s": {seed: row.get("wall_s") for seed, row in runs.items()},
        "spread": spread,
    }
    print(f"wrote {write_json(payload, out / 'summary.json')}")


if __name__ == "__main__":
    main()
