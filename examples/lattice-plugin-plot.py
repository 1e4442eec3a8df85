"""Figure of ``examples/lattice-plugin.py``'s results: what each lattice's cell costs at the
trained Gaussian-lattice VAE's operating point, next to its ideal-lattice gap at high resolution.

    python examples/lattice-plugin-plot.py results/lattice-plugin.json \
        results/lattice-plugin-leech.json --out results/lattice-plugin.png

Reads only the JSON files written by ``lattice-plugin.py`` (their rows in the order given).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qlatent.results import number


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        try:
            payload = json.loads(path.read_text())
            rows += [
                {
                    "layout": str(r["layout"]),
                    # null (a NaN when written, e.g. the s.e. of one image) draws no bar
                    "gap": number(r["minus_gaussian_lattice"]),
                    "se": number(r["minus_gaussian_lattice_se"]),
                    "theory": number(r["ideal_lattice_gap_theory"]),
                }
                for r in payload["rows"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"{path}: not a lattice-plugin.py result ({err})") from None
    if not rows:
        raise SystemExit("no rows in the files given")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    from qlatent.eval.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(rows))
    width = 0.38
    ax.bar(
        [i - width / 2 for i in x],
        [r["gap"] for r in rows],
        width,
        yerr=[2 * r["se"] for r in rows],
        label="at the Gaussian-lattice VAE's point (± 2 s.e.)",
    )
    ax.bar(
        [i + width / 2 for i in x],
        [r["theory"] for r in rows],
        width,
        label="ideal-lattice gap at high resolution",
    )
    ax.set_xticks(list(x), [r["layout"] for r in rows], fontsize=8)
    ax.set_ylabel("nats per image above the Gaussian noise")
    ax.set_title("The cell's cost, encoder and decoder of the Gaussian-lattice VAE", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/lattice-plugin.png"))
    args = parser.parse_args()
    if args.out and args.out.is_dir():  # refused now, not after the work
        parser.error(f"--out {args.out} is a folder; it takes the path of a figure")
    plot(load_rows(args.results), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
