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

The seeds' own JSON files are copied into the output folder beside ``summary.json``. A row that
the committed table does not hold is read from the extra seeds alone.

A row trained from another row's model (``init_from``, e.g. the ``*_gl_lattice`` rows from the
Gaussian-lattice VAE) is best read against its own start at the same seed, which takes that
start's seed-to-seed spread out of the comparison: ``--starts SEED=JSON ...`` names, for every
seed (the protocol's included), the results file that holds the start row, and ``paired`` gives
per metric the row minus its start, seed by seed, with mean and standard deviation. Each seed's
recorded start checkpoint epoch is checked against that file's best epoch.

    python examples/lattice-mnist-seeds.py --row e8_gl_lattice \\
        --seed-results 2021=DIR1/lattice-mnist.json \\
        --starts 2020=results/lattice-mnist-long/gaussian_lattice/lattice-mnist.json \\
                 2021=DIR0/lattice-mnist.json

A control trained from the same start (e.g. ``rect_gl_lattice``, the rectangular cell under the
Gaussian-lattice start, for a good-lattice ``*_gl_lattice`` row) separates what the cell gains
from what the start gives: ``--control ROW --controls SEED=JSON ...`` names that row and, for every
seed, the results file that holds it; ``controlled`` gives per metric the row minus the control,
seed by seed, with mean and standard deviation. The two must record the same start (checkpoint
file and epoch) at each seed.

    python examples/lattice-mnist-seeds.py --row e8_gl_lattice \\
        --seed-results 2021=DIR1/lattice-mnist.json \\
        --control rect_gl_lattice --controls 2020=results/lattice-mnist.json \\
                                             2021=DIR2/lattice-mnist.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

from qlatent.results import cell, number, provenance, write_json

METRICS = ("test_nll_iwae1000", "test_neg_elbo", "test_rate", "test_codelength_hard")
PROTOCOL_SEED = 2020


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", required=True)
    parser.add_argument("--seed-results", nargs="+", required=True, metavar="SEED=JSON")
    parser.add_argument("--table", default="results/lattice-mnist.json")
    parser.add_argument("--out", default="results/lattice-mnist-seeds")
    parser.add_argument("--starts", nargs="+", default=[], metavar="SEED=JSON")
    parser.add_argument("--control", metavar="ROW", help="a row trained from the same start")
    parser.add_argument("--controls", nargs="+", default=[], metavar="SEED=JSON")
    args = parser.parse_args()
    if bool(args.control) != bool(args.controls):
        parser.error("--control and --controls go together")

    table = {
        name: _metrics(row)
        for name, row in json.loads(Path(args.table).read_text())["models"].items()
    }
    # a row without a run at the protocol's seed (its start no longer exists) is read from the
    # extra seeds alone
    runs = {PROTOCOL_SEED: table[args.row]} if args.row in table else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed, path in _seed_files(args.seed_results).items():
        runs[seed] = _row_of(path, args.row)
        shutil.copyfile(path, out / f"{args.row}-seed{seed}.json")
    spread = {}
    for metric in METRICS:
        values = {seed: row[metric] for seed, row in runs.items() if metric in row}
        if len(values) < 2:
            continue
        mean, sd = statistics.mean(values.values()), _stdev(list(values.values()))
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
        listed = ", ".join(cell(v, ".2f") for v in values.values())
        print(f"{metric}: {listed} -> {cell(mean, '.2f')} ± {cell(sd, '.2f')}")
    payload = {
        **provenance(" ".join(["python", *sys.argv])),
        "row": args.row,
        "seeds": sorted(runs),
        "wall_s": {seed: row.get("wall_s") for seed, row in runs.items()},
        "spread": spread,
    }
    if args.starts:
        payload["paired"] = paired_gaps(runs, _seed_files(args.starts), out)
    if args.control:
        payload["controlled"] = control_gaps(runs, args.control, _seed_files(args.controls), out)
    print(f"wrote {write_json(payload, out / 'summary.json')}")


def _seed_files(items: list[str]) -> dict[int, Path]:
    """``["SEED=PATH", ...]`` as ``{seed: path}``; exits with one line on a malformed item."""
    files = {}
    for item in items:
        seed, sep, path = item.partition("=")
        if not sep or not seed.strip().lstrip("-").isdigit() or not path:
            sys.exit(f"expected SEED=JSON, got {item!r}")
        files[int(seed)] = Path(path)
    return files


def _row_of(path: Path, row: str) -> dict:
    """Row ``row`` of the results file ``path`` (:func:`_metrics`); exits with one line if it
    cannot be read."""
    try:
        return _metrics(json.loads(path.read_text())["models"][row])
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"{path}: no row {row!r} in a lattice-mnist results file ({error!r})")


def _metrics(row: dict) -> dict:
    """``row`` with each of :data:`METRICS` it holds as a float: NaN where the file holds null
    (a NaN or an infinity when it was written, e.g. a diverged run's), as the payload held it."""
    return {**row, **{metric: number(row[metric]) for metric in METRICS if metric in row}}


def _stdev(values: list[float]) -> float:
    """The sample standard deviation of ``values``; NaN where one of them is NaN or infinite
    (:func:`statistics.stdev` fails there)."""
    return statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan


def paired_gaps(runs: dict[int, dict], starts: dict[int, Path], out: Path) -> dict:
    """Per metric, the row minus its start (the row named by its ``init_from``) at each seed, with
    mean and sample standard deviation over the seeds. Every seed of ``runs`` needs a start;
    the start files are copied into ``out`` as ``start-seedSEED.json``."""
    missing = sorted(set(runs) - set(starts))
    if missing:
        sys.exit(f"--starts has no results file for seed(s) {missing}")
    start_rows = {}
    for seed, row in runs.items():
        source = row.get("init_from") or {}
        name = source.get("row")
        if not name:
            sys.exit(f"the row at seed {seed} records no init_from: it was not started from a row")
        start = _row_of(starts[seed], name)
        if source.get("checkpoint_epoch") not in (None, start.get("best_epoch")):
            sys.exit(
                f"seed {seed}: the row started from epoch {source['checkpoint_epoch']} of {name}, "
                f"but {starts[seed]} holds its best epoch {start.get('best_epoch')}"
            )
        start_rows[seed] = {"row": name, "file": str(starts[seed]), **start}
        shutil.copyfile(starts[seed], out / f"start-seed{seed}.json")
    return {
        "starts": {
            seed: {"row": s["row"], "file": s["file"], "best_epoch": s.get("best_epoch")}
            for seed, s in start_rows.items()
        },
        "metrics": _differences(runs, start_rows, "start"),
    }


def control_gaps(runs: dict[int, dict], control: str, files: dict[int, Path], out: Path) -> dict:
    """Per metric, the row minus ``control`` at each seed, with mean and sample standard
    deviation over the seeds. Every seed of ``runs`` needs a file holding the control, which must
    record the same start (``init_from`` checkpoint and epoch) as the row at that seed, or, for
    rows trained from scratch, none either; the files are copied into ``out`` as
    ``control-seedSEED.json``."""
    missing = sorted(set(runs) - set(files))
    if missing:
        sys.exit(f"--controls has no results file for seed(s) {missing}")
    controls = {}
    for seed, row in runs.items():
        reference = _row_of(files[seed], control)
        start, its = row.get("init_from") or {}, reference.get("init_from") or {}
        same = ("checkpoint", "checkpoint_epoch")
        if any(start.get(key) != its.get(key) for key in same):
            sys.exit(
                f"seed {seed}: {control} in {files[seed]} was not started from the row's start "
                f"({its.get('checkpoint')} epoch {its.get('checkpoint_epoch')} against "
                f"{start.get('checkpoint')} epoch {start.get('checkpoint_epoch')})"
            )
        controls[seed] = reference
        shutil.copyfile(files[seed], out / f"control-seed{seed}.json")
    return {
        "control": control,
        "files": {seed: str(path) for seed, path in sorted(files.items()) if seed in runs},
        "metrics": _differences(runs, controls, "control"),
    }


def _differences(runs: dict[int, dict], references: dict[int, dict], name: str) -> dict:
    """Per metric, ``runs[seed] − references[seed]`` for every seed holding the metric in both,
    with their mean and sample standard deviation (None for one seed); printed one line each."""
    table = {}
    for metric in METRICS:
        gaps = {
            seed: row[metric] - references[seed][metric]
            for seed, row in runs.items()
            if metric in row and metric in references[seed]
        }
        if not gaps:
            continue
        values = list(gaps.values())
        sd = _stdev(values) if len(values) > 1 else None
        table[metric] = {
            name: {seed: references[seed][metric] for seed in gaps},
            f"minus_{name}": gaps,
            "mean": statistics.mean(values),
            "sd": sd,
        }
        listed = ", ".join(cell(v, "+.2f") for v in values)
        print(
            f"{metric} minus its {name}: {listed} -> {cell(statistics.mean(values), '+.2f')}"
            + (f" ± {cell(sd, '.2f')}" if sd is not None else "")
        )
    return table


if __name__ == "__main__":
    main()
