"""Reading markdown tables and the numbers written in them, for the tests that check the
README's and docs' figures against ``results/`` (``test_readme_numbers.py``,
``test_docs_numbers.py``)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"

#: a number written with a decimal point (U+2212 minus, thousands commas)
NUMBER = re.compile(r"[−+-]?\d[\d,]*\.\d+")


@cache
def results_json(name: str) -> dict:
    """``results/<name>`` parsed (read once)."""
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def cells(line: str) -> list[str]:
    """The cells of one markdown table row (an escaped ``\\|`` stays inside its cell)."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    return [p.strip() for p in parts[1:-1]]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table of ``text``: (header cells, body rows of cells), in order."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.fullmatch(r"\s*\|[-| :]+\|\s*", lines[i + 1]):
            header, rows, j = cells(lines[i]), [], i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append(cells(lines[j]))
                j += 1
            found.append((header, rows))
            i = j
        else:
            i += 1
    return found


def plain(number: str) -> str:
    """A written number as Python reads it (ASCII minus, no commas, no leading +)."""
    return number.replace("−", "-").replace(",", "").lstrip("+")


def shown(value: float, like: str) -> str:
    """``value`` written with as many decimals as the text ``like``."""
    decimals = len(like.split(".")[1]) if "." in like else 0
    return f"{value:.{decimals}f}"


def agrees(written: str, value: float) -> bool:
    """Whether the number ``written`` is ``value`` at the rounding it shows."""
    return float(plain(written)) == float(shown(value, plain(written)))
