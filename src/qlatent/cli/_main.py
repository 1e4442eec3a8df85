"""The ``qlatent`` process: :func:`main` runs the command its arguments name and turns what
ends it (an error, Ctrl-C, SIGTERM, a reader of stdout that has gone) into one line and an exit
code; :func:`console` is the program installed as ``qlatent`` and run by ``python -m qlatent``."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from .._utils import terminal_text
from ..data import DataError
from ..data.cli import report_error
from ._interrupt import _interrupted, _on_interrupt, _sigterm_as_interrupt
from ._parser import build_parser


def _command_line(argv: Sequence[str] | None) -> str:
    return "qlatent " + shlex.join(sys.argv[1:] if argv is None else list(argv))


#: what to try after an allocation failed
_MEMORY_ADVICE = " (a smaller batch_size or eval_batch_size, or fewer images with --limit, may fit)"


def main(argv: Sequence[str] | None = None) -> int:
    """``qlatent ARGV``: the exit code. Ctrl-C and SIGTERM end a command with one line (exit
    code 130 or 143), a reader of stdout that has gone ends it without one (141), a stdout that
    cannot take the output (a full disk) with one line (2). An exception that no command
    reports as its error (a bug, or an error of a kind the command line does not know) is one
    line too, ``qlatent: internal error: <type>: <message>`` (exit code 1); with the
    environment variable ``QLATENT_TRACEBACK`` set (to anything but ``0``) it is raised, and
    Python prints its traceback."""

    with _sigterm_as_interrupt():
        try:
            try:
                return _run(argv)
            finally:
                if sys.stdout is not None:
                    sys.stdout.flush()  # a reader that has gone shows here, not at exit
        except BrokenPipeError:
            # the reader of standard output has gone (``qlatent train --list | head -1``): what
            # is left unwritten goes nowhere, rather than failing again when Python flushes
            # stdout at exit (https://docs.python.org/3/library/signal.html#note-on-sigpipe);
            # 128 + SIGPIPE, what the shell reports for a program the closed pipe stopped
            _discard_stdout()
            return 141
        except OSError as err:
            # _run reports a command's own errors: this is stdout refusing the help or the last
            # flush (a full disk, ``> /dev/full``); what is left goes nowhere, as above
            _discard_stdout()
            message = terminal_text(f"cannot write standard output: {err}")
            print(f"qlatent: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            return _interrupted(err)
        except Exception as err:
            return _internal_error(err)


def _internal_error(err: Exception) -> int:
    """``qlatent: internal error: <type>: <message>`` on one line (exit code 1), for
    :func:`main`; ``err`` raised again where ``$QLATENT_TRACEBACK`` asks for its traceback."""
    import os

    if os.environ.get("QLATENT_TRACEBACK", "") not in ("", "0"):
        raise err
    what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    print(
        f"qlatent: internal error: {terminal_text(what)} (set QLATENT_TRACEBACK=1 to see the "
        "traceback; please report it)",
        file=sys.stderr,
    )
    return 1


def _discard_stdout() -> None:
    """Point standard output's descriptor at the null device. The descriptor opened for it is
    closed again: it stayed open before, one more for every such call of :func:`main`. A
    standard output without a descriptor (a ``StringIO``, some notebooks' streams) is left as
    it is: asking for its descriptor raised out of :func:`main`'s handlers."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def console() -> None:
    """The ``qlatent`` program (and ``python -m qlatent``): :func:`main`, whose exit code it
    exits with, except after Ctrl-C or SIGTERM: once its line is written the process ends by
    that signal itself, as Python's own default does, so that a shell loop around ``qlatent``
    stops (a shell goes on after a program that merely exits with 130)."""
    import os
    import signal

    _usable_standard_streams()
    code = main()
    signum = code - 128
    if os.name == "posix" and signum in (signal.SIGINT, signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(code)


def _usable_standard_streams() -> None:
    """The standard streams as the program needs them, whatever its caller left. A descriptor
    closed by the caller (``qlatent ... 2>&-``) is opened on the null device: Python sets its
    stream to None, so a progress bar stopped a run without a word, an error line went to
    stdout, and a file the command opened would take the free descriptor, where whatever
    writes to descriptor 2 (a library's C++ warning) would write into it. Text the encoding
    cannot show (``Λ``, ``±``, a path's ``é`` under ``PYTHONIOENCODING=ascii``) is escaped,
    not a UnicodeEncodeError after the command's work was done; the bytes of a path that is
    no text in the locale (kept as surrogates) are written back as they were."""
    import codecs
    import os

    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # the lower descriptors are open, so this is only a safeguard
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))

    def escape(err: UnicodeError) -> tuple[str | bytes, int]:
        try:
            return codecs.lookup_error("surrogateescape")(err)
        except UnicodeError:
            return codecs.backslashreplace_errors(err)

    codecs.register_error("qlatent.escape", escape)
    for stream in (sys.stdout, sys.stderr):
        if not hasattr(stream, "reconfigure"):  # replaced by something other than a text file
            continue
        if stream.errors in ("strict", "surrogateescape", "backslashreplace"):  # Python's own
            stream.reconfigure(errors="qlatent.escape")


def _run(argv: Sequence[str] | None) -> int:
    """The command ``argv`` names; its refusals and failures as one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    try:
        with _on_interrupt():
            return args.func(args)
    except BrokenPipeError:
        raise  # no error: the reader of stdout has gone (main)
    except (ValueError, KeyError, OSError, DataError) as err:
        # one line, whatever the message (a file name or a reason may span several); a missing
        # dataset's ways to get it follow on their own lines, as under ``qlatent data``
        return report_error(err)
    except MemoryError:
        print(f"qlatent: error: out of memory{_MEMORY_ADVICE}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        import torch
        from torch._dynamo.exc import BackendCompilerFailed

        if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err):
            message = terminal_text(" ".join(str(err).split()[:12]))  # torch's first sentence
            print(f"qlatent: error: out of memory: {message}{_MEMORY_ADVICE}", file=sys.stderr)
            return 2
        if not isinstance(err, BackendCompilerFailed):
            if isinstance(err.__context__, OSError):
                # torch.save's zip writer, closed after a write failed (a full disk, a file-size
                # limit), replaces that error with its own ("[enforce fail …] unexpected pos")
                return report_error(err.__context__)
            raise
        # torch.compile could not build a kernel (on the CPU: no working C++ compiler): the
        # backend's own exception, its first line (Dynamo's message adds advice on debugging)
        inner = getattr(err, "inner_exception", None) or err
        lines = str(inner).strip().splitlines()
        reason = f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__
        reason = terminal_text(reason)
        print(
            f"qlatent: error: torch.compile failed: {reason} (without it: compile = false "
            "in the bottleneck's args, or a benchmark's --no-compile)",
            file=sys.stderr,
        )
        return 2
