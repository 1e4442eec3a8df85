"""The commands README.md and docs/*.md quote parse with today's CLI and example scripts.

Every ``qlatent ...`` command in a code span or a shell code block is parsed by
:func:`qlatent.cli.build_parser` (never run); the rows named by ``reproduce --models`` and the
keys given by ``--set`` are checked as the command itself checks them. A quoted
``python examples/NAME.py`` must name a script that defines every option quoted, and a quoted
``examples/NAME.sh`` a script that exists.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

#: the fewest commands the documents must yield (a broken extraction finds none)
MIN_QLATENT = 100
MIN_SCRIPTS = 50

#: placeholders written in the documents, replaced by a value of the kind they stand for: a
#: whole argument, or the value of a ``--set key=PLACEHOLDER``
PLACEHOLDERS = {
    "CONFIG": "examples/folder-vq.toml",
    "PATH": "images",
    "DIR": "runs",
    "RUNS_DIR": "runs",
    "N": "2",
    "S": "1000",
    "C": "16384",
    "SEED": "2021",
    "α:k": "0.5:1.4",
}
#: a whole word ``…`` (or ``...``) stands for the value of the option before it, or else for
#: words left out (dropped); inside a word it is kept as text
ELLIPSES = {"…", "..."}
#: the value an ellipsis after an option stands for
ELLIPSIS_VALUE = "x"
#: placeholders for row names: each stands for the first row of the command's table
ROW_PLACEHOLDERS = {"ROW", "NAME", "LIST"}
#: ``<name>`` is read as the placeholder NAME (``<runs-dir>``: RUNS_DIR)
_ANGLED = re.compile(r"<([A-Za-z][\w-]*)>")

#: quoted commands that are not checked, each with its reason (the text as quoted, after
#: placeholders; the reason says why it cannot or need not parse today)
ALLOWED: dict[str, str] = {}

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_CONTROL = {"&&", "||", ";", ";;", "|", "&", "(", ")", "|&"}
_WRAPPERS = {"nohup", "time", "do", "then", "else", "exec", "env", "!"}
_SHELL_BLOCKS = {"", "bash", "sh", "console", "shell"}
_MENTION = re.compile(r"(?<![\w./-])qlatent\s+[a-z]")


@dataclass(frozen=True)
class Command:
    """One quoted command: where it is, its text, the program and its arguments."""

    where: str
    text: str
    program: str  # "qlatent", or the script's path relative to the repository
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _snippets(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each shell snippet of a markdown file: every logical line of a shell code
    block (continuation lines joined) and every inline code span (line breaks as spaces)."""
    lines = path.read_text().splitlines()
    out: list[tuple[int, str]] = []
    prose: list[str] = []
    fence: str | None = None
    pending: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence = stripped[3:].strip().lower()
            prose.append("")
            continue
        if fence is not None:
            prose.append("")
            if stripped.startswith("```"):
                fence = None
                continue
            if fence not in _SHELL_BLOCKS:
                continue
            start, before = pending or (number, "")
            text = f"{before} {stripped.removeprefix('$ ')}".strip()
            if text.endswith("\\"):
                pending = (start, text[:-1])
            else:
                pending = None
                out.append((start, text))
            continue
        prose.append(line)
    joined = "\n".join(prose)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        number = joined.count("\n", 0, match.start()) + 1
        out.append((number, " ".join(match.group(1).split())))
    return sorted(out)


def _tokens(text: str) -> list[str]:
    """The shell words and operators of ``text`` (a file descriptor before ``>`` dropped,
    ``<name>`` read as NAME)."""
    text = _ANGLED.sub(lambda m: m.group(1).upper().replace("-", "_"), text)
    text = re.sub(r"(?<=\s)\d+(?=>)", "", text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _segments(tokens: list[str]) -> list[list[str]]:
    """The simple commands of a token list: split at control operators, each cut at its first
    redirection."""
    out: list[list[str]] = [[]]
    for token in tokens:
        if token in _CONTROL:
            out.append([])
        else:
            out[-1].append(token)
    cut = []
    for seg in out:
        stop = next((i for i, t in enumerate(seg) if t[0] in "<>"), len(seg))
        cut.append(seg[:stop])
    return cut


def _command(words: list[str]) -> tuple[str, list[str]] | None:
    """(program, arguments) of one simple command, or None for a command of no interest."""
    while words and (_ASSIGNMENT.match(words[0]) or words[0] in _WRAPPERS):
        words = words[1:]
    if not words:
        return None
    head, rest = words[0], words[1:]
    if head == "qlatent" or head.endswith("/qlatent"):
        return "qlatent", rest
    if head in ("torchrun", "python", "python3") or head.endswith(("/python", "/python3")):
        if "-m" in rest and rest[rest.index("-m") + 1 : rest.index("-m") + 2] == ["qlatent"]:
            return "qlatent", rest[rest.index("-m") + 2 :]
        if head != "torchrun" and rest and _is_script(rest[0]):
            return rest[0].removeprefix("./"), rest[1:]
        return None
    if _is_script(head):
        return head.removeprefix("./"), rest
    return None


def _is_script(word: str) -> bool:
    return word.removeprefix("./").startswith("examples/") and word.endswith((".py", ".sh"))


def _substitute(argv: list[str]) -> tuple[str, ...]:
    """The arguments with placeholders replaced (:data:`PLACEHOLDERS`, :data:`ELLIPSES`) and the
    brackets of an optional part (``[--option value]``) removed."""
    out: list[str] = []
    optional = False
    for word in argv:
        if word.startswith("[-"):
            word, optional = word[1:], True
        if optional and word.endswith("]"):
            word, optional = word[:-1], False
        if word in ELLIPSES:
            if out and out[-1].startswith("-") and "=" not in out[-1]:
                out.append(ELLIPSIS_VALUE)
            continue
        key, eq, value = word.partition("=")
        if word in PLACEHOLDERS:
            word = PLACEHOLDERS[word]
        elif eq and value in PLACEHOLDERS:
            word = f"{key}={PLACEHOLDERS[value]}"
        out.append(word)
    return tuple(out)


@cache
def quoted_commands() -> tuple[tuple[Command, ...], tuple[str, ...]]:
    """Every command the documents quote, and every snippet that mentions a ``qlatent``
    command without yielding one."""
    commands: list[Command] = []
    unread: list[str] = []
    for path in DOCS:
        for number, text in _snippets(path):
            where = f"{path.relative_to(ROOT)}:{number}"
            try:
                tokens = _tokens(text)
            except ValueError as err:  # an unclosed quote: prose, unless it names a command
                if _MENTION.search(text):
                    unread.append(f"{where}: {text} ({err})")
                continue
            found = False
            for words in _segments(tokens):
                parsed = _command(words)
                if parsed is None:
                    continue
                program, argv = parsed
                found |= program == "qlatent"
                commands.append(Command(where, text, program, _substitute(argv)))
            if not found and _MENTION.search(text):
                unread.append(f"{where}: {text}")
    return tuple(commands), tuple(unread)


def _qlatent() -> list[Command]:
    return [c for c in quoted_commands()[0] if c.program == "qlatent"]


def _scripts() -> list[Command]:
    return [c for c in quoted_commands()[0] if c.program != "qlatent"]


def test_the_documents_quote_commands():
    assert len(_qlatent()) >= MIN_QLATENT, [str(c) for c in _qlatent()]
    assert len(_scripts()) >= MIN_SCRIPTS, [str(c) for c in _scripts()]


def test_every_mention_of_a_command_is_read():
    """A snippet that names ``qlatent <command>`` yields that command (no silent skip)."""
    assert not quoted_commands()[1]


def test_the_extraction_reads_shell_forms(tmp_path, monkeypatch):
    """Assignments, wrappers, redirections, pipes, ``$`` prompts, continuation lines, code
    spans over a line break and placeholders, on a made-up document."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Run `OMP_NUM_THREADS=1 nohup qlatent reproduce lattice-mnist --models ROW\n"
        "--set train.seed=SEED > log 2>&1 &` or `qlatent train --list | head -1`.\n"
        "```console\n"
        "$ qlatent eval <checkpoint> --iwae S \\\n"
        "    -o report.json && python examples/x.py --out … run ...\n"
        "```\n"
        "```python\nqlatent demo\n```\n"
    )
    monkeypatch.setitem(globals(), "DOCS", (doc,))
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    quoted_commands.cache_clear()
    try:
        commands, unread = quoted_commands()
    finally:
        quoted_commands.cache_clear()
    assert not unread
    assert [(c.where, c.program, c.argv) for c in commands] == [
        ("doc.md:1", "qlatent", ("reproduce", "lattice-mnist", "--models", "ROW", "--set",
                                 "train.seed=2021")),
        ("doc.md:2", "qlatent", ("train", "--list")),
        ("doc.md:4", "qlatent", ("eval", "CHECKPOINT", "--iwae", "1000", "-o", "report.json")),
        ("doc.md:4", "examples/x.py", ("--out", ELLIPSIS_VALUE, "run")),
    ]  # fmt: skip


def test_the_allow_list_is_used():
    """Every allowed command is still quoted (a fixed one leaves the list)."""
    quoted = {c.text for c in quoted_commands()[0]}
    assert not [text for text in ALLOWED if text not in quoted]


# ----------------------------------------------------------------------------- qlatent
@cache
def _parser() -> argparse.ArgumentParser:
    from qlatent.cli import build_parser

    return build_parser()


def _names_a_command(argv: tuple[str, ...]) -> bool:
    """Whether ``argv`` only names a command (``qlatent``, ``qlatent eval``, ``qlatent data
    export``), as prose does: every word a subcommand of the one before."""
    parser = _parser()
    for word in argv:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            return False
        parser = sub.choices[word]
    return True


class Table(NamedTuple):
    """A table of ``qlatent reproduce``: its module, its rows (the package's registry) and the
    check of one row under the command's ``--set`` that the table's ``reproduce`` makes before
    it trains (the row's config, built)."""

    module: ModuleType
    rows: tuple[str, ...]
    check: Callable


@cache
def _tables() -> dict[str, Table]:
    """Each table of ``qlatent reproduce`` by its name."""
    from qlatent.cli import _names
    from qlatent.experiments import coding_mnist, lattice_mnist, llvq_fashion, softvq_mnist, text_rd

    def llvq(dataset: str) -> Table:
        def check(name, overrides, args):
            for schedule in _names(args.schedules, "--schedules") or llvq_fashion.SCHEDULES:
                llvq_fashion.model_config(
                    name, schedule, quick=args.quick, dataset=dataset, overrides=overrides
                )

        return Table(llvq_fashion, llvq_fashion.ROWS, check)

    def text_point(name, overrides, args):
        for label, *_ in text_rd.POINTS[name]:
            text_rd.point_config(
                name, label, quick=args.quick, runs_dir=args.runs_dir, overrides=overrides
            )

    def lattice(name, overrides, args):
        lattice_mnist.model_config(name, quick=args.quick, overrides=overrides)

    def softvq(name, overrides, args):
        softvq_mnist.model_config(name, quick=args.quick, overrides=overrides)

    def coding(name, overrides, args):
        coding_mnist.config(quick=args.quick, overrides=overrides)

    return {
        "lattice-mnist": Table(lattice_mnist, lattice_mnist.MODELS, lattice),
        "softvq-mnist": Table(softvq_mnist, softvq_mnist.MODELS, softvq),
        "coding-mnist": Table(coding_mnist, coding_mnist.MODELS, coding),
        "llvq-fashion": llvq("fashion"),
        "llvq-celeba": llvq("celeba"),
        "llvq-ffhq": llvq("ffhq"),
        "text-rd": Table(text_rd, tuple(text_rd.POINTS), text_point),
    }


def _reproduce_problem(args: argparse.Namespace) -> str | None:
    """Rows of ``--models`` the table lacks, ``--schedules``, ``--jobs`` or ``--seeds`` it does
    not take, or ``--set`` keys or values it refuses."""
    from qlatent.cli import _names
    from qlatent.experiments import llvq_fashion

    table = _tables()[args.name]
    rows = table.rows
    accepts = inspect.signature(table.module.reproduce).parameters
    if args.jobs > 1 and "jobs" not in accepts:
        return f"{args.name} takes no --jobs"
    if args.seeds is not None and "seeds" not in accepts:
        return f"{args.name} takes no --seeds"
    try:
        names = _names(args.models, "--models") or [rows[0]]
        schedules = _names(args.schedules, "--schedules") or []
    except ValueError as err:
        return str(err)
    if schedules and table.module is not llvq_fashion:
        return f"{args.name} takes no --schedules"
    if unknown := [s for s in schedules if s not in llvq_fashion.SCHEDULES]:
        return f"no schedule {unknown} (schedules: {list(llvq_fashion.SCHEDULES)})"
    names = [rows[0] if name in ROW_PLACEHOLDERS else name for name in names]
    unknown = [name for name in names if name not in rows]
    if unknown:
        return f"{args.name} has no row {unknown} (rows: {list(rows)})"
    if not args.overrides:
        return None
    context = (args.quick, args.schedules, args.runs_dir)
    for name in dict.fromkeys(names):
        if problem := _row_problem(args.name, name, tuple(args.overrides), context):
            return problem
    return None


@cache
def _row_problem(table: str, name: str, overrides: tuple[str, ...], context: tuple) -> str | None:
    """The error of one row's config under ``overrides`` (None: accepted); cached, as several
    commands set the same keys on the same row. ``context``: the command's ``--quick``,
    ``--schedules`` and ``--runs-dir``."""
    quick, schedules, runs_dir = context
    args = argparse.Namespace(quick=quick, schedules=schedules, runs_dir=runs_dir)
    try:
        _tables()[table].check(name, list(overrides), args)
    except (ValueError, TypeError) as err:
        return f"--set refused: {err}"
    return None


def _run_options_problem(args: argparse.Namespace) -> str | None:
    """``train``/``demo``: the config files and ``--set`` keys refused, loaded as the command
    loads them."""
    from qlatent.cli import _lattice_config
    from qlatent.experiments import custom

    try:
        if args.command == "train" and args.config:
            overrides = list(args.overrides)
            if args.device:
                overrides.append(f"train.device={args.device}")
            if args.out:
                overrides.append(f"out_dir={args.out}")
            custom.load_config([ROOT / c for c in args.config], overrides)
        else:
            _lattice_config(args)
    except (ValueError, TypeError) as err:
        return f"refused: {err}"
    return None


def _registry_problem(args: argparse.Namespace) -> str | None:
    """Names the command would refuse: ``bench lattices|quantizers --names`` (the lattices
    with a literature G, the registered bottlenecks) and ``compress``/``update`` ``--data``."""
    from qlatent import cli

    if args.command in ("compress", "update"):
        if args.data not in cli._CODING_DATA:
            return f"--data {args.data} is none of {list(cli._CODING_DATA)}"
        return None
    if args.command != "bench" or not getattr(args, "names", None):
        return None
    if args.bench == "lattices":
        from qlatent.lattices import LITERATURE_NSM as known
    elif args.bench == "quantizers":
        from qlatent.bottlenecks import BOTTLENECKS

        known = BOTTLENECKS.names()
    else:
        return None
    unknown = [n.strip() for n in args.names.split(",") if n.strip() not in known]
    return f"bench {args.bench} knows no {unknown} (known: {list(known)})" if unknown else None


def _qlatent_problem(command: Command) -> str | None:
    if _names_a_command(command.argv):
        return None
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
            args = _parser().parse_args(list(command.argv))
    except SystemExit as exit_:
        if exit_.code == 0:  # --help, --version: parsed, and answered
            return None
        return "does not parse: " + error.getvalue().strip().splitlines()[-1]
    if args.command == "reproduce":
        return _reproduce_problem(args)
    if args.command in ("train", "demo") and not getattr(args, "list", False):
        return _run_options_problem(args)
    return _registry_problem(args)


def test_qlatent_commands_parse():
    commands = [c for c in _qlatent() if c.text not in ALLOWED]
    problems = [f"{c}\n    {p}" for c in commands if (p := _qlatent_problem(c))]
    assert not problems, "\n".join(problems)
    assert len(commands) >= MIN_QLATENT


# ----------------------------------------------------------------------------- examples
@cache
def _script_options(path: Path) -> frozenset[str]:
    """The option strings of every ``add_argument`` call in a Python script."""
    options = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            options.update(
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and arg.value.startswith("-")
            )
    return frozenset(options)


def _script_problem(command: Command) -> str | None:
    path = ROOT / command.program
    if not path.is_file():
        return f"no script {command.program}"
    if path.suffix != ".py":
        return None
    quoted = {word.split("=", 1)[0] for word in command.argv if word.startswith("-")}
    missing = sorted(quoted - _script_options(path))
    return f"{command.program} takes no {missing}" if missing else None


def test_example_scripts_exist_and_take_the_quoted_options():
    commands = [c for c in _scripts() if c.text not in ALLOWED]
    problems = [f"{c}\n    {p}" for c in commands if (p := _script_problem(c))]
    assert not problems, "\n".join(problems)
