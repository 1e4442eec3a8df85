"""STYLE.md: "Files stay readable in one sitting (≈400 lines), functions in one screen (≈80 lines)".

Every module under ``src/qlatent`` is held to :data:`MAX_MODULE_LINES` lines and every function
or method in it to :data:`MAX_FUNCTION_LINES` lines of code, its docstring not counted (a
function's docstring is where the paper, the shapes and the reasons go, and cutting it to fit
would lose them). The limits leave room around STYLE.md's figures; a module or a function past
them is cut by concern, as the others were.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qlatent

SRC = Path(qlatent.__file__).parent

#: the most lines a module may have (STYLE.md: ≈400)
MAX_MODULE_LINES = 500
#: the most lines of code a function may have, its docstring not counted (STYLE.md: ≈80)
MAX_FUNCTION_LINES = 80


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` (decorators not counted) to the function's end, less its docstring's."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            lines -= first.end_lineno - first.lineno + 1
    return lines


def _oversized(src: Path = SRC) -> list[str]:
    """``file: N lines`` for every module of ``src`` past :data:`MAX_MODULE_LINES` and
    ``file:line name: N lines of code`` for every function past :data:`MAX_FUNCTION_LINES`."""
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        text = path.read_text(encoding="utf-8")
        if (count := len(text.splitlines())) > MAX_MODULE_LINES:
            found.append(f"{rel}: {count} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (count := _code_lines(node)) > MAX_FUNCTION_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name}: {count} lines of code")
    return found


def test_modules_and_functions_stay_within_the_style_guides_sizes():
    assert _oversized() == []


def test_the_check_finds_a_long_module_and_a_long_function_but_not_a_long_docstring(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    docstring = '    """' + "\n".join(["Words."] * 200) + '"""'
    (tmp_path / "long_body.py").write_text(f"def f():\n{body}\n")
    (tmp_path / "long_doc.py").write_text(f"def g():\n{docstring}\n    return 1\n")
    (tmp_path / "fits.py").write_text(f"def h():\n{body[: body.rindex(chr(10))]}\n")
    (tmp_path / "long_module.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert _oversized(tmp_path) == [
        f"long_body.py:1 f: {MAX_FUNCTION_LINES + 1} lines of code",
        f"long_module.py: {MAX_MODULE_LINES + 1} lines",
    ]
