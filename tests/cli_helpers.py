"""What the command-line tests share: run ``qlatent`` in-process and read its error."""

from __future__ import annotations


def run_cli(args, capsys) -> tuple[int, str]:
    """``qlatent ARGS`` through :func:`qlatent.cli.main` (arguments made strings): its exit code
    and what it wrote to stderr (output captured before the call is dropped)."""
    from qlatent.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line_error(err: str) -> bool:
    """Whether ``err`` is exactly one ``qlatent: error: …`` line."""
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("qlatent: error:")
