"""The datasets this package knows and the checks their files pass: standard file names, the
SHA-256 of each file's uncompressed bytes, the cache folder, the data layer's errors, hashing and
verifying a file, and storing a verified copy in the cache. :mod:`qlatent.data.sources` (which
re-exports the public names) and :mod:`._providers` build on it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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
