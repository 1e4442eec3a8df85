"""Pixel values on the way into and out of the library, checked against numbers computed
independently with NumPy and Pillow: ``qlatent data export`` then ``load_image_folder`` (the
IDX bytes / 255 − 0.5, exactly), resizing, centre-cropping, grey conversion and channel order,
``write_image_folder`` → ``load_image_folder`` (exact up to 8-bit rounding), file names past a
million images, and ``qlatent decompress -o`` as a grid (``.png``) and as a folder (``DIR/``),
which must hold the same pixels. All images are synthetic.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import run_cli
from qlatent.data import _providers, sources
from qlatent.data.folder import image_files, image_name, load_image_folder, write_image_folder
from qlatent.data.idx import write_idx

#: every 8-bit level in a 16 × 16 image
LEVELS = np.arange(256, dtype=np.uint8).reshape(16, 16)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def _save(folder, name: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / name)


# --------------------------------------------------------------------------- data export


@pytest.fixture
def synthetic_mnist(tmp_path, monkeypatch):
    """A synthetic MNIST in ``tmp_path / "mnist"`` (12 training images, every grey level among
    them) that the hash table expects; the real cache and system packages are out of reach."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QLATENT_DATA", raising=False)
    monkeypatch.setattr(_providers, "DEBIAN_FASHION_DIR", tmp_path / "no-such-dir")
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    train[3, :16, :16] = LEVELS
    train[11] = 255 - train[3]
    arrays = {
        "train-images-idx3-ubyte": train,
        "train-labels-idx1-ubyte": np.arange(12, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(2, dtype=np.uint8),
    }
    folder = tmp_path / "mnist"
    folder.mkdir()
    table = {
        name: hashlib.sha256(write_idx(folder / name, array).read_bytes()).hexdigest()
        for name, array in arrays.items()
    }
    monkeypatch.setitem(sources.SHA256, "mnist", table)
    return folder, train


def test_exported_mnist_reads_back_as_its_idx_bytes_over_255(tmp_path, capsys, synthetic_mnist):
    """``data export`` writes image i as the i-th name in sorted order (000010.png after
    000009.png), each PNG holds the IDX bytes, and reading the folder at 28 × 28 gives
    bytes / 255 − 0.5 exactly, in grey and as three equal channels."""
    folder, train = synthetic_mnist
    out = tmp_path / "png"
    command = ["data", "export", "mnist", out, "--split", "train", "--data-dir", folder]
    code, err = run_cli([*command, "--no-download"], capsys)
    assert code == 0, err
    files = image_files(out)
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(12)]
    for path, expected in zip(files, train, strict=True):
        assert np.array_equal(_pixels(path), expected)
    want = torch.from_numpy(train).float().unsqueeze(1) / 255 - 0.5
    grey = load_image_folder(out, size=28, channels=1, progress=False)
    assert torch.equal(grey, want)
    assert torch.equal(grey[3, 0, 0, :3], torch.tensor([0.0, 1.0, 2.0]) / 255 - 0.5)
    assert grey[3, 0, 15, 15].item() == 0.5  # level 255
    assert torch.equal(load_image_folder(out, size=28, channels=3, progress=False),
                       want.expand(-1, 3, -1, -1))  # fmt: skip


# --------------------------------------------------------------------------- reading a folder


def test_an_image_already_of_the_size_is_read_bit_for_bit_in_rgb_order(tmp_path):
    """No resampling at the image's own size; channel 0 is red, 2 blue."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = LEVELS
    rgb[0, 0] = (255, 0, 0)
    _save(tmp_path / "f", "a.png", rgb)
    x = load_image_folder(tmp_path / "f", size=16, channels=3, progress=False)
    assert torch.equal(x[0], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5)
    assert x[0, :, 0, 0].tolist() == [0.5, -0.5, -0.5]


def test_grey_is_the_rounded_itu_601_luma_of_the_rgb_pixels(tmp_path):
    """Channels = 1 from colour: (19595 R + 38470 G + 7471 B + 2^15) >> 16, per pixel."""
    rgb = np.random.default_rng(1).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    _save(tmp_path / "f", "a.png", rgb)
    x = load_image_folder(tmp_path / "f", size=9, channels=1, progress=False)
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    luma = (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16
    assert torch.equal(x[0, 0], torch.from_numpy(luma).float() / 255 - 0.5)


@pytest.mark.parametrize("height, width", [(30, 40), (40, 30), (31, 36)])
def test_a_non_square_image_is_cut_to_its_centre_square_then_resized(tmp_path, height, width):
    """The centre square (offset ⌊(long − short) / 2⌋) resized bicubic to the size asked."""
    rgb = np.random.default_rng(2).integers(0, 256, (height, width, 3), dtype=np.uint8)
    _save(tmp_path / "f", "a.png", rgb)
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(rgb[top : top + side, left : left + side])
    for size in (side, 16):
        expected = np.array(square.resize((size, size), Image.Resampling.BICUBIC))
        x = load_image_folder(tmp_path / "f", size=size, channels=3, progress=False)
        assert x.shape == (1, 3, size, size)
        assert torch.equal(x[0], torch.from_numpy(expected).permute(2, 0, 1).float() / 255 - 0.5)


def test_palette_grey_alpha_and_one_bit_images_read_as_their_colours(tmp_path):
    """Four encodings of one grey picture read the same: 8-bit grey, a palette of greys, grey
    with an opaque alpha channel; and a 1-bit image as levels 0 and 255."""
    folder = tmp_path / "f"
    _save(folder, "a-grey.png", LEVELS)
    Image.fromarray(LEVELS).convert("P").save(folder / "b-palette.png")
    Image.fromarray(np.stack([LEVELS, np.full_like(LEVELS, 255)], -1), "LA").save(
        folder / "c-alpha.png"
    )
    bits = LEVELS >= 128
    Image.fromarray(bits).save(folder / "d-bits.png")
    assert Image.open(folder / "b-palette.png").mode == "P"
    assert Image.open(folder / "d-bits.png").mode == "1"
    x = load_image_folder(folder, size=16, channels=1, progress=False)
    want = torch.from_numpy(LEVELS).float() / 255 - 0.5
    for i in range(3):
        assert torch.equal(x[i, 0], want), i
    assert torch.equal(x[3, 0], torch.from_numpy(bits).float() - 0.5)


def test_files_are_read_in_sorted_order_whatever_the_order_written(tmp_path):
    """The folder order is the sorted one, not the order of creation (or of the directory)."""
    folder = tmp_path / "f"
    names = ["000010.png", "000002.png", "000009.png", "000000.png"]
    for name in names:
        _save(folder, name, np.full((4, 4), int(name[:6]) * 20, np.uint8))
    x = load_image_folder(folder, size=4, channels=1, progress=False)
    assert ((x[:, 0, 0, 0] + 0.5) * 255).round().tolist() == [0, 40, 180, 200]


# --------------------------------------------------------------------------- writing a folder


def test_write_then_load_is_exact_up_to_8_bit_rounding(tmp_path):
    """Values v in [0, 1] come back as round(255 v) / 255 − 0.5, so within 0.5 / 255 of v."""
    x = torch.rand(11, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    x[0, 0] = torch.linspace(0, 1, 36).view(6, 6)
    paths = write_image_folder(x, tmp_path / "f")
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(11)]
    assert image_files(tmp_path / "f") == paths
    back = load_image_folder(tmp_path / "f", size=6, channels=3, progress=False)
    want = torch.from_numpy(np.round(x.numpy() * np.float32(255))) / 255 - 0.5
    assert torch.equal(back, want)
    assert (back + 0.5 - x).abs().max().item() <= 0.5 / 255 + 1e-7
    assert np.array_equal(
        _pixels(paths[0])[..., 0], np.round(np.linspace(0, 255, 36)).reshape(6, 6)
    )


def test_a_loaded_folder_written_back_holds_the_same_bytes(tmp_path):
    """load (in [−0.5, 0.5]) + 0.5 → write: every 8-bit level survives the float round trip."""
    _save(tmp_path / "a", "a.png", LEVELS)
    x = load_image_folder(tmp_path / "a", size=16, channels=1, progress=False)
    (path,) = write_image_folder(x + 0.5, tmp_path / "b")
    assert np.array_equal(_pixels(path), LEVELS)


def test_file_names_sort_in_image_order_past_a_million_images():
    """Six digits run out at 1,000,000 images: ``1000000.png`` sorts between ``100000.png`` and
    ``100001.png``, so the folder read back had its last image in the middle. Names grow a
    digit instead (and stay six digits up to a million images, as before)."""
    count = 1_000_001
    picks = [0, 9, 10, 99_999, 100_000, 100_001, 999_999, 1_000_000]
    names = [image_name(i, count) for i in picks]
    assert sorted(names) == names
    assert names[-1] == "1000000.png" and names[0] == "0000000.png"
    assert [image_name(i, 1_000_000) for i in (0, 999_999)] == ["000000.png", "999999.png"]
    assert image_name(0, 0) == image_name(0, 1) == "000000.png"


def test_integer_pixels_are_refused_not_clipped_to_black_and_white(tmp_path):
    """A uint8 image of 0…255 clipped to [0, 1] was written as 0 and 255 only."""
    levels = torch.from_numpy(LEVELS).view(1, 1, 16, 16)
    with pytest.raises(ValueError, match="uint8"):
        write_image_folder(levels, tmp_path / "f")
    assert not (tmp_path / "f").exists()
    (path,) = write_image_folder(levels.float() / 255, tmp_path / "g")
    assert np.array_equal(_pixels(path), LEVELS)
    (path,) = write_image_folder(levels >= 128, tmp_path / "h")  # bool: 0 or 1
    assert np.array_equal(_pixels(path), np.where(LEVELS >= 128, 255, 0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused_not_written_as_black_or_white(tmp_path, bad):
    x = torch.full((1, 1, 2, 2), 0.25)
    x[0, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_image_folder(x, tmp_path / "f")
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- decompress -o


def _tiles(grid: np.ndarray, n: int, h: int, w: int) -> list[np.ndarray]:
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert grid.shape[:2] == (rows * h, cols * w)
    return [
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] for r in range(rows) for q in range(cols)
    ]


@pytest.mark.parametrize("channels", [1, 3])
def test_the_grid_holds_every_level_as_the_folder_does(tmp_path, channels):
    """``decompress -o grid.png`` and ``-o DIR/`` of images in [−0.5, 0.5]: tile i of the grid
    is PNG i of the folder, round(255 (v + 0.5)), in grey or RGB; the 2 tiles after the 7
    images are black. The grid drew 24 of the 256 grey levels one lower (33 as 32) and
    truncated the RGB ones (63 levels one lower), and was RGBA."""
    from qlatent.cli import _write_png_folder, _write_reconstructions

    n, side = 7, 16
    levels = torch.from_numpy(LEVELS.astype(np.int64))
    steps = torch.stack([(levels + 37 * i) % 256 for i in range(n)])
    expected = steps.view(n, 1, side, side).expand(-1, channels, -1, -1).contiguous()
    expected[:, -1] = 255 - expected[:, -1]  # the channels differ
    recon = expected.float() / 255 - 0.5
    recon[0, 0, 0, :2] = torch.tensor([-0.7, 0.9])  # past the range: clipped
    expected[0, 0, 0, :2] = torch.tensor([0, 255])
    _write_reconstructions(recon, str(tmp_path / "grid.png"), (-0.5, 0.5))
    _write_png_folder(recon, tmp_path / "dir", (-0.5, 0.5))
    grid = _pixels(tmp_path / "grid.png")
    assert grid.ndim == (2 if channels == 1 else 3) and grid.shape[2:] in ((), (3,))
    tiles = _tiles(grid.reshape(*grid.shape[:2], channels), n, side, side)
    files = sorted(os.listdir(tmp_path / "dir"))
    assert files == [f"{i:06d}.png" for i in range(n)]
    for i in range(n):
        want = expected[i].permute(1, 2, 0).numpy().astype(np.uint8)
        assert np.array_equal(tiles[i], want), i
        in_folder = _pixels(tmp_path / "dir" / files[i]).reshape(side, side, channels)
        assert np.array_equal(in_folder, want), i
    assert all(not tile.any() for tile in tiles[n:]) and len(tiles) == 9


def test_decompress_of_a_checkpoint_writes_one_set_of_pixels(tmp_path, capsys, coding_checkpoint):
    """End to end: the ``.pt`` tensor, the ``.npy`` array, the grid and the folder of one
    ``.qlc`` file agree: every PNG pixel is round(255 v) of the decoded v in [0, 1]."""
    codes = tmp_path / "c.qlc"
    args = ["--data", "synthetic-test", "--limit", 5, "-o", codes]
    assert run_cli(["compress", "--checkpoint", coding_checkpoint, *args], capsys)[0] == 0
    decode = ["decompress", codes, "--checkpoint", coding_checkpoint, "-o"]
    for output in ("r.pt", "r.npy", "grid.png", "dir/"):
        code, err = run_cli([*decode, f"{tmp_path}/{output}"], capsys)
        assert code == 0, err
    recon = torch.load(tmp_path / "r.pt", weights_only=True)
    assert recon.shape == (5, 784)
    assert np.array_equal(np.load(tmp_path / "r.npy"), recon.numpy())
    expected = np.round(recon.numpy().clip(0, 1) * np.float32(255)).reshape(5, 28, 28)
    tiles = _tiles(_pixels(tmp_path / "grid.png"), 5, 28, 28)
    for i in range(5):
        assert np.array_equal(tiles[i], expected[i]), i
        assert np.array_equal(_pixels(tmp_path / "dir" / f"{i:06d}.png"), expected[i]), i
