"""Text for the terminal: file names, config values and headers shown with their control and
format characters escaped, the command line's argument types, and the progress bar of every
loop. Used by the CLI, the data commands, the experiments and the training loop (through
:mod:`qlatent._utils`)."""

from __future__ import annotations

import argparse
import re
import unicodedata

from tqdm.auto import tqdm as _tqdm

#: what a terminal acts on rather than shows, or shows other than as written: the controls
#: (category Cc: C0, DEL and C1, ``\x9b`` is CSI as ``\x1b[`` is), the format characters (Cf:
#: bidirectional overrides and isolates, zero-width characters, which reorder or hide the text
#: around them, "Trojan Source") and the line and paragraph separators (Zl, Zp)
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp"})
#: the characters :func:`terminal_text` looks at: all but printable ASCII (whose category it reads)
_NOT_PRINTABLE_ASCII = re.compile("[^\x20-\x7e]")
_NAMED_CONTROL = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    """A character as :func:`terminal_text` shows it: itself unless it is hidden (above)."""
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDC9F:
        # a surrogate that carries the byte 0x80-0x9f of a file name undecodable in the locale
        # (the standard streams write it back as that byte: a C1 control)
        return f"\\x{code - 0xDC00:02x}"
    category = unicodedata.category(char)
    if category == "Cc":
        return _NAMED_CONTROL.get(char) or f"\\x{code:02x}"
    if category in _HIDDEN:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return char


def terminal_text(text: object, *, lines: bool = False) -> str:
    """``str(text)`` as it may be written to a terminal: every control character in it as a
    visible escape (``\\x1b``, ``\\x9b``, ``\\n``), and every format or separator character
    (``\\u202e``, ``\\u200b``, ``\\u2028``), so that a file name, a config value, a
    checkpoint's or a ``.qlc`` header's string cannot recolour, clear or retitle the terminal,
    move its cursor, reorder or hide text, or forge a line of output. Other text (``Λ``, ``é``,
    ``漢``) is left as it is. ``lines=True``: a block of lines the program joined itself, whose
    newlines stay (a line's own control characters are still escaped). For display only: a
    path is opened, and a file written, with the text as it is."""
    text = str(text)
    if lines:
        return "\n".join(_NOT_PRINTABLE_ASCII.sub(_shown, line) for line in text.split("\n"))
    return _NOT_PRINTABLE_ASCII.sub(_shown, text)


def path_name(text: str) -> str:
    """argparse type: a path, not empty (``--data-dir ""``, an unset shell variable, was read as
    no option at all, or as the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class tqdm(_tqdm):
    """The progress bar of every loop here: ``tqdm.auto.tqdm`` without tqdm's monitor thread.
    tqdm starts that thread with the first bar made in a process, a disabled one too, and
    nothing ends it: ``fit`` with ``progress = false`` (or a folder read, an IWAE evaluation)
    left a thread running after it returned. The monitor only forces a redraw of a bar whose
    updates have slowed down after a fast start; the bars here advance at an even pace."""

    monitor_interval = 0
