"""DESIGN.md §2: "an import only points to a layer listed above it".

Every ``from qlatent...`` / relative import in ``src/qlatent`` (at module level or inside a
function) is read from the source with ``ast`` and its target's layer compared with the
importer's. The shared foundations (``_utils`` and the modules it gathers: ``_files``,
``_terminal``, ``_tracing``, ``_autograd``, ``_digest``; ``_size``, ``_modes``, ``registry``,
``rng``, ``config``, ``results``) sit below every layer; ``bench`` is not a layer of DESIGN.md
and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qlatent

SRC = Path(qlatent.__file__).parent

#: the layer of each top-level name under ``qlatent`` (DESIGN.md §2; 2b as 2.5)
LAYERS: dict[str, float] = {
    **dict.fromkeys(("_utils", "_files", "_terminal", "_tracing", "_autograd", "_digest"), 0),
    **dict.fromkeys(("_size", "_modes", "registry", "rng", "config", "results"), 0),
    "lattices": 1,
    "priors": 2,
    "coding": 2.5,
    "bottlenecks": 3,
    "nn": 4,
    "models": 5,
    "losses": 5,
    "data": 6,
    "train": 7,
    "eval": 8,
    "image_coding": 9,  # bitstream files for whole models, with the CLI's helpers
    "experiments": 10,
    "configs": 10,
    "cli": 11,
}


def _layer_of(module: str) -> float | None:
    """The layer of ``qlatent.X...`` (None for the package itself and names outside LAYERS)."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _imports(path: Path, src: Path = SRC) -> set[str]:
    """The ``qlatent`` modules ``path`` (a file under ``src``) imports, as absolute names."""
    rel = path.relative_to(src.parent).with_suffix("")
    package = list(rel.parts if rel.name == "__init__" else rel.parts[:-1])
    if rel.name == "__init__":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if node.module is None:  # ``from . import x``: the names are modules
                found.update(f"{target}.{alias.name}" for alias in node.names)
            else:
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "qlatent" or name.startswith("qlatent.")}


def _upward_imports(src: Path = SRC) -> set[tuple[str, str]]:
    """(file, module) pairs of the package at ``src`` whose module is in a higher layer."""
    upward = set()
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        own = LAYERS.get(rel.split("/")[0].removesuffix(".py"))
        if own is None:
            continue
        for target in _imports(path, src):
            layer = _layer_of(target)
            if layer is not None and layer > own:
                upward.add((rel, target))
    return upward


def test_the_scanner_sees_imports_inside_functions_and_relative_ones():
    """The scanner itself: the lazy ``from ..models.text import TextAutoencoder`` inside a
    function of experiments/_custom_model.py and the module-level relative imports of
    bottlenecks/vq.py are found, resolved to absolute names."""
    assert "qlatent.models.text" in _imports(SRC / "experiments" / "_custom_model.py")
    assert "qlatent.bottlenecks.base" in _imports(SRC / "bottlenecks" / "vq.py")
    assert "qlatent._utils" in _imports(SRC / "bottlenecks" / "vq.py")


def test_imports_point_only_to_layers_listed_above():
    upward = sorted(_upward_imports())
    assert not upward, f"imports that point to a layer listed below the importer: {upward}"


def test_the_check_finds_an_upward_import(tmp_path):
    """A network module that imports a model inside a function, in a copy of the layout."""
    package = tmp_path / "qlatent"
    (package / "nn").mkdir(parents=True)
    (package / "nn" / "bad.py").write_text("def f():\n    from ..models import Autoencoder\n")
    assert _upward_imports(package) == {("nn/bad.py", "qlatent.models")}


def test_coding_knows_no_bottleneck_model_or_network():
    """DESIGN.md §2b: the coder knows no bottleneck class (nor anything above it)."""
    for path in sorted((SRC / "coding").rglob("*.py")):
        for target in _imports(path):
            layer = _layer_of(target)
            assert layer is None or layer <= LAYERS["coding"], (path.name, target)
