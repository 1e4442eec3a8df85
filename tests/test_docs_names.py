"""The code names and repository paths that README.md and docs/*.md quote in code spans exist.

A code span (outside fenced blocks) that is a dotted Python name, optionally called
(``qlatent.eval.iwae_nll``, ``lattice._FusedTrainingPath``, ``Lattice.dither_point``,
``bottleneck.input_limit()``) must resolve against today's package: a fully qualified
``qlatent.a.b`` by importing its longest importable module prefix and taking the rest as
attributes; a short form ``a.b`` through a module of the package whose dotted name ends in
``a`` (``_codebook``, ``bottlenecks._codebook``) or a class of the package named ``a`` (an
instance named after its class, ``bottleneck`` for ``Bottleneck``, counts too). A name that does
not resolve passes only when a rule says it is not our code: the name of a module outside the
package (``torch.*``, ``copy.deepcopy``, ``np.load``), a config key (a config section of a run
followed by one of its fields), a key path of a JSON file in results/, or a file name
(``summary.json``, not checked). A span that is a repository path (``results/...``,
``examples/...``, ``../results/...`` from docs/) must name a file or folder that exists; one with
placeholders (``ROW``, ``seedSEED``, ``<row>``, ``…``) must match one, and ``{a,b}`` is expanded.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import inspect
import json
import pkgutil
import re
import sys
import typing
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import qlatent

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

#: the fewest names and paths the documents must yield (a broken extraction finds none)
MIN_NAMES = 100
MIN_OURS = 50
MIN_PATHS = 100

#: names that no rule can resolve, each with its reason (the name as quoted, without a call)
ALLOWED: dict[str, str] = {
    # nn.Module's flag, an instance attribute (set in __init__, not on the class)
    "self.training": "torch.nn.Module.training",
    # a hook on the tensor y_hat of a BottleneckOutput named ``out`` (Tensor.register_hook)
    "out.y_hat.register_hook": "a local variable's tensor method",
    # a key of a checkpoint's ``run_config`` (written by llvq_fashion, custom), in no results file
    "derived.folder_split": "checkpoint run_config key",
    # any module moved to a device: torch.nn.Module.to on an instance named ``module``
    "module.to": "torch.nn.Module.to",
}

#: the suffixes that make a dotted span a file name (``summary.json``), not a Python name
FILE_SUFFIXES = {
    "json",
    "jsonl",
    "md",
    "npz",
    "png",
    "pt",
    "py",
    "sh",
    "toml",
    "txt",
    "log",
    "lock",
}
#: the folders of the repository that a quoted path can start with
REPO_FOLDERS = ("results", "examples", "src", "tests", "docs", "configs")

_FENCE = re.compile(r"^```.*?^```[^\n]*$", flags=re.M | re.S)
_CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_NAME = re.compile(r"(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?P<call>\(.*\))?", flags=re.S)
_PATH = re.compile(rf"(?:\.\./)?(?:{'|'.join(REPO_FOLDERS)})/[^\s`]*")
#: the placeholders of a path that make it a pattern: ``ROW``, ``seedSEED``, ``…``, ``<row>``
_PLACEHOLDER = re.compile(r"[A-Z]{2,}|…|(?<!^)\.\.\.|<[^>]*>")
_BRACES = re.compile(r"\{([^{}]*)\}")


class Span(NamedTuple):
    """One code span: the document and line it is on, and its text (whitespace joined)."""

    where: str
    text: str


def spans(path: Path) -> list[Span]:
    """The code spans of ``path`` outside its fenced blocks."""
    text = _FENCE.sub(lambda m: "\n" * m.group().count("\n"), path.read_text(encoding="utf-8"))
    out = []
    for match in _CODE_SPAN.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        out.append(Span(f"{where}:{line}", " ".join(match.group(1).split())))
    return out


def dotted_name(text: str) -> str | None:
    """The dotted Python name a span is (``a.b``, ``a.b()``, ``a.b(x, y=1)``), or None."""
    match = _NAME.fullmatch(text)
    return match.group("name") if match else None


def repo_paths(text: str) -> list[str] | None:
    """The repository paths a span names, or None if it is no path: ``{a,b}`` expanded, a
    placeholder (``ROW``, ``seedSEED``, ``<row>``, ``…``) made a ``*`` (a glob pattern)."""
    if not _PATH.fullmatch(text):
        return None
    paths = [_PLACEHOLDER.sub("*", text)]
    while any(_BRACES.search(p) for p in paths):
        expanded = []
        for p in paths:
            m = _BRACES.search(p)
            if m is None:
                expanded.append(p)
                continue
            for choice in m.group(1).split(","):
                expanded.append(p[: m.start()] + choice + p[m.end() :])
        paths = expanded
    return paths


def path_exists(doc: Path, path: str) -> bool:
    """Whether ``path`` (a pattern: some file it matches) is in the repository: from its root,
    or from the document's folder (docs/ writes ``../results/...``)."""
    return any(glob.glob(str(base / path)) for base in (ROOT, doc.parent))


@cache
def package_modules() -> tuple[ModuleType, ...]:
    """Every module of qlatent, imported (``__main__`` would run the command line)."""
    names = [m.name for m in pkgutil.walk_packages(qlatent.__path__, "qlatent.")]
    return (qlatent,) + tuple(
        importlib.import_module(n) for n in names if not n.endswith("__main__")
    )


@cache
def package_classes() -> dict[str, tuple[type, ...]]:
    """The classes the package defines, by name."""
    found: dict[str, set[type]] = {}
    for module in package_modules():
        for obj in vars(module).values():
            if inspect.isclass(obj) and obj.__module__.startswith("qlatent"):
                found.setdefault(obj.__name__, set()).add(obj)
    return {name: tuple(classes) for name, classes in found.items()}


def _attributes(obj: object, names: list[str]) -> bool:
    """Whether ``obj.n1.n2...`` exists (dataclass fields with a default factory count)."""
    for name in names:
        if hasattr(obj, name):
            obj = getattr(obj, name)
        elif dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
            return name == names[-1]
        else:
            return False
    return True


def resolves(name: str) -> bool:
    """Whether ``name`` is code of the package today (see the module docstring)."""
    parts = name.split(".")
    if parts[0] == "qlatent":
        for k in range(len(parts), 0, -1):
            module = _module(".".join(parts[:k]))
            if module is not None:
                return _attributes(module, parts[k:])
        return False
    for module in package_modules():
        own = module.__name__.split(".")
        for k in range(1, len(parts)):
            if own[-k:] == parts[:k] and _attributes(module, parts[k:]):
                return True
    classes = package_classes()
    named = list(classes.get(parts[0], ()))
    camel = "".join(word[:1].upper() + word[1:] for word in parts[0].split("_"))
    if camel != parts[0]:  # an instance: ``bottleneck`` is a Bottleneck, of any subclass
        named += [sub for cls in classes.get(camel, ()) for sub in _subclasses(cls)]
    return any(_attributes(cls, parts[1:]) for cls in named)


def _subclasses(cls: type) -> list[type]:
    """``cls`` and every subclass of it."""
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


@cache
def foreign_modules() -> dict[str, frozenset[str]]:
    """The names that stand for a module outside the package, each with the dotted names of the
    modules it may stand for: the top-level modules installed or required (pyproject.toml,
    requirements*), the names the package binds to such a module (``np``, ``nn``, ``F``), and
    the last names of modules the documents quote in full (``torch.nn.utils.prune`` makes
    ``prune``)."""
    found: dict[str, set[str]] = {}
    top = {m.name for m in pkgutil.iter_modules()} | set(sys.stdlib_module_names)
    requirements = (ROOT / "pyproject.toml").read_text() + "".join(
        p.read_text() for p in ROOT.glob("requirements*")
    )
    top |= {
        n.lower().replace("-", "_")
        for n in re.findall(r"^\s*\"?([A-Za-z][\w.-]*)\s*(?:[=<>~]=|\[)", requirements, re.M)
    }
    for name in top - {"qlatent"}:
        found.setdefault(name, set()).add(name)
    for module in package_modules():
        for alias, obj in vars(module).items():
            if isinstance(obj, ModuleType) and not obj.__name__.startswith("qlatent"):
                found.setdefault(alias, set()).add(obj.__name__)
    for doc in DOCS:
        for span in spans(doc):
            parts = (dotted_name(span.text) or "qlatent").split(".")
            if parts[0] == "qlatent" or parts[0] not in top:
                continue
            for k in range(2, len(parts) + 1):
                if _module(".".join(parts[:k])) is None:
                    break
                found.setdefault(parts[k - 1], set()).add(".".join(parts[:k]))
    return {name: frozenset(modules) for name, modules in found.items()}


def _module(name: str) -> ModuleType | None:
    """The module of that dotted name, imported, or None if it does not import."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def is_foreign(name: str) -> bool:
    """Whether ``name`` is another package's: its first part stands for a module outside the
    package. Where the package has a module or class of that name too (``nn``, ``checkpoint``),
    the name must resolve in the other module (``nn.Module``: ``torch.nn.Module``)."""
    first, *rest = name.split(".")
    modules = foreign_modules().get(first, frozenset())
    ours = {m.__name__.split(".")[-1] for m in package_modules()} | set(package_classes())
    if not modules or first not in ours:
        return bool(modules)
    return any(
        (module := _module(dotted)) is not None and _attributes(module, rest) for dotted in modules
    )


@cache
def config_sections() -> dict[str, tuple[object, ...]]:
    """The sections of the package's configs, by name: each field of a config dataclass (a
    ``...Config``) whose type is a dataclass or a dict (``train``, ``data``, ``bottleneck.args``,
    ``eval``)."""
    found: dict[str, set[object]] = {}
    for cls in (c for classes in package_classes().values() for c in classes):
        if not (dataclasses.is_dataclass(cls) and cls.__name__.endswith("Config")):
            continue
        hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
        for f in dataclasses.fields(cls):
            hint = hints.get(f.name)
            if dataclasses.is_dataclass(hint) or typing.get_origin(hint) is dict:
                found.setdefault(f.name, set()).add(hint)
    return {name: tuple(types) for name, types in found.items()}


def is_config_key(name: str) -> bool:
    """Whether ``name`` is a key of a config: a section followed by one of its fields (any key
    below a dict section)."""
    first, *rest = name.split(".")
    sections = config_sections()

    def below(hint: object, keys: list[str]) -> bool:
        if not keys or typing.get_origin(hint) is dict:
            return True
        if not dataclasses.is_dataclass(hint):
            return False
        fields = {f.name: f for f in dataclasses.fields(hint)}
        if keys[0] not in fields:
            return False
        sub = typing.get_type_hints(hint, vars(sys.modules[hint.__module__])).get(keys[0])
        return below(sub, keys[1:]) if len(keys) > 1 else True

    return any(below(hint, rest) for hint in sections.get(first, ()))


@cache
def recorded_keys() -> frozenset[str]:
    """The dotted key paths of the JSON files in results/ (``machine.torch_threads``)."""
    keys: set[str] = set()

    def walk(obj: object, prefix: str) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                keys.add(path)
                walk(value, path)
        elif isinstance(obj, list):
            for item in obj:
                walk(item, prefix)

    for file in (ROOT / "results").rglob("*.json"):
        try:
            walk(json.loads(file.read_text(encoding="utf-8")), "")
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    return frozenset(keys)


def why_not_ours(name: str) -> str | None:
    """Why an unresolved ``name`` is someone else's (a rule's, or the allow-list's reason), or
    None."""
    return rule_for(name) or ALLOWED.get(name)


def rule_for(name: str) -> str | None:
    """The rule that makes an unresolved ``name`` someone else's, or None."""
    if name.startswith("qlatent."):
        return None
    if is_foreign(name):
        return "another package's name"
    if is_config_key(name):
        return "a config key"
    if name in recorded_keys():
        return "a key of a recorded JSON file"
    return None


class Checked(NamedTuple):
    names: list[Span]  # every dotted name checked (file names such as summary.json are none)
    ours: list[Span]  # the names that resolved in the package
    paths: list[str]  # every repository path checked
    problems: list[str]  # every name or path that points at nothing


def check(docs: tuple[Path, ...]) -> Checked:
    """Check every dotted name and repository path quoted in ``docs``."""
    out = Checked([], [], [], [])
    for doc in docs:
        for span in spans(doc):
            name = dotted_name(span.text)
            if name is not None and name.split(".")[-1] not in FILE_SUFFIXES:
                out.names.append(span)
                if resolves(name):
                    out.ours.append(span)
                elif why_not_ours(name) is None:
                    out.problems.append(f"{span.where}: `{span.text}` (no such name)")
            for path in repo_paths(span.text) or ():
                out.paths.append(path)
                if not path_exists(doc, path):
                    out.problems.append(f"{span.where}: `{path}` (no such file)")
    return out


def test_the_checker_finds_stale_names_and_paths(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Good: `qlatent.eval.iwae_nll(model, x)`, `_codebook.row_counts`, `Lattice.dither_point`,\n"
        "`torch.func.vmap`, `np.load`, `nn.Module`, `train.lr_decay`, `summary.json`,\n"
        "`results/demo.json`, `results/lattice-mnist-seeds/ROW/summary.json`, `src/`,\n"
        "`~/.cache/qlatent/runs`, `1.5`.\n"
        "```python\nqlatent.eval.gone_too()\n```\n"
        "Bad: `qlatent.eval.no_such_function`, `_codebook.no_such_helper`, `train.no_such_key`,\n"
        "`checkpoint.no_such_helper`, "
        "`results/{demo,no-such-file}.json`, `results/no-such-folder/ROW.json`.\n",
        encoding="utf-8",
    )
    found = check((doc,))
    assert found.problems == [
        "doc.md:8: `qlatent.eval.no_such_function` (no such name)",
        "doc.md:8: `_codebook.no_such_helper` (no such name)",
        "doc.md:8: `train.no_such_key` (no such name)",
        "doc.md:9: `checkpoint.no_such_helper` (no such name)",
        "doc.md:9: `results/no-such-file.json` (no such file)",
        "doc.md:9: `results/no-such-folder/*.json` (no such file)",
    ]
    assert len(found.names) == 11
    assert [s.text for s in found.ours] == [
        "qlatent.eval.iwae_nll(model, x)",
        "_codebook.row_counts",
        "Lattice.dither_point",
    ]
    assert found.paths == [
        "results/demo.json",
        "results/lattice-mnist-seeds/*/summary.json",
        "src/",
        "results/demo.json",
        "results/no-such-file.json",
        "results/no-such-folder/*.json",
    ]


def test_every_quoted_name_and_path_exists():
    found = check(DOCS)
    assert len(found.names) >= MIN_NAMES, [s.text for s in found.names]
    assert len(found.ours) >= MIN_OURS, [s.text for s in found.ours]
    assert len(found.paths) >= MIN_PATHS, found.paths
    assert not found.problems, "\n".join(found.problems)


def test_the_allow_list_is_used():
    """Each allowed name is still quoted and still resolves by no rule (else it can go)."""
    quoted = {dotted_name(s.text) for doc in DOCS for s in spans(doc)}
    assert not [name for name in ALLOWED if name not in quoted]
    assert not [name for name in ALLOWED if resolves(name) or rule_for(name)]
