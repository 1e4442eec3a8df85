"""``qlatent update | compress | decompress | inspect``: a checkpoint's code model, images
entropy-coded into a ``.qlc`` file and decoded back (or described from its header), and the
writers of the reconstructions (a tensor, an array, a grid of images, a folder of PNGs, the
``--png`` figure)."""

from __future__ import annotations

import argparse

from .._utils import terminal_text
from ._args import _check_folders, _refuse_overwrite

_CODING_SPLITS = ("test", "val", "train")
#: --data of compress / update: the gated VAEs' binarized MNIST (and its synthetic stand-in),
#: the LL-VQ table's FashionMNIST in [−0.5, 0.5] (and its synthetic images), with each
#: experiment's own split
_CODING_DATA = tuple(
    f"{source}-{split}"
    for source in ("mnist", "synthetic", "fashion-mnist", "synthetic-images", "checkpoint")
    for split in _CODING_SPLITS
)


def _coding_images(name: str, data_dir: str | None, limit: int | None, ckpt=None, value_range=None):
    """The images ``--data`` names; ValueError where they are the LL-VQ table's, in
    [-0.5, 0.5], and ``value_range``, the one the checkpoint's model was trained on, is another
    (a conv model of the same image shape took them without a word; the other sources' images
    are flat, a conv model's shape error names them)."""
    from ..data import binarized_mnist, synthetic_binary
    from ..experiments import custom, llvq_fashion

    if name not in _CODING_DATA:
        raise ValueError(f"--data must be one of {list(_CODING_DATA)}, got {name!r}")
    source, split = name.rsplit("-", 1)
    low, high = llvq_fashion.VALUE_RANGE
    llvq = source in ("fashion-mnist", "synthetic-images")  # the LL-VQ table's images
    if llvq and value_range is not None and tuple(value_range) != (low, high):
        raise ValueError(
            f"--data {name} holds images with values in [{low}, {high}], this checkpoint's "
            f"model takes them in [{value_range[0]}, {value_range[1]}]"
        )
    if source == "checkpoint":  # the dataset of a `qlatent train CONFIG` run
        if not custom.is_checkpoint(ckpt):
            raise ValueError(f"--data {name} needs a checkpoint written by `qlatent train CONFIG`")
        _, cfg = custom.model_from_checkpoint(ckpt)
        if cfg.data.name in custom.TEXT_DATA:
            raise ValueError(
                "compress codes images; `qlatent eval` writes a text model's test set to a "
                "file and reports its size"
            )
        data = custom.checkpoint_data(cfg.data, ckpt["run_config"]["derived"])
        # only the images asked for are read (of a large image folder, a few test images)
        images = custom.load_split(data, split, limit, data_dir)
        return custom.prepare(cfg, {split: images})[split]
    if source == "mnist":
        splits = binarized_mnist(data_dir)
    elif source == "synthetic":
        splits = synthetic_binary(n=1200, seed=0)
    else:  # the LL-VQ table's FashionMNIST, or its --quick synthetic images
        cfg = llvq_fashion.data_config(quick=source == "synthetic-images")
        splits = llvq_fashion.load_data(cfg, data_dir)
    x = splits[split]
    return x if limit is None else x[:limit]


def _load_coding_model(checkpoint: str):
    """The autoencoder of a checkpoint, the checkpoint itself and its images' value range: a
    ``qlatent train CONFIG`` model or an LL-VQ table's conv model (recognised by the config saved
    with it), or a gated-MLP VAE (recognised by its weights)."""
    from ..experiments import custom, llvq_fashion
    from ..image_coding import gated_vae_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if custom.is_checkpoint(ckpt):
        return custom.model_from_checkpoint(ckpt, checkpoint)[0], ckpt, (0.0, 1.0)
    if llvq_fashion.is_checkpoint(ckpt):
        model = llvq_fashion.model_from_checkpoint(ckpt, checkpoint)
        return model, ckpt, llvq_fashion.VALUE_RANGE
    return gated_vae_from_checkpoint(ckpt, checkpoint), ckpt, (0.0, 1.0)


def _cmd_compress(args: argparse.Namespace) -> int:
    import time

    from ..coding import code_model
    from ..image_coding import compress_images, write_atomic

    _refuse_overwrite([args.output], [args.checkpoint])
    model, ckpt, value_range = _load_coding_model(args.checkpoint)
    try:
        code_model(model.bottleneck)
    except TypeError as err:  # e.g. a learnable lattice before `qlatent update`
        raise ValueError(f"{args.checkpoint}: {err} (qlatent update)") from err
    x = _coding_images(args.data, args.data_dir, args.limit, ckpt, value_range)
    started = time.perf_counter()
    data = compress_images(model, x, seed=args.seed)
    wall = time.perf_counter() - started
    write_atomic(args.output, data)
    print(
        terminal_text(
            f"wrote {args.output}: {len(data):,} bytes for {x.shape[0]:,} images, "
            f"{8 * len(data) / x.shape[0]:.2f} bits per image ({wall:.2f} s)"
        )
    )
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    from ..image_coding import update_code_model
    from ..train import save_atomic

    _refuse_overwrite([args.output], [args.checkpoint])
    model, ckpt, value_range = _load_coding_model(args.checkpoint)
    x = _coding_images(args.data, args.data_dir, args.limit, ckpt, value_range)
    summary = update_code_model(model, x)
    # the config travels with the weights, so that the updated model is rebuilt the same way
    save_atomic({"model": model.state_dict(), "run_config": ckpt.get("run_config")}, args.output)
    print(
        terminal_text(
            f"wrote {args.output}: code model counted over {int(summary['symbols']):,} symbols "
            f"of {x.shape[0]:,} images ({summary['features']} feature(s), {summary['width']} "
            "values)"
        )
    )
    return 0


#: what ``decompress -o`` writes, by extension
_RECON_FORMATS = {
    ".pt": "a torch tensor",
    ".npy": "a NumPy array",
    ".png": "a grid of every image",
}


#: what ``--png`` may write (matplotlib chooses the format by the extension)
_FIGURE_FORMATS = [".png", ".pdf", ".svg", ".jpg", ".jpeg"]


def _write_reconstructions(recon, path: str, value_range: tuple[float, float]) -> None:
    """``recon`` ``(N, D)`` (square images) or ``(N, C, H, W)`` to ``path`` in the format its
    extension names (:data:`_RECON_FORMATS`), atomically."""
    import io
    import math
    from pathlib import Path

    import numpy as np

    from ..image_coding import write_atomic
    from ..train import save_atomic

    suffix = Path(path).suffix.lower()
    if suffix == ".pt":
        save_atomic(recon, path)
        return
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, recon.detach().cpu().numpy(), allow_pickle=False)
    else:
        from PIL import Image

        from ..data.folder import image_pixels

        n = recon.shape[0]
        if recon.dim() == 2:  # (N, D): square greyscale images
            side = math.isqrt(recon.shape[1])
            if side * side != recon.shape[1]:
                raise ValueError(f"{recon.shape[1]} values per image are not a square image")
            recon = recon.reshape(n, 1, side, side)
        low, high = value_range
        # the very pixels of ``-o DIR/``'s PNGs, tiled row by row (the unused tiles of the last
        # row stay black), written by Pillow: matplotlib's grey colour map puts 24 of the 256
        # grey levels one level lower, and its RGB conversion truncates instead of rounding
        images = image_pixels((recon - low) / (high - low))
        cols = max(1, math.ceil(math.sqrt(n)))
        rows = max(1, math.ceil(n / cols))
        h, w, c = images.shape[1:]
        grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
        for i, image in enumerate(images):
            r, q = divmod(i, cols)
            grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = image
        Image.fromarray(grid[..., 0] if c == 1 else grid).save(buffer, "PNG")
    write_atomic(path, buffer.getvalue())


def _image_view(recon, ckpt):
    """A gated model's flat ``(N, D)`` reconstructions as the ``(N, C, H, W)`` images its
    checkpoint records (``qlatent train``: colour or not square); else ``recon`` as it is."""
    run = ckpt.get("run_config") if isinstance(ckpt, dict) else None
    derived = run.get("derived") if isinstance(run, dict) else None
    shape = derived.get("image_shape") if isinstance(derived, dict) else None
    if (
        recon.dim() == 2
        and isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        and shape[0] * shape[1] * shape[2] == recon.shape[1]
    ):
        return recon.reshape(-1, *shape)
    return recon


def _write_png_folder(recon, folder, value_range: tuple[float, float]) -> None:
    """``recon`` ``(N, D)`` (square grey images) or ``(N, C, H, W)`` as a folder of PNGs."""
    import math

    from ..data.folder import write_image_folder

    if recon.dim() == 2:
        side = math.isqrt(recon.shape[1])
        if side * side != recon.shape[1]:
            raise ValueError(f"{recon.shape[1]} values per image are not a square image")
        recon = recon.reshape(-1, 1, side, side)
    low, high = value_range
    write_image_folder((recon - low) / (high - low), folder)


def _check_qlc_size(path) -> None:
    """Before ``path`` is read whole: it starts as a ``.qlc`` file does, and reading it (and
    the parser's copy) fits in this machine's memory; ValueError or DataError otherwise."""
    from ..coding.container import MAGIC
    from ..data.sources import check_fits

    with path.open("rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path} is not a qlatent compressed file (bad magic number)")
    check_fits(2 * path.stat().st_size, 1, f"reading {path}", "that it is the file to decode")


def _draw_decoded(images, path: str, value_range: tuple[float, float]) -> None:
    """``decompress --png``: the first 20 decoded images, each once, ten to a row; ``images``
    ``(N, D)`` (square grey images, flattened) or ``(N, C, H, W)``. (The flat rows were drawn
    as an originals-above-reconstructions grid with the decoded images in both places, so each
    appeared twice, and images only ten.)"""
    import math

    from ..eval import reconstruction_rows

    if images.shape[0] == 0:  # a row labelled "1–0" and no tile: say what is missing
        raise ValueError("--png: the file decoded to no image, so there is nothing to draw")
    if images.dim() == 2:
        side = math.isqrt(images.shape[1])
        # a row of no values passed the square test (0 = 0²) and failed in reshape
        if side == 0 or side * side != images.shape[1]:
            raise ValueError(
                f"--png: decoded rows of {images.shape[1]} values are no square image to draw"
            )
        images = images.reshape(-1, 1, side, side)
    parts = images[:20].split(10)
    rows = {f"{10 * i + 1}–{10 * i + len(part)}": part for i, part in enumerate(parts)}
    reconstruction_rows(rows, path, value_range=value_range)


def _cmd_decompress(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ..image_coding import decompress_images

    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"{path} {'is not a file' if path.exists() else 'does not exist'}")
    _check_qlc_size(path)
    folder = args.output.endswith(("/", os.sep))  # a folder of PNGs, one per image
    _refuse_overwrite([None if folder else args.output, args.png], [args.input, args.checkpoint])
    if args.png:
        if Path(args.png).suffix.lower() not in _FIGURE_FORMATS:
            raise ValueError(
                f"--png {args.png}: the extension chooses the format, one of {_FIGURE_FORMATS}"
            )
        _check_folders(str(Path(args.png).parent))
    out = Path(args.output)
    made = not out.exists()
    if folder:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"-o {args.output}: a folder of PNGs goes into a new or empty folder")
        if args.png and out.resolve() in Path(args.png).resolve().parents:
            raise ValueError(f"--png {args.png}: not inside -o {args.output}, the decoded images")
        _check_folders(args.output)
    elif Path(args.output).suffix.lower() not in _RECON_FORMATS:
        raise ValueError(
            f"-o {args.output}: the extension chooses the format, one of {list(_RECON_FORMATS)} "
            "or a folder (a name ending in /)"
        )
    data = path.read_bytes()
    model, ckpt, value_range = _load_coding_model(args.checkpoint)
    recon = decompress_images(model, data, max_elements=args.max_elements)
    images = _image_view(recon, ckpt)  # what the figures draw
    if folder:
        _write_png_folder(images, Path(args.output), value_range)
    else:
        suffix = Path(args.output).suffix.lower()
        _write_reconstructions(images if suffix == ".png" else recon, args.output, value_range)
    message = f"wrote {args.output}: {recon.shape[0]:,} reconstructions"
    if recon.shape[0] == 0:
        print(terminal_text(f"{message} (the file holds no images)"))
        return 0
    if args.png:
        try:
            _draw_decoded(images, args.png, value_range)
        except Exception:  # no output without the other: take back what this call wrote
            if folder:
                for written in out.iterdir():  # the folder was new or empty
                    written.unlink()
                if made:
                    out.rmdir()
            elif made:
                out.unlink(missing_ok=True)
            raise
        message += f" and {args.png}"
    print(terminal_text(f"{message}; {8 * len(data) / recon.shape[0]:.2f} bits per image"))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """``qlatent inspect FILE``: what a ``.qlc`` file holds, from its header alone
    (:func:`qlatent.coding.describe`), and with ``--checkpoint`` whether that checkpoint's
    model wrote it (exit code 1 when it did not)."""
    import json
    from pathlib import Path

    from ..coding import CodingError, describe
    from ..coding.codec import check_model_digest

    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"{path} {'is not a file' if path.exists() else 'does not exist'}")
    _check_qlc_size(path)
    info = describe(path.read_bytes())
    if args.checkpoint is not None:
        model = _load_coding_model(args.checkpoint)[0]
        try:
            check_model_digest(model, bytes.fromhex(info["model_digest"]))
            info["written_by_checkpoint"] = True
        except CodingError:
            info["written_by_checkpoint"] = False
    if args.json:
        print(json.dumps({"file": str(path), **info}, indent=2))
    else:
        for line in _inspect_lines(path, info, args.checkpoint):
            print(terminal_text(line))
    return 0 if info.get("written_by_checkpoint", True) else 1


def _inspect_lines(path, info: dict, checkpoint: str | None) -> list[str]:
    """``qlatent inspect``'s lines for ``info`` (:func:`qlatent.coding.describe`)."""
    n, bits = info["examples"], info["bits_per_example"]
    per = f" ({bits:,.2f} bits per example)" if bits is not None else ""
    lo, hi = info["symbol_range"]
    lines = [
        f"{path}: {n:,} example{'' if n == 1 else 's'} in {info['file_bytes']:,} bytes{per}",
        f"  format       version {info['format_version']}, code model {info['code_model']} "
        f"({info['code_model_name']})",
        f"  code         shape {tuple(info['shape'])}, symbols in [{lo}, {hi}], "
        f"dither seed {info['seed']}",
        f"  sizes        payload {info['payload_bytes']:,} bytes, header and checksum "
        f"{info['header_bytes']:,} bytes",
        f"  model        sha256 {info['model_digest']}",
    ]
    if checkpoint is not None:
        wrote = info["written_by_checkpoint"]
        lines.append(
            f"  checkpoint   {checkpoint}: "
            + ("its model wrote this file" if wrote else "a different model wrote this file")
        )
    return lines
