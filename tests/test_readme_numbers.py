"""The README's and docs' tables against the committed results files they quote.

Every number in README.md and docs/*.md comes from a committed command whose output is in
``results/``. These tests re-derive the main tables from those files (through the project's
own table renderers where there is one) and compare them with the markdown text, cell by cell,
at the rounding the text shows; and they check that every ``results/...`` path named in the
text exists.
"""

from __future__ import annotations

import glob
import math
import re
import statistics
from functools import cache
from pathlib import Path

import markdown_numbers as md
from markdown_numbers import NUMBER, RESULTS, ROOT
from markdown_numbers import results_json as _json

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --- markdown and number helpers -----------------------------------------------------------------


@cache
def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _table(text: str, *header: str) -> tuple[list[str], list[list[str]]]:
    """The one table of ``text`` whose header starts with the cells ``header``."""
    hits = [t for t in md.tables(text) if t[0][: len(header)] == list(header)]
    assert len(hits) == 1, f"{len(hits)} tables with header {header}"
    return hits[0]


def _readme_table(*header: str) -> tuple[list[str], list[list[str]]]:
    return _table(_text(ROOT / "README.md"), *header)


def _doc_table(doc: str, *header: str) -> tuple[list[str], list[list[str]]]:
    """The one table of ``docs/<doc>`` whose header starts with ``header``."""
    return _table(_text(ROOT / "docs" / doc), *header)


GOOD_DOC = "good-lattices-in-table-1.md"
DETAIL_DOC = "reproductions-in-detail.md"
GOOD_DETAIL_DOC = "good-lattices-in-detail.md"


def _decimals(text: str) -> list[str]:
    """The numbers written with a decimal point in ``text``, in order (integers are left out:
    they are counts, seeds and labels more often than measurements)."""
    return [m.group() for m in NUMBER.finditer(text)]


def _assert_numbers(where: str, text: str, values: list[float]) -> None:
    """The decimal numbers of ``text`` are ``values``, in order, each at its shown rounding."""
    shown = _decimals(text)
    assert len(shown) == len(values), f"{where}: {text!r} shows {shown}, expected {values}"
    for s, v in zip(shown, values, strict=True):
        assert md.agrees(s, v), f"{where}: {text!r} shows {s}, the results file holds {v}"


def _assert_same_cells(where: str, readme: list[str], rendered: list[str]) -> None:
    """Two cells hold the same decimal numbers (layout aside)."""
    assert _decimals(readme) == _decimals(rendered), f"{where}: {readme!r} != {rendered!r}"


def _by_columns(
    where: str,
    readme: tuple[list[str], list[list[str]]],
    rendered: tuple[list[str], list[list[str]]],
) -> None:
    """Every README row equals the rendered row of the same label in every column the README
    has (matched by header name), so a renderer that has since gained a column still checks."""
    head, rows = readme
    rhead, rrows = rendered
    by_label = {r[0]: r for r in rrows}
    assert len(rows) == len(rrows), f"{where}: {len(rows)} rows, the renderer gives {len(rrows)}"
    # a column is its name and which of the columns of that name it is ("paper" comes thrice)
    columns = [(name, head[:i].count(name)) for i, name in enumerate(head)]
    rcolumns = [(name, rhead[:i].count(name)) for i, name in enumerate(rhead)]
    for row in rows:
        assert row[0] in by_label, f"{where}: no rendered row {row[0]!r}"
        other = by_label[row[0]]
        for (name, nth), value in zip(columns, row, strict=True):
            assert (name, nth) in rcolumns, f"{where}: the renderer has no column {name!r}"
            expected = other[rcolumns.index((name, nth))]
            assert value.replace("−", "-") == expected.replace("−", "-"), (
                f"{where}, {row[0]!r}, {name!r}: README {value!r}, results {expected!r}"
            )


# --- every results path named in the text exists -------------------------------------------------

PLACEHOLDERS = re.compile(r"ROW|SEED|NAME|(?<=run)N(?=\.json)|<[^>]*>|\$i|\*")


def _named_paths() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for m in re.finditer(r"results/[A-Za-z0-9_./{},*<>$-]*[A-Za-z0-9_/}*>-]", _text(doc)):
            found.append((doc.name, m.group()))
    return sorted(set(found))


def _expand(path: str) -> list[str]:
    """Brace alternatives and the text's placeholders (ROW, SEED, N, NAME, <row>, *) as globs."""
    brace = re.search(r"\{([^{}]*)\}", path)
    if brace:
        return [
            p
            for alt in brace.group(1).split(",")
            for p in _expand(path[: brace.start()] + alt + path[brace.end() :])
        ]
    return [PLACEHOLDERS.sub("*", path)]


def test_the_path_finder_reads_braces_and_placeholders():
    assert _expand("results/a-{x,y}/ROW-seedSEED.json") == [
        "results/a-x/*-seed*.json",
        "results/a-y/*-seed*.json",
    ]
    assert _expand("results/runN.json") == ["results/run*.json"]


def test_every_results_path_named_in_the_readme_and_docs_exists():
    paths = _named_paths()
    assert len(paths) > 100  # the finder still reads the text
    missing = [
        f"{doc}: {path}"
        for doc, path in paths
        if not all(glob.glob(str(ROOT / p.rstrip("/"))) for p in _expand(path))
    ]
    assert not missing, "\n".join(missing)


# --- lattice-mnist: Table 1, the good lattices, the seeds ----------------------------------------


@cache
def _lattice_mnist_rendered() -> str:
    from qlatent.experiments import lattice_mnist

    return lattice_mnist.markdown_table(_json("lattice-mnist.json"))


def test_table_1_is_the_results_file():
    readme = _readme_table(
        "model", "IWAE NLL (ours)", "paper (IWAE-1000)", "−ELBO (ours)", "epochs"
    )
    rendered = _table(_lattice_mnist_rendered(), "model")
    labels = [r[0] for r in readme[1]]
    assert labels == ["rectangular-lattice VAE", "Gaussian-lattice VAE", "Gaussian VAE"]
    rows = [r for r in rendered[1] if r[0] in labels]
    _by_columns("Table 1", readme, (rendered[0], rows))


def test_table_1_codelength_and_gap_lines_are_the_results_file():
    text = _text(ROOT / "README.md")
    section = text.split("### Lattice paper, Table 1")[1].split("![validation negative ELBO")[0]
    rendered = _lattice_mnist_rendered().splitlines()
    for start in ("rectangular-lattice VAE, hard-path", "rectangular − Gaussian-lattice gap"):
        ours = [line for line in rendered if line.startswith(start)]
        theirs = [
            line
            for line in section.splitlines()
            if line.startswith(start.replace("rectangular-lattice VAE", "rectangular lattice"))
        ]
        assert len(ours) == 1 and len(theirs) == 1, start
        assert _decimals(theirs[0]) == _decimals(ours[0]), (theirs[0], ours[0])


def test_the_good_lattice_table_and_its_lines_are_the_results_file():
    readme = _readme_table(
        "model", "IWAE NLL (ours)", "paper (IWAE-1000)", "−ELBO (ours)", "− Gaussian-lattice"
    )
    rendered = _table(_lattice_mnist_rendered(), "model")
    _by_columns("good lattices", readme, rendered)
    # the codelength lines that were below it, now in the doc: the same numbers, line by line
    text = _text(ROOT / "docs" / GOOD_DOC)
    section = text.split("\n## Each row's codelength against its −ELBO\n")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if "hard-path two-part codelength" in line]
    ours = [
        line
        for line in _lattice_mnist_rendered().splitlines()
        if "hard-path two-part codelength" in line
    ]
    assert [_decimals(x) for x in lines] == [_decimals(x) for x in ours]


def test_the_readme_summaries_of_the_moved_lattice_tables_are_the_results_files():
    """The README gives in a sentence what moved to docs/good-lattices-in-table-1.md: the range of
    the codelength lines' Theorem-1 gaps and the two Table-1 rows' means over three seeds."""
    text = " ".join(_text(ROOT / "README.md").split())
    gaps = [
        r["codelength_minus_neg_elbo"]
        for r in _json("lattice-mnist.json")["models"].values()
        if "test_codelength_hard" in r
    ]
    m = re.search(r"codelength − −ELBO lies between (\S+) and (\S+) nats", text)
    assert m, "the codelength summary is gone from the README"
    _assert_numbers("codelength range", m.group(0), [min(gaps), max(gaps)])
    m = re.search(r"the rectangular row reads .+?, a gap of \S+ \(paper", text)
    assert m, "the seed-spread summary is gone from the README"
    means = {
        row: [_seed_value(row, s, "test_nll_iwae1000") for s in (2020, 2021, 2022)]
        for row in ("rect_lattice", "gaussian_lattice")
    }
    values = [
        *_mean_sd(means["rect_lattice"]),
        *_mean_sd(means["gaussian_lattice"]),
        statistics.mean(means["rect_lattice"]) - statistics.mean(means["gaussian_lattice"]),
    ]
    _assert_numbers("seed spread", m.group(0), values)


def _mean_sd(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values)]


def _seed_value(row: str, seed: int, key: str) -> float:
    if seed == 2020:
        return _json("lattice-mnist.json")["models"][row][key]
    path = f"lattice-mnist-seeds/{row}/{row}-seed{seed}.json"
    return _json(path)["models"][row][key]


def test_the_seed_spread_table_is_the_seed_files():
    _, rows = _doc_table(GOOD_DOC, "row, seed", "IWAE-1000", "−ELBO", "rate", "best epoch")
    names = {"rectangular": "rect_lattice", "Gaussian-lattice": "gaussian_lattice"}
    keys = ("test_nll_iwae1000", "test_neg_elbo", "test_rate")
    checked = 0
    for label, *cells in rows:
        name, what = label.split(", ", 1)
        row = names[name]
        seed = re.match(r"\d{4}", what)
        if seed:
            values = [_seed_value(row, int(seed.group()), k) for k in keys]
            _assert_numbers(label, " ".join(cells[:3]), values)
            assert cells[3] == str(_seed_value(row, int(seed.group()), "best_epoch")), label
        else:
            count = 4 if "of four" in what else 3
            seeds = range(2020, 2020 + count)
            values = []
            for k in keys:
                per_seed = [_seed_value(row, s, k) for s in seeds]
                values += [statistics.mean(per_seed), statistics.stdev(per_seed)]
            _assert_numbers(label, " ".join(cells[:3]), values)
        checked += 1
    assert checked == 10


# the rows of "The rows started from the Gaussian-lattice VAE" table: (summary folder, whether
# the row has a Z^40 control, the Table-1 row whose cell gives the theoretical gain)
GL_START_ROWS = {
    "Λ24 ⊕ Z^16 (`leechz_gl_lattice`)": (
        "lattice-mnist-seeds/leechz_gl_lattice",
        True,
        "leechz_gl_lattice",
    ),
    "E8^5 (`e8_gl_lattice`, 80 epochs)": (
        "lattice-mnist-seeds/e8_gl_lattice",
        True,
        "e8_gl_lattice",
    ),
    "E8^5, two seeds continued to 120 epochs": (
        "lattice-mnist-seeds/e8_gl_lattice-e120",
        False,
        "e8_gl_lattice",
    ),
    "E8^5, the same two continued under the 200-epoch cap (early stopping at 156 and 177)": (
        "lattice-mnist-seeds/e8_gl_lattice-e200",
        False,
        "e8_gl_lattice",
    ),
    "Λ24 ⊕ Λ16 (`leech_gl_lattice`)": (
        "lattice-mnist-seeds/leech_gl_lattice",
        True,
        "leech_gl_lattice",
    ),
    "E8^3 ⊕ Z^16 (`e8z_gl_lattice`, 80 epochs)": (
        "lattice-mnist-seeds/e8z_gl_lattice",
        True,
        "e8z_gl_lattice",
    ),
    "E8^4 ⊕ Z^8 (`e8z8_gl_lattice`, 80 epochs)": (
        "lattice-mnist-seeds/e8z8_gl_lattice",
        True,
        "e8z8_gl_lattice",
    ),
    "Z^40 (`rect_gl_lattice`)": ("lattice-mnist-seeds/rect_gl_lattice", False, None),
    "E8^3 ⊕ Z^16, decaying step (`--set train.lr_decay=0.95`)": (
        "lattice-mnist-decay/e8z_gl_lattice-vs-rect",
        True,
        "e8z_gl_lattice",
    ),
    "Gaussian-lattice VAE, 80 more epochs (`gaussian_gl_lattice`)": (
        "lattice-mnist-decay/gaussian_gl_lattice-constant",
        False,
        None,
    ),
    "Gaussian-lattice VAE, 40 more epochs (the Leech rows' count)": (
        "lattice-mnist-decay/gaussian_gl_lattice-e40",
        False,
        None,
    ),
    "the same, decaying step": ("lattice-mnist-decay/gaussian_gl_lattice", False, None),
}


def test_the_gaussian_lattice_start_table_is_the_seed_summaries():
    from qlatent.experiments.lattice_mnist import theoretical_gap

    _, rows = _doc_table(GOOD_DOC, "cell, from the Gaussian-lattice VAE", "seeds", "row − start")
    assert [r[0] for r in rows] == list(GL_START_ROWS)
    for label, seeds, start, control, gain in rows:
        folder, has_control, cell_row = GL_START_ROWS[label]
        summary = _json(f"{folder}/summary.json")
        assert int(seeds) == len(summary["seeds"]), label
        paired = summary["paired"]["metrics"]["test_nll_iwae1000"]
        _assert_numbers(label, start, [paired["mean"], paired["sd"]])
        if has_control:
            controlled = summary["controlled"]["metrics"]["test_nll_iwae1000"]
            _assert_numbers(label, control, [controlled["mean"], controlled["sd"]])
        else:
            assert control == "", label
        # theory (eq. 12), the one column no results file holds
        expected = (
            []
            if cell_row is None
            else [theoretical_gap("rect_gl_lattice") - theoretical_gap(cell_row)]
        )
        _assert_numbers(label, gain, expected)


# --- the lattice geometry table ------------------------------------------------------------------


def _agrees_rounded_int(shown: str, value: float) -> bool:
    """``shown`` (an integer with thousands commas) is ``value`` to its last nonzero digit."""
    digits = md.plain(shown)
    unit = 10 ** (len(digits) - len(digits.rstrip("0"))) if digits.strip("0") else 1
    return abs(int(digits) - value) <= unit / 2


def test_the_geometry_table_is_the_results_file():
    result = _json("lattice-geometry.json")
    _, rows = _readme_table("lattice", "n", "G (Monte Carlo)", "literature")
    keys = {
        "E8, `compile=True`": "e8, torch.compile",
        "Leech, `compile=True`": "leech, torch.compile",
        "BW16, `compile=True`": "bw16, torch.compile",
        "plain rounding": "round (Z, torch.round)",
    }
    assert len(rows) == 11
    for label, n, g, literature, difference, kl, speed in rows:
        key = keys.get(label, label.lower())
        if n:
            geo = result["geometry"][key]
            assert int(n) == geo["dim"], label
            _assert_numbers(label, g, [geo["nsm"], geo["se"]])
            _assert_numbers(label, literature, [geo["literature"]])
            _assert_numbers(label, difference, [100 * geo["relative_difference"]])
            _assert_numbers(label, kl, [geo["kl_to_gaussian_nats_per_dim"]])
        point = result["closest_point"][key]
        m = re.fullmatch(r"([\d,]+) (k|M) \((\d+) × (\d+)\)", speed)
        assert m, speed
        scale = 1e3 if m.group(2) == "k" else 1e6
        assert _agrees_rounded_int(m.group(1), point["rows_per_s"] / scale), (label, speed)
        assert [int(m.group(3)), int(m.group(4))] == point["input"], label


# --- the demo and train-your-own tables ----------------------------------------------------------


def test_the_demo_table_is_the_results_file():
    test = _json("demo.json")["test"]
    _, rows = _readme_table("test set, nats per image", "value ± s.e.", "of which rate")
    elbo, code, diff = rows
    _assert_numbers(
        "ELBO",
        " ".join(elbo[1:]),
        [test[k] for k in ("neg_elbo_nats", "neg_elbo_se", "neg_elbo_rate_nats")],
    )
    _assert_numbers(
        "codelength",
        " ".join(code[1:]),
        [test[k] for k in ("codelength_nats", "codelength_se", "codelength_rate_nats")],
    )
    gap = test["codelength_nats"] - test["neg_elbo_nats"]
    _assert_numbers("difference", diff[1], [100 * test["relative_gap"], gap, test["gap_se_nats"]])


def test_the_train_your_own_table_is_the_results_files():
    _, rows = _readme_table(
        "bottleneck", "distortion (hard path)", "rate in training", "coded file"
    )
    runs = {
        "`vq` (K = 512)": "vq-eval",
        "`vq` after `qlatent update`": "vq-counted-eval",
        "`lattice`": "lattice-eval",
    }
    assert [r[0] for r in rows] == list(runs)
    for label, distortion, rate, coded, _codes, training in rows:
        result = _json(f"train-your-own/{runs[label]}.json")
        _assert_numbers(label, distortion, [result["hard_path"]["distortion"]])
        if rate != "–":
            _assert_numbers(label, rate.split("(")[0], [result["training_path"]["rate"]])
        bits = result["coded"]["bits_per_image"]
        _assert_numbers(label, coded, [bits * 0.6931471805599453, bits])
        if training != "–":
            train = _json(f"train-your-own/{runs[label].replace('eval', 'train')}.json")
            assert training == f"{train['train']['wall_s']:.0f} s", label


# --- coding-mnist and the coding benchmark -------------------------------------------------------


def test_the_coding_mnist_file_is_its_renderer_and_the_readme_table_its_numbers():
    from qlatent.experiments import coding_mnist

    payload = _json("coding-mnist.json")
    committed = (RESULTS / "coding-mnist.md").read_text(encoding="utf-8").strip()
    assert coding_mnist.markdown_table(payload).strip() == committed
    _, rows = _readme_table("model", "code model", "file (bits/image)")
    assert len(rows) == len(payload["rows"])
    for label, _model, file, info, exact, estimate, trip, speed in rows:
        name = re.search(r"`(\w+)`", label)
        key = name.group(1) if name else ("vq" if label.startswith("VQ-VAE") else "lattice")
        r = payload["rows"][key]
        _assert_numbers(label, file, [r["coded_bits_per_image"]])
        _assert_numbers(label, info, [r["ideal_bits_per_image"]])
        expected = [] if exact.startswith("–") else [r["hard_rate_bits_per_image"]]
        if "Monte Carlo ideal" in exact:
            assert f"on {r['mc_ideal_images']:,} images" in exact, label
            expected += [r["mc_ideal_bits_per_image"], r["mc_ideal_se"]]
        _assert_numbers(label, exact, expected)
        if estimate != "–":
            _assert_numbers(label, estimate, [r["train_rate_bits_per_image"], r["train_rate_se"]])
        assert trip == ("exact" if r["round_trip_exact"] else "not exact"), label
        _assert_numbers(
            label, speed, [r["encode_symbols_per_s"] / 1e6, r["decode_symbols_per_s"] / 1e6]
        )


def test_the_coding_benchmark_table_and_its_headline_ratios_are_the_results_file():
    result = _json("bench-coding.json")
    cases, alone, peer = (
        result["cases"],
        result["lattice_coder_alone"]["symbols_per_s"],
        result["compressai"],
    )
    _, rows = _readme_table(
        "case", "encode (M symbols/s)", "decode (M symbols/s)", "payload over exact rate"
    )
    expected = [
        (
            cases["lattice"]["encode_symbols_per_s"],
            cases["lattice"]["decode_symbols_per_s"],
            cases["lattice"]["payload_overhead_percent"],
        ),
        (alone["sign_magnitude_encode"], alone["sign_magnitude_decode"]),
        (alone["quantized_laplace_encode"], alone["quantized_laplace_decode"]),
        (
            cases["vq"]["encode_symbols_per_s"],
            cases["vq"]["decode_symbols_per_s"],
            cases["vq"]["payload_overhead_percent"],
        ),
        (
            cases["e8"]["encode_symbols_per_s"],
            cases["e8"]["decode_symbols_per_s"],
            cases["e8"]["payload_overhead_percent"],
        ),
        (
            peer["symbols_per_s"]["lattice_encode"],
            peer["symbols_per_s"]["lattice_decode"],
            cases["lattice"]["payload_overhead_percent"],
        ),
        (
            peer["symbols_per_s"]["compressai_encode"],
            peer["symbols_per_s"]["compressai_decode"],
            peer["payload_overhead_percent"],
        ),
    ]
    assert len(rows) == len(expected)
    for row, values in zip(rows, expected, strict=True):
        scaled = [v / 1e6 for v in values[:2]] + list(values[2:])
        _assert_numbers(row[0], " ".join(row[1:]), scaled)
    text = _text(ROOT / "README.md")
    m = re.search(r"encodes ([\d.]+)× and decodes ([\d.]+)× faster than\s+CompressAI", text)
    assert m, "the headline lattice-over-CompressAI ratios are gone from the README"
    sps = peer["symbols_per_s"]
    for shown, step in zip(m.groups(), ("encode", "decode"), strict=True):
        ratio = sps[f"lattice_{step}"] / sps[f"compressai_{step}"]
        assert md.agrees(shown, ratio), f"lattice over CompressAI, {step}: {shown}× vs {ratio}"
    m = re.search(
        r"decodes ([\d.]+)× faster than constriction's parametric model.*?encodes ([\d.]+)× faster",
        text,
        re.S,
    )
    assert m, "the sign/magnitude-over-QuantizedLaplace ratios are gone from the README"
    for shown, step in zip(m.groups(), ("decode", "encode"), strict=True):
        ratio = alone[f"sign_magnitude_{step}"] / alone[f"quantized_laplace_{step}"]
        assert md.agrees(shown, ratio), f"sign/magnitude over QuantizedLaplace: {shown}× vs {ratio}"


def test_the_coding_repeats_and_e8_tables_are_the_results_files():
    # the repeats of the recording before the current one are in docs/bitstreams-in-detail.md
    bitstreams = _text(ROOT / "docs" / "bitstreams-in-detail.md")
    _, rows = _table(bitstreams, "run", "whole call encode", "whole call decode")
    runs = {}
    for label, *cells in rows:
        m = re.fullmatch(r"`run(\d)`", label)
        if m:
            r = _json(f"bench-coding-repeats/run{m.group(1)}.json")
            a = r["lattice_coder_alone"]["symbols_per_s"]
            values = [
                r["cases"]["lattice"]["encode_symbols_per_s"],
                r["cases"]["lattice"]["decode_symbols_per_s"],
                a["sign_magnitude_encode"],
                a["sign_magnitude_decode"],
                a["quantized_laplace_encode"],
                a["quantized_laplace_decode"],
            ]
            runs[label] = [v / 1e6 for v in values]
            _assert_numbers(label, " ".join(cells), runs[label])
    assert len(runs) == 5
    recorded = [float(md.plain(x)) for x in _decimals(" ".join(rows[0][1:]))]
    median = [statistics.median([*(v[i] for v in runs.values()), recorded[i]]) for i in range(6)]
    _assert_numbers("median of the six", " ".join(rows[-1][1:]), median)

    e8 = _json("bench-coding-e8.json")["cases"]
    _, rows = _readme_table(
        "case", "encode (M symbols/s)", "decode (M symbols/s)", "encode / decode (k images/s)"
    )
    for (label, enc, dec, images, over), key in zip(rows, ("lattice", "e8"), strict=True):
        c = e8[key]
        _assert_numbers(
            label,
            f"{enc} {dec} {over}",
            [
                c["encode_symbols_per_s"] / 1e6,
                c["decode_symbols_per_s"] / 1e6,
                c["payload_overhead_percent"],
            ],
        )
        shown = [int(x) for x in re.findall(r"\d+", images)]
        assert shown == [
            round(c["encode_rows_per_s"] / 1e3),
            round(c["decode_rows_per_s"] / 1e3),
        ], label


# --- the bottleneck benchmarks -------------------------------------------------------------------


def test_the_lattice_benchmark_tables_are_the_results_file():
    result = _json("bench-lattice.json")
    _, rows = _readme_table("case", "M rows/s (median)", "M rows/s (best)", "× floor (median time)")
    assert len(rows) == len(result["cases"])
    for label, median, best, floor in rows:
        c = result["cases"][label]
        _assert_numbers(
            label,
            f"{median} {best} {floor}",
            [c["rows_per_s"] / 1e6, c["rows_per_s_best"] / 1e6, c["ratio_to_floor"]],
        )
    speedup = result["speedup_vs_compressai"]
    _, rows = _readme_table("ours", "CompressAI", "its time / ours")
    ms = {k: 1e3 * c["median_s"] for k, c in result["cases"].items()}
    gc = ms["CompressAI GaussianConditional, eval (round, likelihood)"]
    expected = [
        (
            ms["train path, eager, forward + backward"],
            ms["CompressAI EntropyBottleneck, training, forward + backward, eager"],
            speedup["train_eager"],
        ),
        (
            ms["train path, torch.compile, forward + backward"],
            ms["CompressAI EntropyBottleneck, training, forward + backward, torch.compile"],
            speedup["train_compiled"],
        ),
        (
            ms["hard path (eval), torch.compile"],
            gc,
            speedup["hard_path_compiled_vs_gaussian_conditional"],
        ),
        (ms["hard path (eval), eager"], gc, speedup["hard_path_eager_vs_gaussian_conditional"]),
    ]
    for row, values in zip(rows, expected, strict=True):
        _assert_numbers(row[0], " ".join(row), list(values))


def test_the_quantizer_benchmark_table_and_ratios_are_the_results_file():
    result = _json("bench-quantizers.json")
    by = {}
    for r in result["results"]:
        by[(r["name"], r["mode"])] = r["rows_per_s"] / 1e3
    _, rows = _readme_table("case", "train (k rows/s)", "eval (k rows/s)")
    for label, train, evaluate in rows:
        if "(reference)" in train:
            _assert_numbers(label, train, [by[(label, None)]])
            assert evaluate == "", label
        else:
            _assert_numbers(
                label, f"{train} {evaluate}", [by[(label, "train")], by[(label, "eval")]]
            )
    assert len(rows) == len(by) - sum(1 for k in by if k[1] == "eval")

    speed = result["speedup_vs_vector_quantize"]
    text = _text(ROOT / "README.md")
    line = next(
        x for x in text.splitlines() if x.startswith("`vq` over `VectorQuantize`, same run")
    )
    # the whole line: the earlier recordings' ratios are in docs/benchmarks-in-detail.md
    head = line
    compiled = speed["compiled_vq"]
    expected = []
    for k in ("K=128", "K=512", "K=4096"):
        expected += [speed[k]["train"], speed[k]["eval"]]
    expected += [1.5]
    for k in ("K=128", "K=512", "K=4096"):
        expected += [compiled[k]["train"], compiled[k]["eval"]]
    over = [v for k in ("K=128", "K=512", "K=4096") for v in compiled["over_eager_vq"][k].values()]
    expected += [min(over), max(over)]
    _assert_numbers("vq over VectorQuantize", head, expected)


# --- text-rd -------------------------------------------------------------------------------------


def test_the_text_rd_table_is_the_results_file():
    from qlatent.experiments import text_rd

    _, rendered = _table(text_rd.markdown_table(_json("text-rd.json")), "method")
    points = {(r[0], r[1].replace(" ", "")): r for r in rendered}
    _, rows = _readme_table("method", "point", "rate (bits/word)", "rate from")
    names = {
        "unquantized, warm start": [("identity", "unquantized")],
        "unquantized, fine-tuned": [("identity", "fine-tuned")],
        "language model (rate 0)": [("language_model", "nocode")],
    }
    for method, point, rate, _source, nll in rows:
        if method in names:
            keys = names[method]
        else:
            name = re.match(r"`(\w+)`", method).group(1)
            knob, values = point.split(" = ")
            keys = [
                (name, f"{knob}={v if '.' in v or knob == 'M' else v + '.0'}")
                for v in values.split(" / ")
            ]
        expected_rate = [float(points[k][2]) for k in keys if points[k][2] != "–"]
        _assert_numbers(method, rate, expected_rate)
        _assert_numbers(method, nll, [float(points[k][4]) for k in keys])


# --- softvq-mnist --------------------------------------------------------------------------------


def test_the_softvq_tables_are_their_results_files():
    from qlatent.experiments import softvq_mnist

    text = _text(ROOT / "README.md")
    for name, header in (
        (
            "softvq-mnist-single-seed",
            ("model", "k-means acc", "paper", "NMI", "paper", "linear acc", "paper", "test NMSE"),
        ),
        (
            "softvq-mnist",
            (
                "model",
                "k-means acc",
                "paper",
                "NMI",
                "paper",
                "linear acc",
                "paper",
                "linear acc, converged",
            ),
        ),
        ("softvq-mnist", ("model", "paper within mean ± 2 sd (k-means, NMI, linear)")),
    ):
        committed = _table((RESULTS / f"{name}.md").read_text(encoding="utf-8"), *header)
        assert _table(text, *header) == committed, name
        # the committed table's numbers are today's renderer's, column by column (the renderer
        # has since gained a column, "linear acc, converged", for the single-seed table)
        rendered = _table(softvq_mnist.markdown_table(_json(f"{name}.json")), *header[:2])
        _by_columns(name, committed, rendered)
    line = next(x for x in text.splitlines() if x.startswith("code perplexity on the test set"))
    assert line in (RESULTS / "softvq-mnist-single-seed.md").read_text(encoding="utf-8")


SOFTVQ_CAUSE_RUNS = {
    "Soft VQ-VAE, eq. (5), σ_ε = 0.01 (the table's row)": "soft_vq",
    "Soft VQ-VAE, eq. (5), no noise": "soft_vq_noiseless",
    "Soft VQ-VAE, notebook weights, no noise": "soft_vq_reference",
    "β-VAE, β = 20, batch 32 (the table's row)": "beta_vae",
    "β-VAE, β = 5": "beta_vae_5",
    "β-VAE, β = 10": "beta_vae_10",
    "β-VAE, β = 20, batch 64": "beta_vae_batch64",
}


def test_the_softvq_seed_0_table_is_the_run_records():
    _, rows = _doc_table(DETAIL_DOC, "run (seed 0)", "k-means acc", "NMI", "linear acc")
    assert [r[0] for r in rows] == list(SOFTVQ_CAUSE_RUNS)
    for label, *cells in rows:
        m = _json(f"softvq-mnist-runs/{SOFTVQ_CAUSE_RUNS[label]}/seed-0.json")["metrics"]
        values = [
            100 * m["kmeans_acc"],
            m["nmi"],
            100 * m["linear_acc"],
            100 * m["linear_acc_converged"],
            m["test_nmse"],
        ]
        _assert_numbers(label, " ".join(cells[:5]), values)
        assert cells[5] == (str(m["active_dims"]) if "active_dims" in m else "–"), label


def test_the_softvq_posterior_table_is_the_results_file():
    rows_json = _json("softvq-mnist-posterior.json")["rows"]
    _, rows = _doc_table(DETAIL_DOC, "row", "posterior entropy (nats)", "mean σ_k")
    names = ["soft_vq", "soft_vq_noiseless", "soft_vq_reference"]
    keys = ["posterior_entropy", "mean_sigma", "mean_posterior_perplexity", "argmax_codes_used"]
    for (label, *cells), name in zip(rows, names, strict=True):
        seeds = sorted(rows_json[name])
        assert len(seeds) == (3 if "3 seeds" in label else 1), label
        nmse = [_json(f"softvq-mnist-runs/{name}/{s}.json")["metrics"]["test_nmse"] for s in seeds]
        for cell, key in zip(cells, [*keys, None], strict=True):
            values = nmse if key is None else [rows_json[name][s][key] for s in seeds]
            expected = [statistics.mean(values)] + (
                [statistics.stdev(values)] if len(values) > 1 else []
            )
            shown = re.findall(r"[\d.]+", cell)
            assert len(shown) == len(expected), (label, cell)
            for s, v in zip(shown, expected, strict=True):
                assert md.agrees(s, v), (label, key, cell, v)


# --- llvq-fashion --------------------------------------------------------------------------------


def test_the_llvq_table_is_the_results_file():
    from qlatent.experiments import llvq_fashion

    committed = (RESULTS / "llvq-fashion.md").read_text(encoding="utf-8").strip()
    assert llvq_fashion.markdown_table(_json("llvq-fashion.json")).strip() == committed
    _, ours = _table(committed, "schedule", "model")
    _, rows = _readme_table("schedule", "model", "test MSE")
    assert len(rows) == len(ours)
    for row, other in zip(rows, ours, strict=True):
        # the labels differ in wording ("LL-VQ-VAE (γ = +1)"), the numbers may not
        assert row[0] == other[0] and row[2:] == other[2:], (row, other)


def test_the_vq_ema_smoothing_table_is_the_results_files():
    _, rows = _doc_table(DETAIL_DOC, "VQ-VAE-EMA, reference schedule", "seed")
    folders = ["local", "stored", "stored-seed3", "stored-seed4", None]
    for (label, seed, first, last, test, codes), folder in zip(rows, folders, strict=True):
        if folder is None:
            r = _json("llvq-fashion.json")["rows"]["reference"]["vq_ema"]
            assert first == "–"
            _assert_numbers(label, f"{last} {test}", [r["final_val_mse"], r["test_mse"]])
        else:
            result = _json(f"llvq-vq-ema-smoothing/{folder}/llvq-fashion.json")
            r = result["rows"]["reference"]["vq_ema"]
            curve = r["val_mse_per_epoch"]
            _assert_numbers(label, f"{first} {last} {test}", [curve[0], curve[-1], r["test_mse"]])
            assert f"train.seed={seed}" in result["command"] or seed == "2", label
        assert int(codes) == r["unique_codes_trainval"], label


# --- the log-density bias table ------------------------------------------------------------------


def test_the_log_density_bias_table_is_the_results_file():
    """The full table is in docs/good-lattices-in-detail.md; the README keeps its summary."""
    result = _json("log-density-bias.json")["rows"]
    header = ("lattice", "proposal", "(cell points, proposal draws)", "prior scale b")
    _, rows = _doc_table(GOOD_DETAIL_DOC, *header)
    assert len(rows) == len(result)
    names = {"E8^5": "E8^5", "Leech ⊕ BW16": None}
    for row, r in zip(rows, result, strict=True):
        lattice, proposal, samples, scale, plain, debiased = row
        if names.get(lattice):
            assert r["lattice"] == names[lattice], row
        assert proposal == r["proposal"], row
        assert [int(x) for x in re.findall(r"\d+", samples)] == r["samples"], row
        assert float(scale) == r["prior_scale"], row
        _assert_numbers(
            lattice,
            f"{plain} {debiased}",
            [
                r["plain_bias_nats"],
                r["plain_bias_se"],
                r["debiased_bias_nats"],
                r["debiased_bias_se"],
            ],
        )


def test_the_gaussian_density_summary_is_the_results_file():
    """The README's paragraph on ``density="gaussian"``: every number it quotes, from
    results/gaussian-density-bias.json (bias per coordinate = the row's bias / its dimension)."""
    result = _json("gaussian-density-bias.json")
    dim = result["setup"]["dim"]
    per = {(r["lattice"], r["prior"], r["b"]): r["bias_nats"] / dim for r in result["rows"]}
    text = " ".join(_text(ROOT / "README.md").split())
    start = text.index('**The Gaussian approximation: `density="gaussian"`**')
    paragraph = text[start : text.index("no substitute for the Table-1 models' rate", start)]
    gaussian_wide = [v for (_, p, b), v in per.items() if p == "gaussian" and b >= 0.3]
    laplace_wide = [v for (_, p, b), v in per.items() if p == "laplace" and b >= 1]
    assert max(abs(v) for v in gaussian_wide) < 0.001
    expected = [
        0.001,
        per[("E8^5", "gaussian", 0.1)],
        per[("Leech ⊕ BW16", "gaussian", 0.1)],
        -max(laplace_wide),
        -min(laplace_wide),
        -dim * max(laplace_wide),
        -dim * min(laplace_wide),
        0.5 * math.log(math.pi / math.e),
    ]
    shown = [s.replace("−", "-") for s in _decimals(paragraph)]
    shown = [s for s in shown if s not in ("0.3", "0.1")]  # prior widths, not results
    assert len(shown) == len(expected), shown
    for s, v in zip(shown, expected, strict=True):
        assert md.agrees(s.lstrip("-"), abs(v)), (s, v)
    assert f"{result['process_wall_s']:.0f} s" in paragraph


# --- docs/good-lattices-in-table-1.md: the Gaussian-lattice starts, seed by seed -----------------

DOC_SEED_ROWS = {
    "Λ24 ⊕ Z^16": "leechz_gl_lattice",
    "E8^5": "e8_gl_lattice",
    "Z^40": "rect_gl_lattice",
    "Λ24 ⊕ Λ16": "leech_gl_lattice",
}


def test_the_docs_seed_table_of_the_gaussian_lattice_starts_is_the_summaries():
    text = _text(ROOT / "docs" / "good-lattices-in-table-1.md")
    _, rows = _table(text, "row, seed", "start's IWAE-1000", "IWAE-1000")
    assert len(rows) == 17
    for label, start, iwae, minus, elbo, minus_elbo, _best in rows:
        cell, what = label.split(", ", 1)
        summary = _json(f"lattice-mnist-seeds/{DOC_SEED_ROWS[cell]}/summary.json")
        paired, spread = summary["paired"]["metrics"], summary["spread"]
        series = [
            spread["test_nll_iwae1000"]["values"],
            paired["test_nll_iwae1000"]["minus_start"],
            spread["test_neg_elbo"]["values"],
            paired["test_neg_elbo"]["minus_start"],
        ]
        seed = re.match(r"\d{4}", what)
        if seed:
            s = seed.group()
            values = [paired["test_nll_iwae1000"]["start"][s]] + [x[s] for x in series]
            _assert_numbers(label, " ".join([start, iwae, minus, elbo, minus_elbo]), values)
        else:
            seeds = [str(s) for s in summary["seeds"]][: 4 if "of four" in what else 3]
            values = []
            for x in series:
                per_seed = [x[s] for s in seeds]
                values += [statistics.mean(per_seed), statistics.stdev(per_seed)]
            assert start == "", label
            _assert_numbers(label, " ".join([iwae, minus, elbo, minus_elbo]), values)

    _, rows = _table(text, "cell", "row − Z^40, IWAE-1000: 2020, 2021, 2022")
    for label, per_seed, iwae, elbo, _gain in rows:
        controlled = _json(f"lattice-mnist-seeds/{DOC_SEED_ROWS[label]}/summary.json")["controlled"]
        m = controlled["metrics"]
        _assert_numbers(label, per_seed, list(m["test_nll_iwae1000"]["minus_control"].values()))
        _assert_numbers(label, iwae, [m["test_nll_iwae1000"]["mean"], m["test_nll_iwae1000"]["sd"]])
        _assert_numbers(label, elbo, [m["test_neg_elbo"]["mean"], m["test_neg_elbo"]["sd"]])


def test_recording_branch_timings_quote_their_results_file():
    """The A/B of the recording-branch checks (docs/hostile-input-and-edge-cases.md,
    "Exporting and tracing"): each step's new and old median."""
    text = _text(ROOT / "docs" / "hostile-input-and-edge-cases.md")
    start = text.index("results/recording-branches-ab.json`, one thread")
    quote = text[start : text.index("(inside this machine's noise)", start)]
    quote = quote[quote.index("):") :]  # after "medians of seven alternated rounds"
    medians = _json("recording-branches-ab.json")["median_over_rounds"]
    steps = ["rectangular, 100 x 40", "e8^5, 100 x 40", "leech + bw16, 100 x 40"]
    steps.append("rectangular, 16384 x 64")
    values = [v for s in steps for v in (medians[s]["new_ms"], medians[s]["old_ms"])]
    _assert_numbers("recording-branches A/B", quote, values)
