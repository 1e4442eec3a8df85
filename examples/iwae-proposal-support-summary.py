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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from qlatent.results import provenance, write_json


def read(path: Path) -> dict:
    """One file of ``iwae-proposal-support.py``; exits with one line if it is not one."""
    try:
        payload = json.loads(path.read_text())
        rows = payload["rows"]
        reference = payload["reference"]
        if reference not in rows or not all("proposals" in r for r in rows.values()):
            raise KeyError("proposals")
    except (OSError, ValueError, KeyError, TypeError) as err:
        sys.exit(f"{path}: not a file of iwae-proposal-support.py ({err})")
    return payload


def spread(values: list[float]) -> dict:
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
    }


def chosen(select: dict | None) -> dict[str, str]:
    """Row -> the proposal with the lowest NLL in the validation file."""
    if select is None:
        return {}
    return {
        row: min(entry["proposals"], key=lambda name: entry["proposals"][name]["iwae_nll"])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", required=True, help="SEED=PATH")
    parser.add_argument("--select", type=Path, default=None, help="a validation file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    files = {}
    for item in args.seeds:
        seed, sep, path = item.partition("=")
        if not sep or not seed.isdigit() or not path:
            parser.error(f"expected SEED=PATH, got {item!r}")
        files[int(seed)] = read(Path(path))
    command = "python examples/iwae-proposal-support-summary.py --seeds " + " ".join(args.seeds)
    if args.select:
        command += f" --select {args.select}"
    if args.out:
        command += f" --out {args.out}"
    summary = {
        **provenance(command),
        **summarize(files, read(args.select) if args.select else None),
    }
    for row, entry in summary["rows"].items():
        for name, per in entry.items():
            line = f"{row} {name}: {per['iwae_nll']['mean']:.2f}"
            for key in ("minus_own", "minus_reference"):
                if key in per:
                    sd = per[key]["sd"]
                    line += f", {key} {per[key]['mean']:+.2f}" + (f" ± {sd:.2f}" if sd else "")
            print(line)
    for row, d in summary.get("minus_reference_chosen", {}).items():
        sd = f" ± {d['sd']:.2f}" if d["sd"] else ""
        print(f"{row} ({d['row']}) − reference ({d['reference']}): {d['mean']:+.2f}{sd}")
    if args.out:
        print(f"wrote {write_json(summary, args.out)}")


if __name__ == "__main__":
    main()
