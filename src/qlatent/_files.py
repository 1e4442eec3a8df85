"""Files and folders written safely: atomic writes through a temporary file renamed into
place, stale temporaries of killed writers removed, folders made and taken back on failure,
paths checked before the work that writes them. Used by the results, the training loop and
its checkpoints, the data folders, the experiments and the CLI (through :mod:`qlatent._utils`)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]


def file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing part of ``folder`` (itself or a parent) where that part is not a
    folder: the file that stops ``folder`` from being made. ``None`` where nothing does."""
    for part in (folder, *folder.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_folder(folder: str | os.PathLike[str], name: str) -> None:
    """ValueError naming ``name`` unless ``folder`` exists as a folder or can be made (no
    regular file on its path): checked before the work that writes into it, not after."""
    blocked = file_in_the_way(expanded(folder))
    if blocked is not None:
        raise ValueError(f"{name} cannot be a folder: {blocked} is a file")


def check_parent(path: str | os.PathLike[str], what: str = "") -> None:
    """ValueError naming ``path`` (after ``what``, e.g. "the checkpoint") where a file stands
    where its folder or one above would be: ``mkdir`` answered that with "[Errno 20] Not a
    directory" or "[Errno 17] File exists", naming neither what was written nor why."""
    blocked = file_in_the_way(Path(path).parent)
    if blocked is not None:
        target = f"{what} {os.fspath(path)}" if what else os.fspath(path)
        raise ValueError(f"cannot write {target}: {blocked} is a file, not a folder")


def _locked(fd: int, *, wait: bool) -> bool:
    """Take ``flock(fd)`` (True), or False where another process holds it; True too where the
    file system has no such locks (there, as before they were used, nothing is held)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files of ``path`` (``.<name>.*.tmp``) left by writers that were
    killed mid-write. A writer holds a lock on its file until it is renamed (:func:`replacing`),
    which the kernel lets go of when the writer dies: a file still locked is another writer's
    in progress and stays (removing it made that writer's rename fail)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if fcntl is None:
            with contextlib.suppress(OSError):  # Windows: a file open in a writer is not removed
                stale.unlink()
            continue
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:  # removed meanwhile
            continue
        try:
            if _locked(fd, wait=False):
                stale.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, *, mode: int = 0o666, sweep: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents into: a temporary file of this writer's
    own beside it, renamed over ``path`` when the block ends, removed if it raises. Two writers
    of one path at once each rename a complete file into place, the last one's staying: with one
    shared temporary name, one renamed the file the other was still writing (a truncated
    ``path``) and the other's rename failed. ``mode`` as in :func:`os.open` (before the umask).
    ``sweep``: remove the temporary files of killed writers first (:func:`remove_stale_temps`),
    which lists the folder: not for many files written into one folder."""
    if sweep:
        remove_stale_temps(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode
            )
        except FileExistsError:
            continue
        if fcntl is None or _locked(fd, wait=True) and _names(tmp, fd):
            break
        os.close(fd)  # taken for stale between its creation and the lock: another name
    renamed = False
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            yield f
        if fcntl is None:  # Windows renames no open file (and nothing is locked there)
            os.close(fd)
            fd = -1
        os.replace(tmp, path)  # still locked: not a stale file to a writer starting now
        renamed = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not renamed:
            tmp.unlink(missing_ok=True)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def made_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """Make ``folder`` as ``folder.mkdir(parents=True, exist_ok=True)`` does; returns the
    folders this call made, deepest first (:func:`taken_back`). Those it made, not those that
    looked missing before: through a ``..`` after a missing folder (``new/../keep``) every name
    below it looked missing, the user's existing ``keep`` too, and a folder another process
    makes meanwhile is that process's. Absolute paths: a working folder changed before they
    are taken back (a notebook's ``%cd``) sent the removal to the same names there. Where
    ``folder`` itself cannot be made (a name too long), those made above it are taken back."""
    folder = Path(folder).absolute()
    try:
        os.mkdir(folder)
    except FileNotFoundError:
        if folder.parent == folder:
            raise
        above = made_folders(folder.parent)
        with taken_back(above):
            try:
                os.mkdir(folder)
            except OSError:
                if not folder.is_dir():
                    raise
                return above
        return [folder, *above]
    except OSError:
        if not folder.is_dir():
            raise
        return []
    return [folder]


@contextlib.contextmanager
def taken_back(made: list[Path]) -> Iterator[None]:
    """Remove the folders ``made`` (:func:`made_folders`, deepest first) if the block raises
    and leaves them empty: a run or an export that failed before writing anything leaves no
    empty folders. One that holds a file (another writer's) stays, and those above it."""
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place (a
    ValueError where ``path`` is a folder, a device or a pipe, which the rename would replace,
    or lies under a regular file); concurrent writers of one path each write a whole file
    (:func:`replacing`)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"refusing to write {path}: it is not a regular file")
    check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as f:
            f.write(data)
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        # a full disk or a file-size limit meets the write or the flush of the temporary
        # file, whose OSError names no file: "[Errno 28] No space left on device" alone
        raise OSError(err.errno, err.strerror, os.fspath(path)) from None
    return path


def expanded(path: str | os.PathLike[str]) -> Path:
    """``Path(path).expanduser()``, with a ValueError naming the path where ``~user`` names
    no user (``expanduser`` raises a RuntimeError that says neither which path nor why)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise ValueError(f"{os.fspath(path)}: no home folder for the user it names") from None
