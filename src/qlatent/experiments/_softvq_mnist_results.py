"""The softvq-mnist results: the payload that ``reproduce`` writes (:func:`_payload`), the checks
on a payload before it is tabled (:func:`_payload_checks`) and the markdown table
(:func:`markdown_table`, which the command line prints), our rows beside the paper's.
:mod:`~qlatent.experiments.softvq_mnist` re-exports :func:`markdown_table`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..config import to_dict
from ..results import cell, finite, provenance
from ._cache import first_problem, problem
from ._softvq_mnist_config import (
    LABELS,
    NOTEBOOK_OUTPUT,
    PAPER,
    PAPER_ROW,
    PERPLEXITY_ROWS,
    SoftVQMnistConfig,
)
from ._softvq_mnist_runs import SEED_METRICS


def _payload(
    command: str,
    rows: dict[str, dict[str, Any]],
    models: list[str],
    configs: dict[str, SoftVQMnistConfig],
    seeds: list[int] | None,
) -> dict[str, Any]:
    """The results of ``reproduce``: the provenance of ``command``, the ``rows`` of ``models``
    beside the paper's values, and each row's config (with ``seeds``, how they were used)."""
    first = next(iter(configs.values()))
    payload: dict[str, Any] = {
        **provenance(command),
        "rows": rows,
        "paper": {  # a cause row: the values of the paper row it is compared with
            name: dict(
                zip(
                    ("kmeans_acc", "nmi", "linear_acc"),
                    PAPER[PAPER_ROW.get(name, name)],
                    strict=True,
                )
            )
            for name in models
            if PAPER_ROW.get(name, name) in PAPER
        },
        "notebook_output": {k: v for k, v in NOTEBOOK_OUTPUT.items() if k in models},
        "nmi_averaging": "arithmetic, 2I/(H(y)+H(ŷ)) as the paper defines it "
        "('nmi'); geometric in 'nmi_geometric'",
        "batch_size": first.train.batch_size,
        "batch_size_note": "the paper's 32; the reference notebook used 64",
        "data": first.data,
        "configs": {name: to_dict(cfg) for name, cfg in configs.items()},
    }
    if seeds is not None:
        payload["seeds"] = list(seeds)
        payload["configs_note"] = (
            "each row ran once per seed with this config's train.seed and eval.seed set to "
            "the seed (the values here are the row's own, which no run used)"
        )
        payload["reproduced_rule"] = "the paper's value lies within mean ± 2 sd of the seeds"
    if "vq" in rows and "soft_em_vq" in rows:
        compared = [name for name in PERPLEXITY_ROWS if name in rows]
        payload["perplexity"] = {name: rows[name].get("test_perplexity") for name in compared}
        payload["perplexity_test_nmse"] = {name: rows[name].get("test_nmse") for name in compared}
        payload["perplexity_note"] = (
            "exp(H) of the hard (nearest-codeword) codes of the 10,000 test images; "
            "rows.soft_em_vq.test_posterior_perplexity is that of soft EM's mean posterior"
        )
    return payload


def _scaled(value: float | None, scale: float, digits: int) -> str:
    """``value × scale`` to ``digits`` decimals, or missing (:func:`~qlatent.results.cell`)."""
    return cell(value * scale if finite(value) else None, f".{digits}f")


#: the fields of a row that :func:`markdown_table` reads, and their kinds (None: a NaN or
#: infinity as a results file holds it, shown as missing)
_ROW_FIELDS = dict.fromkeys((*SEED_METRICS, "wall_s"), "number or None or missing") | {
    "runs": "table or missing",
    "stats": "table or missing",
    "reproduced": "table or missing",
}
_STAT_FIELDS = {"mean": "number or None", "sd": "number or None", "n": "integer"}
_PAPER_FIELDS = dict.fromkeys(("kmeans_acc", "nmi", "linear_acc"), "number")


def _payload_checks(payload: Any) -> Iterator[str | None]:
    """What keeps a results payload from being tabled (:func:`markdown_table`), checked in
    order (:func:`~._cache.first_problem`)."""
    yield problem(
        payload,
        {
            "rows": "table",
            "paper": "table",
            "seeds": "list or missing",
            "perplexity": "table or missing",
            "perplexity_test_nmse": "table or missing",
        },
        "the payload",
    )
    for name, p in payload["paper"].items():
        yield problem(p, _PAPER_FIELDS, f"paper.{name}")
    for name, row in payload["rows"].items():
        if name not in LABELS:
            yield f"rows holds the unknown row {name!r}; known: {list(LABELS)}"
        yield problem(row, _ROW_FIELDS, f"rows.{name}")
        for seed, run in row.get("runs", {}).items():
            yield problem(run, {"wall_s": "number or None or missing"}, f"rows.{name}.runs.{seed}")
        for key, stats in row.get("stats", {}).items():
            yield problem(stats, _STAT_FIELDS, f"rows.{name}.stats.{key}")
        if "reproduced" in row:
            marks = dict.fromkeys(_PAPER_FIELDS, "flag")
            yield problem(row["reproduced"], marks, f"rows.{name}.reproduced")
    if "perplexity" in payload:
        yield problem(payload, {"perplexity_test_nmse": "table"}, "the payload")
        for name, value in payload["perplexity"].items():
            if name not in LABELS:
                yield f"perplexity holds the unknown row {name!r}; known: {list(LABELS)}"
            yield problem({name: value}, {name: "number or None"}, "perplexity")
            nmse = payload["perplexity_test_nmse"]
            yield problem(nmse, {name: "number or None"}, "perplexity_test_nmse")


def markdown_table(payload: dict[str, Any]) -> str:
    """Our rows beside the paper's, in percent (NMI as a fraction); mean ± sd over seeds when the
    rows were run with several, and the converged probe where it was fitted. ValueError naming
    the first field that keeps ``payload`` from being tabled."""
    wrong = first_problem(_payload_checks(payload))
    if wrong:
        raise ValueError(f"softvq-mnist results: {wrong}")
    lines = [
        "| model | k-means acc | paper | NMI | paper | linear acc | paper | linear acc, "
        "converged | test NMSE | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def score(row: dict[str, Any], key: str, scale: float, digits: int) -> str:
        if key not in row:
            return "–"
        stats = row.get("stats", {}).get(key)
        if stats and stats["n"] > 1:
            return (
                f"{_scaled(stats['mean'], scale, digits)} ± {_scaled(stats['sd'], scale, digits)}"
            )
        return _scaled(row[key], scale, digits)

    for name, r in payload["rows"].items():
        paper = payload["paper"].get(name)
        p = [f"{paper[k] * 100:.2f}" for k in ("kmeans_acc", "linear_acc")] if paper else ["–"] * 2
        p_nmi = f"{paper['nmi']:.4f}" if paper else "–"
        runs = r.get("runs", {}).values()
        walls = [run["wall_s"] for run in runs if finite(run.get("wall_s"))]
        wall = cell(r.get("wall_s"), ".0f")
        if walls:
            wall = f"{sum(walls) / len(walls):.0f}"
        lines.append(
            f"| {LABELS[name]} | {score(r, 'kmeans_acc', 100, 2)} | {p[0]} "
            f"| {score(r, 'nmi', 1, 4)} | {p_nmi} | {score(r, 'linear_acc', 100, 2)} | {p[1]} "
            f"| {score(r, 'linear_acc_converged', 100, 2)} | {score(r, 'test_nmse', 1, 4)} "
            f"| {wall} |"
        )
    if "seeds" in payload:
        lines.append("")
        lines.append(
            f"seeds {', '.join(map(str, payload['seeds']))}: mean ± sd (n − 1); train s is the "
            "mean wall time of one run"
        )
        lines.append("")
        lines.append("| model | paper within mean ± 2 sd (k-means, NMI, linear) | codes used "
                     "| code perplexity | active dims |")  # fmt: skip
        lines.append("|---|---|---|---|---|")
        for name, r in payload["rows"].items():
            verdict = r.get("reproduced")
            # one seed has no spread (its sd is recorded as 0), so "within mean ± 2 sd" would
            # read "no" for any paper value that is not the run's own: no verdict there
            stats = r.get("stats", {})
            if any(stats.get(k, {}).get("n", 0) < 2 for k in _PAPER_FIELDS):
                verdict = None
            marks = (
                ", ".join(
                    "yes" if verdict[k] else "no" for k in ("kmeans_acc", "nmi", "linear_acc")
                )
                if verdict
                else "–"
            )
            lines.append(
                f"| {LABELS[name]} | {marks} | {score(r, 'test_codes_used', 1, 1)} "
                f"| {score(r, 'test_perplexity', 1, 1)} | {score(r, 'active_dims', 1, 1)} |"
            )
    if "perplexity" in payload:
        pp, nm = payload["perplexity"], payload["perplexity_test_nmse"]
        parts = [
            f"{LABELS[name]} {cell(pp[name], '.1f')} at NMSE {cell(nm[name], '.4f')}" for name in pp
        ]
        lines.append("")
        lines.append("code perplexity on the test set (K = 128): " + "; ".join(parts))
    return "\n".join(lines)
