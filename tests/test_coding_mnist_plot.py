"""coding-mnist's figure: each row's file against the ideal bits of its code model, drawn from
the results alone (a payload in memory, or its JSON file, with no checkpoint), and by the
reproduce pipeline next to its JSON."""

from __future__ import annotations

import copy
import json
import runpy
import sys
from pathlib import Path

import pytest

from qlatent.experiments import coding_mnist
from qlatent.results import read_json

PNG = b"\x89PNG\r\n\x1a\n"
COMMITTED = Path(__file__).resolve().parents[1] / "results" / "coding-mnist.json"


def _row(coded: float, ideal: float | None, **extra) -> dict:
    return {
        "images": 200,
        "header_bytes": 76,
        "coded_bits_per_image": coded,
        "ideal_bits_per_image": ideal,
        "hard_rate_bits_per_image": ideal,
        "round_trip_exact": True,
        **extra,
    }


PAYLOAD = {
    "config": {"data": "synthetic"},
    "rows": {
        "lattice": _row(50.0, 49.9),
        "vq": _row(3.2, 3.1, hard_rate_bits_per_image=9.0),
        "e8_lattice": _row(48.0, None),  # a NaN as the file holds it: no tick, "–"
        "broken": _row(40.0, 40.1, round_trip_exact=False),  # below its ideal, and not exact
        "no_hard_rate": {k: v for k, v in _row(45.0, 44.0).items() if "hard" not in k},
    },
}


def test_a_made_up_result_is_drawn_into_a_png(tmp_path):
    path = coding_mnist.figure_coded_bits(copy.deepcopy(PAYLOAD), tmp_path / "f.png")
    assert path == tmp_path / "f.png"
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000


def test_the_committed_results_are_drawn_without_a_checkpoint(tmp_path, monkeypatch):
    """The example script redraws the figure from the committed JSON alone."""
    out = tmp_path / "coding-mnist.png"
    script = Path(__file__).resolve().parents[1] / "examples" / "coding-mnist-plot.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(COMMITTED), str(out)])
    runpy.run_path(str(script), run_name="__main__")
    assert out.read_bytes().startswith(PNG)
    # the same bytes as the function drawn on the file read back (None for NaN)
    again = coding_mnist.figure_coded_bits(read_json(COMMITTED), tmp_path / "again.png")
    assert again.read_bytes() == out.read_bytes()


def _edit(change) -> dict:
    payload = copy.deepcopy(PAYLOAD)
    change(payload)
    return payload


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("rows"), "the payload holds no rows"),
        (lambda p: p.pop("config"), "the payload holds no config"),
        (lambda p: p["config"].pop("data"), "config holds no data"),
        (lambda p: p["rows"].clear(), "the payload holds no row"),
        (
            lambda p: p["rows"]["vq"].pop("header_bytes"),
            "the row 'vq' cannot be drawn (row holds no header_bytes)",
        ),
        (
            lambda p: p["rows"]["lattice"].pop("ideal_bits_per_image"),
            "the row 'lattice' cannot be drawn (row holds no ideal_bits_per_image)",
        ),
        (
            lambda p: p["rows"]["lattice"].update(coded_bits_per_image="50"),
            "row.coded_bits_per_image is a string",
        ),
        (lambda p: p["rows"]["vq"].update(images=0), "row.images is 0, not a count of at least 1"),
        (lambda p: p["rows"]["vq"].update(round_trip_exact=1), "row.round_trip_exact is"),
    ],
    ids=["no-rows", "no-config", "no-data", "empty-rows", "no-header", "no-ideal", "string",
         "no-images", "exact-number"],
)  # fmt: skip
def test_a_result_missing_what_the_figure_reads_is_refused(tmp_path, change, message):
    path = tmp_path / "f.png"
    with pytest.raises(ValueError, match="^coding-mnist results: ") as caught:
        coding_mnist.figure_coded_bits(_edit(change), path)
    assert message in str(caught.value)
    assert not path.exists()


def test_the_reproduce_pipeline_draws_the_figure_from_its_payload(tmp_path, monkeypatch):
    """``reproduce`` (quick: the synthetic set, two epochs) draws the figure beside its JSON,
    and drawing it again from the JSON read back gives the same file."""
    calls = []
    drawn = coding_mnist.figure_coded_bits

    def spy(payload, path):
        calls.append(Path(path))
        return drawn(payload, path)

    monkeypatch.setattr(coding_mnist, "figure_coded_bits", spy)
    results = tmp_path / "results"
    coding_mnist.reproduce(
        quick=True, models=["lattice"], runs_dir=tmp_path / "runs", results_dir=results,
        overrides=["train.progress=false"],
    )  # fmt: skip
    png = results / "coding-mnist-quick.png"
    assert calls == [png]
    assert png.read_bytes().startswith(PNG)
    payload = json.loads((results / "coding-mnist-quick.json").read_text())
    assert drawn(payload, tmp_path / "again.png").read_bytes() == png.read_bytes()
