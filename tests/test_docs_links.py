"""The links of README.md and docs/*.md lead somewhere: every relative target exists, every
``#anchor`` is a heading of its target (GitHub's anchors), every reference link is defined; and
the README's "Hostile input and edge cases" lists every topic of the document it summarizes."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
HOSTILE = ROOT / "docs" / "hostile-input-and-edge-cases.md"

_FENCE = re.compile(r"^```.*?^```[^\n]*$", flags=re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[([^\]]*)\]\(([^()\s]*)\)")
_REFERENCE = re.compile(r"\[([^\]]+)\]\[([^\]]*)\]")
_DEFINITION = re.compile(r"^\[([^\]]+)\]:[ \t]*(\S+)", flags=re.M)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", flags=re.M)


def _unfenced(text: str) -> str:
    """``text`` without its fenced blocks (a ``# comment`` in a block is no heading)."""
    return _FENCE.sub(lambda m: "\n" * m.group().count("\n"), text)


def _prose(text: str) -> str:
    """``text`` without its fenced blocks and with each code span's content blanked
    (``a[i](x)`` in a span is no link)."""
    return _CODE_SPAN.sub("`code`", _unfenced(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lower case, every character but
    letters, digits, ``_``, ``-`` and spaces dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors GitHub gives the headings of ``path`` (a repeated one gets -1, -2, …)."""
    seen: dict[str, int] = {}
    found = set()
    for m in _HEADING.finditer(_unfenced(path.read_text(encoding="utf-8"))):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def problems(path: Path) -> list[str]:
    """Every link of ``path`` that leads nowhere, as ``file: target (why)``."""
    text = _prose(path.read_text(encoding="utf-8"))
    defined = {label.lower(): target for label, target in _DEFINITION.findall(text)}
    targets = [target for _, target in _INLINE.findall(text)] + list(defined.values())
    found = []
    for label, ref in _REFERENCE.findall(text):
        if (ref or label).lower() not in defined:
            found.append(f"{path.name}: [{label}][{ref}] (no definition)")
    for target in targets:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            found.append(f"{path.name}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            found.append(f"{path.name}: {target} (no such heading)")
    return found


def test_the_anchors_are_githubs():
    assert slug("Good lattices: A2, D4, D_n*, E8, Barnes–Wall Λ16, Leech Λ24") == (
        "good-lattices-a2-d4-d_n-e8-barneswall-λ16-leech-λ24"
    )
    assert slug("Good lattices in Table 1: `--models e8_lattice,leech_lattice`") == (
        "good-lattices-in-table-1---models-e8_latticeleech_lattice"
    )


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# A title\n\n## A title\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Here\n\n```python\n# not a heading\n```\n"
        "[ok](other.md#a-title-1) [ok](#here) [ok][r] [web](https://example.org/x#y) `[a](b)`\n"
        "[gone](missing.md) [bad](other.md#nothing) [bad](#not-a-heading) [undefined][u]\n\n"
        "[r]: other.md\n"
    )
    assert problems(doc) == [
        "doc.md: [undefined][u] (no definition)",
        "doc.md: missing.md (no such file)",
        "doc.md: other.md#nothing (no such heading)",
        "doc.md: #not-a-heading (no such heading)",
    ]


def test_every_link_of_the_readme_and_docs_leads_somewhere():
    assert HOSTILE in DOCS
    assert sum(len(_INLINE.findall(p.read_text(encoding="utf-8"))) for p in DOCS) > 50
    broken = [problem for path in DOCS for problem in problems(path)]
    assert not broken, "\n".join(broken)


def _readme_section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _links_every_heading(section: str, doc: Path, fewest: int) -> None:
    """Every ``###`` heading of ``doc`` (at least ``fewest``) is linked from ``section``."""
    headings = re.findall(r"^### (.+?)\s*$", _unfenced(doc.read_text(encoding="utf-8")), re.M)
    assert len(headings) >= fewest, headings
    unlinked = [h for h in headings if f"(docs/{doc.name}#{slug(h)})" not in section]
    assert not unlinked, unlinked


def _links_headings(section: str, doc: Path, headings: tuple[str, ...]) -> None:
    """Each of ``headings`` is a heading of ``doc`` that ``section`` links to."""
    for heading in headings:
        assert slug(heading) in anchors(doc), heading
        assert f"(docs/{doc.name}#{slug(heading)})" in section, heading


def _moved(section: str, texts: tuple[tuple[str, Path], ...]) -> None:
    """Each text left ``section`` and stands in its document (white space aside)."""
    for text, doc in texts:
        assert text not in section, text
        assert text in " ".join(doc.read_text(encoding="utf-8").split()), text


def test_the_readme_lists_every_hostile_input_topic():
    """Each bold head of docs/hostile-input-and-edge-cases.md is a link to it in the README's
    section of that name, and the section stays a summary."""
    section = _readme_section("Hostile input and edge cases")
    assert len(section.splitlines()) <= 40
    defined = dict(_DEFINITION.findall(section))
    linked = {
        " ".join(label.split())
        for label, ref in _REFERENCE.findall(section)
        if defined.get(ref or label) == "docs/hostile-input-and-edge-cases.md"
    }
    heads = re.findall(r"^- \*\*(.+?)\.?\*\*", HOSTILE.read_text(encoding="utf-8"), flags=re.M)
    assert len(heads) > 30
    assert not [head for head in heads if head not in linked], linked


def test_the_readme_benchmarks_section_links_the_history_it_left():
    """The README's "Benchmarks" keeps the current recordings and where each goal stands; the
    earlier recordings, the full scaling table, how CompressAI is imported, the load readings,
    the compiled search and the GPU runs' detail are in docs/benchmarks-in-detail.md, under
    headings the section links to."""
    detail = ROOT / "docs" / "benchmarks-in-detail.md"
    section = _readme_section("Benchmarks")
    assert len(section.splitlines()) <= 200
    headings = (
        "Earlier recordings of `qlatent bench lattice`",
        "Earlier recordings of `qlatent bench quantizers`",
        "On a GPU: what the first runs found",
        "CompressAI in the same process",
        "The last scaling recording",
        "How the benchmarks read the machine's load",
        "The quantizer benchmark's other paths",
        "On a GPU: the last run in detail",
    )
    _links_headings(section, detail, headings)
    assert "The recording before" not in section
    moved = (
        "whose PyPI builds expect a CUDA torch",
        "| 1048576 × 64 | 1.38 M rows/s (88 M values/s) | 1.66 M rows/s (107 M values/s) |",
        "the runnable count of `/proc/loadavg`, median of 20 reads",
        "`qlatent.bottlenecks._codebook._first_nearest`",
        "95 kernel launches per training step",
    )
    _moved(section, tuple((text, detail) for text in moved))


def test_the_readme_bitstreams_section_links_the_detail_it_left():
    """The README's "Real bitstreams" keeps what can be coded and how, what a file holds and the
    recorded sizes and speeds; each code model's mathematics, the older container kinds and the
    earlier recordings are in docs/bitstreams-in-detail.md, under headings the section links to."""
    detail = ROOT / "docs" / "bitstreams-in-detail.md"
    section = _readme_section("Real bitstreams: the rate as a file")
    assert len(section.splitlines()) <= 240
    _links_every_heading(section, detail, fewest=12)
    moved = ("Z = Σ_c ½(1 + Π_j D_j^c)", "Hermite normal form", "| `run1` |")
    _moved(section, tuple((text, detail) for text in moved))


def test_the_readme_reproductions_section_links_the_detail_it_left():
    """The README's "Reproductions" keeps per paper table the command, the protocol, the tables,
    the figures and what is reached; the investigations behind the text-rd, Soft VQ-VAE and
    LL-VQ-VAE tables are in docs/reproductions-in-detail.md, under headings the section links
    to, and those behind the lattice tables in docs/good-lattices-in-table-1.md."""
    detail = ROOT / "docs" / "reproductions-in-detail.md"
    good = ROOT / "docs" / "good-lattices-in-table-1.md"
    section = _readme_section("Reproductions")
    assert len(section.splitlines()) <= 480
    _links_every_heading(section, detail, fewest=10)
    headings = (
        "Seed-to-seed spread",
        "The rectangular row's IWAE under a covering proposal",
        "Each row's codelength against its −ELBO",
        "The Gaussian-lattice starts, mean ± sd over seeds",
        "The lattice rows' IWAE bounds one cell",
    )
    _links_headings(section, good, headings)
    moved = (
        ("| run (seed 0) |", detail),
        ("| VQ-VAE-EMA, reference schedule |", detail),
        ("| row, seed | IWAE-1000 |", good),
        ("hard-path two-part codelength: 101.29 nats", good),
    )
    _moved(section, moved)


def test_the_readme_good_lattices_section_links_the_detail_it_left():
    """The README's "Good lattices" keeps the snippet, the names, the exactness, the rate in brief,
    the geometry table and the log-density bias in a summary; the decoders' internals, the
    proposals' mathematics and the full bias table are in docs/good-lattices-in-detail.md, and the
    speed recordings in docs/good-lattice-speed.md, under headings the section links to."""
    detail = ROOT / "docs" / "good-lattices-in-detail.md"
    speed = ROOT / "docs" / "good-lattice-speed.md"
    section = _readme_section("Good lattices: A2, D4, D_n*, E8, Barnes–Wall Λ16, Leech Λ24")
    assert len(section.splitlines()) <= 150
    assert "| lattice | n | G (Monte Carlo) | literature | difference |" in section
    assert "(docs/good-lattices-in-detail.md)" in _readme_section("Contents")
    _links_every_heading(section, detail, fewest=7)
    headings = (
        "Rectangular blocks in closed form",
        "Membership by the covering radius",
        "The recordings before the geometry table's",
    )
    _links_headings(section, speed, headings)
    moved = (
        ("min-plus products of six tetrad tables", detail),
        ("q_v(x) ∝ p(x)·exp(−‖x − v‖²/(2τ²))", detail),
        ("| Leech ⊕ BW16 | tilted | (256, 8) | 0.25 |", detail),
        ("−110, −51, 3, −108, −16", detail),
        ("E8^3 ⊕ Z^16 at those of `e8z_lattice` 20.0 ms against 37.7", speed),
        ("`Lattice.cell_bound`: E8 1, Λ16 √6, Λ24 4", speed),
    )
    _moved(section, moved)
