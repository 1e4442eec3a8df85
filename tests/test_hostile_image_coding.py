"""Hostile or mistaken input to the image coding API (``compress_images``, ``update_code_model``,
``decompress_images``, ``gated_vae_from_checkpoint``), the ``compress`` / ``update`` commands,
the data loaders called directly and the autoencoder: one clear error, never a traceback deep in
torch / PIL / NumPy, an absurd allocation or a silently wrong result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import one_line_error, run_cli
from qlatent.coding.container import CodingError
from qlatent.data import DataError, binarize, binarize_splits, synthetic_binary, write_idx
from qlatent.data.folder import load_image_folder
from qlatent.image_coding import (
    compress_images,
    decompress_images,
    gated_vae_from_checkpoint,
    update_code_model,
)
from qlatent.models import Autoencoder, gated_vae
from qlatent.train import CheckpointError


@pytest.fixture(scope="module")
def lattice():
    torch.manual_seed(0)
    return gated_vae("lattice", latent_dim=4, hidden=8, data_dim=16)


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    return gated_vae("vq", latent_dim=4, hidden=8, data_dim=16, num_codes=8)


X = torch.rand(5, 16, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- the Python API
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"x": X.numpy()}, TypeError, "x must be a torch.Tensor"),
        ({"x": (X > 0.5).long()}, TypeError, "floating-point images, got torch.int64"),
        ({"x": X[0]}, ValueError, r"x must be images \(N, D\)"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ({"batch_size": True}, ValueError, "batch_size must be a positive integer, got True"),
        ({"batch_size": 2.5}, ValueError, "batch_size must be a positive integer, got 2.5"),
        ({"model": "model.pt"}, TypeError, "model must be a qlatent Autoencoder, got str"),
    ],
    ids=["numpy", "integers", "one-image", "batch-0", "batch-bool", "batch-float", "model"],
)
@pytest.mark.parametrize("call", ["compress", "update"])
def test_coding_functions_name_a_bad_argument(lattice, vq, call, kwargs, error, message):
    args = {"model": lattice if call == "compress" else vq, "x": X} | kwargs
    run = compress_images if call == "compress" else update_code_model
    extra = {"seed": 0} if call == "compress" else {}
    with pytest.raises(error, match=message):
        run(args.pop("model"), args.pop("x"), **args, **extra)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_decompress_names_its_batch_size_not_the_file(lattice, batch_size):
    data = compress_images(lattice, X, seed=0)
    with pytest.raises(
        ValueError, match=f"batch_size must be a positive integer, got {batch_size}"
    ):
        decompress_images(lattice, data, batch_size=batch_size)


def test_update_over_no_images_says_so(vq):
    with pytest.raises(ValueError, match="x holds no images"):
        update_code_model(vq, X[:0])


@pytest.mark.parametrize("ckpt", [{}, [1], None, {"model": [1]}], ids=str)
def test_a_checkpoint_without_weights_is_named(ckpt):
    with pytest.raises(CheckpointError, match="ckpt.pt holds no model weights"):
        gated_vae_from_checkpoint(ckpt, "ckpt.pt")


def test_reconstructions_past_the_machines_memory_are_refused_before_decoding(lattice, monkeypatch):
    """A file's code is bounded by max_elements; its images may be far larger (784 values per
    image for 4 coded here): they are checked against the memory before the decoder runs."""
    data = compress_images(lattice, X, seed=0)
    monkeypatch.setattr("qlatent.data.sources.physical_memory", lambda: 5 * 16 * 4 - 1)
    with pytest.raises(CodingError, match=r"5 images of shape \(16,\) would take"):
        decompress_images(lattice, data)
    monkeypatch.setattr("qlatent.data.sources.physical_memory", lambda: 5 * 16 * 4)
    assert decompress_images(lattice, data).shape == (5, 16)


def test_an_allocation_failure_in_the_encoder_is_not_blamed_on_the_images(monkeypatch):
    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=4, hidden=8, data_dim=16)

    def no_memory(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1")

    monkeypatch.setattr(model.encoder, "forward", no_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory") as info:
        compress_images(model, X, seed=0)
    assert not isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- the autoencoder
@pytest.mark.parametrize(
    ("part", "value", "message"),
    [
        ("encoder", lambda x: x, "encoder must be a torch.nn.Module, got function"),
        (
            "bottleneck",
            torch.nn.Linear(4, 4),
            "bottleneck must be a qlatent Bottleneck, got Linear",
        ),
        ("decoder", "decoder", "decoder must be a torch.nn.Module, got str"),
        ("likelihood", torch.nn.Identity(), "likelihood must be a qlatent Likelihood"),
        ("likelihood", None, "likelihood must be a qlatent Likelihood"),
    ],
    ids=["encoder", "bottleneck", "decoder", "likelihood", "none"],
)
def test_an_autoencoder_of_parts_of_the_wrong_kind_is_refused_when_built(part, value, message):
    from qlatent.bottlenecks import build
    from qlatent.nn import Bernoulli

    parts = {
        "encoder": torch.nn.Linear(16, 4),
        "bottleneck": build("lattice", dim=4),
        "decoder": torch.nn.Linear(4, 16),
        "likelihood": Bernoulli(),
    }
    with pytest.raises(TypeError, match=message):
        Autoencoder(**(parts | {part: value}))


@pytest.mark.parametrize(
    ("x", "message"),
    [((X > 0.5).long(), "got torch.int64"), (X.numpy(), "got ndarray")],
    ids=["integers", "numpy"],
)
def test_an_autoencoder_takes_floating_point_tensors(lattice, x, message):
    with pytest.raises(TypeError, match=f"x must be a floating-point tensor, {message}"):
        lattice(x)


# --------------------------------------------------------------------------- the commands
def _custom_checkpoint(path, bottleneck: str):
    """A small untrained ``qlatent train CONFIG`` conv model on 1 × 28 × 28 images in [0, 1]."""
    from qlatent.config import apply_mapping, to_dict
    from qlatent.experiments import custom
    from qlatent.train import save_atomic

    settings = {
        "data": {"name": "synthetic", "synthetic_size": 60},
        "model": {"family": "conv", "hidden": [8], "latent_dim": 4},
        "bottleneck": {"name": bottleneck},
    }
    cfg = apply_mapping(custom.RunConfig(), settings)
    torch.manual_seed(0)
    model = custom.build_model(cfg, (1, 28, 28), 0.1)
    run = to_dict(cfg) | {"derived": {"image_shape": [1, 28, 28], "data_variance": 0.1}}
    save_atomic({"model": model.state_dict(), "run_config": run}, path)
    return path


@pytest.mark.parametrize(
    ("command", "bottleneck"), [("compress", "lattice"), ("update", "vq")], ids=str
)
def test_images_in_another_range_than_the_models_are_refused(tmp_path, capsys, command, bottleneck):
    """The LL-VQ table's images lie in [-0.5, 0.5]; a ``qlatent train`` model of the same shape
    takes [0, 1]: its codes were written without a word."""
    ckpt = _custom_checkpoint(tmp_path / "model.pt", bottleneck)
    out = tmp_path / "out"
    args = [command, "--checkpoint", ckpt, "--data", "synthetic-images-test", "-o", out]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err), err
    assert "values in [-0.5, 0.5]" in err and "takes them in [0.0, 1.0]" in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- image folders
def _load(folder, **kwargs):
    return load_image_folder(folder, **({"size": 4, "channels": 1, "progress": False} | kwargs))


def test_16_bit_images_are_scaled_by_their_own_range(tmp_path):
    """Pillow's conversion to 8 bits clipped every value above 255: a 16-bit image loaded
    nearly white. Scaled, it loads as the 8-bit image of the same picture."""
    grey = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(grey).save(tmp_path / "a" / "x.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "b" / "x.png")
    assert Image.open(tmp_path / "b" / "x.png").mode.startswith("I;16")
    assert torch.equal(_load(tmp_path / "a"), _load(tmp_path / "b"))


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_pixels_without_a_range_are_refused(tmp_path, mode):
    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(pixels if mode == "F" else (pixels * 1000).astype(np.int32)).save(
        tmp_path / "x.tif"
    )
    (tmp_path / "x.tif").rename(tmp_path / "x.png")  # a TIFF under an image name is read too
    with pytest.raises(DataError, match=f"x.png: {mode} pixels of 32 bits have no fixed range"):
        _load(tmp_path)


def test_an_exif_rotated_photo_is_loaded_upright(tmp_path):
    """A 16 × 8 JPEG, left half white, whose EXIF says: turn 90° clockwise to view. Viewers show
    the top half white; it was loaded lying on its side."""
    pixels = np.zeros((8, 16), np.uint8)
    pixels[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "x.jpg", exif=exif.tobytes(), quality=100)
    image = _load(tmp_path, size=8)[0, 0]
    assert (image[:3] > 0.4).all() and (image[5:] < -0.4).all(), image


@pytest.mark.parametrize("suffix", ["png", "webp"])
def test_an_animation_is_refused_not_cut_to_its_first_frame(tmp_path, suffix):
    frames = [Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))]
    frames[0].save(tmp_path / f"x.{suffix}", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=f"x.{suffix}: it holds several frames"):
        _load(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": True}, "size must be a positive integer, got True"),
        ({"channels": True}, "channels must be 1 or 3, got True"),
        ({"channels": 1.0}, "channels must be 1 or 3, got 1.0"),
    ],
    ids=["size-bool", "channels-bool", "channels-float"],
)
def test_image_size_and_channels_are_integers(tmp_path, kwargs, message):
    Image.new("L", (8, 8), 3).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=message):
        _load(tmp_path, **kwargs)


# --------------------------------------------------------------------------- datasets
IMAGES = np.random.default_rng(0).integers(0, 256, (20, 4, 4), dtype=np.uint8)


@pytest.mark.parametrize("seed", [None, -1, 1.5, True], ids=str)
def test_binarize_names_a_seed_it_cannot_repeat(seed):
    """``None`` drew a fresh, unrepeatable binarization without a word; the others failed in
    NumPy naming no argument."""
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        binarize(IMAGES, seed)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        binarize_splits(IMAGES, IMAGES, seed, n_val=2)


def test_the_binarized_cache_is_named_by_an_integer_seed():
    from qlatent.data.datasets import binarized_mnist_cache_path

    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        binarized_mnist_cache_path("../../x")


def test_binarize_takes_an_empty_batch():
    assert binarize(IMAGES[:0], 0).shape == (0, 16)


@pytest.mark.parametrize("n_val", [-1, 2.5, True], ids=str)
def test_binarize_splits_names_a_bad_validation_size(n_val):
    """``n_val=-1`` gave every training image to train and an empty val without a word."""
    with pytest.raises(ValueError, match="n_val must be a non-negative integer"):
        binarize_splits(IMAGES, IMAGES, 0, n_val=n_val)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n": 12.5}, ValueError, "n must be an integer, got 12.5"),
        ({"dim": "4"}, ValueError, "dim must be an integer, got '4'"),
        ({"seed": 2**64}, ValueError, "seed must lie in torch's range"),
        ({"seed": 1.5}, ValueError, "seed must be an integer, got 1.5"),
        ({"flip": "0.1"}, ValueError, "flip must be a number"),
        ({"n": 10**12}, DataError, "more than this machine's"),
        ({"clusters": 10**12}, DataError, "more than this machine's"),
    ],
    ids=["n", "dim", "seed-range", "seed-float", "flip", "huge-n", "huge-clusters"],
)
def test_synthetic_data_names_a_bad_argument_before_drawing(kwargs, error, message):
    with pytest.raises(error, match=message):
        synthetic_binary(**({"n": 12, "dim": 4} | kwargs))


def test_write_idx_refuses_a_shape_the_format_cannot_hold(tmp_path):
    """33 dimensions were written into a file the reader refuses."""
    with pytest.raises(ValueError, match="at most 32 dimensions"):
        write_idx(tmp_path / "x.idx", np.zeros((1,) * 33, np.uint8))
    assert not (tmp_path / "x.idx").exists()


def test_dataset_files_takes_download_as_a_bool(tmp_path, monkeypatch):
    """``download="no"`` is true: it went on to fetch."""
    from qlatent.data import dataset_files

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    with pytest.raises(ValueError, match="download must be True or False, got 'no'"):
        dataset_files("mnist", tmp_path / "none", download="no")
    with pytest.raises(ValueError, match=r"unknown dataset \['mnist'\]"):
        dataset_files(["mnist"], download=False)
