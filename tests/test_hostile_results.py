"""Results files and the tables read from them: strict JSON (NaN and infinities as null, shown
as missing), a hand-edited payload refused in one line naming the field, and the LL-VQ table's
data set checked before anything is read."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_cli
from qlatent.experiments import coding_mnist, lattice_mnist, llvq_fashion, softvq_mnist, text_rd
from qlatent.results import MISSING, read_json, write_json

NAN, INF = math.nan, math.inf


def _lattice_row(nll: float) -> dict:
    return {
        "epochs": 3,
        "best_epoch": 2,
        "epoch_cap_hit": False,
        "val_neg_elbo_curve": [101.0, 100.0, 100.5],
        "test_neg_elbo": nll + 1.5,
        "test_nll_iwae_se": 0.25,
        "iwae_samples": 10,
        "test_nll_iwae10": nll,
    }


LATTICE = {
    "models": {"rect_lattice": _lattice_row(99.0), "gaussian_lattice": _lattice_row(95.0)},
    "theoretical_gap_nats": 7.06,
    "theoretical_gaps_nats": {"rect_lattice": 7.06, "gaussian_lattice": None},
}
LLVQ = {
    "rows": {
        "reference": {
            "vq": {
                "test_mse": 0.0125,
                "unique_codes_trainval": 40,
                "unique_codes_test": 31,
                "quantizer_params": 32768,
                "wall_s": 12.0,
                "coding": {"coded": True, "coded_bits_per_image": 1234.5},
            }
        }
    },
    "paper": {"vq": {"test_mse": 0.013, "unique_codes": 32}},
    "reference_code_released_counts": {"vq": 17},
}
TEXT_RD = {
    "curves": {
        "lattice": [
            {
                "point": "λ=0.1",
                "rate_bits_per_word": 3.25,
                "rate_kind": "estimate",
                "nll_bits_per_word": 7.125,
                "train_epochs": 2,
            }
        ]
    }
}
CODING = {
    "rows": {
        "lattice": {
            "code_model": "laplace",
            "coded_bits_per_image": 100.0,
            "ideal_bits_per_image": 99.0,
            "overhead_percent": 1.0,
            "round_trip_exact": True,
            "encode_symbols_per_s": 1e6,
            "decode_symbols_per_s": 2e6,
            "train_rate_bits_per_image": 98.0,
            "train_rate_se": 0.5,
        }
    }
}
SOFTVQ = {"rows": {"vq": {"kmeans_acc": 0.5, "nmi": 0.25, "linear_acc": 0.75}}, "paper": {}}


# ----------------------------------------------------------------------------- strict JSON
def _strict_json(text: str):
    """``text`` parsed as strict JSON: ``NaN`` and ``Infinity`` are no JSON values."""

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_write_json_writes_strict_json_with_null_for_nan_and_infinities(tmp_path):
    payload = {"a": NAN, "b": [1.5, INF, (-INF, 2)], "c": {"d": {"e": NAN}}, "f": "NaN", "g": 3}
    path = write_json(payload, tmp_path / "r.json")
    assert _strict_json(path.read_text()) == {
        "a": None,
        "b": [1.5, None, [None, 2]],
        "c": {"d": {"e": None}},
        "f": "NaN",
        "g": 3,
    }
    assert payload["a"] != payload["a"]  # the caller's payload is left as it was


def test_write_json_refuses_a_key_that_is_not_finite(tmp_path):
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        write_json({"rows": {NAN: 1.0}}, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("module", "payload", "change", "expected"),
    [
        (
            lattice_mnist,
            LATTICE,
            lambda p: p["models"]["gaussian_lattice"].update(test_nll_iwae10=NAN),
            [f"| {MISSING} ± 0.25 (S=10) |", f"| {MISSING} | 7.06 |", f"gap: {MISSING} nats"],
        ),
        (
            llvq_fashion,
            LLVQ,
            lambda p: p["rows"]["reference"]["vq"].update(test_mse=INF, wall_s=NAN),
            [f"| reference | VQ-VAE | {MISSING} | 0.013 |", f"| 1,234.5 | {MISSING} |"],
        ),
        (
            text_rd,
            TEXT_RD,
            lambda p: p["curves"]["lattice"][0].update(rate_bits_per_word=NAN),
            [f"| lattice | λ=0.1 | {MISSING} | estimate | 7.125 | 2 |"],
        ),
        (
            coding_mnist,
            CODING,
            lambda p: p["rows"]["lattice"].update(train_rate_se=NAN, encode_symbols_per_s=INF),
            [f"| 98.000 ± {MISSING} |", f"| True | {MISSING} | 2.00 |"],
        ),
        (
            softvq_mnist,
            SOFTVQ,
            lambda p: p["rows"]["vq"].update(kmeans_acc=NAN),
            [f"| VQ-VAE (K = 128) | {MISSING} | – | 0.2500 |"],
        ),
    ],
    ids=["lattice-mnist", "llvq", "text-rd", "coding-mnist", "softvq-mnist"],
)
def test_a_table_shows_a_nan_as_missing_in_memory_and_read_back(
    tmp_path, module, payload, change, expected
):
    """NaN and infinities are written as null; the table reads a null where a number was, and
    shows it as the one that was in memory."""
    payload = copy.deepcopy(payload)
    change(payload)
    read_back = read_json(write_json(payload, tmp_path / "r.json"))
    table = module.markdown_table(read_back)
    assert module.markdown_table(payload) == table
    for cell in expected:
        assert cell in table, table


def test_the_readers_of_results_keep_a_null_where_a_number_was(tmp_path, capsys):
    """A row, record or summary holding null (a NaN as written) is kept, as it was when the
    file held NaN: not dropped, nor run again on every call."""
    lattice = {"data": "d", "models": copy.deepcopy(LATTICE["models"])}
    lattice["models"]["rect_lattice"].update(test_nll_iwae_se=NAN, test_neg_elbo=NAN)
    kept = lattice_mnist._previous_rows(write_json(lattice, tmp_path / "l.json"), "d")
    assert kept["models"]["rect_lattice"]["test_nll_iwae_se"] is None
    coding = copy.deepcopy(CODING)
    coding["rows"]["lattice"].update(train_rate_se=NAN, overhead_percent=INF)
    kept = coding_mnist.kept_rows(write_json(coding, tmp_path / "c.json"), [])
    assert kept["lattice"]["train_rate_se"] is None
    assert "dropping" not in capsys.readouterr().out

    record = tmp_path / "seed-1.json"
    metrics = {"kmeans_acc": 0.5, "nmi": 0.25, "linear_acc": 0.75, "wall_s": NAN}
    metrics |= {"test_perplexity": INF, "test_nmse": NAN}
    write_json({"config": {"a": 1}, "metrics": metrics}, record)
    assert softvq_mnist._recorded(record, "vq", {"a": 1})["test_perplexity"] is None

    summary = {
        "config": {},
        "train": {"epochs": 2, "wall_s": 3.0},
        "test": {
            "hard_path": {"rate_bits_per_word": NAN, "distortion_bits_per_word": INF},
            "coded": {"available": True, "bits_per_word": 5.5, "ideal_bits_per_word": NAN},
        },
    }
    summary = read_json(write_json(summary, tmp_path / "summary.json"))
    assert text_rd._summary_problem(summary) is None
    point = text_rd._point(summary)
    assert point["ideal_bits_per_word"] is None and point["nll_bits_per_word"] is None
    summary["test"].pop("coded")  # the rate of the training path, where no file was coded
    summary["test"]["training_path"] = {"rate_bits_per_word": None}
    assert text_rd._summary_problem(summary) is None


def test_the_text_rd_figure_leaves_out_a_point_without_a_rate(tmp_path):
    curves = copy.deepcopy(TEXT_RD["curves"])
    curves["lattice"].append({**curves["lattice"][0], "point": "λ=1", "rate_bits_per_word": None})
    curves["identity"] = [{**curves["lattice"][0], "point": "unquantized"}]
    curves["identity"].append({**curves["identity"][0], "nll_bits_per_word": None})
    assert text_rd.figure(curves, tmp_path / "f.png").is_file()


# -------------------------------------------------------------------- hand-edited payloads
def _edit(payload, change):
    payload = copy.deepcopy(payload)
    change(payload)
    return payload


@pytest.mark.parametrize(
    ("module", "payload", "change", "message"),
    [
        (
            lattice_mnist,
            LATTICE,
            lambda p: p.update(models=[1]),
            "the payload.models is a list, not a table",
        ),
        (
            lattice_mnist,
            LATTICE,
            lambda p: p["models"]["rect_lattice"].pop("epochs"),
            "the row 'rect_lattice' cannot be tabled (row holds no epochs)",
        ),
        (
            lattice_mnist,
            LATTICE,
            lambda p: p["models"]["gaussian_lattice"].update(test_nll_iwae10="98"),
            "row.test_nll_iwae10 is a string ('98'), not a number or None",
        ),
        (
            lattice_mnist,
            LATTICE,
            lambda p: p["models"].update(mine=_lattice_row(1.0)),
            "models holds the unknown row 'mine'",
        ),
        (
            lattice_mnist,
            LATTICE,
            lambda p: p["theoretical_gaps_nats"].update(rect_lattice=[7]),
            "theoretical_gaps_nats.rect_lattice is a list, not a number or None",
        ),
        (
            lattice_mnist,
            LATTICE,
            lambda p: p.pop("theoretical_gap_nats"),
            "the payload holds no theoretical_gap_nats",
        ),
        (llvq_fashion, LLVQ, lambda p: p.pop("paper"), "the payload holds no paper"),
        (llvq_fashion, LLVQ, lambda p: p.update(rows=[]), "the payload.rows is a list"),
        (
            llvq_fashion,
            LLVQ,
            lambda p: p["rows"].update(reference=[1]),
            "rows.reference is a list, not a table",
        ),
        (
            llvq_fashion,
            LLVQ,
            lambda p: p["rows"]["reference"]["vq"].pop("test_mse"),
            "rows.reference.vq holds no test_mse",
        ),
        (
            llvq_fashion,
            LLVQ,
            lambda p: p["rows"]["reference"]["vq"].update(unique_codes_test=3.5),
            "rows.reference.vq.unique_codes_test is a number (3.5), not an integer",
        ),
        (
            llvq_fashion,
            LLVQ,
            lambda p: p["rows"]["reference"]["vq"]["coding"].update(coded_bits_per_image="x"),
            "rows.reference.vq.coding.coded_bits_per_image is a string ('x')",
        ),
        (
            llvq_fashion,
            LLVQ,
            lambda p: p["paper"].update(vq=None),
            "paper.vq holds None, not a table",
        ),
        (
            llvq_fashion,
            LLVQ,
            lambda p: p["rows"]["reference"].update(mine={}),
            "rows.reference holds the unknown row 'mine'",
        ),
        (text_rd, TEXT_RD, lambda p: p.pop("curves"), "the payload holds no curves"),
        (
            text_rd,
            TEXT_RD,
            lambda p: p["curves"].update(lattice={"point": 1}),
            "curves.lattice is a table, not a list",
        ),
        (
            text_rd,
            TEXT_RD,
            lambda p: p["curves"]["lattice"][0].pop("rate_kind"),
            "curves.lattice[0] holds no rate_kind",
        ),
        (
            text_rd,
            TEXT_RD,
            lambda p: p["curves"]["lattice"].append("a point"),
            "curves.lattice[1] holds a string ('a point'), not a table",
        ),
        (
            text_rd,
            TEXT_RD,
            lambda p: p["curves"]["lattice"][0].update(train_epochs="2"),
            "curves.lattice[0].train_epochs is a string ('2'), not an integer",
        ),
        (coding_mnist, CODING, lambda p: p.update(rows=[]), "the payload.rows is a list"),
        (
            coding_mnist,
            CODING,
            lambda p: p["rows"]["lattice"].pop("coded_bits_per_image"),
            "the row 'lattice' cannot be tabled (row holds no coded_bits_per_image)",
        ),
        (
            coding_mnist,
            CODING,
            lambda p: p["rows"]["lattice"].update(rate_control=[{"factor": 2.0}]),
            "the row 'lattice' cannot be tabled (a rate_control point holds no",
        ),
        (softvq_mnist, SOFTVQ, lambda p: p.update(rows=[]), "the payload.rows is a list"),
        (
            softvq_mnist,
            SOFTVQ,
            lambda p: p["rows"]["vq"].update(nmi="0.25"),
            "rows.vq.nmi is a string ('0.25'), not a number or None",
        ),
        (
            softvq_mnist,
            SOFTVQ,
            lambda p: p["rows"].update(vqq={}),
            "rows holds the unknown row 'vqq'",
        ),
        (
            softvq_mnist,
            SOFTVQ,
            lambda p: p["rows"]["vq"].update(stats={"nmi": {"mean": 0.25, "n": 2}}),
            "rows.vq.stats.nmi holds no sd",
        ),
        (
            softvq_mnist,
            SOFTVQ,
            lambda p: p["rows"]["vq"].update(runs={"1": {"wall_s": "9 s"}}),
            "rows.vq.runs.1.wall_s is a string ('9 s'), not a number or None",
        ),
        (
            softvq_mnist,
            SOFTVQ,
            lambda p: p["paper"].update(vq={"kmeans_acc": 0.5, "nmi": 0.3}),
            "paper.vq holds no linear_acc",
        ),
        (
            softvq_mnist,
            SOFTVQ,
            lambda p: p.update(perplexity={"vq": 90.0}, perplexity_test_nmse={}),
            "perplexity_test_nmse holds no vq",
        ),
    ],
)
def test_a_hand_edited_payload_is_refused_naming_what_is_wrong(module, payload, change, message):
    name = {
        lattice_mnist: "lattice-mnist",
        llvq_fashion: "llvq",
        text_rd: "text-rd",
        coding_mnist: "coding-mnist",
        softvq_mnist: "softvq-mnist",
    }[module]
    with pytest.raises(ValueError, match=f"^{name} results: .*{re.escape(message)}"):
        module.markdown_table(_edit(payload, change))


@pytest.mark.parametrize(
    "module", [lattice_mnist, llvq_fashion, text_rd, coding_mnist, softvq_mnist]
)
def test_a_payload_that_is_no_table_is_refused(module):
    with pytest.raises(ValueError, match="results: the payload holds a list, not a table$"):
        module.markdown_table(["a", "list"])


def test_the_command_line_prints_a_payload_it_cannot_table_in_one_line(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(lattice_mnist, "reproduce", lambda **_: {"models": ["a row"]})
    folders = ["--runs-dir", tmp_path / "runs", "--results-dir", tmp_path / "results"]
    code, err = run_cli(["reproduce", "lattice-mnist", *folders], capsys)
    assert code == 2 and one_line_error(err), err
    assert "models is a list, not a table" in err


# ------------------------------------------------------------------------ llvq data sets
@pytest.mark.parametrize("dataset", ["foo", "base", "vq", 3])
def test_llvq_names_its_data_sets_for_an_unknown_one_before_any_work(tmp_path, dataset):
    runs = tmp_path / "runs"
    with pytest.raises(ValueError) as err:
        llvq_fashion.reproduce(
            quick=True, dataset=dataset, runs_dir=runs, results_dir=tmp_path / "results"
        )
    assert (
        str(err.value) == f"dataset must be one of ['fashion', 'celeba', 'ffhq']: got {dataset!r}"
    )
    assert not runs.exists()


def test_lattice_mnist_figures_draw_a_curve_with_an_epoch_that_was_not_finite(tmp_path):
    """A validation epoch that was NaN or infinite is null in the file: the row is kept, the
    figures draw the curve with a gap (``min`` over a curve with NaN gave matplotlib NaN limits,
    and a null failed the subtraction of the gain figure)."""
    models = {"rect_lattice": _lattice_row(95.0), "e8_lattice": _lattice_row(94.0)}
    models["e8_lattice"]["val_neg_elbo_curve"][1] = NAN
    models["rect_lattice"]["val_neg_elbo_curve"][2] = INF
    back = read_json(write_json({"models": models}, tmp_path / "rows.json"))["models"]
    assert back["e8_lattice"]["val_neg_elbo_curve"][1] is None
    assert all(lattice_mnist._row_problem(row) is None for row in back.values())
    for rows in (models, back):
        assert lattice_mnist.figure_3(rows, tmp_path / "fig3.png").stat().st_size > 0
        assert lattice_mnist.figure_gain(rows, tmp_path / "gain.png").stat().st_size > 0


def test_every_results_file_records_its_commit_machine_command_and_a_wall_time():
    """DESIGN §5: a results file holds its commit, machine and wall time. ``provenance`` gives
    every file written from now on ``process_wall_s``; the files written before it without a
    wall time of their own are exactly the ones the README names."""
    from qlatent.results import provenance

    record = provenance("qlatent test")
    assert record["process_wall_s"] >= 0 and {"commit", "machine", "command"} <= set(record)
    untimed = set()
    root = Path(__file__).resolve().parents[1] / "results"
    for path in root.rglob("*.json"):
        text = path.read_text()
        payload = json.loads(text)
        assert isinstance(payload, dict) and {"commit", "machine"} <= set(payload), path
        if not any(key in text for key in ("wall", '_s"', "seconds", "time")):
            untimed.add(path.relative_to(root).as_posix())
    assert len(untimed) == 24, sorted(untimed)
