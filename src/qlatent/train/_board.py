"""TensorBoard scalars of a run's epoch records (:class:`_Board`), with the check that the
optional ``tensorboard`` package is there (:func:`check_tensorboard`). Used by :mod:`.loop`
(``TrainConfig.tensorboard``) and by the custom experiments, which check before they load data."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .config import TrainConfig, _is_number


def check_tensorboard(cfg: TrainConfig) -> None:
    """ValueError where ``cfg.tensorboard`` asks for TensorBoard and the optional ``tensorboard``
    package cannot be imported: checked before a run makes its folder or trains."""
    if cfg.tensorboard:
        _summary_writer()


def _summary_writer() -> type:
    """torch's ``SummaryWriter``, imported only where a run asks for it (an optional package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "train.tensorboard = true needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter


#: the TensorBoard group of each record key that is neither ``train_*`` nor ``val_*``
_BOARD_GROUPS = {
    "beta": "schedule",
    "lr": "schedule",
    "step": "run",
    "best_epoch": "run",
    "wall_s": "run",
}


#: held while a :class:`_Board` sets or restores ``threading.excepthook`` (runs in threads)
_HOOK_LOCK = threading.Lock()


def _live_hook(hook: Callable[[Any], object]) -> Callable[[Any], object]:
    """``hook`` without the hooks of the boards that ended while a later board's was set: such
    a board left its own in place (not the hook then, it could not restore the one before), so
    the later board's restoring it kept a board's hook as the process's for good."""
    while getattr(hook, "__func__", None) is _Board._thread_error and (
        hook.__self__.threads_before is None
    ):
        hook = hook.__self__.hook_before
    return hook


class _Board:
    """Each epoch's record (as in ``log.jsonl``) as TensorBoard scalars at step ``epoch``, in
    ``folder`` (None: nothing is written or removed; ``write`` False: nothing is written).
    Its numbers only (no bools, strings or the epoch itself), under the tags
    ``train/objective``, ``train/distortion``, ``train/rate``, ``train/examples``;
    ``val/objective``, ``val/distortion``, ``val/rate``; ``schedule/beta``, ``schedule/lr``;
    ``run/step``, ``run/best_epoch``, ``run/wall_s``; and ``bottleneck/<name>`` for the
    bottleneck's statistics (``spacing_mean`` ...).

    The writer is made at the first record, and a call that trains nothing writes nothing. It
    is opened with ``purge_step = first_epoch`` (the first epoch this call trains): TensorBoard
    then drops the events an interrupted process wrote for that epoch and later ones, and a
    resumed run's curves show each epoch once. Every record is flushed before its checkpoint is
    written; the writer is closed when the block ends, however it ends. Where the block raises
    before a checkpoint followed the first record, this call's event file is removed (and the
    folder, where the writer made it and left it empty): a start that fails before its first
    checkpoint leaves the folder as it was. The first checkpoint of a new run
    (``first_epoch`` 1; :meth:`kept`) removes the event files of the run it replaces, with
    TensorBoard on or off: their curves were shown as this folder's. A file that cannot be
    written is an OSError naming the folder, and only that: the writer's own thread, which
    meets the error first, does not print it as well (:meth:`_thread_error`)."""

    def __init__(self, folder: Path | None, *, first_epoch: int, write: bool = True) -> None:
        self.folder, self.first_epoch, self.on = folder, first_epoch, write
        self.writer, self.file, self.made, self.checkpointed = None, None, False, False
        self.threads_before: set[threading.Thread] | None = None  # while the hook is set
        self.hook_before: Callable[[Any], object] = threading.excepthook

    def __enter__(self) -> _Board:
        return self

    def __exit__(self, failed: type | None, *exc: object) -> None:
        try:
            self._close(failed)
        finally:
            self._unhook()

    def _close(self, failed: type | None) -> None:
        if self.writer is None:
            return
        try:
            with self._named():
                self.writer.close()  # raises the writer thread's error again
        except OSError:
            if failed is None:  # else the block's own error goes on
                raise
        finally:
            if failed is not None and not self.checkpointed:
                with suppress(OSError):
                    self.file.unlink(missing_ok=True)
                    if self.made:
                        self.folder.rmdir()

    def write(self, record: dict[str, Any]) -> None:
        if self.folder is None or not self.on:
            return
        with self._named():
            if self.writer is None:
                self.made = not self.folder.is_dir()
                before = self._event_files()
                self._hook()
                self.writer = _summary_writer()(str(self.folder), purge_step=self.first_epoch)
                (self.file,) = set(self._event_files()) - set(before)
            for key, value in record.items():
                if key == "epoch" or not _is_number(value):
                    continue
                group, _, name = key.partition("_")
                if group not in ("train", "val"):
                    group, name = _BOARD_GROUPS.get(key, "bottleneck"), key
                self.writer.add_scalar(f"{group}/{name}", value, global_step=record["epoch"])
            self.writer.flush()

    @contextmanager
    def _named(self) -> Iterator[None]:
        """An OSError named with the folder: the writer's thread raises the bare error
        ("[Errno 28] No space left on device"), or one naming its file as bytes."""
        try:
            yield
        except OSError as err:
            if err.errno is None:
                raise
            raise OSError(
                err.errno, f"cannot write the TensorBoard events in {self.folder}: {err.strerror}"
            ) from None

    def _hook(self) -> None:
        with _HOOK_LOCK:
            if self.threads_before is None:  # (set once, where a writer failed to start too)
                self.threads_before = set(threading.enumerate())
                self.hook_before, threading.excepthook = threading.excepthook, self._thread_error

    def _thread_error(self, args: Any) -> None:
        """``threading.excepthook`` while this block has a writer. The writer's thread keeps
        its error and raises it again to this block at the next flush or close, where
        :meth:`_named` makes it the run's one error; printed by the thread too, it would be
        a second report with a traceback. Errors of every other thread go on as before."""
        kept = issubclass(args.exc_type, Exception)  # what the writer keeps for the block
        if not (kept and args.thread in self._writer_threads()):
            self.hook_before(args)

    def _writer_threads(self) -> list[threading.Thread]:
        """The threads of TensorBoard's writer started since :meth:`_hook`."""
        if self.threads_before is None:
            return []
        return [
            t
            for t in threading.enumerate()
            if t not in self.threads_before and type(t).__module__.startswith("tensorboard.")
        ]

    def _unhook(self) -> None:
        if self.threads_before is None:
            return
        for thread in self._writer_threads():  # stopped by close, or ending on its error
            thread.join(timeout=1.0)
        with _HOOK_LOCK:
            if threading.excepthook == self._thread_error:  # else someone set a hook since
                threading.excepthook = _live_hook(self.hook_before)
            self.threads_before = None

    def kept(self) -> None:
        """A checkpoint was written: the events so far are the run's. At a new run's first,
        the event files of the run it replaces are removed (only those, not other files)."""
        if self.folder is not None and not self.checkpointed and self.first_epoch == 1:
            for path in self._event_files():
                if path != self.file:
                    path.unlink(missing_ok=True)
            if self.writer is None:
                with suppress(OSError):  # a folder that holds no other file
                    self.folder.rmdir()
        self.checkpointed = True

    def _event_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        paths = self.folder.glob("events.out.tfevents.*")
        return [p for p in paths if p.is_file() or p.is_symlink()]
