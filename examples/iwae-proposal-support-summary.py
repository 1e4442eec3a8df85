"""Mean ± sd over seeds of ``examples/iwae-proposal-support.py``'s files, and each row read with
the proposal a validation file chose for it.

    python examples/iwae-proposal-support-summary.py \\
        --seeds 2021=results/iwae-proposal-support/test-seed2021.json \\
                2022=results/iwae-proposal-support/test-seed2022.json \\
        --select results/iwae-proposal-support/val-grid-seed2021.json \\
        --out results/iwae-proposal-support/summary.json

Per row and proposal: IWAE NLL, its difference to the row's own proposal and to the reference row
under the same proposal, per seed and as mean ± sd. With ``--select``, each row of the validation
file takes the proposal with its lowest validation NLL, and each such row is read against the
reference with both under their chosen proposals (rows the validation file lacks are left out of
that reading). Reads only the JSON files; the seeds' files must share their reference row and
rows. Proposals read at every seed are summarized, the others are listed under ``left_out``; a
proposal chosen on validation must be in every seed's file.

Readings of other rows beside the same reference model join with commas (``2021=A.json,B.json``,
and so for ``--select``): they must come from the same runs folder, split, images and samples, and
every row and proposal two of them read must agree (the reference read twice, to 1e-3 nats; the
first file's value is kept). ``--compare A:B`` then reads row A against row B, both non-reference
rows, per seed: under their own proposals and each under its choice on validation.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from qlatent.results import cell, number, provenance, write_json


def read(path: Path) -> dict:
    """One file of ``iwae-proposal-support.py``, each ``iwae_nll`` a float (NaN where the file
    holds null: a NaN or an infinity when it was written); exits with one line if it is not
    one."""
    try:
        payload = json.loads(path.read_text())
        rows = payload["rows"]
        reference = payload["reference"]
        if reference not in rows or not all("proposals" in r for r in rows.values()):
            raise KeyError("proposals")
        for entry in rows.values():
            for proposal in entry["proposals"].values():
                proposal["iwae_nll"] = number(proposal["iwae_nll"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        sys.exit(f"{path}: not a file of iwae-proposal-support.py ({err})")
    return payload


#: the settings that readings joined into one must share
_SAME = ("runs", "split", "images", "iwae_samples", "reference")
#: how far two readings of one row and proposal may differ (the same model, images and draws read
#: by code that rounds differently)
_AGREE = 1e-3


def merge(payloads: list[dict], label: str) -> dict:
    """One reading out of several of the same images beside the same reference model: their rows
    joined, rows read twice checked to agree; exits with one line where they do not."""
    first = payloads[0]
    out = {**first, "rows": {row: _copy_row(entry) for row, entry in first["rows"].items()}}
    for other in payloads[1:]:
        for key in _SAME:
            if other.get(key) != first.get(key):
                sys.exit(
                    f"{label}: its files differ in {key} ({first.get(key)!r}, {other.get(key)!r})"
                )
        for row, entry in other["rows"].items():
            if row not in out["rows"]:
                out["rows"][row] = _copy_row(entry)
                continue
            mine = out["rows"][row]
            if mine.get("checkpoint_epoch") != entry.get("checkpoint_epoch"):
                sys.exit(f"{label}: {row} was read at two checkpoints")
            for name, value in entry["proposals"].items():
                if name not in mine["proposals"]:
                    mine["proposals"][name] = value
                elif _differ(mine["proposals"][name]["iwae_nll"], value["iwae_nll"]):
                    sys.exit(f"{label}: {row} under {name} differs between its files")
    return out


def _differ(a: float, b: float) -> bool:
    """Whether two readings of one row and proposal disagree: by more than :data:`_AGREE`, or
    one of them NaN and not the other."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) != math.isnan(b)
    return abs(a - b) > _AGREE


def _copy_row(entry: dict) -> dict:
    return {**entry, "proposals": dict(entry["proposals"])}


def read_all(paths: str, label: str) -> dict:
    """``A.json[,B.json...]`` as one reading (:func:`merge`)."""
    parts = paths.split(",")
    if not all(parts):
        sys.exit(f"{label}: an empty path in {paths!r}")
    return merge([read(Path(p)) for p in parts], label)


def spread(values: list[float]) -> dict:
    sd = None
    if len(values) > 1:  # statistics.stdev fails on a NaN or an infinity
        sd = statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan
    return {"values": values, "mean": statistics.fmean(values), "sd": sd}


def chosen(select: dict | None) -> dict[str, str]:
    """Row -> the proposal with the lowest NLL in the validation file (a NaN never the lowest,
    as the infinity it may stand for would not be)."""
    if select is None:
        return {}

    def nll(entry: dict, name: str) -> float:
        value = entry["proposals"][name]["iwae_nll"]
        return math.inf if math.isnan(value) else value

    return {
        row: min(entry["proposals"], key=lambda name: nll(entry, name))
        for row, entry in select["rows"].items()
    }


def summarize(files: dict[int, dict], select: dict | None) -> dict:
    first = next(iter(files.values()))
    reference = first["reference"]
    for seed, payload in files.items():
        if payload["reference"] != reference or payload["rows"].keys() != first["rows"].keys():
            sys.exit(f"seed {seed}: another reference or other rows than seed {next(iter(files))}")
    picks = chosen(select)
    out: dict = {"reference": reference, "rows": {}, "chosen_on_validation": picks}
    left_out: dict[str, list[str]] = {}
    for row in first["rows"]:
        every = {name for f in files.values() for name in f["rows"][row]["proposals"]}
        names = [n for n in every if all(n in f["rows"][row]["proposals"] for f in files.values())]
        names.sort(key=lambda n: (n != "own", n))
        if "own" not in names or (row in picks and picks[row] not in names):
            sys.exit(f"{row}: its own or its chosen proposal is not in every seed's file")
        if every - set(names):
            left_out[row] = sorted(every - set(names))
        entry = {}
        for name in names:
            nll = [files[s]["rows"][row]["proposals"][name]["iwae_nll"] for s in files]
            per = {"iwae_nll": spread(nll)}
            own = [files[s]["rows"][row]["proposals"]["own"]["iwae_nll"] for s in files]
            ref = [files[s]["rows"][reference]["proposals"][name]["iwae_nll"] for s in files]
            if name != "own":
                per["minus_own"] = spread([a - b for a, b in zip(nll, own, strict=True)])
            if row != reference:
                per["minus_reference"] = spread([a - b for a, b in zip(nll, ref, strict=True)])
            entry[name] = per
        out["rows"][row] = entry
    if left_out:
        out["left_out"] = left_out
    if picks and reference in picks:
        mine = picks[reference]
        out["minus_reference_chosen"] = {}
        for row in first["rows"]:
            if row == reference or row not in picks:
                continue
            theirs = picks[row]
            diffs = [
                files[s]["rows"][row]["proposals"][theirs]["iwae_nll"]
                - files[s]["rows"][reference]["proposals"][mine]["iwae_nll"]
                for s in files
            ]
            out["minus_reference_chosen"][row] = {"row": theirs, "reference": mine, **spread(diffs)}
    return out


def compare(files: dict[int, dict], select: dict | None, pairs: list[tuple[str, str]]) -> dict:
    """Row A minus row B per seed for each pair: both under their own proposals (``own``) and,
    with a validation file, each under its choice (``chosen``)."""
    first = next(iter(files.values()))
    picks = chosen(select)
    out = {}
    for a, b in pairs:
        for row in (a, b):
            if row not in first["rows"] or row == first["reference"]:
                sys.exit(f"--compare {a}:{b}: {row} is not a row read beside the reference")

        def nll(seed: int, row: str, name: str) -> float:
            return files[seed]["rows"][row]["proposals"][name]["iwae_nll"]

        entry = {"own": spread([nll(s, a, "own") - nll(s, b, "own") for s in files])}
        if a in picks and b in picks:
            diffs = [nll(s, a, picks[a]) - nll(s, b, picks[b]) for s in files]
            entry["chosen"] = {"row": picks[a], "other": picks[b], **spread(diffs)}
        out[f"{a} − {b}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", required=True, help="SEED=PATH[,PATH...]")
    parser.add_argument("--select", default=None, help="a validation file, PATH[,PATH...]")
    parser.add_argument(
        "--compare", nargs="+", default=[], help="ROW:OTHER, both not the reference"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    files = {}
    for item in args.seeds:
        seed, sep, paths = item.partition("=")
        if not sep or not seed.isdigit() or not paths:
            parser.error(f"expected SEED=PATH[,PATH...], got {item!r}")
        files[int(seed)] = read_all(paths, f"seed {seed}")
    pairs = []
    for item in args.compare:
        a, sep, b = item.partition(":")
        if not sep or not a or not b or a == b:
            parser.error(f"expected ROW:OTHER, got {item!r}")
        pairs.append((a, b))
    command = "python examples/iwae-proposal-support-summary.py --seeds " + " ".join(args.seeds)
    if args.select:
        command += f" --select {args.select}"
    if args.compare:
        command += " --compare " + " ".join(args.compare)
    if args.out:
        command += f" --out {args.out}"
    select = read_all(args.select, "--select") if args.select else None
    summary = {**provenance(command), **summarize(files, select)}
    if pairs:
        summary["compare"] = compare(files, select, pairs)
    for row, entry in summary["rows"].items():
        for name, per in entry.items():
            line = f"{row} {name}: {cell(per['iwae_nll']['mean'], '.2f')}"
            for key in ("minus_own", "minus_reference"):
                if key in per:
                    sd = per[key]["sd"]
                    line += f", {key} {cell(per[key]['mean'], '+.2f')}" + (
                        f" ± {cell(sd, '.2f')}" if sd else ""
                    )
            print(line)
    for row, d in summary.get("minus_reference_chosen", {}).items():
        print(f"{row} ({d['row']}) − reference ({d['reference']}): {_mean_sd(d)}")
    for pair, d in summary.get("compare", {}).items():
        line = f"{pair}: own {_mean_sd(d['own'])}"
        if "chosen" in d:
            line += (
                f", chosen ({d['chosen']['row']}, {d['chosen']['other']}) {_mean_sd(d['chosen'])}"
            )
        print(line)
    if args.out:
        print(f"wrote {write_json(summary, args.out)}")


def _mean_sd(d: dict) -> str:
    return cell(d["mean"], "+.2f") + (f" ± {cell(d['sd'], '.2f')}" if d["sd"] else "")


if __name__ == "__main__":
    main()
