"""An image folder (``data.name = "folder"``) is untrusted input: whatever is in it, the loader
ends in one DataError naming the file and saying what is wrong (one ``qlatent: error:`` line from
the CLI), never a traceback, a hang, or warnings and C-library messages on stderr."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qlatent.data import DataError
from qlatent.data.folder import load_image_folder


def _folder(tmp_path: Path, count: int = 3) -> Path:
    """A folder of ``count`` good 8×8 grey PNGs."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(count):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"good{i}.png")
    return folder


def _load(folder: Path):
    return load_image_folder(folder, size=4, channels=1, progress=False)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _dds_unknown_pixel_format() -> bytes:
    """A DDS header (FOURCC pixel format 0x2B00, which Pillow does not implement)."""
    header = struct.pack("<7I", 124, 0x100F, 6, 7, 0x15, 0, 0) + bytes(44)
    pixel_format = struct.pack("<8I", 32, 0x5, 0x2B00, 24, 0xFF0000, 0xFF00, 0xFF, 0)
    return b"DDS " + header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + bytes(126)


def _png_truncated_ihdr() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", bytes(7)) + _chunk(b"IEND", b"")


def _ppm_bad_maxval() -> bytes:
    return b"P6\n7 6\n2\xcf5\n" + bytes(126)


def _sgi_bad_mode() -> bytes:
    """An SGI header for a 3-D image of 2 channels, a mode Pillow does not support."""
    header = struct.pack(">hbbHHHHii", 474, 0, 1, 3, 7, 6, 2, 0, 255)
    return header + bytes(512 - len(header)) + bytes(126)


def _tiff_broken_lzw() -> bytes:
    """An LZW TIFF with damaged strip data: libtiff fails on it and prints an error."""
    buffer = io.BytesIO()
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(pixels).save(buffer, "TIFF", compression="tiff_lzw")
    data = bytearray(buffer.getvalue())
    data[12] ^= 0xFF
    data[14] ^= 0x55
    return bytes(data)


MALFORMED = {
    "dds": (_dds_unknown_pixel_format, NotImplementedError, "Unimplemented pixel format"),
    "png": (_png_truncated_ihdr, ValueError, "Truncated IHDR"),
    "ppm": (_ppm_bad_maxval, ValueError, "invalid literal"),
    "sgi": (_sgi_bad_mode, ValueError, "Unsupported SGI image mode"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_file_pillow_raises_on_is_a_data_error_naming_it(tmp_path, kind):
    craft, raised, reason = MALFORMED[kind]
    with pytest.raises(raised):  # what Pillow itself does with it: not an OSError
        Image.open(io.BytesIO(craft())).load()
    folder = _folder(tmp_path)
    (folder / "x.png").write_bytes(craft())
    with pytest.raises(DataError, match=rf"^cannot read image .*x\.png: {reason}") as info:
        _load(folder)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("error", [struct.error, EOFError, IndexError, SyntaxError, TypeError])
def test_any_exception_from_a_pillow_plugin_is_a_data_error(tmp_path, monkeypatch, error):
    folder = _folder(tmp_path)

    def broken_plugin(*args, **kwargs):
        raise error("bad\nfield")

    monkeypatch.setattr(Image, "open", broken_plugin)
    with pytest.raises(DataError, match=r"^cannot read image .*good0\.png: .*bad field"):
        _load(folder)


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt])
def test_memory_errors_and_interrupts_are_not_swallowed(tmp_path, monkeypatch, error):
    folder = _folder(tmp_path)

    def interrupted(*args, **kwargs):
        raise error()

    monkeypatch.setattr(Image, "open", interrupted)
    with pytest.raises(error):
        _load(folder)


@contextlib.contextmanager
def _unblocked(fifo: Path) -> Iterator[threading.Event]:
    """While the block runs, a thread waits for a reader of ``fifo``; if one comes, the event
    is set and the reader is unblocked (a writer opens and closes it: the reader sees end of
    file), so that a loader that opens the FIFO fails the test instead of hanging it."""
    stop, opened = threading.Event(), threading.Event()

    def writer() -> None:
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                stop.wait(0.01)
                continue
            opened.set()
            os.close(fd)
            return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join(timeout=10)


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


@needs_fifo
def test_a_fifo_named_png_is_refused_without_being_opened(tmp_path):
    folder = _folder(tmp_path)
    fifo = folder / "f.png"
    os.mkfifo(fifo)
    with _unblocked(fifo) as opened:
        with pytest.raises(DataError, match=r"^cannot read image .*f\.png: a FIFO .*not a regular"):
            _load(folder)
    assert not opened.is_set(), "the loader opened the FIFO"


def test_other_special_files_are_refused_the_same_way(tmp_path):
    folder = _folder(tmp_path)
    (folder / "sub.png").mkdir()
    with pytest.raises(DataError, match=r"sub\.png: a folder, not a regular file"):
        _load(folder)
    (folder / "sub.png").rmdir()
    if Path("/dev/zero").exists():
        (folder / "zero.png").symlink_to("/dev/zero")
        with pytest.raises(DataError, match=r"zero\.png: a character device, not a regular"):
            _load(folder)
        (folder / "zero.png").unlink()
    (folder / "dangling.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(DataError, match=r"dangling\.png: a symlink to something that does not"):
        _load(folder)
    (folder / "dangling.png").unlink()
    (folder / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: an empty file$"):
        _load(folder)


def test_a_broken_tiff_leaves_no_libtiff_message_on_stderr(tmp_path, capfd):
    folder = _folder(tmp_path)
    (folder / "x.png").write_bytes(_tiff_broken_lzw())
    capfd.readouterr()
    with pytest.raises(DataError, match=r"^cannot read image .*x\.png: .*libtiff") as info:
        _load(folder)
    assert "\n" not in str(info.value)
    os.write(2, b"stderr is back\n")  # file descriptor 2 is restored afterwards
    assert capfd.readouterr().err == "stderr is back\n"


def _palette_image(transparency: bytes | None) -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] * 128)
    image.putpixel((0, 0), 0)
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def test_valid_images_pillow_warns_about_load_quietly(tmp_path, capfd, monkeypatch):
    plain, transparent = tmp_path / "plain", tmp_path / "transparent"
    plain.mkdir()
    transparent.mkdir()
    _palette_image(None).save(plain / "p.png")
    _palette_image(b"\x00\x80").save(transparent / "p.png", transparency=b"\x00\x80")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning fails the test
        expected = _load(plain)
        assert expected.min() < expected.max()  # black and red, in grey
        assert (_load(transparent) == expected).all()  # the same pixel values
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 8×8 images: warned, not refused
        assert _load(_folder(tmp_path)).shape == (3, 1, 4, 4)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "kind", [pytest.param("fifo", marks=needs_fifo), pytest.param("dds"), pytest.param("tiff")]
)
def test_the_cli_says_one_line_naming_the_file(tmp_path, capfd, kind):
    from qlatent.cli import main

    folder = _folder(tmp_path, count=6)
    bad = folder / "x.png"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.write_bytes(_dds_unknown_pixel_format() if kind == "dds" else _tiff_broken_lzw())
    config = tmp_path / "folder.toml"
    config.write_text(
        f'[data]\nname = "folder"\nfolder = "{folder}"\nimage_size = 4\nchannels = 1\n'
        "val_size = 1\ntest_size = 1\n[model]\nhidden = [8]\nlatent_dim = 2\n"
        "[train]\nepochs = 1\nprogress = false\n"
    )
    capfd.readouterr()
    with _unblocked(bad) if kind == "fifo" else contextlib.nullcontext() as opened:
        assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qlatent: error: cannot read image "), lines
    assert str(bad) in lines[0]
    expected = {"fifo": "a FIFO", "dds": "Unimplemented pixel format", "tiff": "libtiff"}[kind]
    assert expected in lines[0], lines
    assert opened is None or not opened.is_set(), "the loader opened the FIFO"
