"""Images from a user-supplied folder (CelebA, FFHQ, ...), for datasets we cannot ship or fetch,
and images written to a folder (``qlatent data export``, ``qlatent decompress -o DIR/``).

Every ``.png``, ``.jpg``, ``.jpeg``, ``.bmp`` or ``.webp`` file under the folder (recursively, in
sorted path order) is decoded with Pillow, centre-cropped to a square, resized to ``size × size``
(bicubic), converted to ``channels`` (1: grey, 3: RGB) and scaled to [−0.5, 0.5], the range of the
LL-VQ-VAE reference code. The whole set is held in memory as float32: a 64×64 RGB image takes
48 KiB, so CelebA's 202,599 images need about 10 GB.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .sources import DataError, check_fits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``folder``, sorted; a clear error if there are none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def load_image_folder(
    folder: str | os.PathLike[str], *, size: int, channels: int = 3, progress: bool = True
) -> torch.Tensor:
    """``(N, channels, size, size)`` float32 in [−0.5, 0.5] from the images under ``folder``."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    files = image_files(folder)
    check_fits(
        len(files) * channels * size * size,
        4,
        f"{len(files):,} images of {channels} × {size:,} × {size:,} float32",
        "the image size and the folder",
    )
    out = torch.empty(len(files), channels, size, size)
    for i, path in enumerate(tqdm(files, desc="images", disable=not progress, leave=False)):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                image = image.crop((left, top, left + side, top + side))
                image = image.resize((size, size), Image.Resampling.BICUBIC)
                array = np.asarray(image, dtype=np.float32).reshape(size, size, channels)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        out[i] = torch.from_numpy(array).permute(2, 0, 1) / 255.0 - 0.5
    return out


def write_image_folder(images: torch.Tensor, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``images`` ``(N, C, H, W)`` (C = 1 or 3, values in [0, 1], clipped) as
    ``000000.png`` … into ``folder``, which must be new or empty; each file is written
    atomically. Returns the paths."""
    from PIL import Image

    from ..image_coding import write_atomic

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    root = Path(folder).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root}: images are written into a new or empty folder only")
    root.mkdir(parents=True, exist_ok=True)
    pixels = (images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    paths = []
    for i, image in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, "PNG")
        paths.append(write_atomic(root / f"{i:06d}.png", buffer.getvalue()))
    return paths
