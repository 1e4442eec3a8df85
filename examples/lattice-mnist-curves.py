"""Validation curves of Table-1 rows side by side, one panel per training seed.

Each ``--run`` names a label, a ``reproduce lattice-mnist`` results file and a row in it; ``{seed}``
in the path is replaced by each seed of ``--seeds``. ``--start`` adds, per seed, a dashed line at
the best validation −ELBO of the row the others were started from (e.g. the Gaussian-lattice VAE
the ``*_gl_lattice`` rows start from), so that what the extra epochs give reads off the figure.

    python examples/lattice-mnist-curves.py --seeds 2021 2022 \\
        --start 'DIR/results-gl-seed{seed}/lattice-mnist.json:gaussian_lattice' \\
        --run 'E8^3 ⊕ Z^16=DIR/results-e8z-seed{seed}/lattice-mnist.json:e8z_gl_lattice' \\
        --run 'Gaussian-lattice=DIR/results-gl-seed{seed}/lattice-mnist.json:gaussian_gl_lattice' \\
        --out results/curves.png

Reads only the results files; writes the figure and, beside it, a JSON file with each run's
best validation −ELBO and its epoch per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from qlatent.results import number, provenance, write_json


def parse_run(item: str) -> tuple[str, str, str]:
    """``LABEL=PATH:ROW`` as its three parts; exits with one line on a malformed item."""
    label, sep, rest = item.partition("=")
    path, colon, row = rest.rpartition(":")
    if not sep or not colon or not label or not path or not row:
        sys.exit(f"expected LABEL=PATH:ROW, got {item!r}")
    return label, path, row


def read_row(template: str, seed: int, row: str) -> dict:
    """Row ``row`` of the results file ``template`` at ``seed``; exits with one line if it
    cannot be read or holds no validation curve. An epoch the file holds as null (a NaN or an
    infinity when it was written) is NaN in the curve and never the best; with no finite
    epoch, the best is NaN and its epoch None."""
    path = Path(template.replace("{seed}", str(seed))).expanduser()
    try:
        found = json.loads(path.read_text())["models"][row]
        curve = [number(v) for v in found["val_neg_elbo_curve"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        sys.exit(f"{path}: no row {row!r} with a validation curve ({err!r})")
    if not curve:
        sys.exit(f"{path}: row {row!r} has an empty validation curve")
    best = min((v for v in curve if math.isfinite(v)), default=math.nan)
    return {
        "file": str(path),
        "curve": curve,
        "best": best,
        "best_epoch": curve.index(best) + 1 if math.isfinite(best) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=PATH:ROW")
    parser.add_argument("--start", metavar="PATH:ROW", help="the row the runs started from")
    parser.add_argument("--ylim", nargs=2, type=float, metavar=("LOW", "HIGH"))
    parser.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    args = parser.parse_args()
    runs = [parse_run(item) for item in args.run]
    start = parse_run(f"start={args.start}") if args.start else None

    from qlatent.eval.plots import plt, save_figure

    fig, axes = plt.subplots(
        1, len(args.seeds), figsize=(5 * len(args.seeds), 4), squeeze=False, sharey=True
    )
    record: dict = {}
    for ax, seed in zip(axes[0], args.seeds, strict=True):
        record[seed] = {}
        for label, template, row in runs:
            got = read_row(template, seed, row)
            ax.plot(range(1, len(got["curve"]) + 1), got["curve"], label=label, lw=1)
            record[seed][label] = {k: got[k] for k in ("file", "best", "best_epoch")}
        if start is not None:
            got = read_row(start[1], seed, start[2])
            ax.axhline(got["best"], color="black", ls="--", lw=0.8, label="start (its best)")
            record[seed]["start"] = {k: got[k] for k in ("file", "best", "best_epoch")}
        ax.set_title(f"seed {seed}", fontsize="medium")
        ax.set_xlabel("epoch")
        if args.ylim:
            ax.set_ylim(*args.ylim)
    axes[0][0].set_ylabel("validation −ELBO (nats)")
    axes[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    print(f"wrote {save_figure(fig, args.out)}")
    payload = {**provenance(" ".join(["python", *sys.argv])), "seeds": record}
    print(f"wrote {write_json(payload, args.out.with_suffix('.json'))}")


if __name__ == "__main__":
    main()
