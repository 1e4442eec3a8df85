"""qlatent as `pip install qlatent-0.1.0-py3-none-any.whl` gives it: no checkout around it.

The other tests run from the checkout (src layout, editable install), where a file the package
reads from beside ``src/`` (``results/``, ``examples/``, the README), a resource left out of
pyproject's ``[tool.setuptools.package-data]`` or a commit asked of git all work; in an installed
wheel they are absent. Here the wheel is built from a copy of the files a build reads
(pyproject.toml, README.md, src/), so that it holds what a clean clone's would and leaves no
build folder in the checkout, then unpacked and run from an empty working folder.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "qlatent"


def _package_files() -> set[str]:
    """Every file of the package in the checkout, as a wheel names it (``qlatent/...``)."""
    return {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip wheel . --no-deps --no-build-isolation`` builds from a clean copy."""
    # asked of the installed distributions, not of the import system: setuptools' distutils
    # shim answers a find_spec("pip") by switching itself off for the whole process, and a
    # torch.compile later in the same worker then failed on "import setuptools"
    for needed in ("pip", "setuptools"):
        try:
            metadata.distribution(needed)
        except metadata.PackageNotFoundError:
            pytest.skip("building the wheel needs pip and setuptools in this environment")
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(
        PACKAGE, tree / "src" / "qlatent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-q", "-w", str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (found,) = out.glob("qlatent-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked, as pip lays it out in site-packages."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def _run_installed(site: Path, cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that imports qlatent from ``site`` (ahead of the
    checkout's editable hook), in the working folder ``cwd``, without QLATENT_COMMIT."""
    env = {k: v for k, v in os.environ.items() if k not in ("QLATENT_COMMIT", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_resource_of_the_package_is_package_data():
    """A file of the package that is no module is in the wheel only where pyproject's
    package-data names it: a new config folder one level deeper, or a JSON table beside the
    TOML files, was read from the checkout and missing from every installed copy."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["qlatent"]
    # setuptools expands each pattern as a glob under the package, where * stops at a slash
    listed = {path for pattern in patterns for path in PACKAGE.glob(pattern) if path.is_file()}
    resources = sorted(
        name.removeprefix("qlatent/") for name in _package_files() if not name.endswith(".py")
    )
    assert resources, "the package's configs are resources a wheel must carry"
    unlisted = [r for r in resources if PACKAGE / r not in listed]
    assert not unlisted, f"not in [tool.setuptools.package-data]: {unlisted}"


def test_no_module_reads_files_beside_the_package():
    """``Path(__file__).parents[N]`` or ``.parent.parent`` reaches past the package into the
    checkout (``results/``, ``examples/``, the README), which an installed wheel has not."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute | ast.Subscript):
                continue
            chain = ast.unparse(node)
            if "__file__" in chain and (".parents" in chain or ".parent.parent" in chain):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {chain}")
    assert not offenders, offenders


def test_the_wheel_holds_exactly_the_packages_files_and_its_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    files = {n for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert files == _package_files()
    assert "qlatent = qlatent.cli:console" in scripts


def test_the_installed_wheel_runs_outside_a_checkout(installed, tmp_path):
    """From an empty working folder, qlatent comes from the wheel, finds its packaged configs,
    records no commit (git does not track it) and its command lists what is registered."""
    work = tmp_path / "work"
    work.mkdir()
    code = """if True:
        import contextlib, io, json
        import qlatent
        from qlatent import configs, results
        from qlatent.cli import main
        from qlatent.experiments.custom import paper_config
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["train", "--list"])
        print(json.dumps({
            "file": qlatent.__file__,
            "base": sorted(configs.load("lattice-mnist", "base")),
            "row": paper_config("softvq-mnist", ["vq", "quick"]).bottleneck.name,
            "commit": results.git_commit(),
            "list": out.getvalue(),
            "code": code,
        }))
    """
    ran = _run_installed(installed, work, code)
    assert ran.returncode == 0, ran.stderr[-2000:]
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve().is_relative_to(installed.resolve())
    assert report["base"] and report["row"] == "vq"
    assert report["commit"] == {"commit": None, "dirty": None}
    assert report["code"] == 0 and "bottlenecks (bottleneck.name)" in report["list"]
    assert list(work.iterdir()) == []  # listing writes nothing into the working folder
