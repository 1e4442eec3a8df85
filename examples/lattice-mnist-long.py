"""Table-1 rows trained past the 200-epoch cap: does the E8 row's lead come back?

The Table-1 protocol stops at 200 epochs, where every row is still improving (each hit the cap).
This reads the training logs of rows resumed past it (``qlatent reproduce lattice-mnist --models
NAME --set train.epochs=400 --runs-dir DIR``, everything else the protocol's, early stopping with
patience 50 included) and writes, per row, the best validation negative ELBO and its epoch within
the first 200 epochs and over the whole run, the validation rate and distortion at both, and a
figure of each row's validation −ELBO minus the rectangular lattice's and minus the
Gaussian-lattice VAE's, epoch by epoch (the first 200 epochs are the protocol's runs, bit for bit).

    python examples/lattice-mnist-long.py --runs ~/.cache/qlatent/runs-v6-long
        [--models rect_lattice,e8z_lattice,gaussian_lattice] [--out results/lattice-mnist-long]

It copies each row's ``log.jsonl`` into the output folder beside ``summary.json`` and
``curves.png``, so the numbers can be checked without the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from qlatent.results import finite, provenance, write_json

CAP = 200  # the protocol's epoch cap
REFERENCES = {"rect_lattice": "rectangular lattice", "gaussian_lattice": "Gaussian-lattice VAE"}


def _log(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
        raise SystemExit(f"{path}: not a complete training log")
    return rows


def _best(rows: list[dict]) -> dict:
    # an epoch whose value was not finite is null in the log
    finite_rows = [r for r in rows if finite(r["val_objective"])]
    if not finite_rows:
        raise SystemExit("a training log without a finite validation value")
    best = min(finite_rows, key=lambda r: r["val_objective"])
    return {
        "epoch": best["epoch"],
        "val_neg_elbo": best["val_objective"],
        "val_rate": best["val_rate"],
        "val_distortion": best["val_distortion"],
    }


def summary(logs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row: epochs run, the best validation −ELBO within the cap and overall, and the
    differences of each to the reference rows' at the same point."""
    out = {}
    for name, rows in logs.items():
        out[name] = {
            "epochs": len(rows),
            "best_within_cap": _best(rows[:CAP]),
            "best_overall": _best(rows),
            "wall_s": rows[-1]["wall_s"],
        }
    for name, row in out.items():
        for ref in REFERENCES:
            if ref in out and ref != name:
                for when in ("best_within_cap", "best_overall"):
                    row[when][f"minus_{ref}"] = (
                        row[when]["val_neg_elbo"] - out[ref][when]["val_neg_elbo"]
                    )
    return out


def figure(logs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = [r for r in REFERENCES if r in logs]
    fig, axes = plt.subplots(1, len(refs), figsize=(6 * len(refs), 4), squeeze=False)
    for ax, ref in zip(axes[0], refs, strict=True):
        base = [r["val_objective"] for r in logs[ref]]
        lows, highs = [0.0], [0.0]
        for name, rows in logs.items():
            if name in REFERENCES and (name == ref or ref == "rect_lattice"):
                continue  # each panel: the lattice rows against one reference
            n = min(len(rows), len(base))
            diff = [rows[i]["val_objective"] - base[i] for i in range(n)]
            ax.plot(range(1, n + 1), diff, label=name, linewidth=1)
            settled = diff[20:] or diff  # the first epochs are far off the scale
            lows.append(min(settled))
            highs.append(max(settled))
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.axvline(CAP, color="grey", linestyle=":", linewidth=1, label="protocol's cap")
        ax.set_ylim(min(lows) - 0.5, max(highs) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation −ELBO difference (nats)")
        ax.set_title(f"minus the {REFERENCES[ref]}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="runs folder of the long rows")
    parser.add_argument("--models", default="rect_lattice,e8z_lattice,gaussian_lattice")
    parser.add_argument("--out", type=Path, default=Path("results/lattice-mnist-long"))
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    command = (
        f"python examples/lattice-mnist-long.py --runs {args.runs} --models {','.join(names)} "
        f"--out {args.out}"
    )
    logs = {}
    for name in names:
        source = args.runs / "lattice-mnist" / name / "log.jsonl"
        if not source.is_file():
            raise SystemExit(f"{source}: no training log")
        logs[name] = _log(source)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = args.runs / "lattice-mnist" / name / "log.jsonl"
        shutil.copyfile(source, args.out / f"{name}.jsonl")
    figure(logs, args.out / "curves.png")
    result = {**provenance(command), "cap": CAP, "rows": summary(logs)}
    print(json.dumps(result["rows"], indent=1))
    print(f"wrote {write_json(result, args.out / 'summary.json')} and {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
