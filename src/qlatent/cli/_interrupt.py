"""How a command stops on Ctrl-C or SIGTERM: SIGTERM raised as an interruption, the note
saying what the user can do next, and the one line with its exit code. Used by the commands
that train (:mod:`._train`) and by :func:`~qlatent.cli.main`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .._utils import terminal_text


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler), raised where Ctrl-C raises its
    KeyboardInterrupt, so that a command stops the same way (:func:`_sigterm_as_interrupt`)."""


def _terminate(signum: int, frame: object) -> None:
    import multiprocessing

    # the worker processes of a sweep (reproduce --jobs): the pool would otherwise wait for the
    # runs they are in to finish; each resumes from its last checkpoint as the others do
    for child in multiprocessing.active_children():
        child.terminate()
    raise _Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a command as Ctrl-C does: a file being written is taken back, the run
    folder is released, and one line says where the run stands (its default action ended the
    process without a word). Not in a process of a torchrun world: one blocked in a collective
    on a dead peer runs no Python handler until the call returns, and torchrun ends its workers
    with SIGTERM; the default action ends such a process at once."""
    import os
    import signal
    import threading

    in_a_world = os.environ.get("WORLD_SIZE", "1") != "1"
    if in_a_world or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def _on_interrupt(note: Callable[[], str] | None = None) -> Iterator[None]:
    """An interruption inside (Ctrl-C, SIGTERM) reaches :func:`~._main.main` as its
    KeyboardInterrupt, carrying ``note()``, what the user can do next, to its line. An error
    raised while the interruption was being handled is the interruption: a cleanup it broke
    (torch.save closing the zip file it was writing when the interruption came) would otherwise
    replace it."""
    try:
        yield
    except BaseException as err:
        interruption = err
        while interruption is not None and not isinstance(interruption, KeyboardInterrupt):
            interruption = interruption.__context__
        if interruption is None:
            raise
        if note is not None:
            interruption.add_note(note())
        raise interruption from None


def _interrupted(err: KeyboardInterrupt) -> int:
    """``qlatent: interrupted`` (Ctrl-C) or ``qlatent: terminated (SIGTERM)``, with the notes
    of :func:`_on_interrupt`, on one line; exit code 128 + the signal's number, as the shell
    reports a program the signal ended. In a torchrun world only rank 0 writes the line: Ctrl-C
    reaches every rank of the terminal's process group, and each wrote the same line."""
    import os
    import signal

    terminated = isinstance(err, _Terminated)
    notes = "".join(f"; {note}" for note in getattr(err, "__notes__", ()))
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    if os.environ.get("RANK", "0") == "0":
        print(terminal_text(f"qlatent: {what}{notes}"), file=sys.stderr)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
