"""References by name land where they say: in README.md and docs/*.md a section quoted as
"above" or "below" is a heading or bold head of the same file on that side; every document in
docs/ opens by linking the README section it details; and a comment or docstring under src/ that
cites ``README, "Section"`` or ``docs/NAME.md, "Section"`` names a heading or bold head of that
file. Text moved from the README into docs/ kept pointers such as ``(above, "Benchmarks")`` that
no longer held."""

from __future__ import annotations

import re
from pathlib import Path

from test_docs_links import _HEADING, _unfenced, anchors

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DETAIL = sorted((ROOT / "docs").glob("*.md"))

_BOLD = re.compile(r"\*\*([^*]+?)\*\*")
_QUOTED = r"[\"“]([^\"”]{3,120})[\"”]"
_NAME_THEN_SIDE = re.compile(_QUOTED + r",?\s+(above|below)\b")
_SIDE_THEN_NAME = re.compile(r"\b(above|below)[,:]?\s+\(?" + _QUOTED)
_README_LINK = re.compile(r"\]\(\.\./README\.md#([^)\s]+)\)")
_CITATION = re.compile(r"(README|docs/[\w.-]+\.md),\s+\"([^\"]+)\"")


def _names(text: str) -> list[tuple[int, str]]:
    """Where each heading and bold head of ``text`` starts, with its words on one line."""
    found = [(m.start(), " ".join(m.group(1).split())) for m in _HEADING.finditer(text)]
    found += [(m.start(), " ".join(m.group(1).split()).rstrip(".:")) for m in _BOLD.finditer(text)]
    return found


def misplaced(name: str, text: str) -> list[str]:
    """Every ``"Section" above`` / ``below "Section"`` of ``text`` whose section is not a heading
    or bold head on that side of it in the same file (a quoted name that starts in lower case is
    notation, not a section)."""
    text = _unfenced(text)
    flat = text.replace("\n", " ")  # a quoted name may wrap; offsets stay those of ``text``
    heads = _names(text)
    found = []
    for pattern, name_first in ((_NAME_THEN_SIDE, True), (_SIDE_THEN_NAME, False)):
        for m in pattern.finditer(flat):
            quoted, side = (m.group(1), m.group(2)) if name_first else (m.group(2), m.group(1))
            quoted = " ".join(quoted.split())
            if not quoted[0].isupper():
                continue
            at = [pos for pos, head in heads if head.startswith(quoted)]
            if not any(pos < m.start() if side == "above" else pos > m.start() for pos in at):
                found.append(f"{name}: {quoted!r} {side}")
    return found


def citations(text: str) -> list[tuple[str, str]]:
    """The ``(file, section)`` pairs a source file cites, a citation wrapped over comment or
    docstring lines read as one."""
    flat = re.sub(r"\s*\n\s*(#\s*)?", " ", text)
    return _CITATION.findall(flat)


def test_the_checkers_find_misplaced_references():
    text = (
        "# Title\n\n## Speed\n\n**A bold head.** Text.\n\n"
        'As "Speed" above and "A bold head" above; "Later" below; notation "α:k" below.\n'
        'Wrong: (above, "Benchmarks"), "Later" above, "Speed"\nbelow.\n\n## Later\n'
    )
    assert misplaced("doc.md", text) == [
        "doc.md: 'Later' above",
        "doc.md: 'Speed' below",
        "doc.md: 'Benchmarks' above",
    ]
    source = '# the bias (README, "Log-density\n# bias") and (docs/a-b.md,\n    "Some section")\n'
    assert citations(source) == [("README", "Log-density bias"), ("docs/a-b.md", "Some section")]


def test_sections_named_above_or_below_are_there():
    found = [
        problem
        for path in (README, *DETAIL)
        for problem in misplaced(path.name, path.read_text(encoding="utf-8"))
    ]
    assert not found, "\n".join(found)


def test_every_detail_document_opens_with_a_link_to_its_readme_section():
    readme = anchors(README)
    assert len(DETAIL) >= 8
    for path in DETAIL:
        opening = path.read_text(encoding="utf-8").split("\n\n", 2)[1]
        linked = _README_LINK.findall(opening)
        assert linked, f"{path.name}: its opening paragraph links no README section"
        assert all(anchor in readme for anchor in linked), (path.name, linked)


def test_source_citations_name_a_section_of_the_file_they_cite():
    files = [p for p in (ROOT / "src" / "qlatent").rglob("*") if p.suffix in (".py", ".toml")]
    cited = [(path, pair) for path in files for pair in citations(path.read_text(encoding="utf-8"))]
    assert len(cited) >= 8
    wrong = []
    for path, (file, section) in cited:
        target = README if file == "README" else ROOT / file
        heads = [head for _, head in _names(_unfenced(target.read_text(encoding="utf-8")))]
        if not any(head.startswith(section) for head in heads):
            wrong.append(f"{path.relative_to(ROOT)}: {file}, {section!r}")
    assert not wrong, "\n".join(wrong)
