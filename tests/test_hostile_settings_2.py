"""Settings a paper table accepted and then ignored, the synthetic sentences' splits, and
16-bit colour PNGs: a ``--set`` key takes effect or is refused naming it; no test sentence is
a training sentence; a 16-bit sample is rounded to 8 bits as the grey path rounds it."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from qlatent.data.folder import load_image_folder
from qlatent.experiments import custom, lattice_mnist, llvq_fashion, softvq_mnist, text_rd


# ------------------------------------------------------------------- settings with no effect
@pytest.mark.parametrize(
    ("dataset", "quick", "setting"),
    [
        ("fashion", False, "data.image_size=32"),
        ("fashion", False, "data.channels=3"),
        ("fashion", False, "data.test_size=500"),
        ("fashion", False, "data.synthetic_size=500"),
        ("fashion", False, "data.vocab_size=50"),
        ("fashion", True, "data.image_size=32"),  # the synthetic images are 28 × 28
        ("celeba", False, "data.synthetic_size=500"),
        ("celeba", False, "data.max_tokens=5"),
    ],
)
def test_llvq_refuses_data_settings_its_data_does_not_read(dataset, quick, setting):
    """``reproduce llvq-fashion --set data.image_size=32`` trained on 28 × 28 FashionMNIST and
    recorded 32 in the results' config; likewise a folder's test size on FashionMNIST, a
    synthetic size on a folder."""
    key = setting.split("=")[0]
    folder = ["data.folder=/images"] if dataset == "celeba" else []
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " = .* has no effect"):
        llvq_fashion.model_config(
            "vq", "constant", quick=quick, dataset=dataset, overrides=[*folder, setting]
        )


@pytest.mark.parametrize(
    ("dataset", "quick", "setting", "field", "value"),
    [
        ("fashion", False, "data.val_size=100", "val_size", 100),
        ("fashion", False, "data.split_seed=7", "split_seed", 7),
        ("fashion", True, "data.test_size=20", "test_size", 20),
        ("fashion", True, "data.channels=3", "channels", 3),
        ("celeba", False, "data.image_size=32", "image_size", 32),
        ("celeba", False, "data.test_size=50", "test_size", 50),
    ],
)
def test_llvq_takes_the_data_settings_its_data_reads(dataset, quick, setting, field, value):
    folder = ["data.folder=/images"] if dataset == "celeba" else []
    cfg = llvq_fashion.model_config(
        "vq", "constant", quick=quick, dataset=dataset, overrides=[*folder, setting]
    )
    assert getattr(cfg.data, field) == value


def test_llvq_takes_its_own_files_sizes_whatever_data_reads_them():
    """The table's files set sizes that its --quick data does not read (ffhq's 1024 pixels
    on the synthetic images): only what --set changes is checked."""
    cfg = llvq_fashion.model_config("vq", "constant", quick=True, dataset="ffhq")
    assert cfg.data.name == "synthetic" and cfg.data.image_size == 1024


def test_llvq_synthetic_images_are_their_configured_shape():
    """What the refusal relies on: the synthetic set is 28 × 28 whatever ``image_size`` says and
    FashionMNIST one channel whatever ``channels`` says."""
    cfg = llvq_fashion.model_config("vq", "constant", quick=True).data
    images = llvq_fashion.load_data(cfg)
    assert images["train"].shape[1:] == (1, 28, 28) and cfg.image_size != 28
    assert llvq_fashion.image_shape(llvq_fashion.DataConfig(channels=3)) == (1, 28, 28)


@pytest.mark.parametrize("setting", ["eval_seed=5", "train.anneal_steps=10"])
def test_llvq_refuses_a_seed_and_an_annealing_it_does_not_use(setting):
    """No draw of the table is seeded by ``eval_seed`` (its codes use seed 0), and it has no
    rate term (``loss.rate_weight = 0``) for ``train.anneal_steps`` to anneal."""
    with pytest.raises(ValueError, match=setting.split("=")[0].replace(".", r"\.")):
        llvq_fashion.model_config("vq", "constant", quick=True, overrides=[setting])


TABLES = {
    "lattice-mnist": lambda ov: lattice_mnist.model_config(
        "rect_lattice", quick=True, overrides=ov
    ),
    "softvq-mnist": lambda ov: softvq_mnist.model_config("vq", quick=True, overrides=ov),
    "llvq": lambda ov: llvq_fashion.model_config("vq", "constant", quick=True, overrides=ov),
}


@pytest.mark.parametrize(
    ("table", "setting"),
    [
        ("lattice-mnist", "data.vocab_size=50"),
        ("lattice-mnist", "data.max_tokens=5"),
        ("softvq-mnist", "data.vocab_size=50"),
        ("lattice-mnist", "model.num_residual=1"),
        ("lattice-mnist", "model.embed=16"),
        ("lattice-mnist", "model.variance=0.5"),  # a Bernoulli likelihood has no variance
        ("lattice-mnist", "model.latent_activation=true"),
        ("softvq-mnist", "model.layers=3"),
        ("softvq-mnist", "model.num_residual=1"),
        ("llvq", "model.embed=16"),
        ("llvq", "out_dir=elsewhere"),
        ("lattice-mnist", "out_dir=elsewhere"),
    ],
)
def test_paper_tables_refuse_settings_their_model_and_data_do_not_read(table, setting):
    """Each was accepted, recorded nowhere in what the table ran (its config was the same with
    and without it) and changed nothing."""
    key = setting.split("=")[0]
    build = TABLES[table]
    build([])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build([setting])


def test_model_settings_table_names_every_field_and_its_readers_pass():
    names = {f for reads in custom.MODEL_SETTINGS.values() for f in reads}
    assert names | {"family"} == set(custom.ModelConfig.__dataclass_fields__)
    assert set(custom.MODEL_SETTINGS) == set(custom.FAMILIES)
    custom.check_model_settings(custom.ModelConfig(family="conv", num_residual=1))
    custom.check_model_settings(
        custom.ModelConfig(family="relu_mlp", likelihood="squared_error", variance=0.5)
    )
    custom.check_model_settings(custom.ModelConfig(family="text_gru", embed=16, layers=2))


@pytest.mark.parametrize(
    ("quick", "setting"),
    [
        (True, "data.image_size=32"),
        (True, "data.val_size=10"),
        (False, "data.split_seed=3"),  # text-en's split is fixed
        (False, "data.synthetic_size=100"),
        (True, "model.num_residual=1"),
        (True, "model.latent_activation=true"),
        (True, "model.variance=0.5"),
        (True, "eval.iwae_samples=3"),
    ],
)
def test_text_rd_refuses_settings_its_points_do_not_read(quick, setting, tmp_path):
    """Built without training: a point's config was accepted with each of these, and the text
    model or its data read none of them."""
    key = setting.split("=")[0]
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " .*has no effect"):
        text_rd.point_config(
            "lattice", "λ=0.1", quick=quick, runs_dir=str(tmp_path), overrides=[setting]
        )


def test_text_rd_takes_the_settings_its_points_read(tmp_path):
    sets = ["data.split_seed=3", "data.vocab_size=50", "model.layers=2", "eval_seed=5"]
    cfg = text_rd.point_config(
        "lattice", "λ=0.1", quick=True, runs_dir=str(tmp_path), overrides=sets
    )
    assert (cfg.data.split_seed, cfg.data.vocab_size, cfg.model.layers) == (3, 50, 2)
    assert cfg.eval_seed == 5 and cfg.data.synthetic_size == 240  # the quick size, not refused


# ------------------------------------------------------------------- synthetic sentences
@pytest.mark.parametrize(("size", "seed"), [(240, 0), (600, 1), (1080, 2)])
def test_synthetic_sentences_are_in_one_split_only(size, seed):
    """Drawn with replacement from a language of 1,080 sentences, 26 of the 100 test sentences
    of the default 600 (seed 0) were training sentences, and 14 validation sentences too."""
    cfg = custom.DataConfig(name="synthetic-text", synthetic_size=size, split_seed=seed)
    splits, vocab = custom.load_text_data(cfg)
    rows = {k: {tuple(r.tolist()) for r in v} for k, v in splits.items()}
    assert sum(map(len, rows.values())) == size  # no sentence twice, in a split or across them
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["val"]
    assert not rows["val"] & rows["test"]
    assert (len(splits["val"]), len(splits["test"])) == (size // 6, size // 6)


def test_synthetic_sentences_are_seeded_and_past_the_language_refused():
    a = custom.load_text_data(custom.DataConfig(name="synthetic-text", split_seed=4))[0]
    b = custom.load_text_data(custom.DataConfig(name="synthetic-text", split_seed=4))[0]
    c = custom.load_text_data(custom.DataConfig(name="synthetic-text", split_seed=5))[0]
    assert all(a[k].equal(b[k]) for k in a) and not a["test"].equal(c["test"])
    too_many = custom.DataConfig(name="synthetic-text", synthetic_size=1081)
    with pytest.raises(ValueError, match=r"data\.synthetic_size must be at most 1,080"):
        custom.load_text_data(too_many)


# ------------------------------------------------------------------- 16-bit colour PNGs
def _png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A PNG of 16-bit samples ``(H, W, C)`` (colour type 0 grey, 2 RGB, 4 grey and alpha,
    6 RGBA), written here byte by byte (Pillow writes no 16-bit colour PNG)."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\0" + samples[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _rounded(samples: np.ndarray) -> np.ndarray:
    """The folder's values of 16-bit samples: round(v · 255 / 65535) / 255 − 0.5."""
    return np.rint(samples * 255 / 65535) / 255 - 0.5


@pytest.mark.parametrize(("colour_type", "channels"), [(2, 3), (6, 4)])
def test_16_bit_colour_pngs_are_rounded_not_cut_to_their_high_bytes(
    tmp_path, colour_type, channels
):
    """Pillow reads a 16-bit RGB(A) PNG's high bytes: 0x80FF came out 0x80 = 128 where the
    grey path gives round(33023 · 255 / 65535) = 128.5 → 129, so one value read in two levels
    as grey or as colour, dark values biased down and bright ones up by up to a level."""
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 65536, (8, 8, channels))
    samples[0, 0, :3] = 0x80FF  # high byte 0x80, rounds up
    samples[0, 1, :3] = 0x00FF  # high byte 0, rounds to 1
    (tmp_path / "a.png").write_bytes(_png16(samples, colour_type))
    x = load_image_folder(tmp_path, size=8, channels=3, progress=False)
    got = x[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, _rounded(samples[..., :3]), atol=1e-6)


def test_a_16_bit_colour_pixel_reads_as_the_same_16_bit_grey_pixel(tmp_path):
    value = np.full((4, 4, 1), 0x01FF)  # 511: high byte 1, round(511 · 255 / 65535) = 2
    (tmp_path / "grey").mkdir()
    (tmp_path / "colour").mkdir()
    (tmp_path / "grey" / "a.png").write_bytes(_png16(value, 0))
    (tmp_path / "colour" / "a.png").write_bytes(_png16(value.repeat(3, axis=2), 2))
    grey = load_image_folder(tmp_path / "grey", size=4, channels=1, progress=False)
    colour = load_image_folder(tmp_path / "colour", size=4, channels=1, progress=False)
    assert grey.equal(colour)
    assert grey[0, 0, 0, 0].item() == pytest.approx(2 / 255 - 0.5)


def test_16_bit_grey_with_alpha_reads_its_rounded_grey(tmp_path):
    rng = np.random.default_rng(4)
    samples = rng.integers(0, 65536, (8, 8, 2))
    (tmp_path / "a.png").write_bytes(_png16(samples, 4))
    x = load_image_folder(tmp_path, size=8, channels=1, progress=False)
    np.testing.assert_allclose(x[0, 0].numpy(), _rounded(samples[..., 0]), atol=1e-6)


def test_a_16_bit_colour_png_is_still_turned_upright(tmp_path):
    """The rounded image is a new one: its EXIF orientation (6: turn 90° clockwise) is kept."""
    samples = np.zeros((4, 4, 3), dtype=np.int64)
    samples[0, 1] = 65535  # row 0, column 1 of the stored image
    data = _png16(samples, 2)
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()[6:]  # without the "Exif\0\0" marker, as a PNG's eXIf chunk holds it
    crc = struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + crc
    end = data.index(b"IDAT") - 4
    (tmp_path / "a.png").write_bytes(data[:end] + chunk + data[end:])
    x = load_image_folder(tmp_path, size=4, channels=1, progress=False)[0, 0]
    # turned clockwise, row 0 becomes the last column: (0, 1) goes to (1, 3)
    assert x[1, 3].item() == 0.5 and x.sum().item() == 0.5 - 15 * 0.5
