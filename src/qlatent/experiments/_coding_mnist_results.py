"""The coding-mnist results file read back: the checks on a row and on a whole payload before it
is tabled (:func:`_row_problem`, :func:`_payload_problem`), the rows an earlier run left in the
file (:func:`kept_rows`), the notes written beside the rows (:data:`_NOTES`) and the markdown
tables (:func:`markdown_table`, :func:`rate_control_table`, which the command line prints).
:mod:`~qlatent.experiments.coding_mnist` re-exports the public names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._utils import terminal_text
from ..results import cell, finite, read_json
from ._cache import problem

#: the fields of a results row that the tables, the figure and the rate-control readings use
#: (None: a NaN or infinity as the results file holds it, which the tables show as missing;
#: the figure and the readings at the reference take numbers)
_ROW_FIELDS = {
    "code_model": "string",
    "coded_bits_per_image": "number or None",
    "ideal_bits_per_image": "number or None",
    "overhead_percent": "number or None",
    "round_trip_exact": "flag",
    "encode_symbols_per_s": "number or None",
    "decode_symbols_per_s": "number or None",
    "train_rate_bits_per_image": "number or None or missing",
    "hard_distortion_nats_per_image": "number or None or missing",
    "hard_rate_bits_per_image": "number or None or missing",
    "rate_control": "list or missing",
}
_SWEEP_FIELDS = {
    "factor": "number",
    "coded_bits_per_image": "number",
    "hard_distortion_nats_per_image": "number",
    "hard_distortion_se": "number or None",
    "total_nats_per_image": "number or None",
    "round_trip_exact": "flag",
}


def _row_problem(row: Any) -> str | None:
    """What keeps a kept row from being tabled and read at the reference, or None."""
    wrong = problem(row, _ROW_FIELDS, "row")
    if wrong is None and "train_rate_bits_per_image" in row:
        wrong = problem(row, {"train_rate_se": "number or None"}, "row")
    if wrong is None and "mc_ideal_bits_per_image" in row:
        fields = ("mc_ideal_bits_per_image", "mc_ideal_se")
        fields += ("model_over_ideal_percent", "model_over_ideal_se_percent")
        fields = dict.fromkeys(fields, "number or None") | {"mc_ideal_images": "number"}
        wrong = problem(row, fields, "row")
    for point in row.get("rate_control", []) if wrong is None else []:
        wrong = wrong or problem(point, _SWEEP_FIELDS, "a rate_control point")
    if wrong is None and "rate_control" in row:
        if not any(point["factor"] == 1.0 for point in row["rate_control"]):
            wrong = "its rate_control holds no point at factor 1"
    return wrong


def kept_rows(previous: Path, names: list[str]) -> dict[str, Any]:
    """The rows of the results file ``previous`` that this run does not redo (``names``), with
    their own provenance; none where the file is missing or unreadable (it is written anew). A
    row without the fields the tables read (:func:`_row_problem`) is dropped, and said so."""
    saved = read_json(previous)
    rows = saved.get("rows") if isinstance(saved, dict) else None
    kept = {}
    for name, row in rows.items() if isinstance(rows, dict) else []:
        if name in names:
            continue
        wrong = _row_problem(row)
        if wrong is None:
            kept[name] = row
        else:
            print(terminal_text(f"{previous}: dropping the row {name!r} ({wrong})"), flush=True)
    return kept


#: what the columns of a results row mean, written beside the rows
_NOTES = {
    "coded_bits_per_image": "file size × 8 / images, header and checksum included",
    "code_wall_s": "seconds to code the test set and measure every column of the row "
    "(timing repeats and Monte-Carlo rates included, training excluded)",
    "hard_rate_bits_per_image": "mean exact −log2 P(z | u) of the coded symbols "
    "(lattice) or log2 K (VQ, its fixed rate), same dither as the file",
    "ideal_bits_per_image": "Σ −log2 P(symbol) under the code model the file uses: the "
    "hard rate for the lattice; for VQ the index frequencies counted by update() over "
    "the training images; for a good lattice the coordinate-by-coordinate model's own "
    "information content; overhead_percent is measured against it",
    "mc_ideal_bits_per_image": "good lattices: the ideal −log2 P(z | u) (the prior's "
    "mass on the Voronoi cell around z − u) of the file's points on the first "
    "mc_ideal_images test images, by Monte Carlo (multiple importance sampling, capped "
    "at 1; mc_ideal_samples uniform and proposal points from mc_ideal_proposal, the "
    "bottleneck's own box where a row does not say), mean ± s.e. over "
    "mc_ideal_repeats independent estimates; model_over_ideal_percent compares the code "
    "model's bits on the same images with it",
    "hard_distortion_nats_per_image": "−log p(x | ŷ) of the decoded ŷ, mean over the "
    "test images (± hard_distortion_se)",
    "train_rate_bits_per_image": "Theorem 1's training-path estimate, mean over "
    "independent dithers, with its standard error",
    "throughput": "symbols per second of a whole compress / decompress call (networks "
    "excluded), median of timing_repeats calls in interleaved blocks of 5, one process",
    "rate_control": "the row's test set coded with its whole lattice scaled by each "
    "factor (1: as trained; the decoder is not retrained): file bits per image and "
    "−log p(x | ŷ) of the decoded ŷ; rate_control_at_reference reads that sweep "
    "(linearly between the two factors that bracket it) at the reference row's trained "
    "−log p(x | ŷ), and the reference's sweep at the row's own trained point "
    "(own_difference_bits: the row's file minus the reference's there)",
    "compressai_reference": "CompressAI's EntropyBottleneck on this machine: about 13 M "
    "symbols/s encode, 7 M decode, 0.026% overhead (quoted; compressai cannot be "
    "installed beside this torch)",
}


def _payload_problem(payload: Any) -> str | None:
    """What keeps a results payload from being tabled (:func:`markdown_table`,
    :func:`rate_control_table`), or None."""
    wrong = problem(payload, {"rows": "table"}, "the payload")
    for name, row in payload["rows"].items() if wrong is None else ():
        row_wrong = _row_problem(row)
        if row_wrong:
            return f"the row {name!r} cannot be tabled ({row_wrong})"
    return wrong


def _check_payload(payload: Any) -> None:
    wrong = _payload_problem(payload)
    if wrong:
        raise ValueError(f"coding-mnist results: {wrong}")


def markdown_table(payload: dict[str, Any]) -> str:
    """The coding table of ``payload`` (:func:`~.coding_mnist.reproduce`'s, or its JSON file
    read back); ValueError naming the first field that keeps it from being one."""
    _check_payload(payload)
    # the "|" of −log p(x|ŷ) escaped: bare, it splits the header into one column more than the
    # rows have, which shifts every label after it (GitHub shows no table at all)
    lines = [
        "| model | code model | coded bits/image | model bits | ideal (MC) | hard rate "
        "| Theorem 1 estimate | overhead | model − ideal | −log p(x\\|ŷ) | exact "
        "| encode M sym/s | decode M sym/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["rows"].items():
        est = (
            f"{cell(r['train_rate_bits_per_image'], '.3f')} ± {cell(r['train_rate_se'], '.3f')}"
            if "train_rate_bits_per_image" in r
            else "–"
        )
        ideal, gap = "–", "–"
        if "mc_ideal_bits_per_image" in r:
            # three decimals, as the other rates: at two, standard errors of a few thousandths
            # read "± 0.00", as the exact zero of a row whose blocks are all coded exactly
            ideal = (
                f"{cell(r['mc_ideal_bits_per_image'], '.3f')} ± {cell(r['mc_ideal_se'], '.3f')} "
                f"({r['mc_ideal_images']} images)"
            )
            gap = (
                f"{cell(r['model_over_ideal_percent'], '.3f')}% ± "
                f"{cell(r['model_over_ideal_se_percent'], '.3f')}"
            )
        lines.append(
            f"| {name} | {r['code_model']} | {cell(r['coded_bits_per_image'], '.3f')} "
            f"| {cell(r['ideal_bits_per_image'], '.3f')} | {ideal} "
            f"| {cell(r.get('hard_rate_bits_per_image'), '.3f')} "
            f"| {est} | {cell(r['overhead_percent'], '.3f')}% | {gap} "
            f"| {cell(r.get('hard_distortion_nats_per_image'), '.2f')} | {r['round_trip_exact']} "
            f"| {_millions(r['encode_symbols_per_s'])} | {_millions(r['decode_symbols_per_s'])} |"
        )
    return "\n".join(lines)


def _millions(value: float | None) -> str:
    """``value`` in millions, or missing (:func:`~qlatent.results.cell`)."""
    return cell(value / 1e6 if finite(value) else None, ".2f")


def rate_control_table(payload: dict[str, Any]) -> str:
    """The rate-control sweeps, one line per row and factor ("" when no row was swept)."""
    _check_payload(payload)
    lines = []
    for name, r in payload["rows"].items():
        for p in r.get("rate_control", []):
            lines.append(
                f"| {name} | {p['factor']:.3f} | {p['coded_bits_per_image']:.3f} "
                f"| {p['hard_distortion_nats_per_image']:.3f} ± "
                f"{cell(p['hard_distortion_se'], '.3f')} "
                f"| {cell(p['total_nats_per_image'], '.3f')} | {p['round_trip_exact']} |"
            )
        at = r.get("rate_control_at_reference")
        if at and finite(at["bits_per_image"]):
            lines.append(
                f"| {name} at {at['reference']}'s {cell(at['distortion_nats_per_image'], '.3f')} "
                f"nats | | {cell(at['bits_per_image'], '.3f')} "
                f"({cell(at['difference_bits'], '+.3f')} against {at['reference']}) | | | |"
            )
        if at and finite(at.get("reference_bits_at_own_distortion")):
            own = next(p for p in r["rate_control"] if p["factor"] == 1.0)
            lines.append(
                f"| {at['reference']} at {name}'s {own['hard_distortion_nats_per_image']:.3f} "
                f"nats | | {cell(at['reference_bits_at_own_distortion'], '.3f')} "
                f"({name} {cell(at['own_difference_bits'], '+.3f')} against it) | | | |"
            )
    if not lines:
        return ""
    head = [  # the "|" of −log p(x|ŷ) escaped, as in markdown_table
        "| model | lattice scale factor | coded bits/image | −log p(x\\|ŷ) | total nats | exact |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines)
