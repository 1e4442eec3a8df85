"""The docs' tables and quoted figures against the committed results files they come from.

``tests/test_readme_numbers.py`` checks README.md's tables and the seed tables of
docs/good-lattices-in-table-1.md. This file re-derives the rest of the docs' tables and the
figures their prose quotes (means ± sd over seeds, gaps against the Gaussian-lattice VAE and
the rectangular control, theoretical gains, A/B timings) from ``results/``, at the rounding
the text shows, so that a results file recorded again without its numbers carried into the
docs fails here. Every check records the text it compares; ``test_every_check_can_fail``
changes the first number of that text in a copy of the document and expects the check to fail.
"""

from __future__ import annotations

import json
import re
import statistics
from functools import cache

import pytest

import markdown_numbers as md
from markdown_numbers import NUMBER, RESULTS, ROOT
from markdown_numbers import results_json as _json

DOCS = ROOT / "docs"

GOOD = "good-lattices-in-table-1.md"
SPEED = "good-lattice-speed.md"
BENCH = "benchmarks-in-detail.md"
CODING = "coding-mnist-in-detail.md"

# a copy of a document's text that a check reads instead of the file (the mutation test's)
_OVERRIDE: dict[str, str] = {}
# the texts the running check compared, in order (the mutation test changes the first)
_COMPARED: list[tuple[str, str]] = []


# --- reading the text and the files -------------------------------------------------------------


def _raw(doc: str) -> str:
    if doc in _OVERRIDE:
        return _OVERRIDE[doc]
    return _file_text(doc)


@cache
def _file_text(doc: str) -> str:
    return (DOCS / doc).read_text(encoding="utf-8")


def _flat(doc: str) -> str:
    """The document with every run of whitespace one space (prose wraps anywhere)."""
    return " ".join(_raw(doc).split())


def _find(doc: str, pattern: str) -> str:
    """The one match of the regular expression ``pattern`` in the flattened document."""
    hits = re.findall(pattern, _flat(doc))
    assert len(hits) == 1, f"{doc}: {len(hits)} matches of {pattern!r}"
    return hits[0] if isinstance(hits[0], str) else hits[0][0]


def _quote(template: str) -> str:
    """A pattern matching ``template`` literally, each ``#`` standing for a number."""
    return re.escape(template).replace(r"\#", r"\d[\d,]*(?:\.\d+)?")


def _tables(doc: str) -> list[tuple[list[str], list[list[str]]]]:
    return md.tables(_raw(doc))


def _table(doc: str, *header: str, nth: int = 0) -> list[list[str]]:
    """The rows of the table of ``doc`` whose header starts with ``header`` (the ``nth`` one)."""
    hits = [rows for head, rows in _tables(doc) if head[: len(header)] == list(header)]
    assert len(hits) > nth, f"{doc}: no table {nth} with header {header}"
    return hits[nth]


def _numbers(doc: str, text: str, values: list[float]) -> None:
    """The decimal numbers of ``text`` (a cell, a row or a quoted sentence of ``doc``) are
    ``values``, in order, each at the rounding it shows."""
    _COMPARED.append((doc, text))
    shown = NUMBER.findall(text)
    assert len(shown) == len(values), f"{doc}: {text!r} shows {shown}, expected {len(values)}"
    for s, v in zip(shown, values, strict=True):
        assert md.agrees(s, v), f"{doc}: {text!r} shows {s}, the results give {v:.6g}"


def _row_numbers(doc: str, row: list[str], values: list[float]) -> None:
    _numbers(doc, " | ".join(row), values)


def _all_numbers(text: str) -> list[float]:
    """Every number of ``text``, integers and thousands separators included."""
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


def _percent(doc: str, text: str, value: float) -> None:
    """The whole percentage in ``text`` is ``value`` (a fraction) rounded."""
    _COMPARED.append((doc, text))
    shown = re.findall(r"(\d+)%", text)
    assert shown == [str(round(100 * value))], f"{doc}: {text!r}, the results give {value:.4f}"


def _mean_sd(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values)]


# --- the lattice-mnist seed files ---------------------------------------------------------------


def _summary(folder: str) -> dict:
    return _json(f"{folder}/summary.json")


def _seed_row(folder: str, row: str, seed: int) -> dict:
    return _json(f"{folder}/{row}-seed{seed}.json")["models"][row]


def _seeds(row: str) -> dict:
    return _summary(f"lattice-mnist-seeds/{row}")


def _paired(summary: dict, metric: str = "test_nll_iwae1000") -> dict:
    return summary["paired"]["metrics"][metric]


def _controlled(summary: dict, metric: str = "test_nll_iwae1000") -> dict:
    return summary["controlled"]["metrics"][metric]


def _gain_over_z40(row: str) -> float:
    """Theory's gain of a row's cell over Z^40 (the difference of the ideal-lattice gaps)."""
    files = sorted((RESULTS / f"lattice-mnist-seeds/{row}").glob(f"{row}-seed*.json"))
    if files:
        payload = json.loads(files[0].read_text(encoding="utf-8"))
        return payload["theoretical_gap_nats"] - payload["theoretical_gaps_nats"][row]
    gaps = _json("lattice-mnist.json")["theoretical_gaps_nats"]
    return gaps["rect_lattice"] - gaps[row]


def _table1(row: str) -> dict:
    return _json("lattice-mnist.json")["models"][row]


def _gl_three_seed_mean() -> float:
    values = _seeds("gaussian_lattice")["spread"]["test_nll_iwae1000"]["values"]
    return statistics.mean(values[s] for s in ("2020", "2021", "2022"))


# --- the checks ----------------------------------------------------------------------------------

CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


@check
def gaussian_lattice_starts_prose():
    """'The Gaussian-lattice starts, paired by seed': what each good cell costs and keeps."""
    leechz, e8, leech = (
        _seeds("leechz_gl_lattice"),
        _seeds("e8_gl_lattice"),
        _seeds("leech_gl_lattice"),
    )
    text = _find(GOOD, _quote("sd # nats for Λ24 ⊕ Z^16 and # for E8^5"))
    _numbers(GOOD, text, [_paired(leechz)["sd"], _paired(e8)["sd"]])
    for summary, row, at_seed in (
        (leechz, "leechz_gl_lattice", None),
        (e8, "e8_gl_lattice", "2020"),
    ):
        iwae, elbo = _controlled(summary), _controlled(summary, "test_neg_elbo")
        gain = _gain_over_z40(row)
        pattern = (
            r"[\d.]+ ± [\d.]+ of its (?:theoretical )?[\d.]+(?: nats in IWAE)? "
            r"\([\d.]+ ± [\d.]+ in −ELBO, \d+%(?:; \d+% at the table's seed)?\)"
        )
        text = [t for t in re.findall(pattern, _flat(GOOD)) if t.startswith(f"{-iwae['mean']:.2f}")]
        assert len(text) == 1, (row, text)
        _numbers(GOOD, text[0], [-iwae["mean"], iwae["sd"], gain, -elbo["mean"], elbo["sd"]])
        _percent(GOOD, text[0].split(";")[0], -elbo["mean"] / gain)
        if at_seed:
            _percent(GOOD, text[0].split(";")[1], -elbo["minus_control"][at_seed] / gain)
    text = _find(GOOD, _quote("Λ24 ⊕ Z^16 costs # ± # nats, against the 2.0"))
    _numbers(GOOD, text, [*(_paired(leechz)[k] for k in ("mean", "sd")), 2.0])
    text = _find(GOOD, _quote("costs the same +# ± # at two seeds"))
    _numbers(GOOD, text, [_paired(leech)["mean"], _paired(leech)["sd"]])
    text = _find(GOOD, _quote("and E8^5 # ± # (goal 3.0)"))
    _numbers(GOOD, text, [_paired(e8)["mean"], _paired(e8)["sd"], 3.0])
    start = _gl_three_seed_mean()
    text = _find(GOOD, _quote("three-seed mean (#), the rows' means are +# (Λ24 ⊕ Z^16) and +#"))
    means = [s["spread"]["test_nll_iwae1000"]["mean"] - start for s in (leechz, e8)]
    _numbers(GOOD, text, [start, *means])
    text = _find(GOOD, _quote("(+# ± # over the three seeds both times)"))
    e120, e200 = (_paired(_seeds(f"e8_gl_lattice-{e}")) for e in ("e120", "e200"))
    assert f"{e120['mean']:.2f} ± {e120['sd']:.2f}" == f"{e200['mean']:.2f} ± {e200['sd']:.2f}"
    _numbers(GOOD, text, [e120["mean"], e120["sd"]])


@check
def e8_past_the_cap():
    """'E8^5 past the cap': the runs continued to 120 and to 200 epochs."""
    e80, e120, e200 = (
        _seeds(f) for f in ("e8_gl_lattice", "e8_gl_lattice-e120", "e8_gl_lattice-e200")
    )
    iwae120 = _paired(e120)
    text = _find(GOOD, _quote("+# and +# above their own starts"))
    _numbers(GOOD, text, [iwae120["minus_start"]["2021"], iwae120["minus_start"]["2022"]])
    spread = e120["spread"]["test_nll_iwae1000"]
    start = _gl_three_seed_mean()
    text = _find(
        GOOD,
        _quote(
            "**+# ± #** over three seeds (−ELBO +# ± #), and +# against the "
            "Gaussian-lattice row's three-seed mean (# ± # against #): 40 more epochs took "
            "# nats"
        ),
    )
    elbo120 = _paired(e120, "test_neg_elbo")
    taken = _paired(e80)["mean"] - iwae120["mean"]
    values = [iwae120["mean"], iwae120["sd"], elbo120["mean"], elbo120["sd"]]
    _numbers(
        GOOD, text, [*values, spread["mean"] - start, spread["mean"], spread["sd"], start, taken]
    )
    iwae200, elbo200 = _paired(e200), _paired(e200, "test_neg_elbo")
    text = _find(
        GOOD, _quote("**+# ± # nats of IWAE above their starts** (+#, +#, +#; −ELBO +# ± #)")
    )
    per_seed = [iwae200["minus_start"][s] for s in ("2020", "2021", "2022")]
    values = [iwae200["mean"], iwae200["sd"], *per_seed, elbo200["mean"], elbo200["sd"]]
    _numbers(GOOD, text, values)


@check
def leech_from_the_gaussian_lattice_vae():
    """'Λ24 ⊕ Λ16 from the Gaussian-lattice VAE' and its IWAE-minus-−ELBO widening."""
    summary = _seeds("leech_gl_lattice")
    iwae, elbo = _paired(summary), _paired(summary, "test_neg_elbo")
    control, control_elbo = _controlled(summary), _controlled(summary, "test_neg_elbo")
    text = _find(
        GOOD,
        _quote(
            "trained.jsonl`): test IWAE-1000 **# and #, +# and +# above their starts (+# ± "
            "#)**, −ELBO # and # (+# ± #), and −# ± # nats of IWAE (−# ± # of −ELBO) "
            "against the Z^40 control from the same start, of a theoretical #"
        ),
    )
    text = text.split("IWAE-1000 ", 1)[1]
    spread = summary["spread"]
    values = [
        spread["test_nll_iwae1000"]["values"]["2021"],
        spread["test_nll_iwae1000"]["values"]["2022"],
        iwae["minus_start"]["2021"],
        iwae["minus_start"]["2022"],
        iwae["mean"],
        iwae["sd"],
        spread["test_neg_elbo"]["values"]["2021"],
        spread["test_neg_elbo"]["values"]["2022"],
        elbo["mean"],
        elbo["sd"],
        control["mean"],
        control["sd"],
        control_elbo["mean"],
        control_elbo["sd"],
        _gain_over_z40("leech_gl_lattice"),
    ]
    _numbers(GOOD, text, values)
    # row − start, IWAE minus −ELBO, three seeds (Z^40's first three)
    widening = []
    for row in ("rect_gl_lattice", "e8_gl_lattice", "leechz_gl_lattice", "leech_gl_lattice"):
        s = _seeds(row)
        seeds = [str(x) for x in s["seeds"]][:3]
        gap = [
            _paired(s)["minus_start"][x] - _paired(s, "test_neg_elbo")["minus_start"][x]
            for x in seeds
        ]
        widening.append(statistics.mean(gap))
    text = _find(GOOD, _quote("Z^40 #, E8^5 #, Λ24 ⊕ Z^16 #, Λ24 ⊕ Λ16 #)"))
    _numbers(GOOD, text.replace("Z^40", "").replace("E8^5", "").replace("Z^16", ""), widening)


@check
def gaussian_lattice_vae_trained_40_more_epochs():
    """The Gaussian-lattice VAE +40 and the Leech rows read against it, seed by seed."""
    e40 = _summary("lattice-mnist-decay/gaussian_gl_lattice-e40")
    iwae = e40["spread"]["test_nll_iwae1000"]["values"]
    text = _find(GOOD, _quote("IWAE-1000 # and #, −# ± # below the start"))
    paired = _paired(e40)
    _numbers(GOOD, text, [iwae["2021"], iwae["2022"], paired["mean"], paired["sd"]])
    elbo = e40["spread"]["test_neg_elbo"]["values"]
    leech = [
        _seed_row("lattice-mnist-seeds/leech_gl_lattice", "leech_gl_lattice", s)
        for s in (2021, 2022)
    ]
    leechz = [
        _seed_row("lattice-mnist-seeds/leechz_gl_lattice", "leechz_gl_lattice", s)
        for s in (2021, 2022)
    ]
    text = _find(
        GOOD,
        _quote(
            "Λ24 ⊕ Λ16 costs **+# and +#** nats of IWAE (+# and +# of −ELBO) and Λ24 ⊕ "
            "Z^16 +# and +#"
        ),
    )
    values = [
        m["test_nll_iwae1000"] - iwae[s] for m, s in zip(leech, ("2021", "2022"), strict=True)
    ]
    values += [m["test_neg_elbo"] - elbo[s] for m, s in zip(leech, ("2021", "2022"), strict=True)]
    values += [
        m["test_nll_iwae1000"] - iwae[s] for m, s in zip(leechz, ("2021", "2022"), strict=True)
    ]
    _numbers(GOOD, text.replace("Λ24 ⊕ Z^16", ""), values)


@check
def e8z_from_the_gaussian_lattice_vae():
    """'E8^3 ⊕ Z^16 from the Gaussian-lattice VAE' at two seeds and with the third."""
    summary = _seeds("e8z_gl_lattice")
    two = ("2021", "2022")
    iwae, elbo = _paired(summary), _paired(summary, "test_neg_elbo")
    control, control_elbo = _controlled(summary), _controlled(summary, "test_neg_elbo")
    spread = summary["spread"]
    gain = _gain_over_z40("e8z_gl_lattice")

    def two_seeds(series):
        return _mean_sd([series[s] for s in two])

    text = _find(
        GOOD,
        _quote(
            "JSON files): test IWAE-1000 **# and #, +# and +# above their starts (+# ± "
            "#)**, −ELBO # and # (+# ± #), and −# ± # nats of IWAE (−# ± # of −ELBO) "
            "against the Z^40 control from the same start, of a theoretical # (24"
        ),
    )
    text = text.split("IWAE-1000 ", 1)[1]
    control_two = two_seeds(control["minus_control"])
    control_elbo_two = two_seeds(control_elbo["minus_control"])
    values = [
        *(spread["test_nll_iwae1000"]["values"][s] for s in two),
        *(iwae["minus_start"][s] for s in two),
        *two_seeds(iwae["minus_start"]),
        *(spread["test_neg_elbo"]["values"][s] for s in two),
        *two_seeds(elbo["minus_start"]),
        control_two[0],
        control_two[1],
        control_elbo_two[0],
        control_elbo_two[1],
        gain,
    ]
    _numbers(GOOD, text[: -len(" (24")], values)
    text = _find(GOOD, _quote("#% of its gain in IWAE, #% in −ELBO, as Λ24"))
    _percent(GOOD, text.split(",")[0], -control_two[0] / gain)
    _percent(GOOD, text.split(",")[1], -control_elbo_two[0] / gain)
    text = _find(
        GOOD,
        _quote(
            "**+# ± # nats of IWAE above the start** (+#, +#, +#), −# ± # against the "
            "control, of a theoretical # (−# ± # of −ELBO)"
        ),
    )
    values = [
        iwae["mean"],
        iwae["sd"],
        *(iwae["minus_start"][s] for s in ("2021", "2022", "2023")),
        control["mean"],
        control["sd"],
        gain,
        control_elbo["mean"],
        control_elbo["sd"],
    ]
    _numbers(GOOD, text, values)


@check
def e8z8_from_the_gaussian_lattice_vae():
    """'E8^4 ⊕ Z^8': its plug-in table, the trained rows and their distance to E8^3 ⊕ Z^16."""
    rows = _table(GOOD, "start", "Z^40", "E8^5 (rate's Monte-Carlo bias)")
    layouts = ("Z^40", "E8^5", "E8^3 ⊕ Z^16", "E8^4 ⊕ Z^8")
    assert [r[0] for r in rows] == ["seed 2021", "seed 2022", "seed 2023"]
    for row in rows:
        plugin = {
            r["layout"]: r for r in _json(f"lattice-plugin-e8z8/seed{row[0][-4:]}.json")["rows"]
        }
        values = [plugin[k]["minus_gaussian_lattice"] for k in layouts]
        bias = plugin["E8^5"]["rate_minus_larger_counts"]
        _row_numbers(GOOD, row, [values[0], values[1], bias["mean"], bias["se"], *values[2:]])
    summary = _seeds("e8z8_gl_lattice")
    iwae, elbo = _paired(summary), _paired(summary, "test_neg_elbo")
    seeds = ("2021", "2022", "2023")
    text = _find(
        GOOD,
        _quote(
            "**#, # and #, +#, +# and +# above their starts (+# ± #)**, −ELBO #, # and # "
            "(+# ± #), −# ± # nats of IWAE against the Z^40 control of a theoretical #"
        ),
    )
    control = _controlled(summary)
    values = [
        *(summary["spread"]["test_nll_iwae1000"]["values"][s] for s in seeds),
        *(iwae["minus_start"][s] for s in seeds),
        iwae["mean"],
        iwae["sd"],
        *(summary["spread"]["test_neg_elbo"]["values"][s] for s in seeds),
        elbo["mean"],
        elbo["sd"],
        control["mean"],
        control["sd"],
        _gain_over_z40("e8z8_gl_lattice"),
    ]
    _numbers(GOOD, text.replace("Z^40", ""), values)
    e8z = _seeds("e8z_gl_lattice")["spread"]
    e8 = _seeds("e8_gl_lattice")["spread"]
    over = [
        summary["spread"]["test_nll_iwae1000"]["values"][s] - e8z["test_nll_iwae1000"]["values"][s]
        for s in seeds
    ]
    over_elbo = [
        summary["spread"]["test_neg_elbo"]["values"][s] - e8z["test_neg_elbo"]["values"][s]
        for s in seeds
    ]
    level = [
        summary["spread"]["test_nll_iwae1000"]["values"][s] - e8["test_nll_iwae1000"]["values"][s]
        for s in ("2021", "2022")
    ]
    text = _find(
        GOOD,
        _quote(
            "ends #, # and # nats of IWAE above E8^3 ⊕ Z^16 from the same start (+# ± #; "
            "−ELBO +#, +#, +#), level with E8^5 (−# and −#"
        ),
    )
    values = [*over, *_mean_sd(over), *over_elbo, *level]
    _numbers(GOOD, text.replace("Z^16", ""), values)


@check
def decaying_step_tables():
    """'A decaying step': the IWAE of every run and the differences over the three seeds."""
    decay = "lattice-mnist-decay"
    seeds = ("2021", "2022", "2023")
    columns = [
        _seeds("gaussian_lattice")["spread"],
        _summary(f"{decay}/gaussian_gl_lattice-constant")["spread"],
        _summary(f"{decay}/gaussian_gl_lattice")["spread"],
        _seeds("e8z_gl_lattice")["spread"],
        _summary(f"{decay}/e8z_gl_lattice")["spread"],
        _summary(f"{decay}/rect_gl_lattice")["spread"],
    ]
    rows = _table(GOOD, "seed", "start (200 epochs)")
    assert [r[0] for r in rows] == list(seeds)
    for row in rows:
        values = [c["test_nll_iwae1000"]["values"][row[0]] for c in columns]
        _numbers(GOOD, " | ".join(row[1:]), values)
    rows = {r[0]: r[1:] for r in _table(GOOD, "difference, IWAE-1000 (−ELBO)")}
    assert len(rows) == 5

    def both(summary: dict, part: str) -> list[float]:
        out = []
        for metric in ("test_nll_iwae1000", "test_neg_elbo"):
            m = summary[part]["metrics"][metric]
            out += [m["mean"], m["sd"]]
        return out

    expected = {
        "Gaussian-lattice +80 − start": (
            both(_summary(f"{decay}/gaussian_gl_lattice-constant"), "paired")
            + both(_summary(f"{decay}/gaussian_gl_lattice"), "paired")
        ),
        "E8^3 ⊕ Z^16 − start": (
            both(_seeds("e8z_gl_lattice"), "paired")
            + both(_summary(f"{decay}/e8z_gl_lattice"), "paired")
        ),
        "E8^3 ⊕ Z^16 − Gaussian-lattice +80, same step": (
            both(_summary(f"{decay}/e8z_gl_lattice-constant"), "controlled")
            + both(_summary(f"{decay}/e8z_gl_lattice"), "controlled")
        ),
        "E8^3 ⊕ Z^16 − Z^40, same step": (
            both(_seeds("e8z_gl_lattice"), "controlled")
            + both(_summary(f"{decay}/e8z_gl_lattice-vs-rect"), "controlled")
        ),
        "Z^40 − Gaussian-lattice +80, decaying": both(
            _summary(f"{decay}/rect_gl_lattice"), "controlled"
        ),
    }
    for label, values in expected.items():
        _numbers(GOOD, " | ".join(rows[label]), values)
    # the prose's reading of the table
    constant, decaying = (
        _paired(_seeds("e8z_gl_lattice"))["mean"],
        _paired(_summary(f"{decay}/e8z_gl_lattice"))["mean"],
    )
    text = _find(GOOD, _quote("The decaying step lowers E8^3 ⊕ Z^16 by # nats of IWAE"))
    _numbers(GOOD, text.replace("E8^3 ⊕ Z^16", ""), [constant - decaying])


def _proposals(name: str) -> dict:
    return _json(f"iwae-proposal-support/{name}")["rows"]


def _iwae(rows: dict, row: str, proposal: str) -> float:
    return rows[row]["proposals"][proposal]["iwae_nll"]


def _minus_reference(rows: dict, row: str, proposal: str) -> list[float]:
    m = rows[row]["minus_reference"][proposal]
    return [m["mean"], m["se"]]


@check
def proposal_tables_of_e8z():
    """'IWAE's proposal': the validation grid and the three-seed test table of E8^3 ⊕ Z^16."""
    grid = _proposals("val-grid-seed2021.json")
    rows = _table(GOOD, "proposal", "Gaussian-lattice +80", "E8^3 ⊕ Z^16")
    assert len(rows) == 6
    for row in rows:
        p = row[0]
        values = [
            _iwae(grid, "gaussian_gl_lattice", p),
            _iwae(grid, "e8z_gl_lattice", p),
            *_minus_reference(grid, "e8z_gl_lattice", p),
        ]
        _numbers(GOOD, " | ".join(row[1:]), values)
    summary = _json("iwae-proposal-support/summary.json")["rows"]
    rows = _table(GOOD, "proposal", "Gaussian-lattice start")
    assert [r[0] for r in rows] == ["own", "0.5:1", "0.5:1.4", "0.9:1"]
    for row in rows:
        p = row[0]
        values = [
            summary[r][p]["iwae_nll"]["mean"] for r in ("gaussian_lattice", "gaussian_gl_lattice")
        ]
        e8z = summary["e8z_gl_lattice"][p]
        values.append(e8z["iwae_nll"]["mean"])
        if p != "own":
            values += [e8z["minus_own"]["mean"], e8z["minus_own"]["sd"]]
        values += [e8z["minus_reference"]["mean"], e8z["minus_reference"]["sd"]]
        _numbers(GOOD, " | ".join(row[1:]), values)
    chosen = _json("iwae-proposal-support/summary.json")["minus_reference_chosen"]["e8z_gl_lattice"]
    own = summary["e8z_gl_lattice"]["own"]["minus_reference"]
    text = _find(
        GOOD,
        _quote(
            '("0.9:1": #, # and #) is **+# ± #** nats above the Gaussian-lattice VAE '
            'trained as long ("0.5:1.4": #, # and #; per seed +#, +#, +#), where the '
            "protocol's IWAE reads +# ± #"
        ),
    )
    values = [
        *summary["e8z_gl_lattice"]["0.9:1"]["iwae_nll"]["values"],
        chosen["mean"],
        chosen["sd"],
        *summary["gaussian_gl_lattice"]["0.5:1.4"]["iwae_nll"]["values"],
        *chosen["values"],
        own["mean"],
        own["sd"],
    ]
    _numbers(GOOD, text.replace('"0.9:1"', "").replace('"0.5:1.4"', ""), values)


@check
def proposal_tables_from_scratch():
    """The rectangular pairs, Table 1's good-lattice rows from scratch and their summary."""
    e8z, rectgl, rect = (_proposals(f"test-{n}seed2021.json") for n in ("", "rectgl-", "rect-"))
    chosen = [
        _json(f"iwae-proposal-support/{n}.json")["minus_reference_chosen"]
        for n in ("summary", "summary-rectgl", "summary-rect")
    ]
    rows = _table(GOOD, "pair (seed 2021)")
    expected = [
        [
            *_minus_reference(e8z, "e8z_gl_lattice", "own"),
            *_minus_reference(e8z, "e8z_gl_lattice", "0.9:1"),
        ],
        [
            *_minus_reference(rectgl, "rect_gl_lattice", "own"),
            *_minus_reference(rectgl, "rect_gl_lattice", "0.9:1"),
        ],
        [
            *_minus_reference(rect, "rect_lattice", "own"),
            *_minus_reference(rect, "rect_lattice", "0.9:1"),
        ],
    ]
    choices = [
        chosen[0]["e8z_gl_lattice"]["values"][0],
        chosen[1]["rect_gl_lattice"]["mean"],
        chosen[2]["rect_lattice"]["mean"],
    ]
    for row, values, choice in zip(rows, expected, choices, strict=True):
        _numbers(GOOD, " | ".join(row[1:]), [*values, choice])
    leech, e8 = (
        _proposals("test-leech-scratch-seed2021.json"),
        _proposals("test-e8-scratch-seed2021.json"),
    )
    rows = _table(GOOD, "proposal (seed 2021)", "Gaussian-lattice VAE")
    for row in rows[:-1]:
        p = row[0]
        values = [
            _iwae(leech, "gaussian_lattice", p),
            _iwae(leech, "leech_lattice", p),
            _iwae(e8, "e8_lattice", p),
            *_minus_reference(leech, "leech_lattice", p),
            *_minus_reference(e8, "e8_lattice", p),
            _iwae(leech, "leech_lattice", p) - _iwae(rect, "rect_lattice", p),
            _iwae(e8, "e8_lattice", p) - _iwae(rect, "rect_lattice", p),
        ]
        _numbers(GOOD, " | ".join(row[1:]), values)
    scratch = _json("iwae-proposal-support/summary-scratch.json")
    compare, chosen = scratch["compare"], scratch["minus_reference_chosen"]
    last = rows[-1]
    values = [
        chosen["leech_lattice"]["values"][0],
        chosen["e8_lattice"]["values"][0],
        compare["leech_lattice − rect_lattice"]["chosen"]["values"][0],
        compare["e8_lattice − rect_lattice"]["chosen"]["values"][0],
    ]
    _numbers(GOOD, " | ".join(last[1:]), values)
    rows = {r[0]: r[1:] for r in _table(GOOD, "from scratch, seeds 2021 and 2022")}
    by_row = scratch["rows"]
    expected = {
        "rectangular − Gaussian-lattice VAE": (
            by_row["rect_lattice"]["own"],
            chosen["rect_lattice"],
        ),
        "E8^5 − Gaussian-lattice VAE": (by_row["e8_lattice"]["own"], chosen["e8_lattice"]),
        "Λ24 ⊕ Λ16 − Gaussian-lattice VAE": (
            by_row["leech_lattice"]["own"],
            chosen["leech_lattice"],
        ),
    }
    for label, (own, choice) in expected.items():
        m = own["minus_reference"]
        _numbers(GOOD, " | ".join(rows[label]), [m["mean"], m["sd"], choice["mean"], choice["sd"]])
    for label, key in (
        ("E8^5 − rectangular", "e8_lattice − rect_lattice"),
        ("Λ24 ⊕ Λ16 − rectangular", "leech_lattice − rect_lattice"),
        ("E8^5 − Λ24 ⊕ Λ16", "e8_lattice − leech_lattice"),
    ):
        c = compare[key]
        values = [c["own"]["mean"], c["own"]["sd"], c["chosen"]["mean"], c["chosen"]["sd"]]
        _numbers(GOOD, " | ".join(rows[label]), values)
    # the closing summary quotes the two-seed covering distances
    text = _find(GOOD, _quote("(E8^5 +# ± #, Λ24 ⊕ Λ16 +# ± #, two seeds each)"))
    values = [chosen[r][k] for r in ("e8_lattice", "leech_lattice") for k in ("mean", "sd")]
    _numbers(GOOD, text.replace("E8^5", ""), values)


@check
def proposal_tables_of_leech():
    """'Λ24 ⊕ Λ16, read the same way' and 'Z^40 at Λ24 ⊕ Λ16's schedule'."""
    grid = _proposals("val-grid-leech-seed2021.json")
    rows = _table(GOOD, "proposal", "Gaussian-lattice +40")
    assert len(rows) == 6
    for row in rows:
        p = row[0]
        values = [
            _iwae(grid, "gaussian_gl_lattice", p),
            _iwae(grid, "leech_gl_lattice", p),
            *_minus_reference(grid, "leech_gl_lattice", p),
        ]
        _numbers(GOOD, " | ".join(row[1:]), values)
    test = _proposals("test-leech-seed2021.json")
    rows = _table(GOOD, "proposal (seed 2021)", "Gaussian-lattice +40")
    for row in rows:
        p = row[0]
        values = [_iwae(test, "gaussian_gl_lattice", p), _iwae(test, "leech_gl_lattice", p)]
        if p != "own":
            values.append(test["leech_gl_lattice"]["proposals"][p]["minus_own"]["mean"])
        values += _minus_reference(test, "leech_gl_lattice", p)
        _numbers(GOOD, " | ".join(row[1:]), values)
    summary = _json("iwae-proposal-support/summary-leech.json")
    chosen = summary["minus_reference_chosen"]["leech_gl_lattice"]
    own = summary["rows"]["leech_gl_lattice"]["own"]["minus_reference"]
    text = _find(
        GOOD,
        _quote(
            "summary-leech.json`): **+# ± #** under covering proposals, +# ± # under the protocol's"
        ),
    )
    text = text.split("`): ", 1)[1]
    _numbers(GOOD, text, [chosen["mean"], chosen["sd"], own["mean"], own["sd"]])
    rect40 = _json("iwae-proposal-support/summary-rect40.json")
    rows = _table(GOOD, "seed", "Z^40 − Gaussian-lattice +40, own proposals")
    own_minus, choice_minus = [], []
    for row in rows[:2]:
        s = row[0]
        z = _proposals(f"test-rect40-seed{s}.json")
        leech = _proposals(f"test-leech-seed{s}.json")
        own_minus.append(
            _iwae(leech, "leech_gl_lattice", "own") - _iwae(z, "rect_gl_lattice", "own")
        )
        choice_minus.append(
            _iwae(leech, "leech_gl_lattice", "0.5:1.4") - _iwae(z, "rect_gl_lattice", "0.9:1")
        )
        i = rows.index(row)
        values = [
            *_minus_reference(z, "rect_gl_lattice", "own"),
            rect40["minus_reference_chosen"]["rect_gl_lattice"]["values"][i],
            own_minus[-1],
            choice_minus[-1],
        ]
        _numbers(GOOD, " | ".join(row[1:]), values)
    own = rect40["rows"]["rect_gl_lattice"]["own"]["minus_reference"]
    chosen = rect40["minus_reference_chosen"]["rect_gl_lattice"]
    values = [
        own["mean"],
        own["sd"],
        chosen["mean"],
        chosen["sd"],
        *_mean_sd(own_minus),
        *_mean_sd(choice_minus),
    ]
    _numbers(GOOD, " | ".join(rows[2][1:]), values)


@check
def plugin_table():
    """'The cell's cost where the Gaussian-lattice VAE ends': the plug-in table."""
    plugin = _json("lattice-plugin.json")
    rows_json = {
        r["layout"]: r for r in plugin["rows"] + _json("lattice-plugin-leech.json")["rows"]
    }
    rows = _table(GOOD, "noise", "−ELBO", "− Gaussian-lattice (paired)")
    gl = plugin["gaussian_lattice"]
    _numbers(GOOD, " | ".join(rows[0][1:]), [gl["negative_elbo"], gl["negative_elbo_se"]])
    for row in rows[1:]:
        layout = row[0].split(" (")[0]
        r = rows_json[layout]
        values = [r["negative_elbo"], r["minus_gaussian_lattice"], r["minus_gaussian_lattice_se"]]
        values.append(r["ideal_lattice_gap_theory"])
        if row[4] != "exact":
            bias = r["rate_minus_larger_counts"]
            values += [bias["mean"], bias["se"]]
        _numbers(GOOD, " | ".join(row[1:]), values)


@check
def gaussian_lattice_start_rows_table():
    """'Good-lattice rows started from the Gaussian-lattice VAE': the one-seed table."""
    start = _json("lattice-mnist-long/gaussian_lattice/lattice-mnist.json")["models"][
        "gaussian_lattice"
    ]
    table1 = _table1("gaussian_lattice")
    plugin = {r["layout"]: r for r in _json("lattice-plugin.json")["rows"]}
    rows = _table(GOOD, "row", "epochs (best)")
    layouts = {
        "e8_gl_lattice": "E8^5",
        "leechz_gl_lattice": "Λ24 ⊕ Z^16",
        "leeche8_gl_lattice": "Λ24 ⊕ E8^2",
    }
    for row in rows:
        name = re.search(r"`(\w+)`", row[0]).group(1)
        m = _table1(name)
        assert [int(x) for x in re.findall(r"\d+", row[1])] == [m["epochs"], m["best_epoch"]], row
        bias = m["log_density_bias"]["train"]
        values = [
            m["test_nll_iwae1000"],
            m["test_nll_iwae_se"],
            m["test_neg_elbo"],
            m["test_codelength_hard"],
            m["test_nll_iwae1000"] - start["test_nll_iwae1000"],
            m["test_neg_elbo"] - start["test_neg_elbo"],
            m["test_nll_iwae1000"] - table1["test_nll_iwae1000"],
            plugin[layouts[name]]["minus_gaussian_lattice"],
            _json("lattice-mnist.json")["theoretical_gaps_nats"][name],
            bias["bias_nats"],
            bias["bias_se"],
        ]
        _numbers(GOOD, " | ".join(row[2:]), values)


@check
def rectangular_controls_table():
    """'Rectangular controls': each cell against Z^40 of the same start and prior."""
    rows = _table(GOOD, "cell", "start and prior")
    controls = {}
    for row in rows:
        name = re.search(r"`(\w+)`", row[0]).group(1)
        m = _table1(name)
        values = [m["test_nll_iwae1000"], m["test_nll_iwae_se"], m["test_neg_elbo"]]
        if name.startswith("rect_"):
            controls[row[1]] = m
            _numbers(GOOD, " | ".join(row[2:4]), values)
            continue
        control = controls[row[1]]
        # the paired IWAE difference's mean is the difference of the means; its ± is per image
        # (the per-image chunks are not committed: allow 0.006 for the per-image means' rounding)
        iwae_diff = float(md.plain(NUMBER.findall(row[4])[0]))
        assert abs(iwae_diff - (m["test_nll_iwae1000"] - control["test_nll_iwae1000"])) < 0.006, row
        values += [m["test_neg_elbo"] - control["test_neg_elbo"], _gain_over_z40(name)]
        cells = " | ".join([row[2], row[3], row[4].split("/")[1], row[5]])
        _numbers(GOOD, cells, values)


@check
def tilted_leech_counts_table():
    """'What the Leech row's small counts cost its numbers': the bias and IWAE by counts."""
    rows_json = _json("trained-log-density-bias.json")["rows"]
    rows = _table(GOOD, "counts", "bias, plain (as IWAE uses it)")
    assert len(rows) == len(rows_json)
    for row, r in zip(rows, rows_json, strict=True):
        assert [int(x) for x in re.findall(r"\d+", row[0])] == r["samples"], row
        values = [
            r["plain_bias_nats"],
            r["plain_bias_se"],
            r["debiased_bias_nats"],
            r["debiased_bias_se"],
        ]
        values.append(r["iwae1000_nll"])
        if row[4] != "–":
            values += [r["iwae1000_minus_first"], r["iwae1000_minus_first_se"]]
        _numbers(GOOD, " | ".join(row[1:5]), values)
        assert int(row[5].split()[0]) == round(r["iwae_wall_s"]), row


@check
def long_run_and_gain_vs_rate():
    """'Not a low-rate effect' and 'Not the epoch cap': the figures quoted from their files."""
    gaps = {
        k: v["high_rate_gap_per_40"]
        for k, v in _json("lattice-gain-vs-rate.json")["lattices"].items()
    }
    text = _find(GOOD, _quote("(Z #, A2 #, D4 #, E8 #, Λ16 #, Λ24 #)"))
    names = ("z", "a2", "d4", "e8", "bw16", "leech")
    _numbers(GOOD, re.sub(r"A2|D4|E8|Λ16|Λ24", "", text), [gaps[n] for n in names])
    long = {
        r: _json(f"lattice-mnist-long/{r}/lattice-mnist.json")["models"][r]
        for r in ("rect_lattice", "e8z_lattice", "gaussian_lattice")
    }
    curves = {
        r: [
            x["val_distortion"] + x["val_rate"]
            for x in map(json.loads, (RESULTS / f"lattice-mnist-long/{r}.jsonl").open())
        ]
        for r in long
    }
    text = _find(GOOD, _quote("(validation −ELBO from epoch 100 to 140: −# against −# nats)"))
    drops = [curves[r][139] - curves[r][99] for r in ("rect_lattice", "e8z_lattice")]
    _numbers(GOOD, text.replace("100", "").replace("140", ""), drops)
    iwae = {r: m["test_nll_iwae1000"] for r, m in long.items()}
    text = _find(
        GOOD,
        _quote(
            "gap stays # nats (# against #) and E8^3 ⊕ Z^16's is # (# at the cap): it ends "
            "level with the rectangular lattice, # nats below it in IWAE"
        ),
    )
    cap = {r: _table1(r)["test_nll_iwae1000"] for r in long}
    values = [
        iwae["rect_lattice"] - iwae["gaussian_lattice"],
        iwae["rect_lattice"] - iwae["gaussian_lattice"],
        cap["rect_lattice"] - cap["gaussian_lattice"],
        iwae["e8z_lattice"] - iwae["gaussian_lattice"],
        cap["e8z_lattice"] - cap["gaussian_lattice"],
        iwae["rect_lattice"] - iwae["e8z_lattice"],
    ]
    _numbers(GOOD, text.replace("E8^3 ⊕ Z^16", ""), values)


@check
def e8z_tied_epoch_time():
    """The tied E8^3 ⊕ Z^16 row's training time per epoch."""
    m = _table1("e8z_tied_lattice")
    text = _find(GOOD, _quote("about # s per epoch on one thread, stopped and resumed"))
    _COMPARED.append((GOOD, text))
    assert int(re.search(r"\d+", text).group()) == round(m["wall_s"] / m["epochs"], -1), text


# --- docs/good-lattice-speed.md -----------------------------------------------------------------


def _geometry(name: str) -> dict:
    return _json(name)


@check
def leech_decoder_ab_table():
    """'The sextet decoder's passes': the A/B table."""
    runs = [
        _geometry(f"lattice-geometry-leech-ab/{s}.json")
        for s in ("before-1", "before-2", "after-1", "after-2")
    ]
    rows = _table(SPEED, "case", "before (`e01ffa2`)")
    cases = [
        ("closest_point", "leech", 1e3),
        ("closest_point", "leech, torch.compile", 1e3),
        ("training_step_ms", "Leech decodes: 800 (prior-draw membership)", None),
        ("training_step_ms", "Leech decodes: 800, torch.compile", None),
        ("training_step_ms", "step: leech_lattice", None),
    ]
    assert len(rows) == len(cases)
    for row, (part, key, scale) in zip(rows, cases, strict=True):
        values = []
        for run in runs:
            v = run[part][key]
            values.append(v["rows_per_s"] / scale if scale else v)
        if scale:  # "60 k, 56 k": whole thousands
            shown = [int(x) for x in re.findall(r"(\d+) k", " ".join(row[1:]))]
            _COMPARED.append((SPEED, " | ".join(row[1:])))
            assert shown == [round(v) for v in values], (row, values)
        else:
            _numbers(SPEED, " | ".join(row[1:]), values)


@check
def training_step_table():
    """'Where a Table-1 training step's time goes': this recording and the AMD one."""
    now = _geometry("lattice-geometry.json")["training_step_ms"]
    rows = _table(SPEED, "case", "ms")
    for row in rows:
        key = row[0]
        values = [now[key]]
        # the parenthesized values are the recording at 76c370b (in git history, not checked)
        _numbers(SPEED, row[1].split(" (")[0], values)


@check
def small_decoders_in_chunks():
    """'The small decoders in chunks': the two A/Bs through `qlatent bench lattices`."""

    def rates(ab: str, name: str, scale: float) -> list[float]:
        """Each tree's fastest and slowest of its three processes, in ``scale`` rows/s."""
        out = []
        for tree in ("before", "after"):
            runs = [_json(f"{ab}/{tree}-{i}.json")["closest_point"][name] for i in (1, 2, 3)]
            out += [
                min(r["rows_per_s"] for r in runs) / scale,
                max(r["rows_per_s"] for r in runs) / scale,
            ]
        return out

    e8 = "lattice-geometry-e8-chunk-ab"
    text = _find(
        SPEED, _quote("E8 #–# k → #–# k rows/s, with the unchanged D4 decoder at #–# M and #–# M")
    )
    _COMPARED.append((SPEED, text))
    shown = _all_numbers(text[2:].split("rows/s")[0])
    expected = [*rates(e8, "e8", 1e3), *rates(e8, "d4", 1e6)]
    assert [round(x) for x in shown[:4]] == [round(x) for x in expected[:4]], (text, expected)
    _numbers(SPEED, " ".join(NUMBER.findall(text)), expected[4:])
    small = "lattice-geometry-small-chunk-ab"
    text = _find(SPEED, _quote("then A2 #–# k → #–# k, D3* #–# M → #–# M"))
    _COMPARED.append((SPEED, text))
    shown = _all_numbers(text.split(", D3*")[0][len("then A2") :])
    assert [round(x) for x in shown] == [round(x) for x in rates(small, "a2", 1e3)], text
    _numbers(SPEED, text.split("D3*")[1], rates(small, "d3*", 1e6))
    before = [
        _json(f"{small}/before-{i}.json")["closest_point"]["d4"]["rows_per_s"] / 1e6
        for i in (1, 2, 3)
    ]
    text = _find(SPEED, _quote("D4 #, # and # M → #–# M"))
    _numbers(SPEED, text[2:], [*before, *rates(small, "d4", 1e6)[2:]])


@check
def density_layout_ab_table():
    """'The rows as configured today': the A/B of the density laid out samples-last."""
    rows = _table(SPEED, "step", "before", "after")
    keys = {
        "e8z_lattice": "step: e8z_lattice (configs/lattice-mnist)",
        "e8_debias_lattice": "step: e8_debias_lattice (configs/lattice-mnist)",
        "leech_tilted_lattice": "step: leech_tilted_lattice (configs/lattice-mnist)",
        "rect_lattice": "step: rect_lattice",
    }
    for row in rows:
        key = keys[row[0].split()[0]]
        values = [
            _geometry(f"bench-good-lattice-ab/{s}-{i}.json")["training_step_ms"][key]
            for s in ("before", "after")
            for i in (1, 2)
        ]
        _numbers(SPEED, " | ".join(row[1:]), values)


# --- docs/benchmarks-in-detail.md ---------------------------------------------------------------


def _scaling(name: str, case: str, *, dim: int | None = 64, rows: int | None = None) -> list[dict]:
    out = []
    for x in _json(name)["scaling"]:
        if (
            x["case"].startswith(case)
            and (dim is None or x["dim"] == dim)
            and (rows is None or x["rows"] == rows)
        ):
            out.append(x)
    return out


@check
def two_factors_scaling_table():
    """'Linear cost in the input size': the four trees' train-path scaling, three runs each."""
    rows = _table(BENCH, "tree", "train path 16k → 1M rows (M rows/s)")
    folders = ["above-4-blocks/before", "above-4-blocks/after", "always/before", "always/after"]
    for row, folder in zip(rows, folders, strict=True):
        train, worst, hard = [], [], []
        for i in (1, 2, 3):
            name = f"bench-lattice-scaling-ab-two-factors/{folder}-{i}.json"
            t = [x["rows_per_s"] / 1e6 for x in _scaling(name, "train path")]
            h = [x["rows_per_s"] / 1e6 for x in _scaling(name, "hard path")]
            train += [t[0], t[-1]]
            worst.append(min(t) / max(t) - 1)
            hard.append(min(h) / max(h) - 1)
        _numbers(BENCH, row[1], train)
        for cell, values in ((row[2], worst), (row[3], hard)):
            shown = [int(x) for x in re.findall(r"−(\d+)%", cell)]
            _COMPARED.append((BENCH, cell))
            assert shown == [round(-100 * v) for v in values], (row[0], cell, values)


@check
def interleaved_allocator_table():
    """'The allocator, not the code': the interleaved scaling under the two allocators."""
    rows = _table(BENCH, "allocator", "train path, forward + backward")
    for row in rows:
        name = (
            "bench-lattice-scaling-interleaved/"
            + re.search(r"`([\w-]+)`", row[0]).group(1)
            + ".json"
        )
        spread = _json(name)["spread"]
        values = []
        for case in ("train path", "hard path"):
            values += [x["rows_per_s"] / 1e6 for x in _scaling(name, case)]
            s = spread["train path, forward + backward" if case == "train path" else case]
            values += [s["over_rows"], s["over_dims"]]
        _numbers(BENCH, " | ".join(row[1:]), values)


@check
def good_lattice_scaling_tables():
    """'The good lattices' block sums': the two A/Bs of E8^k's values per second by width."""
    for nth, folder in enumerate(("bench-good-lattice-scaling-ab", "bench-good-lattice-layout-ab")):
        rows = _table(BENCH, "E8 blocks (dim) at 256 rows", nth=nth)
        for row in rows:
            path, when = row[0].rsplit(", ", 1)
            case = "train path" if path == "training path" else "hard path"
            values = []
            for dim in (64, 256, 1024, 4096):
                for i in (1, 2):
                    found = _scaling(f"{folder}/{when}-{i}.json", case, dim=dim, rows=256)
                    assert len(found) == 1
                    values.append(found[0]["values_per_s"] / 1e6)
            key = "train path, forward + backward" if case == "train path" else case
            values += [
                _json(f"{folder}/{when}-{i}.json")["spread"][key]["over_dims"] for i in (1, 2)
            ]
            _numbers(BENCH, " | ".join(row[1:]), values)


@check
def laplace_sums_spread_ab():
    """'The Laplace sums' backward without a copy': the step medians before and after."""
    text = _find(BENCH, _quote("`e8_lattice` #, #, # → #, #, # ms"))
    values = [
        _json(f"good-lattice-step-ab-spread/e8_lattice-{s}-{i}.json")["step_ms_median"]
        for s in ("before", "after")
        for i in (1, 2, 3)
    ]
    _numbers(BENCH, text.replace("e8_lattice", ""), values)


def _quantizers(name: str) -> dict:
    return {(r["name"], r["mode"]): r["rows_per_s"] / 1e3 for r in _json(name)["results"]}


@check
def quantizer_ab_tables():
    """The packed and the weighted first-minimum A/Bs and the huge-page table, k rows/s."""
    keys = {
        "`vq[K=128]` eval": ("vq[K=128]", "eval"),
        "`vq[K=512]` eval": ("vq[K=512]", "eval"),
        "`vq[K=4096]` eval": ("vq[K=4096]", "eval"),
        "`vq[K=128]` train": ("vq[K=128]", "train"),
        "`VectorQuantize[K=128]` eval (same code)": ("VectorQuantize[K=128]", "eval"),
        "`addmm + argmin[K=512]` (floor, same code)": ("addmm + argmin[K=512]", None),
    }
    folder = "bench-quantizers-ab-packed"
    columns = [
        [f"{folder}/old-{i}.json" for i in (1, 2, 3, 4)],
        [f"{folder}/new-{i}.json" for i in (1, 2, 3, 4)],
        [f"{folder}/full-repeat.json"],
    ]
    for row in _table(BENCH, "case", "old (4 processes)"):
        key = keys[row[0]]
        for cell, files in zip(row[1:], columns, strict=True):
            values = [_quantizers(f)[key] for f in files]
            shown = [int(x.replace(",", "")) for x in re.findall(r"[\d,]+", cell)]
            # the first full run is the recording at 3d33cde (since replaced, in git history)
            shown = shown[1:] if len(files) == 1 else shown
            _COMPARED.append((BENCH, cell))
            assert shown == [round(v) for v in values], (row[0], cell, values)
    folder = "bench-quantizers-ab-weighted"
    for row in _table(BENCH, "case", "packed (`6db939d`)"):
        key = keys[row[0]]
        for cell, when in zip(row[1:], ("before", "after"), strict=True):
            values = [_quantizers(f"{folder}/{when}-{i}.json")[key] for i in (1, 2, 3)]
            shown = [int(x.replace(",", "")) for x in re.findall(r"[\d,]+", cell)]
            _COMPARED.append((BENCH, cell))
            assert shown == [round(v) for v in values], (row[0], cell, values)


@check
def vq_over_vector_quantize_latest():
    """`VectorQuantize`'s time over `vq`'s and over the fastest bare search, latest recording."""
    q = _quantizers("bench-quantizers.json")
    peer = q[("VectorQuantize[K=128]", "eval")]
    text = _find(
        BENCH, _quote("`VectorQuantize` there takes #× `vq`'s time and only #× that of the fastest")
    )
    values = [q[("vq[K=128]", "eval")] / peer, q[("addmm + min(1).indices[K=128]", None)] / peer]
    _numbers(BENCH, text, values)


# --- docs/coding-mnist-in-detail.md -------------------------------------------------------------


@check
def rate_control_table():
    """'Rate control': the files of the two sweeps and each read at the other's likelihood."""
    rows_json = _json("coding-mnist-rate-control/coding-mnist.json")["rows"]
    sweeps = {n: rows_json[n]["rate_control"] for n in ("rect_lattice", "e8z_lattice")}

    def point(name: str, factor: float) -> dict:
        return next(p for p in sweeps[name] if p["factor"] == factor)

    def read(name: str, nats: float) -> float:
        """The sweep's file size at ``nats``, linear between the two bracketing factors."""
        pts = sorted(
            (p["hard_distortion_nats_per_image"], p["coded_bits_per_image"]) for p in sweeps[name]
        )
        for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
            if x0 <= nats <= x1:
                return y0 + (y1 - y0) * (nats - x0) / (x1 - x0)
        raise AssertionError(f"{nats} outside the sweep of {name}")

    rows = _table(CODING, "file", "bits per image")
    assert len(rows) == 5
    for row, (name, factor) in zip(
        rows[:3], (("rect_lattice", 1.0), ("e8z_lattice", 1.0), ("e8z_lattice", 1.01)), strict=True
    ):
        p = point(name, factor)
        values = [
            p["coded_bits_per_image"],
            p["hard_distortion_nats_per_image"],
            p["hard_distortion_se"],
            p["total_nats_per_image"],
        ]
        _numbers(CODING, " | ".join(row[1:]), values)
    rect_nats = point("rect_lattice", 1.0)["hard_distortion_nats_per_image"]
    e8z_nats = point("e8z_lattice", 1.0)["hard_distortion_nats_per_image"]
    at_rect, at_e8z = read("e8z_lattice", rect_nats), read("rect_lattice", e8z_nats)
    reference = rows_json["e8z_lattice"]["rate_control_at_reference"]
    assert abs(reference["bits_per_image"] - at_rect) < 1e-9
    assert abs(reference["reference_bits_at_own_distortion"] - at_e8z) < 1e-9
    _numbers(CODING, " | ".join(rows[3][1:3]), [at_rect, rect_nats])
    _numbers(CODING, " | ".join(rows[4][1:3]), [at_e8z, e8z_nats])
    rect_bits = point("rect_lattice", 1.0)["coded_bits_per_image"]
    text = _find(
        CODING,
        _quote(
            "**# bits per image smaller (#%)**, and at E8's own point the rectangular file "
            "would be # bits larger"
        ),
    )
    e8z_bits = point("e8z_lattice", 1.0)["coded_bits_per_image"]
    values = [rect_bits - at_rect, 100 * (rect_bits - at_rect) / rect_bits, at_e8z - e8z_bits]
    _numbers(CODING, text, values)


@check
def leech_block_coding_throughput():
    """The Gaussian-prior rows' throughput with a Leech block (M symbols/s, encode / decode)."""
    rows = _json("coding-mnist.json")["rows"]
    leech = [rows[n] for n in ("leechz_gl_lattice", "leechz_gauss_lattice")]
    text = _find(CODING, _quote("#–# / #–# with a Leech block"))
    enc = [r["encode_symbols_per_s"] / 1e6 for r in leech]
    dec = [r["decode_symbols_per_s"] / 1e6 for r in leech]
    _numbers(CODING, text, [min(enc), max(enc), min(dec), max(dec)])


# --- running them --------------------------------------------------------------------------------


@pytest.mark.parametrize("check_", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_the_docs_quote_their_results_files(check_):
    check_()


def _perturbed(text: str, number: str) -> str:
    """``text`` with every standalone occurrence of ``number`` changed in its last digit."""
    last = int(number[-1])
    other = number[:-1] + str((last + 3) % 10)
    pattern = r"(?<![\d.])" + re.escape(number) + r"(?![\d])"
    changed, count = re.subn(pattern, other, text)
    assert count, number
    return changed


@pytest.mark.parametrize("check_", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_every_check_can_fail(check_):
    """A changed figure in the text the check compares makes the check fail."""
    _COMPARED.clear()
    check_()
    doc, text = _COMPARED[0]
    number = (NUMBER.findall(text) or re.findall(r"\d+", text))[0].lstrip("+−-")
    _OVERRIDE[doc] = _perturbed(_file_text(doc), number)
    try:
        with pytest.raises((AssertionError, KeyError, StopIteration)):
            check_()
    finally:
        _OVERRIDE.clear()
        _COMPARED.clear()


def test_the_number_reader_reads_signs_and_rounding():
    assert md.agrees("−2.14", -2.1406) and not md.agrees("−2.14", 2.1406)
    assert md.agrees("+3.08", 3.0847) and not md.agrees("+3.08", 3.0851)
    assert md.agrees("1,396", 1396.2) and not md.agrees("5.37", 5.3752)
    assert NUMBER.findall("+2.46 ± 0.07 (−1.66)") == ["+2.46", "0.07", "−1.66"]
