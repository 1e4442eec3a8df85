"""The results tables as the committed results files render them: every row with as many cells
as the header names, values where the JSON has them and missing where it has none, and no
verdict or precision that the numbers do not carry."""

import json
import re
from pathlib import Path

import pytest

from qlatent.experiments import coding_mnist, lattice_mnist, llvq_fashion, softvq_mnist, text_rd
from qlatent.results import cell

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _cells(line: str) -> list[str]:
    """The cells of a markdown table line, split at the pipes that are not escaped."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(text: str) -> list[list[str]]:
    """The blocks of consecutive lines that start with a pipe."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    return tables


@pytest.mark.parametrize(
    "module, name",
    [
        (lattice_mnist, "lattice-mnist.json"),
        (softvq_mnist, "softvq-mnist.json"),
        (softvq_mnist, "softvq-mnist-causes.json"),
        (llvq_fashion, "llvq-fashion.json"),
        (coding_mnist, "coding-mnist.json"),
        (text_rd, "text-rd.json"),
    ],
)
def test_every_row_has_the_headers_columns(module, name):
    """An unescaped pipe inside a header cell adds a column the rows do not have: every label
    after it then names the next column's values."""
    text = module.markdown_table(_load(name))
    for table in _tables(text):
        widths = {len(_cells(line)) for line in table}
        assert len(widths) == 1, (name, table[0], widths)


def test_the_rate_control_table_has_the_headers_columns():
    text = coding_mnist.rate_control_table(_load("coding-mnist-rate-control/coding-mnist.json"))
    (table,) = _tables(text)
    assert {len(_cells(line)) for line in table} == {6}
    assert _cells(table[0])[3] == "−log p(x\\|ŷ)"


def test_coding_table_cells_are_the_rows_values():
    payload = _load("coding-mnist.json")
    table = _tables(coding_mnist.markdown_table(payload))[0]
    head = _cells(table[0])
    for line in table[2:]:
        row = dict(zip(head, _cells(line), strict=True))
        r = payload["rows"][row["model"]]
        assert row["coded bits/image"] == f"{r['coded_bits_per_image']:.3f}"
        assert row["model bits"] == f"{r['ideal_bits_per_image']:.3f}"
        assert row["−log p(x\\|ŷ)"] in ("–", f"{r.get('hard_distortion_nats_per_image', 0):.2f}")
        assert row["exact"] == str(r["round_trip_exact"])
        assert row["decode M sym/s"] == f"{r['decode_symbols_per_s'] / 1e6:.2f}"


def test_a_monte_carlo_standard_error_of_thousandths_is_not_shown_as_zero():
    """e8_gl_lattice's Monte-Carlo ideal has s.e. 0.0033 bits, rect_gl_lattice's an exact 0 (its
    blocks are all coded exactly): the table must tell them apart."""
    payload = _load("coding-mnist.json")
    rows = {
        _cells(line)[0]: _cells(line) for line in _tables(coding_mnist.markdown_table(payload))[0]
    }
    e8, exact = payload["rows"]["e8_gl_lattice"], payload["rows"]["rect_gl_lattice"]
    assert 0 < e8["mc_ideal_se"] < 0.005 and exact["mc_ideal_se"] == 0
    ideal = rows["e8_gl_lattice"][4]
    assert ideal.startswith(f"{e8['mc_ideal_bits_per_image']:.3f} ± {e8['mc_ideal_se']:.3f} ")
    assert "± 0.00 " not in ideal
    assert rows["rect_gl_lattice"][4].startswith("48.306 ± 0.000 ")


def test_one_seed_gives_no_verdict_on_the_paper():
    """With one seed the sd is recorded as 0, so "paper within mean ± 2 sd" would say "no" for
    every paper value: the causes file (seed 0 only) shows no verdict; three seeds still do."""
    causes = softvq_mnist.markdown_table(_load("softvq-mnist-causes.json"))
    verdicts = _tables(causes)[1]
    assert len(verdicts) == 2 + 4
    for line in verdicts[2:]:
        assert _cells(line)[1] == "–", line
    seeded = softvq_mnist.markdown_table(_load("softvq-mnist.json"))
    lines = {_cells(line)[0]: _cells(line) for line in _tables(seeded)[1]}
    assert lines[softvq_mnist.LABELS["soft_vq"]][1] == "no, no, yes"
    assert lines[softvq_mnist.LABELS["vq"]][1] == "no, yes, no"


def test_a_two_seed_row_gets_its_verdict_and_a_one_seed_row_none():
    stats = {"mean": 0.5, "sd": 0.1, "n": 2}
    row = {
        "kmeans_acc": 0.5,
        "nmi": 0.5,
        "linear_acc": 0.5,
        "stats": {k: stats for k in ("kmeans_acc", "nmi", "linear_acc")},
        "reproduced": {"kmeans_acc": True, "nmi": False, "linear_acc": True},
    }
    single = {**row, "stats": {k: {**stats, "sd": 0.0, "n": 1} for k in row["stats"]}}
    single["reproduced"] = dict.fromkeys(row["reproduced"], False)
    payload = {"rows": {"vq": row, "ae": single}, "paper": {}, "seeds": [0, 1]}
    lines = _tables(softvq_mnist.markdown_table(payload))[1]
    assert _cells(lines[2])[1] == "yes, no, yes"
    assert _cells(lines[3])[1] == "–"


def test_the_unquantized_points_have_no_rate_in_the_text_table():
    """The identity bottleneck has no rate term (0 in the file); the figure draws it as lines
    without a rate, and the table must not say it costs 0.000 bits per word."""
    payload = _load("text-rd.json")
    assert payload["curves"]["identity"][0]["rate_bits_per_word"] == 0.0
    table = _tables(text_rd.markdown_table(payload))[0]
    head = _cells(table[0])
    for line in table[2:]:
        row = dict(zip(head, _cells(line), strict=True))
        point = next(p for p in payload["curves"][row["method"]] if p["point"] == row["point"])
        if row["method"] == "identity":
            assert (row["rate (bits/word)"], row["rate from"]) == ("–", "–")
        else:
            assert row["rate (bits/word)"] == f"{point['rate_bits_per_word']:.3f}"
            assert row["rate from"] == point["rate_kind"]
        assert row["word NLL (bits/word)"] == f"{point['nll_bits_per_word']:.3f}"


def test_lattice_table_rows_and_differences_are_the_rows_own():
    payload = _load("lattice-mnist.json")
    models = payload["models"]
    by_label = {label: name for name, label in lattice_mnist.LABELS.items()}
    table = _tables(lattice_mnist.markdown_table(payload))[0]
    head = _cells(table[0])
    ref = models["gaussian_lattice"]["test_nll_iwae1000"]
    assert [by_label[_cells(line)[0]] for line in table[2:]] == list(models)
    for line in table[2:]:
        row = dict(zip(head, _cells(line), strict=True))
        name = by_label[row["model"]]
        r = models[name]
        assert row["IWAE NLL (ours)"] == (
            f"{r['test_nll_iwae1000']:.2f} ± {r['test_nll_iwae_se']:.2f} (S=1000)"
        )
        assert row["−ELBO (ours)"] == f"{r['test_neg_elbo']:.2f}"
        paper = lattice_mnist.PAPER_IWAE1000.get(name)
        assert row["paper (IWAE-1000)"] == ("" if paper is None else f"{paper:.2f}")
        if name != "gaussian_lattice":
            assert row["− Gaussian-lattice"] == f"{r['test_nll_iwae1000'] - ref:+.2f}"
        gap = payload["theoretical_gaps_nats"].get(name)
        assert row["ideal-lattice gap (theory)"] == ("" if gap is None else f"{gap:.2f}")
        assert (row["epochs"], row["best"]) == (str(r["epochs"]), str(r["best_epoch"]))


def test_the_codelength_lines_give_the_paired_gap_the_json_holds():
    """Each lattice row's line printed the codelength beside the −ELBO column, a draw of its
    own: their difference (−0.16 for Λ24 ⊕ Λ16) read as the Theorem-1 gap, which the JSON holds
    paired over the repeats (``codelength_minus_neg_elbo``). The line now gives that gap, and
    the copies of the lines in docs/good-lattices-in-table-1.md are the rendered ones."""
    payload = _load("lattice-mnist.json")
    lines = [
        line
        for line in lattice_mnist.markdown_table(payload).splitlines()
        if "hard-path two-part codelength" in line
    ]
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "good-lattices-in-table-1.md").read_text(encoding="utf-8")
    rows = [r for r in payload["models"].values() if "test_codelength_hard" in r]
    assert len(lines) == len(rows) > 0
    for line, row in zip(lines, rows, strict=True):
        gap = cell(row["codelength_minus_neg_elbo"], "+.2f")  # (a −0.00 reads +0.00)
        assert f"codelength − −ELBO = {gap})" in line
        assert line in doc


def test_a_value_that_rounds_to_zero_reads_without_a_sign():
    """Two rows of ``results/coding-mnist.md`` read "-0.000% ± 0.000" (gaps of about −2·10⁻⁷
    shown to three places), and a Theorem-1 gap read "= -0.00": zero to the shown digits is
    written as zero in the spec's own form; a value that keeps a digit keeps its sign."""
    assert cell(-2e-7, ".3f") == "0.000"
    assert cell(-2e-7, "+.3f") == "+0.000"
    assert cell(-0.0, ".1f") == "0.0"
    assert cell(-2e-7, ".1%") == "0.0%"
    assert cell(-0.6, ".0f") == "-1"
    assert cell(-1e-5, ".2e") == "-1.00e-05"
    assert cell(-3, "d") == "-3"
    markdown = (Path(__file__).resolve().parents[1] / "results" / "coding-mnist.md").read_text()
    assert "-0.000" not in markdown
