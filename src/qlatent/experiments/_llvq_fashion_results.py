"""The LL-VQ table's results file read back: what a row and the payload must hold, and the markdown
table made from them. Used by :mod:`qlatent.experiments.llvq_fashion` (which re-exports
:func:`markdown_table`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ..results import cell
from ._cache import first_problem, problem
from ._llvq_fashion_config import LABELS


def _grid(results: dict[str, dict[str, Any]], images: int) -> str:
    """The latent grid the code counts ran over, from the vectors a row counted over
    ``images`` images: "14×14" for FashionMNIST, "32×32" for 64-pixel CelebA images."""
    row = next(row for rows in results.values() for row in rows.values())
    positions = row["total_vectors"] // images
    side = math.isqrt(positions)
    return f"{side}×{side}" if side * side == positions else f"{positions} latent"


#: the fields of a row that :func:`markdown_table` reads, and their kinds (None: a NaN or
#: infinity as the results file holds it, which the table shows as missing)
_ROW_FIELDS = {
    "test_mse": "number or None",
    "unique_codes_trainval": "integer",
    "unique_codes_test": "integer",
    "quantizer_params": "integer",
    "wall_s": "number or None",
    "coding": "table or missing",
}
#: the fields of the paper's row that :func:`markdown_table` reads
_PAPER_FIELDS = {
    "test_mse": "number or None or missing",
    "unique_codes": "integer or None or missing",
}


def _row_problem(row: Any, where: str) -> str | None:
    """What keeps the results row at ``where`` (``rows.<schedule>.<name>``) from being tabled,
    or None."""
    wrong = problem(row, _ROW_FIELDS, where)
    if wrong or "coding" not in row:
        return wrong
    coded = problem(row["coding"], {"coded": "flag or missing"}, f"{where}.coding")
    if coded or not row["coding"].get("coded"):
        return coded
    return problem(row["coding"], {"coded_bits_per_image": "number or None"}, f"{where}.coding")


def _payload_checks(payload: Any) -> Iterator[str | None]:
    """What keeps a results payload from being tabled (:func:`markdown_table`), checked in
    order (:func:`~._cache.first_problem`)."""
    yield problem(
        payload,
        {"rows": "table", "paper": "table", "reference_code_released_counts": "table"},
        "the payload",
    )
    for name, p in payload["paper"].items():
        yield problem(p, _PAPER_FIELDS, f"paper.{name}")
    for name, count in payload["reference_code_released_counts"].items():
        yield problem({name: count}, {name: "integer"}, "reference_code_released_counts")
    for schedule, rows in payload["rows"].items():
        yield problem({schedule: rows}, {schedule: "table"}, "rows")
        for name, row in rows.items():
            if name not in LABELS:
                yield f"rows.{schedule} holds the unknown row {name!r}; known: {list(LABELS)}"
            yield _row_problem(row, f"rows.{schedule}.{name}")


def markdown_table(payload: dict[str, Any]) -> str:
    """Per schedule: our test MSE and code counts beside the paper's and the released ones;
    ValueError naming the first field that keeps ``payload`` from being tabled."""
    wrong = first_problem(_payload_checks(payload))
    if wrong:
        raise ValueError(f"llvq results: {wrong}")
    lines = [
        "| schedule | model | test MSE | paper | codes (train+val) | paper | released "
        "| codes (test) | quantizer params | coded bits/image | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    paper, released = payload["paper"], payload["reference_code_released_counts"]
    for schedule, rows in payload["rows"].items():
        for name, r in rows.items():
            p = paper.get(name, {})
            rel = f"{released[name]:,}" if name in released else "–"
            coding = r.get("coding", {})
            bits = cell(coding["coded_bits_per_image"], ",.1f") if coding.get("coded") else "–"
            lines.append(
                f"| {schedule} | {LABELS[name]} | {cell(r['test_mse'], '.4f')} "
                f"| {cell(p.get('test_mse'), '.3f')} "
                f"| {r['unique_codes_trainval']:,} | {cell(p.get('unique_codes'), ',')} | {rel} "
                f"| {r['unique_codes_test']:,} | {r['quantizer_params']:,} | {bits} "
                f"| {cell(r['wall_s'], '.0f')} |"
            )
    return "\n".join(lines)
