"""The figures of the coding-mnist table: file size against −log p(x | ŷ) of the rate-control
sweeps (:func:`figure_rate_control`) and each row's file beside the ideal of its code model
(:func:`figure_coded_bits`, drawn from a payload alone). Drawn by
:func:`~qlatent.experiments.coding_mnist.reproduce`, which re-exports both; the second is also
drawn by ``examples/coding-mnist-plot.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import cell, finite
from ._cache import problem


def figure_rate_control(rows: dict[str, Any], path: Path) -> Path | None:
    """Coded bits per image against −log p(x | ŷ) of each swept row (its trained point ringed);
    None when no row was swept."""
    from ..eval.plots import save_figure, subplots

    swept = {name: r["rate_control"] for name, r in rows.items() if "rate_control" in r}
    if not swept:
        return None
    fig, ax = subplots(figsize=(6, 4))
    for name, points in swept.items():
        d = [p["hard_distortion_nats_per_image"] for p in points]
        b = [p["coded_bits_per_image"] for p in points]
        ax.plot(d, b, marker=".", label=name)
        trained = next(p for p in points if p["factor"] == 1.0)
        ax.plot(
            trained["hard_distortion_nats_per_image"], trained["coded_bits_per_image"], "o",
            mfc="none", ms=9, color=ax.lines[-1].get_color(),
        )  # fmt: skip
    ax.set_xlabel("−log p(x | ŷ), nats per image (decoded from the file)")
    ax.set_ylabel("file size, bits per image")
    ax.set_title("binarized MNIST test set: the lattice scaled by a factor (ringed: 1)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


#: the fields of a row that :func:`figure_coded_bits` reads (None: a NaN or infinity as the
#: results file holds it, drawn as missing)
_FIGURE_FIELDS = {
    "images": "integer",
    "header_bytes": "integer",
    "coded_bits_per_image": "number or None",
    "ideal_bits_per_image": "number or None",
    "hard_rate_bits_per_image": "number or None or missing",
    "round_trip_exact": "flag",
}
#: what the left panel of :func:`figure_coded_bits` draws of a row: bar, tick, diamond
_MARKED = ("coded_bits_per_image", "ideal_bits_per_image", "hard_rate_bits_per_image")
_DATA_NAMES = {"binarized-mnist": "binarized MNIST", "synthetic": "synthetic"}


def _figure_problem(payload: Any) -> str | None:
    """What keeps ``payload`` from being drawn by :func:`figure_coded_bits`, or None."""
    wrong = problem(payload, {"rows": "table", "config": "table"}, "the payload")
    wrong = wrong or problem(payload["config"], {"data": "string"}, "config")
    if wrong is None and not payload["rows"]:
        return "the payload holds no row"
    for name, row in payload["rows"].items() if wrong is None else ():
        row_wrong = problem(row, _FIGURE_FIELDS, "row")
        if row_wrong is None and row["images"] < 1:
            row_wrong = f"row.images is {row['images']}, not a count of at least 1"
        if row_wrong:
            return f"the row {name!r} cannot be drawn ({row_wrong})"
    return wrong


def figure_coded_bits(payload: dict[str, Any], path: str | Path) -> Path:
    """Each row's file against the bits its code model promises, from ``payload`` alone
    (:func:`~.coding_mnist.reproduce`'s, or its JSON file read back; no checkpoint): ValueError
    naming the first field that keeps it from being drawn.

    Left, the file's bits per image (header and checksum included), rows sorted, with the ideal
    Σ −log2 P(symbol) of its code model and the hard-path rate marked and the overhead over the
    ideal written beside each bar; right, that overhead in bits per image, split into the fixed
    header and checksum (its bytes over the images) and what the coder adds to the ideal.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ..eval.plots import save_figure, subplots

    wrong = _figure_problem(payload)
    if wrong:
        raise ValueError(f"coding-mnist results: {wrong}")
    # smallest file at the top; a row without a finite size (none is expected) at the bottom
    order = sorted(payload["rows"].items(), key=lambda item: _sort_key(item[1]))
    height = 2.0 + 0.32 * len(order)  # inches: title, axis labels and legend, then the rows
    fig, (ax, ax_over) = subplots(
        1, 2, figsize=(12, height), sharey=True,
        gridspec_kw={"width_ratios": [3, 2]},
    )  # fmt: skip
    # the furthest end of a bar or a marker: the text beside them needs room beyond it
    right = max((r[k] for _, r in order for k in _MARKED if finite(r.get(k))), default=1.0)
    over_right = 0.0
    for i, (_, r) in enumerate(order):
        coded, ideal, hard = (r.get(key) for key in _MARKED)
        header = 8 * r["header_bytes"] / r["images"]
        colour = "tab:blue" if r["round_trip_exact"] else "tab:red"
        if finite(coded):
            ax.barh(i, coded, height=0.7, color=colour, alpha=0.55)
        if finite(ideal):
            ax.plot(ideal, i, "|", color="k", ms=12, mew=2)
        if finite(hard):
            ax.plot(hard, i, "D", mfc="none", color="tab:orange", ms=5)
        over = coded - ideal if finite(coded) and finite(ideal) else None
        percent = 100 * over / ideal if over is not None and ideal > 0 else None
        end = max((v for v in (coded, ideal, hard) if finite(v)), default=0.0)
        text = cell(coded, ".2f") + (f"  ({percent:+.3f}%)" if finite(percent) else "")
        if not r["round_trip_exact"]:
            text += "  not decoded exactly"
        ax.text(end + 0.015 * right, i, text, va="center", fontsize=8)
        ax_over.barh(i, header, height=0.7, color="0.85", hatch="///", edgecolor="0.55")
        if over is not None:  # the coder's part, from the header's end (leftwards if below 0)
            ax_over.barh(i, over - header, left=header, height=0.7, color=colour, alpha=0.8)
            coder = 100 * (over - header) / ideal if ideal > 0 else None
            if finite(coder):
                ax_over.text(max(over, header), i, f" coder {coder:+.3f}%", va="center",
                             fontsize=7)  # fmt: skip
        over_right = max(over_right, header, over or 0.0)
    ax.set_yticks(range(len(order)), [name for name, _ in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25 * right)
    ax.set_xlabel("bits per image (in parentheses: the file over the ideal)")
    ax.set_title("the file beside the ideal of its code model", fontsize=9)
    ax_over.axvline(0, color="k", lw=0.8)
    ax_over.set_xlim(min(0.0, *ax_over.get_xlim()), 1.35 * over_right)
    ax_over.set_xlabel("file − ideal, bits per image")
    ax_over.set_title("where the overhead goes", fontsize=9)
    headers = "/".join(str(b) for b in sorted({r["header_bytes"] for _, r in order}))
    handles = [
        Patch(color="tab:blue", alpha=0.55, label="the file: its bytes × 8 / images"),
        Line2D([], [], ls="", marker="|", color="k", ms=12, mew=2,
               label="ideal: Σ −log2 P(symbol) under the file's code model"),
        Line2D([], [], ls="", marker="D", mfc="none", color="tab:orange", ms=5,
               label="hard-path rate −log2 P(z | u) (VQ: log2 K, its rate in training)"),
        Patch(facecolor="0.85", hatch="///", edgecolor="0.55",
              label=f"header and checksum ({headers} bytes per file)"),
        Patch(color="tab:blue", alpha=0.8, label="what the coder adds to the ideal"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    images = " / ".join(f"{k:,}" for k in sorted({r["images"] for _, r in order}))
    data = _DATA_NAMES.get(payload["config"]["data"], payload["config"]["data"])
    exact = all(r["round_trip_exact"] for _, r in order)
    fig.suptitle(
        f"{data} test set, {images} images: each row's test set coded into one file and "
        + ("decoded back bit for bit" if exact else "decoded back (red: not bit for bit)"),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1))  # the legend's half inch below the axes
    return save_figure(fig, path)


def _sort_key(row: dict[str, Any]) -> tuple[bool, float]:
    coded = row["coded_bits_per_image"]
    return (not finite(coded), coded if finite(coded) else 0.0)
