"""The checks that guard configs, dataset files and a resumed run, each pinned at its edge.

A config (:mod:`qlatent.config`), the data files (:mod:`qlatent.data`: checksums, IDX files,
the binarized-MNIST cache, the text corpus) and a run folder that a run resumes from
(:mod:`qlatent.train.loop`) are read from input anyone may have written. Each test below puts
one check at its boundary: the last value it accepts and the first it refuses, or the one input
that only this check refuses with its own message, so that a comparison shifted by one, a
dropped condition of an ``and``/``or`` or a dropped ``raise`` in these checks fails here.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import torch

from qlatent.config import apply_mapping, apply_overrides, from_dict
from qlatent.train.loop import TrainConfig

# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class _Inner:
    n: int = 1
    mode: Literal["a", "b"] = "a"
    either: int | str = 0
    args: dict = dataclasses.field(default_factory=dict)
    name: str | None = None


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    flag: bool = False


def test_an_override_without_an_equals_sign_is_named_as_such():
    with pytest.raises(ValueError, match=r"override 'inner\.n' is not of the form key=value"):
        apply_overrides(_Outer(), ["inner.n"])


def test_a_table_mapping_a_section_to_a_plain_value_is_a_value_error():
    # a section given a number: read as an override of the section itself, which no text sets
    with pytest.raises(ValueError, match="inner: cannot parse values of type"):
        apply_mapping(_Outer(), {"inner": 5})


def test_a_key_below_a_dict_field_sets_that_entry():
    cfg = apply_overrides(_Outer(), ["inner.args.num_codes=512", "inner.args.kind=e8"])
    assert cfg.inner.args == {"num_codes": 512, "kind": "e8"}
    deep = apply_overrides(_Outer(), ["inner.args.a.b=1"])
    assert deep.inner.args == {"a": {"b": 1}}


def test_a_key_below_a_plain_entry_of_a_dict_field_is_named():
    cfg = apply_overrides(_Outer(), ["inner.args.a=5"])
    with pytest.raises(ValueError, match=r"override 'inner\.args\.a\.b': 'a' is not a table"):
        apply_overrides(cfg, ["inner.args.a.b=1"])


def test_none_is_a_value_only_of_an_optional_field():
    # int | str has no None: "none" is the text "none", not None
    assert apply_overrides(_Outer(), ["inner.either=none"]).inner.either == "none"
    assert apply_overrides(_Outer(), ["inner.either=7"]).inner.either == 7
    assert apply_overrides(_Outer(), ["inner.name=None"]).inner.name is None


def test_a_choice_is_matched_exactly_not_by_its_case():
    assert apply_overrides(_Outer(), ["inner.mode=b"]).inner.mode == "b"
    with pytest.raises(ValueError, match=r"inner\.mode must be one of \['a', 'b'\], got 'B'"):
        apply_overrides(_Outer(), ["inner.mode=B"])
    with pytest.raises(ValueError, match="keep must be one of"):
        apply_overrides(TrainConfig(), ["keep=Best"])


def test_a_bare_dict_field_takes_json():
    cfg = apply_overrides(_Outer(), ['inner.args={"a": [1, 2]}'])
    assert cfg.inner.args == {"a": [1, 2]}


# --------------------------------------------------------------------------- MNIST files


def _fake_mnist(monkeypatch, tmp_path, images, labels):
    """``load_mnist`` reading ``images`` and ``labels`` as if they were the verified files."""
    from qlatent.data import datasets
    from qlatent.data.idx import write_idx
    from qlatent.data.sources import FILES

    paths = {
        FILES[("train", "images")]: write_idx(tmp_path / "images", images),
        FILES[("train", "labels")]: write_idx(tmp_path / "labels", labels),
    }
    monkeypatch.setattr(datasets, "dataset_files", lambda *args, **kwargs: paths)
    return datasets.load_mnist


@pytest.mark.parametrize(
    "shape, dtype, labels, message",
    [
        ((2, 28, 27), "uint8", 2, r"mnist train images have shape \(2, 28, 27\), uint8"),
        ((2, 28, 28), "int16", 2, r"mnist train images have shape \(2, 28, 28\), int16"),
        ((2, 28, 28), "uint8", 3, r"mnist train: \(3,\) labels for 2 images"),
    ],
)
def test_mnist_files_of_another_shape_or_kind_are_refused(
    monkeypatch, tmp_path, shape, dtype, labels, message
):
    import numpy as np

    load = _fake_mnist(
        monkeypatch, tmp_path, np.zeros(shape, dtype=dtype), np.zeros(labels, dtype=np.uint8)
    )
    with pytest.raises(ValueError, match=message):
        load("train")


def test_mnist_files_of_the_right_shape_load(monkeypatch, tmp_path):
    import numpy as np

    load = _fake_mnist(
        monkeypatch, tmp_path, np.zeros((2, 28, 28), np.uint8), np.arange(2, dtype=np.uint8)
    )
    images, labels = load("train")
    assert images.shape == (2, 28, 28) and labels.tolist() == [0, 1]


# --------------------------------------------------------------------------- a resumed run


def _run(out_dir, epochs: int = 1, **kwargs):
    """A small lattice VAE trained for ``epochs`` into ``out_dir`` (resumed from it if there)."""
    from qlatent.data import synthetic_binary
    from qlatent.models import lattice_vae
    from qlatent.train import fit

    torch.manual_seed(0)
    model = lattice_vae(latent_dim=4, hidden=8, data_dim=16)
    cfg = TrainConfig(epochs=epochs, batch_size=50, progress=False, keep="last", **kwargs)
    return fit(model, synthetic_binary(n=200, dim=16, seed=1), cfg, out_dir=out_dir)


def _rewrite(path, change):
    """``path`` (a checkpoint) rewritten with ``change`` applied to its dict, digest renewed."""
    from qlatent.train import load, save_atomic

    ckpt = load(path)
    change(ckpt)
    save_atomic(ckpt, path)


@pytest.mark.parametrize("state", [5, "x", None])
def test_a_random_state_that_is_no_tensor_is_a_checkpoint_error(tmp_path, state):
    from qlatent.train import CheckpointError

    _run(tmp_path)
    _rewrite(tmp_path / "last.pt", lambda ckpt: ckpt.update(rng=[{"torch": state}]))
    with pytest.raises(CheckpointError, match="the RNG state of rank 0 is not a table of tensors"):
        _run(tmp_path, epochs=2)


# --------------------------------------------------------------------------- IDX files


def test_an_idx_header_announcing_one_byte_more_than_memory_is_refused(monkeypatch, tmp_path):
    import struct

    from qlatent.data import idx

    monkeypatch.setattr("qlatent.data.sources.physical_memory", lambda: 100)
    fits = struct.pack(">HBBI", 0, 8, 1, 100) + bytes(100)
    assert idx.parse_idx(fits).shape == (100,)
    (tmp_path / "fits").write_bytes(fits)
    assert idx.read_idx(tmp_path / "fits").shape == (100,)
    for shape, code in [((101,), 8), ((51,), 0x0B)]:  # 101 bytes of uint8, 102 of int16
        head = struct.pack(f">HBB{len(shape)}I", 0, code, len(shape), *shape)
        with pytest.raises(ValueError, match="more than this machine's"):
            idx.parse_idx(head)
        (tmp_path / "big").write_bytes(head)
        with pytest.raises(ValueError, match="more than this machine's"):
            idx.read_idx(tmp_path / "big")


def test_an_axis_of_2_to_the_32_cannot_be_written(tmp_path):
    import numpy as np

    from qlatent.data.idx import write_idx

    # a view of one byte: nothing of its 4 GiB is allocated, the shape is refused first
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(2**32,), strides=(0,))
    with pytest.raises(ValueError, match=r"cannot store shape \(4294967296,\)"):
        write_idx(tmp_path / "x", huge)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- train settings


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(epochs=1),
        dict(lr=1.0),
        dict(lr_decay=0.0),
        dict(lr_decay=1.0),
        dict(max_steps=2**63 - 1),
        dict(patience=0),
        dict(warmup_epochs=0),
        dict(seed=2**64 - 1),
        dict(seed=-(2**63)),
        dict(max_minutes=1e300),
    ],
)
def test_train_settings_at_the_edge_of_their_range_are_taken(kwargs):
    cfg = TrainConfig(**kwargs)
    assert all(getattr(cfg, key) == value for key, value in kwargs.items())


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(epochs=0), r"epochs must be an integer in \[1, 2\^63\), got 0"),
        (dict(epochs=True), r"epochs must be an integer in \[1, 2\^63\), got True"),
        (dict(max_steps=2**63), r"max_steps must be an integer in \[1, 2\^63\) or None"),
        (dict(lr=1.0000001), r"lr must be a finite number in \(0, 1\]"),
        (dict(lr=0.0), r"lr must be a finite number in \(0, 1\]"),
        (dict(lr=True), r"lr must be a finite number in \(0, 1\], got True"),
        (dict(lr_decay=1.0000001), r"lr_decay must lie in \[0, 1\]"),
        (dict(max_minutes=float("inf")), "max_minutes must be a positive number or None"),
        (dict(seed=2**64), r"seed must be an integer in \[-2\^63, 2\^64\)"),
        (dict(seed=-(2**63) - 1), r"seed must be an integer in \[-2\^63, 2\^64\)"),
        (dict(seed=False), r"seed must be an integer in \[-2\^63, 2\^64\), got False"),
        (dict(progress="yes"), "progress must be true or false, got 'yes'"),
        (dict(tensorboard=1), "tensorboard must be true or false, got 1"),
        (dict(keep="first"), "keep must be 'best' or 'last', got 'first'"),
        (dict(optimizer="sgd"), "optimizer must be 'adam', 'adam_fused' or 'adam_normgrad'"),
        (dict(device="cuda:01"), "device must be 'cpu', 'cuda', 'cuda:N'"),
    ],
)
def test_train_settings_past_the_edge_of_their_range_are_refused(kwargs, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(**kwargs)


def test_train_settings_rebuilt_from_a_table_are_checked():
    assert from_dict(TrainConfig, {"epochs": 3}).epochs == 3
    with pytest.raises(ValueError, match="epochs must be an integer"):
        from_dict(TrainConfig, {"epochs": 0})


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """The checkpoint of a one-epoch run, as bytes (each test writes its own copy)."""
    folder = tmp_path_factory.mktemp("run")
    _run(folder)
    return (folder / "last.pt").read_bytes()


def _resume_from(tmp_path, one_epoch, change, **kwargs):
    (tmp_path / "last.pt").write_bytes(one_epoch)
    _rewrite(tmp_path / "last.pt", change)
    return _run(tmp_path, epochs=2, **kwargs)


def _state(**values):
    return lambda ckpt: ckpt["state"].update(values)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ckpt: ckpt.pop("world_size"), r"not a training checkpoint \(no \['world_size'\]\)"),
        (lambda ckpt: ckpt.update(train_config=5), "holds a train_config that is no table"),
        (lambda ckpt: ckpt.update(world_size=True), "holds a world_size that is no integer"),
        (lambda ckpt: ckpt.update(world_size=2), r"written by 2 process\(es\)"),
        (_state(step=2**62), "state.step must be a non-negative integer, got 4611686018427387904"),
        (_state(bad_epochs=-1), "state.bad_epochs must be a non-negative integer, got -1"),
        (_state(best_val=float("nan")), "state.best_val must be a number, got nan"),
        (_state(wall_s=float("inf")), "state.wall_s must be a time in seconds, got inf"),
        (_state(wall_s=-0.5), "state.wall_s must be a time in seconds, got -0.5"),
        (_state(history=[{"epoch": 1, "x": torch.zeros(1)}]), "not JSON serializable"),
    ],
)
def test_a_saved_state_out_of_range_is_a_checkpoint_error(tmp_path, one_epoch, change, message):
    from qlatent.train import CheckpointError

    with pytest.raises(CheckpointError, match=message):
        _resume_from(tmp_path, one_epoch, change)


def test_a_saved_state_at_the_edge_of_its_range_resumes(tmp_path, one_epoch):
    result = _resume_from(tmp_path, one_epoch, _state(step=2**62 - 1, wall_s=0.0, bad_epochs=0))
    assert result.history[-1]["epoch"] == 2 and result.history[-1]["step"] == 2**62 - 1 + 3


@pytest.mark.parametrize("out_dir", ["", " "])
def test_an_empty_output_folder_name_is_refused(tmp_path, monkeypatch, out_dir):
    # "" was read as Path(""), the current folder, and the run trained into it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"must be named \(out_dir is empty\)"):
        _run(out_dir)
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="the output folder .* is a file"):
        _run(tmp_path / "f")


# --------------------------------------------------------------------------- binarized MNIST


def test_a_binarization_seed_or_validation_size_at_its_edge(monkeypatch):
    import numpy as np

    from qlatent.data.datasets import binarize, binarize_splits

    images = np.full((3, 2, 2), 128, np.uint8)
    for seed in (True, False):
        with pytest.raises(ValueError, match=f"seed must be a non-negative integer, got {seed}"):
            binarize(images, seed)
    assert binarize(images, 0).shape == (3, 4)
    splits = binarize_splits(images, images, seed=0, n_val=2)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1, 2, 3]
    with pytest.raises(ValueError, match="3 training images cannot give 3 for val"):
        binarize_splits(images, images, seed=0, n_val=3)


def _small_cache(monkeypatch, tmp_path):
    """A binarized-MNIST cache of 30 training (10 of them val) and 6 test images."""
    import numpy as np

    from qlatent.data import datasets

    for name, value in [("N_TRAIN_IMAGES", 30), ("N_TEST_IMAGES", 6), ("N_VAL", 10)]:
        monkeypatch.setattr(datasets, name, value)
    rng = np.random.default_rng(0)
    train, test = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (30, 6))
    splits = datasets.binarize_splits(train, test, seed=777, n_val=10)
    path = tmp_path / "cache.npz"
    datasets._save_cache(path, splits, 777)
    return datasets, path, splits


def _rewrite_entry(path, name, data):
    """The cache at ``path`` with the entry ``name`` (a plain npy member) replaced by ``data``."""
    import zipfile

    import numpy as np

    with np.load(path) as npz:
        fields = dict(npz)
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in fields.items():
            raw = _npy_bytes(array)
            archive.writestr(f"{key}.npy", data(array, raw) if key == name else raw)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda array, raw: raw + b"\x00", r"train: [\d,]+ bytes, not a header and 1,960 bytes"),
        (lambda array, raw: _npy_bytes(array, fortran=True), r"\(Fortran order\)"),
    ],
    ids=["trailing-byte", "fortran-order"],
)
def test_a_cache_entry_with_a_trailing_byte_or_in_fortran_order_is_refused(
    monkeypatch, tmp_path, change, message
):
    datasets, path, splits = _small_cache(monkeypatch, tmp_path)
    loaded = datasets._load_cache(path, 777)
    assert all(torch.equal(loaded[k], splits[k]) for k in splits)
    _rewrite_entry(path, "train", change)
    with pytest.raises(ValueError, match=message):
        datasets._load_cache(path, 777)


def _npy_bytes(array, *, fortran: bool = False) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asfortranarray(array) if fortran else array)
    return buffer.getvalue()
