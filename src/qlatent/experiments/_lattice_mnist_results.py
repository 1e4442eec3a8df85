"""The lattice-mnist results file read back: the checks on a row and on a whole payload before it
is tabled (:func:`_row_problem`, :func:`_payload_problem`), the rows an earlier run left in the
file (:func:`_previous_rows`, kept beside the new ones by
:func:`~qlatent.experiments.lattice_mnist.reproduce`) and the markdown table
(:func:`markdown_table`, which the command line prints). :mod:`~qlatent.experiments.lattice_mnist`
re-exports :func:`markdown_table`, :func:`_row_problem` and :func:`_previous_rows`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._utils import terminal_text
from ..results import cell, finite, read_json
from ._cache import problem
from ._lattice_mnist_config import LABELS, PAPER_IWAE1000

#: the fields of a results row that the markdown table and the figures read, and their kinds
#: (None: a NaN or infinity as the results file holds it, which the table shows as missing)
_ROW_FIELDS = {
    "epochs": "integer",
    "best_epoch": "integer",
    "epoch_cap_hit": "flag",
    "val_neg_elbo_curve": "list",
    "test_neg_elbo": "number or None",
    "test_nll_iwae_se": "number or None",
    "iwae_samples": "integer",
    "test_codelength_hard": "number or None or missing",
}
_DEFENSIVE_FIELDS = {
    "test_nll_iwae_defensive_se": "number or None",
    "iwae_defensive_minus_own": "number or None",
    "iwae_defensive_minus_own_se": "number or None",
}


def _row_problem(row: Any) -> str | None:
    """What keeps a row of a results file from being drawn and tabled, or None."""
    wrong = problem(row, _ROW_FIELDS, "row")
    if wrong:
        return wrong
    curve = row["val_neg_elbo_curve"]
    if not curve or not all(problem({"v": v}, {"v": "number or None"}) is None for v in curve):
        return "its val_neg_elbo_curve is no list of numbers"  # null: an epoch not finite
    fields = {f"test_nll_iwae{row['iwae_samples']}": "number or None"}
    if "iwae_defensive" in row:
        defensive = f"test_nll_iwae{row['iwae_samples']}_defensive"
        fields |= _DEFENSIVE_FIELDS | {defensive: "number or None"}
    return problem(row, fields, "row")


def _payload_problem(payload: Any) -> str | None:
    """What keeps a results payload from being tabled (:func:`markdown_table`), or None."""
    wrong = problem(
        payload,
        {
            "models": "table",
            "theoretical_gaps_nats": "table or missing",
            "theoretical_gap_nats": "number or None or missing",
        },
        "the payload",
    )
    if wrong:
        return wrong
    for name, row in payload["models"].items():
        if name not in LABELS:
            return f"models holds the unknown row {name!r}; known: {list(LABELS)}"
        wrong = _row_problem(row)
        if wrong:
            return f"the row {name!r} cannot be tabled ({wrong})"
    for name, gap in payload.get("theoretical_gaps_nats", {}).items():
        wrong = problem({name: gap}, {name: "number or None"}, "theoretical_gaps_nats")
        if wrong:
            return wrong
    models = payload["models"]
    if "rect_lattice" in models and "gaussian_lattice" in models:
        return problem(payload, {"theoretical_gap_nats": "number or None"}, "the payload")
    return None


def _difference(a: float | None, b: float | None, spec: str) -> str:
    """``a − b`` formatted by ``spec``; missing where either is (:func:`~qlatent.results.cell`)."""
    return cell(a - b if finite(a) and finite(b) else None, spec)


def _previous_rows(path: Path, data: str) -> dict[str, Any]:
    """The rows already in ``path`` (same data set), so that running a subset of the table adds
    to it; rows written before per-row provenance get the file's own."""
    old = read_json(path)
    if not isinstance(old, dict) or old.get("data") != data:
        return {}
    # what cannot be a table's rows and configs is dropped, as an unreadable file is
    rows = old.get("models")
    old["models"] = {}
    for name, row in rows.items() if isinstance(rows, dict) else []:
        wrong = _row_problem(row)
        if wrong is None:
            old["models"][name] = row
        else:  # the table and the figures read these fields: a row without them is dropped
            print(terminal_text(f"{path}: dropping the row {name!r} ({wrong})"), flush=True)
    if not isinstance(old.get("configs"), dict):
        old["configs"] = {}
    keys = ("command", "commit", "dirty", "machine", "date")
    for row in old["models"].values():
        row.setdefault("provenance", {k: old.get(k) for k in keys})
    return old


def markdown_table(payload: dict[str, Any]) -> str:
    """The table of ``payload`` (:func:`~.lattice_mnist.reproduce`'s, or its JSON file read
    back); ValueError naming the first field that keeps it from being one
    (:func:`_payload_problem`)."""
    wrong = _payload_problem(payload)
    if wrong:
        raise ValueError(f"lattice-mnist results: {wrong}")
    models = payload["models"]
    gaps = payload.get("theoretical_gaps_nats", {})
    lines = [
        "| model | IWAE NLL (ours) | paper (IWAE-1000) | −ELBO (ours) | − Gaussian-lattice "
        "| ideal-lattice gap (theory) | epochs | best | cap hit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = models.get("gaussian_lattice")
    ref_nll = ref[f"test_nll_iwae{ref['iwae_samples']}"] if ref else None
    for name, r in models.items():
        key = f"test_nll_iwae{r['iwae_samples']}"
        paper = PAPER_IWAE1000.get(name)
        delta = (
            ""
            if ref is None or name == "gaussian_lattice"
            else _difference(r[key], ref_nll, "+.2f")
        )
        gap = gaps.get(name)
        lines.append(
            f"| {LABELS[name]} | {cell(r[key], '.2f')} ± {cell(r['test_nll_iwae_se'], '.2f')} "
            f"(S={r['iwae_samples']}) | {'' if paper is None else f'{paper:.2f}'} "
            f"| {cell(r['test_neg_elbo'], '.2f')} | {delta} "
            f"| {'' if gap is None else cell(gap, '.2f')} "
            f"| {r['epochs']} | {r['best_epoch']} | {'yes' if r['epoch_cap_hit'] else 'no'} |"
        )
    for name, r in models.items():
        if "test_codelength_hard" in r:
            lines.append("")
            # the paired gap: each repeat's codelength against a −ELBO of the same images drawn
            # beside it (the −ELBO column is another draw, so its difference is not the gap)
            paired = r.get("codelength_minus_neg_elbo")
            repeats = r.get("codelength_repeats")
            lines.append(
                f"{LABELS[name]}, hard-path two-part codelength: "
                f"{cell(r['test_codelength_hard'], '.2f')} nats (−ELBO "
                f"{cell(r['test_neg_elbo'], '.2f')}; Theorem 1: equal in expectation"
                + (
                    f"; over {repeats} repeats of both, codelength − −ELBO = {cell(paired, '+.2f')}"
                    if paired is not None and repeats
                    else ""
                )
                + ")"
            )
    for name, r in models.items():
        if "iwae_defensive" in r:
            s = r["iwae_samples"]
            lines.append("")
            lines.append(
                f"{LABELS[name]}, IWAE-{s} under the defensive proposal {r['iwae_defensive']} "
                f"(α:k, covers the neighbouring cells): "
                f"{cell(r[f'test_nll_iwae{s}_defensive'], '.2f')} ± "
                f"{cell(r['test_nll_iwae_defensive_se'], '.2f')} "
                f"({cell(r['iwae_defensive_minus_own'], '+.2f')} ± "
                f"{cell(r['iwae_defensive_minus_own_se'], '.2f')} from its own proposal's)"
            )
    if "rect_lattice" in models and ref:
        a = models["rect_lattice"]
        gap = _difference(a[f"test_nll_iwae{a['iwae_samples']}"], ref_nll, ".2f")
        lines.append(
            f"rectangular − Gaussian-lattice gap: {gap} nats (paper 5.10; at most "
            f"{cell(payload['theoretical_gap_nats'], '.2f')} = m·½·log(2πe/12) for an ideal "
            "lattice)"
        )
    return "\n".join(lines)
