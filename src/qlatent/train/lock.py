"""One process at a time in a run folder.

Two processes training into one folder (a config started twice, two ``qlatent reproduce`` over
the same runs folder) overwrite each other's checkpoints, log and summary, each resuming from
what the other wrote. :func:`hold` takes an advisory lock on the folder itself (``flock`` on
its directory descriptor: nothing is written into the folder, and the kernel lets go when the
process ends, however it ends), so a second process is refused in one line
(:class:`FolderInUse`) before it writes anything. The lock is reentrant within a process
(``qlatent train`` holds it around ``fit``, which takes it too). Where the platform or the
file system has no such locks (Windows, some network file systems) runs are not locked.
A folder that :func:`hold` made is removed again (with the folders above it that it made) when
the block fails and leaves it empty: a start that wrote nothing leaves no empty run folder.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .._utils import made_folders, taken_back

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderInUse", "hold"]


class FolderInUse(ValueError):
    """Another process holds the run folder."""


#: the folders this process holds, by (device, inode): [descriptor, how many holds]
_held: dict[tuple[int, int], list[int]] = {}
_guard = threading.Lock()


@contextmanager
def hold(folder: str | Path) -> Iterator[None]:
    """Hold ``folder`` (made if missing) for this process while the block runs;
    :class:`FolderInUse` naming it where another process holds it. A folder made here that the
    block leaves empty when it raises (Ctrl-C or a full disk before the first checkpoint, a
    refused config) is removed again, with the folders above it made here."""
    folder = Path(folder)
    made = made_folders(folder)
    if fcntl is None:
        with taken_back(made):
            yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _guard:
        entry = _held.get(key)
        if entry is not None:  # held by this process already: count the hold
            entry[1] += 1
            os.close(fd)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUse(
                    f"the run folder {folder} is in use by another process: wait for it to "
                    "finish, or train into another folder (out_dir)"
                ) from None
            except OSError:  # a file system without locks: run unlocked, as before
                pass
            _held[key] = [fd, 1]
    try:
        with taken_back(made):  # while held: no other process has begun writing into it
            yield
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # lets go of the lock
