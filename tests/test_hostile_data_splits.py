"""Hostile checks of the data every experiment trains, validates and tests on: splits that are
disjoint and the same wherever they are drawn again, binarization and scaling as documented.

The finding: an image folder is split by a permutation of its sorted file list, drawn again
each time the data is read. One image added to the folder (a later ``qlatent data export``, a
copied file) re-drew every split, and ``qlatent eval`` / ``compress --data checkpoint-test``
then scored a "test" set made mostly of the run's training images, without a word.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from cli_helpers import run_cli
from qlatent.data import DataError, binarize_splits, synthetic_binary, synthetic_labelled
from qlatent.experiments import custom

RUN = """
[data]
name = "folder"
folder = "{folder}"
image_size = 4
val_size = 5
test_size = 5

[model]
hidden = [8]
latent_dim = 2

[bottleneck]
name = "lattice"

[train]
epochs = 1
batch_size = 10
eval_batch_size = 20
max_steps = 1
progress = false
"""


def _rows(x: torch.Tensor) -> set[bytes]:
    return {hashlib.sha256(r.contiguous().numpy().tobytes()).digest() for r in x.flatten(1)}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny run on a folder of 30 distinct 4×4 grey images: (its folder, its best.pt)."""
    from qlatent.data.folder import write_image_folder

    root = tmp_path_factory.mktemp("folder-run")
    folder = root / "images"
    levels = torch.arange(30).float().view(30, 1, 1, 1) * 8 / 255  # every image distinct
    noise = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.01
    write_image_folder((levels + noise).clamp(0, 1), folder)
    config = root / "run.toml"
    config.write_text(RUN.format(folder=folder.as_posix()))
    custom.train(custom.load_config(config, [f"out_dir={root / 'run'}"]))
    return folder, root / "run" / "best.pt"


def _add_image(folder, name="zzz.png"):
    from PIL import Image

    Image.fromarray(np.full((4, 4), 7, dtype=np.uint8)).save(folder / name)


def test_a_folder_that_gained_an_image_is_refused_by_eval_not_resplit(folder_run, tmp_path):
    """The folder as trained evaluates; once an image is added, its re-drawn test split holds
    training images of the run, and eval refuses it naming the folder."""
    folder, best = folder_run
    ckpt = torch.load(best, weights_only=True)
    _, cfg = custom.model_from_checkpoint(ckpt, best)
    trained = custom.load_data(cfg.data, progress=False)
    assert custom.eval_checkpoint(best, progress=False)["images"] > 0
    _add_image(folder)
    try:
        resplit = custom.load_data(cfg.data, progress=False)
        assert _rows(resplit["test"]) & _rows(trained["train"])  # the leak a re-split makes
        with pytest.raises(DataError, match="images it was trained on"):
            custom.eval_checkpoint(best, progress=False)
    finally:
        (folder / "zzz.png").unlink()
    assert custom.eval_checkpoint(best, progress=False)["images"] > 0  # restored: evaluates


def test_compress_from_a_changed_folder_is_one_line(folder_run, tmp_path, capsys):
    """``compress --data checkpoint-test`` reads the checkpoint's folder as eval does."""
    folder, best = folder_run
    (folder / "000003.png").rename(folder / "renamed.png")  # same images, another order
    try:
        code, err = run_cli(
            ["compress", "--checkpoint", best, "--data", "checkpoint-test", "-o",
             tmp_path / "c.qlc"], capsys)  # fmt: skip
    finally:
        (folder / "renamed.png").rename(folder / "000003.png")
    assert code == 2 and "images it was trained on" in err and err.count("\n") == 1, err


def test_a_split_of_a_folder_is_read_alone(folder_run, tmp_path, capsys):
    """``load_split`` gives a split (or its first images) as ``load_data`` does, decoding only
    those files: ``compress --data checkpoint-test --limit 2`` codes two test images of a folder
    whose training images it never reads (one of them unreadable here)."""
    folder, best = folder_run
    ckpt = torch.load(best, weights_only=True)
    _, cfg = custom.model_from_checkpoint(ckpt, best)
    whole = custom.load_data(cfg.data, progress=False)
    for split in ("train", "val", "test"):
        assert torch.equal(custom.load_split(cfg.data, split), whole[split])
        assert torch.equal(custom.load_split(cfg.data, split, 2), whole[split][:2])
    from qlatent.data.folder import load_image_folder

    for outside in ([30], [-1]):
        with pytest.raises(ValueError, match="indices outside the 30 images of"):
            load_image_folder(folder, size=4, channels=1, indices=outside)
    index = custom._split_indices(30, cfg.data.val_size, cfg.data.test_size, cfg.data.split_seed)
    trained = folder / f"{index['train'][0].item():06d}.png"
    kept = trained.read_bytes()
    trained.write_bytes(b"not an image")
    try:
        with pytest.raises(DataError, match="cannot read image"):
            custom.load_data(cfg.data, progress=False)  # every file is decoded
        args = ["compress", "--checkpoint", best, "--data", "checkpoint-test", "--limit", 2]
        code, err = run_cli([*args, "-o", tmp_path / "two.qlc"], capsys)
    finally:
        trained.write_bytes(kept)
    assert code == 0, err


def test_an_llvq_folder_run_is_not_resumed_on_a_resplit_folder(tmp_path, capsys):
    """``reproduce llvq-celeba`` (and ``llvq-ffhq``) split their folder the same way and saved
    no record of it: resumed after an image was added, the run trained on, validated on and
    tested on re-drawn splits. The run now records its split, and the resume is refused."""
    from qlatent.cli import main
    from qlatent.data.folder import write_image_folder
    from qlatent.experiments import llvq_fashion

    folder = tmp_path / "images"
    images = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    write_image_folder(images, folder)
    small = [f"data.folder={folder}", "data.image_size=8", "data.val_size=2",
             "data.test_size=2", "model.latent_dim=2", "train.epochs=1", "train.batch_size=4",
             "train.progress=false", "eval.figure_images=2"]  # fmt: skip
    args = ["reproduce", "llvq-celeba", "--models", "vq", "--schedules", "constant",
            "--runs-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results")]  # fmt: skip
    args += [x for item in small for x in ("--set", item)]
    assert main(args) == 0
    capsys.readouterr()
    best = tmp_path / "runs" / "llvq-celeba" / "constant" / "vq" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    cfg = llvq_fashion.model_config("vq", "constant", dataset="celeba", overrides=small)
    assert ckpt["run_config"]["derived"] == {"folder_split": custom.folder_split(cfg.data)}
    assert llvq_fashion.is_checkpoint(ckpt)
    llvq_fashion.model_from_checkpoint(ckpt, best)  # the record is not read as a config field
    _add_image(folder)
    assert main([*args, "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "derived.folder_split" in err and err.count("\n") == 1, err


# ------------------------------------------------------------------ invariants that held


def test_custom_splits_are_disjoint_and_cover_the_data():
    """``_split_indices`` (mnist, fashion-mnist, folder, synthetic): disjoint, complete, sized as
    configured, the same for the same seed; and load_labels follows the same indices."""
    index = custom._split_indices(100, 10, 7, seed=5)
    again = custom._split_indices(100, 10, 7, seed=5)
    assert {k: len(v) for k, v in index.items()} == {"val": 10, "test": 7, "train": 83}
    assert torch.cat(list(index.values())).sort().values.tolist() == list(range(100))
    assert all(torch.equal(index[k], again[k]) for k in index)
    assert not torch.equal(custom._split_indices(100, 10, 7, seed=6)["test"], index["test"])


def test_synthetic_images_splits_are_disjoint_and_seeded():
    cfg = custom.DataConfig(name="synthetic", synthetic_size=60, split_seed=3)
    data = custom.load_data(cfg)
    assert {k: v.shape[0] for k, v in data.items()} == {"val": 10, "test": 10, "train": 40}
    train, val, test = (_rows(data[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in data.values())
    assert all(torch.equal(data[k], custom.load_data(cfg)[k]) for k in data)


def test_synthetic_binary_is_seeded_split_4_1_1_and_binary():
    a, b = synthetic_binary(n=120, dim=50, seed=4), synthetic_binary(n=120, dim=50, seed=4)
    assert {k: v.shape for k, v in a.items()} == {
        "train": (80, 50), "val": (20, 50), "test": (20, 50)}  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(set(v.unique().tolist()) <= {0.0, 1.0} for v in a.values())
    x, y = synthetic_labelled(n=60, dim=20, clusters=3, flip=0.0, seed=1)
    prototypes = {int(c): x[y == c][0] for c in y.unique()}  # labels follow the images
    assert all(torch.equal(x[i], prototypes[int(y[i])]) for i in range(60))


def test_binarization_is_the_documented_draw():
    """train/val from ``default_rng(seed)`` over the training images in file order, val the
    last rows; test from ``default_rng(seed + 1)``; pixels Bernoulli(grey / 255)."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8)
    test = rng.integers(0, 256, (8, 4, 4), dtype=np.uint8)
    splits = binarize_splits(train, test, seed=11, n_val=10)
    expected = np.random.default_rng(11).random((30, 16)) < train.reshape(30, 16) / 255.0
    assert np.array_equal(splits["train"].numpy(), expected[:20])
    assert np.array_equal(splits["val"].numpy(), expected[20:])
    expected = np.random.default_rng(12).random((8, 16)) < test.reshape(8, 16) / 255.0
    assert np.array_equal(splits["test"].numpy(), expected)
    assert splits["train"].dtype == torch.float32


def test_text_vocabulary_comes_from_training_sentences_only():
    """A word seen only in validation or test sentences is unknown to the model."""
    cfg = custom.DataConfig(name="synthetic-text", synthetic_size=60, vocab_size=1000)
    splits = custom._synthetic_text(60, 0)
    data, vocab = custom.load_text_data(cfg)
    assert set(vocab.words[4:]) == {w for s in splits["train"] for w in s}
    lengths = {k: int((v != 0).sum()) for k, v in data.items()}
    assert lengths == {k: sum(len(s) + 1 for s in v) for k, v in splits.items()}  # words + EOS


def test_a_checkpoint_of_a_relative_folder_is_read_from_any_working_folder(
    tmp_path, monkeypatch, capsys
):
    """The README's config names its folder relatively (``folder = "digits"``), and the
    checkpoint "needs nothing else": yet ``eval`` or ``compress --data checkpoint-test`` run
    from another folder failed, the folder not found. The run records where it found the folder
    (``derived.folder_path``) and reads it from there."""
    from qlatent.data.folder import write_image_folder

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    levels = torch.arange(30).float().view(30, 1, 1, 1) * 8 / 255
    write_image_folder(levels.expand(30, 1, 4, 4).clone(), work / "images")
    (work / "run.toml").write_text(RUN.format(folder="images"))
    monkeypatch.chdir(work)
    custom.train(custom.load_config(work / "run.toml", [f"out_dir={work / 'run'}"]))
    best = work / "run" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["run_config"]["data"]["folder"] == "images"  # the config as written
    assert ckpt["run_config"]["derived"]["folder_path"] == str((work / "images").resolve())
    expected = custom.eval_checkpoint(best, progress=False)
    monkeypatch.chdir(elsewhere)
    assert custom.eval_checkpoint(best, progress=False)["hard_path"] == expected["hard_path"]
    code, err = run_cli(
        ["compress", "--checkpoint", best, "--data", "checkpoint-test", "-o", elsewhere / "c.qlc"],
        capsys,
    )
    assert code == 0, err
