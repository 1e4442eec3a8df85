"""Images from a user-supplied folder (CelebA, FFHQ, ...), for datasets we cannot ship or fetch,
and images written to a folder (``qlatent data export``, ``qlatent decompress -o DIR/``).

Every ``.png``, ``.jpg``, ``.jpeg``, ``.bmp`` or ``.webp`` file under the folder (recursively, in
sorted path order) is decoded with Pillow, turned upright as its EXIF orientation says,
centre-cropped to a square, resized to ``size × size`` (bicubic), converted to ``channels`` (1:
grey, 3: RGB) and scaled to [−0.5, 0.5], the range of the LL-VQ-VAE reference code. 16-bit
images (grey, or a PNG's colour and grey-with-alpha ones) are scaled by their own range to 8-bit
values, round(v · 255 / 65535); a file of several frames (an animation) or of 32-bit pixels is
refused. The whole set is held in memory as float32: a 64×64 RGB image takes
48 KiB, so CelebA's 202,599 images need about 10 GB.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .._utils import expanded, file_in_the_way, made_folders, taken_back, tqdm, write_atomic
from .sources import DataError, check_fits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: pixels of a 16-bit image scaled to 8 bits at a time (their int64 temporaries: 8 MiB each)
_SCALE_CHUNK = 1 << 20


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``folder``, sorted; a clear error if there are none."""
    root = expanded(folder)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def _shown(path: Path) -> str:
    """``path`` for a one-line message: as is, or quoted where it holds a newline or another
    character that does not print."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _reason(err: BaseException) -> str:
    """What went wrong, on one line."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (after following symlinks);
    DataError naming it if it is not. Anything else (a FIFO, a device, a socket, a folder) is
    never opened: opening a FIFO blocks until something writes to it, and a device may never
    end. The type is checked again on the open descriptor, in case the path changed between the
    two (and that open does not block: ``O_NONBLOCK``)."""
    flags = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)

    def opener(name: str, mode: int) -> int:
        return os.open(name, mode | flags)

    try:
        kind = os.stat(path).st_mode
        if stat.S_ISREG(kind):
            file = open(path, "rb", opener=opener)
            try:
                kind = os.fstat(file.fileno()).st_mode
            except BaseException:
                file.close()
                raise
            if stat.S_ISREG(kind):
                return file
            file.close()
    except OSError as err:
        reason = err.strerror or _reason(err)
        if isinstance(err, FileNotFoundError) and path.is_symlink():
            reason = "a symlink to something that does not exist"
        raise DataError(f"cannot read image {_shown(path)}: {reason}") from err
    what = next((name for test, name in _NOT_REGULAR if test(kind)), "a special file")
    raise DataError(f"cannot read image {_shown(path)}: {what}, not a regular file")


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@contextlib.contextmanager
def _libtiff_messages() -> Iterator[list[str]]:
    """Keep what C code writes on file descriptor 2 off stderr: libtiff prints its errors there
    (e.g. ``tempfile.tif: Using code not yet in table.``) and Pillow has no setting to stop it.
    The lines written are in the yielded list once the block ends; the descriptor is restored
    whatever happens. Where fd 2 cannot be duplicated, nothing is redirected."""
    lines: list[str] = []
    try:
        sys.stderr.flush()  # what Python buffered goes out before the redirect, not into it
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved: int | None = os.dup(2)
    except OSError:
        saved = None
    if saved is None:
        yield lines
        return
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                text = capture.read(4096).decode("utf-8", "replace")
                lines.extend(line.strip() for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)


#: the raw modes in which Pillow decodes a PNG's 16-bit colour samples (it keeps their high
#: bytes: 0x80FF is read as 0x80, where the grey path's rounding gives 0x81), and a raw mode of
#: as many bytes a pixel (so the PNG's row filters are undone alike) that reads the low bytes:
#: ``RGB;16L`` reads the second byte of each sample; ``ABGR`` puts the low byte of the grey of
#: ``LA;16B`` (opened as RGBA) in its blue and that of the alpha in its red
_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "ABGR"}


def _png_colour_16(image: Any, file: BinaryIO) -> Any:
    """``image`` with 8-bit values rounded from its 16-bit samples, round(v · 255 / 65535) as
    :func:`_eight_bit` rounds a 16-bit grey image, where ``image`` is a PNG of 16-bit colour or
    grey-with-alpha samples that Pillow would cut to their high bytes; ``image`` itself
    otherwise. The file (``file``, from which ``image`` was opened) is decoded a second time
    for the low bytes, a band of rows at a time; the EXIF orientation is kept."""
    from PIL import Image

    tile = image.tile
    if image.format != "PNG" or len(tile) != 1 or tile[0][3] not in _LOW_BYTES:
        return image
    raw = tile[0][3]
    image.load()  # the high bytes, before the file is read again
    file.seek(0)
    with Image.open(file) as low:
        first = low.tile[0]
        low.tile = [first._replace(args=_LOW_BYTES[raw])]
        low.load()
        grey = raw == "LA;16B"
        mode = "LA" if grey else image.mode
        out = np.empty((image.height, image.width, len(mode)), dtype=np.uint8)
        step = max(1, _SCALE_CHUNK // max(image.width, 1))
        for top in range(0, image.height, step):
            box = (0, top, image.width, min(image.height, top + step))
            high_bytes = np.asarray(image.crop(box), dtype=np.uint32)
            low_bytes = np.asarray(low.crop(box), dtype=np.uint32)
            if grey:  # high: (L, L, L, A); low: (A, ., L, .)
                high_bytes, low_bytes = high_bytes[..., [0, 3]], low_bytes[..., [2, 0]]
            values = high_bytes << 8 | low_bytes
            out[top : box[3]] = (values * 255 + 32767) // 65535
    result = Image.fromarray(out, mode)
    result.info["exif"] = image.getexif().tobytes()  # read by _upright
    return result


def _eight_bit(image: Any, path: Path) -> Any:
    """``image`` with 8-bit values: 16-bit grey pixels (a 16-bit PNG, which older Pillow opens as
    mode ``I``) scaled by 255 / 65535, rounded; Pillow's conversion would clip them at 255. Pixels
    of 32 bits (``I``, ``F``: a TIFF) have no range to scale from: DataError naming the file."""
    from PIL import Image

    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        # a few rows at a time: the whole image in int64 with its temporaries took 20 bytes a
        # pixel (a 344 kB PNG of 177 million zeros peaked at 3.4 GB)
        out = np.empty((image.height, image.width), dtype=np.uint8)
        step = max(1, _SCALE_CHUNK // max(image.width, 1))
        for top in range(0, image.height, step):
            bottom = min(image.height, top + step)
            block = image.crop((0, top, image.width, bottom))
            pixels = np.asarray(block, dtype=np.int64).clip(0, 65535)
            out[top:bottom] = (pixels * 255 + 32767) // 65535
        return Image.fromarray(out, "L")
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise DataError(
            f"cannot read image {_shown(path)}: {image.mode} pixels of 32 bits have no fixed "
            "range; save it with 8 or 16 bits per value"
        )
    return image


def _upright(image: Any) -> Any:
    """``image`` turned as its EXIF orientation says (as viewers show it); as it is without one."""
    from PIL import ImageOps

    if image.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _decode(path: Path, *, size: int, mode: str) -> Any:
    """The image in ``path`` as a ``size × size`` Pillow image of ``mode``; DataError naming the
    file for anything Pillow raises on it (its plugins raise many kinds on malformed files)."""
    from PIL import Image, UnidentifiedImageError

    messages: list[str] = []
    with _open_regular(path) as file, warnings.catch_warnings():
        # Two warnings Pillow gives on images that load fine: more pixels than
        # Image.MAX_IMAGE_PIXELS but under twice that (past twice it is an error), and a palette
        # image whose per-entry transparency a conversion cannot keep (alpha is dropped anyway:
        # the pixel values are the palette's colours, as for any palette image).
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.filterwarnings(
            "ignore", "Palette images with Transparency expressed in bytes", UserWarning
        )
        try:
            with Image.open(file) as image:
                if getattr(image, "use_load_libtiff", False):  # a TIFF decoded by libtiff
                    with _libtiff_messages() as messages:
                        image.load()
                if getattr(image, "is_animated", False):  # only the first frame would be read
                    raise DataError(
                        f"cannot read image {_shown(path)}: it holds several frames (an "
                        "animation or pages); save one image per file"
                    )
                image = _eight_bit(_upright(_png_colour_16(image, file)), path)
                image = image.convert(mode)
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                image = image.crop((left, top, left + side, top + side))
                return image.resize((size, size), Image.Resampling.BICUBIC)
        except (KeyboardInterrupt, MemoryError):
            raise
        except DataError:
            raise
        except UnidentifiedImageError as err:
            empty = os.fstat(file.fileno()).st_size == 0
            what = "an empty file" if empty else "not in an image format Pillow can read"
            raise DataError(f"cannot read image {_shown(path)}: {what}") from err
        except Exception as err:  # any failure of a Pillow plugin on this file
            reason = _reason(err)
            if messages:
                libtiff = messages[-1].removeprefix("tempfile.tif:").strip()
                reason = f"{reason} (libtiff: {' '.join(libtiff.split())})"
            raise DataError(f"cannot read image {_shown(path)}: {reason}") from err


def load_image_folder(
    folder: str | os.PathLike[str],
    *,
    size: int,
    channels: int = 3,
    progress: bool = True,
    indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """``(N, channels, size, size)`` float32 in [−0.5, 0.5] from the images under ``folder``
    (:func:`image_files` order), or from only those at ``indices`` of that list, in that order
    (a split or its first images, without decoding the rest).

    Untrusted input: a file that is not a regular file (a FIFO, a device, a folder named
    ``x.png``, a dangling symlink) or that Pillow cannot decode is a DataError naming the file;
    no warning or libtiff message reaches stderr."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    files = image_files(folder)
    if indices is not None:
        if any(not 0 <= i < len(files) for i in indices):
            raise ValueError(
                f"indices outside the {len(files)} images of {_shown(expanded(folder))}"
            )
        files = [files[i] for i in indices]
    check_fits(
        len(files) * channels * size * size,
        4,
        f"{len(files):,} images of {channels} × {size:,} × {size:,} float32",
        "the image size and the folder",
    )
    out = torch.empty(len(files), channels, size, size)
    mode = "L" if channels == 1 else "RGB"
    for i, path in enumerate(tqdm(files, desc="images", disable=not progress, leave=False)):
        image = _decode(path, size=size, mode=mode)
        array = np.asarray(image, dtype=np.float32).reshape(size, size, channels)
        out[i] = torch.from_numpy(array).permute(2, 0, 1) / 255.0 - 0.5
    return out


def check_new_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` (``~`` expanded) where :func:`write_image_folder` can write: new or empty, with
    no regular file on its path; a ValueError naming it otherwise. ``qlatent data export``
    checks this before it reads the dataset."""
    root = expanded(folder)
    blocked = file_in_the_way(root)
    if blocked is not None:
        raise ValueError(
            f"folder {folder} cannot be written: {blocked} is a file; the images go into a new "
            "or empty folder"
        )
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: images are written into a new or empty folder only")
    return root


def image_pixels(images: torch.Tensor) -> np.ndarray:
    """``images`` ``(N, C, H, W)`` with values in [0, 1] (clipped) as ``uint8`` ``(N, H, W, C)``,
    each value ``round(255 · v)``: what every PNG written here holds, so that a folder of PNGs
    and a grid of the same images agree pixel for pixel. ValueError for integer images (a
    ``uint8`` 0…255 image clipped to [0, 1] would come out black and white) and for NaN or
    infinite values (NaN would be written as black)."""
    if images.dtype != torch.bool and not images.is_floating_point():
        raise ValueError(
            f"images must hold floating-point values in [0, 1], got {images.dtype} "
            "(divide 0…255 pixels by 255 first)"
        )
    values = images.detach().cpu().float()
    if not torch.isfinite(values).all():
        raise ValueError("images hold NaN or infinite values; there is no pixel to write for them")
    pixels = (values.clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def image_name(index: int, count: int) -> str:
    """The file name of image ``index`` of ``count``: ``000000.png`` …, with more digits once
    ``count`` needs them, so that sorted names (how :func:`image_files` lists a folder) are in
    image order (``1000000.png`` would otherwise sort between ``100000.png`` and ``100001.png``)."""
    return f"{index:0{max(6, len(str(max(count - 1, 0))))}d}.png"


def write_image_folder(images: torch.Tensor, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``images`` ``(N, C, H, W)`` (C = 1 or 3, floating-point values in [0, 1], clipped;
    see :func:`image_pixels`) as ``000000.png`` … (:func:`image_name`) into ``folder``, which
    must be new or empty; each file is written atomically. Returns the paths. A write that
    fails (a full disk, Ctrl-C) takes back the files and folders this call made: the images
    written before it stayed, and the same call again refused the folder as not empty."""
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    pixels = image_pixels(images)
    root = check_new_folder(folder)
    made = made_folders(root)
    paths: list[Path] = []
    with taken_back(made):
        try:
            for i, image in enumerate(pixels):
                buffer = io.BytesIO()
                Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, "PNG")
                paths.append(write_atomic(root / image_name(i, len(pixels)), buffer.getvalue()))
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise
    return paths
