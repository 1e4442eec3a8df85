"""Command line: ``qlatent data | train | eval | demo | reproduce | update | compress |
decompress | bench``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ._utils import check_folder, expanded, path_name, positive_int, terminal_text
from .config import apply_overrides, to_dict
from .data import DataError
from .data.cli import add_data_parser, report_error


def _command_line(argv: Sequence[str] | None) -> str:
    return "qlatent " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def _refuse_overwrite(outputs: Sequence[str | None], inputs: Sequence[str | None]) -> None:
    """No command may write over one of its inputs (or write two outputs to one file): a
    ValueError naming the clash, checked before any work is done."""
    import os

    def same(a: str, b: str) -> bool:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.abspath(a) == os.path.abspath(b)

    outputs = [o for o in outputs if o]
    for i, out in enumerate(outputs):
        for other in [p for p in inputs if p] + outputs[:i]:
            if same(out, other):
                raise ValueError(f"refusing to write {out}: it is the same file as {other}")
        if os.path.isdir(out):
            raise ValueError(f"{out} is a folder; name the file to write")
        if os.path.exists(out) and not os.path.isfile(out):
            # a device, a pipe or a socket: the atomic write would replace it by a file
            raise ValueError(f"refusing to write {out}: it is not a regular file")


def _check_folders(*folders: str) -> None:
    """Each folder exists or can be made (no regular file on its path): a ValueError now."""

    for folder in folders:
        check_folder(folder, folder)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=30 --set model.latent_dim=8",
    )
    p.add_argument(
        "--data-dir", default=None, type=path_name, help="folder with the MNIST IDX files"
    )
    p.add_argument("--device", default=None, help="cpu, cuda or auto (same as train.device)")
    p.add_argument("--out", default=None, type=path_name, help="output folder (same as out_dir)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")


def _lattice_config(args: argparse.Namespace, **defaults):
    from .experiments.lattice_vae import LatticeVAEConfig

    overrides = [f"{k}={v}" for k, v in defaults.items()] + list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    return apply_overrides(LatticeVAEConfig(), overrides)


#: the files ``qlatent train CONFIG`` writes into its run folder
_RUN_FILES = (
    "config.json",
    "summary.json",
    "log.jsonl",
    "best.pt",
    "last.pt",
    "training_curves.png",
    "reconstructions.png",
)


def _resume_note(out_dir: str, *, fresh: bool) -> Callable[[], str]:
    """For :func:`_on_interrupt`: what the same command does next with the run in ``out_dir``,
    read when the run is interrupted. The training loop writes ``last.pt`` atomically at the end
    of every epoch and a run resumes from it; a ``--fresh`` run's own is one written since it
    started, resumed from without ``--fresh`` (which would start again)."""
    import time
    from pathlib import Path

    started = time.time()

    def note() -> str:
        last = Path(out_dir) / "last.pt"
        if last.is_file() and (not fresh or last.stat().st_mtime >= started):
            without = " without --fresh" if fresh else ""
            return (
                f"the run in {out_dir} resumes from its last completed epoch with the same "
                f"command{without}"
            )
        return f"no epoch of the run in {out_dir} was completed; the same command starts it again"

    return note


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from .experiments import custom
    from .experiments import lattice_vae as exp

    if args.list:
        print(custom.components())
        return 0
    if args.config:
        overrides = list(args.overrides)
        if args.device:
            overrides.append(f"train.device={args.device}")
        if args.out:
            overrides.append(f"out_dir={args.out}")
        cfg = custom.load_config(args.config, overrides)
        _check_folders(cfg.out_dir)
        # the files a run writes are no config it reads (nor a pipe or a device)
        _refuse_overwrite([os.path.join(cfg.out_dir, name) for name in _RUN_FILES], args.config)
        print(
            terminal_text(
                f"training {cfg.bottleneck.name} ({cfg.model.family}, {cfg.data.name}) in "
                f"{cfg.out_dir}"
            )
        )
        with _on_interrupt(_resume_note(cfg.out_dir, fresh=args.fresh)):
            summary = custom.train(
                cfg, data_dir=args.data_dir, fresh=args.fresh, command=args.command_line
            )
        if not summary:  # a torchrun rank other than 0
            return 0
        print(terminal_text(custom.format_report(summary["test"]), lines=True))
        figures = "training_curves.png" + (
            "" if cfg.data.name in custom.TEXT_DATA else ", reconstructions.png"
        )
        print(terminal_text(f"wrote {cfg.out_dir}/summary.json, config.json, {figures}"))
        return 0
    cfg = _lattice_config(args, out_dir="runs/train")
    with _on_interrupt(_resume_note(cfg.out_dir, fresh=args.fresh)):
        summary = exp.run(cfg, data_dir=args.data_dir, fresh=args.fresh, command=args.command_line)
    if summary:
        print(terminal_text(exp.format_summary(summary), lines=True))
        print(terminal_text(f"wrote {cfg.out_dir}/summary.json"))
    return 0


def _mixture(text: str) -> tuple[float, float]:
    from .eval.proposals import parse_mixture

    try:
        return parse_mixture(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cmd_eval(args: argparse.Namespace) -> int:
    import os

    from .experiments import custom
    from .results import provenance, write_json

    _refuse_overwrite([args.output], [args.checkpoint])
    if args.output:  # a path under a regular file failed only after the whole evaluation
        _check_folders(os.path.dirname(args.output) or ".")
    report = custom.eval_checkpoint(
        args.checkpoint,
        data_dir=args.data_dir,
        iwae_samples=args.iwae or 0,
        iwae_defensive=args.iwae_defensive,
        limit=args.limit,
        downstream=args.downstream,
    )
    print(terminal_text(custom.format_report(report), lines=True))
    if args.output:
        written = write_json({**provenance(args.command_line), **report}, args.output)
        print(terminal_text(f"wrote {written}"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .experiments import lattice_vae as exp

    cfg = _lattice_config(args)
    config = terminal_text(to_dict(cfg))
    # (the heading from the config: with --set model.latent_dim=4 or data=synthetic it said
    # m=40 and binarized MNIST whatever was run)
    data = "binarized MNIST" if cfg.data == "binarized-mnist" else "synthetic binary data"
    heading = f"rectangular-lattice VAE, m={cfg.model.latent_dim}, {data}; config:"
    print(heading, config, sep="\n")
    with _on_interrupt(_resume_note(cfg.out_dir, fresh=args.fresh)):
        summary = exp.run(cfg, data_dir=args.data_dir, fresh=args.fresh, command=args.command_line)
    print(terminal_text(exp.format_summary(summary), lines=True))
    print(
        terminal_text(f"wrote {cfg.out_dir}/summary.json, reconstructions.png, training_curves.png")
    )
    if args.record:
        for path in exp.record(cfg, "demo"):
            print(terminal_text(f"recorded {path}"))
    return 0


def _seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct integers in [0, 2^32)."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    # k-means and the probes of the table take seeds below 2^32
    if any(not 0 <= s < 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and in [0, 2^32): {text!r}")
    return seeds


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import inspect
    from functools import partial

    from .experiments import coding_mnist, lattice_mnist, llvq_fashion, softvq_mnist, text_rd

    experiment = {
        "coding-mnist": coding_mnist,
        "lattice-mnist": lattice_mnist,
        "softvq-mnist": softvq_mnist,
        "llvq-fashion": llvq_fashion,
        "llvq-celeba": llvq_fashion,
        "llvq-ffhq": llvq_fashion,
        "text-rd": text_rd,
    }[args.name]
    reproduce = experiment.reproduce
    if experiment is llvq_fashion:
        schedules = _names(args.schedules, "--schedules")
        dataset = args.name.removeprefix("llvq-")
        reproduce = partial(reproduce, schedules=schedules, dataset=dataset)
    elif args.schedules:
        raise ValueError(f"--schedules applies to the llvq tables, not {args.name}")
    accepts = inspect.signature(reproduce).parameters
    if args.jobs > 1:
        if "jobs" not in accepts:
            raise ValueError(f"--jobs applies to text-rd and softvq-mnist, not {args.name}")
        reproduce = partial(reproduce, jobs=args.jobs)
    if args.seeds is not None:
        if "seeds" not in accepts:
            raise ValueError(f"--seeds applies to softvq-mnist, not {args.name}")
        reproduce = partial(reproduce, seeds=args.seeds)
    models = _names(args.models, "--models")
    _check_folders(args.runs_dir, args.results_dir)  # before hours of training, not after
    # every run resumes from its own folder's last.pt, written at the end of every epoch
    resumes = (
        f"the same command resumes the runs in {args.runs_dir} from their last completed epochs"
    )
    with _on_interrupt(lambda: resumes):
        payload = reproduce(
            quick=args.quick,
            models=models,
            overrides=args.overrides,
            data_dir=args.data_dir,
            runs_dir=args.runs_dir,
            results_dir=args.results_dir,
            command=args.command_line,
        )
    print(terminal_text(experiment.markdown_table(payload), lines=True))
    return 0


def _names(text: str | None, option: str) -> list[str] | None:
    """A comma-separated list of row names (None when not given), as the tables'
    ``reproduce`` take it (:func:`~qlatent.experiments.custom.check_names`: a name given twice
    would train and report its row twice)."""
    from .experiments.custom import check_names

    return check_names(text.split(","), option) if text else None


def _good_lattice_name(text: str) -> str:
    """An argparse type: a lattice block's name (``qlatent.lattices.lattice_by_name``)."""
    from .lattices import lattice_by_name

    try:
        lattice_by_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip().lower()


def _bench_output(output: str | None) -> str | None:
    """A benchmark's ``--output`` (None for none), refused now if it cannot be written (a
    folder, a device, a path under a file) rather than after minutes of timing."""
    import os

    if not output:
        return None
    path = str(expanded(output))
    _refuse_overwrite([path], [])
    _check_folders(os.path.dirname(path) or ".")
    return path


def _run_at(threads: int) -> None:
    """torch's thread count set to the benchmark's ``--threads`` for the rest of the command:
    the benchmark puts back the count it found, and the provenance written after it records
    the count it ran at."""
    import torch

    torch.set_num_threads(threads)


def _cmd_bench_lattice(args: argparse.Namespace) -> int:
    import json

    from .bench import bench_lattice
    from .results import provenance, write_json

    if args.lattice and not args.scaling:
        raise ValueError("--lattice is a setting of --scaling")
    if args.scaling and (args.rows is not None or args.dim is not None or args.no_compile):
        raise ValueError(
            "--rows, --dim and --no-compile are not settings of --scaling (its shapes are "
            "fixed, its paths eager)"
        )
    if args.scaling:
        from .bench.lattice import bench_lattice_scaling

        output = args.output or ""
        if output == "results/bench-lattice.json":
            name = f"-{args.lattice}" if args.lattice else ""
            output = f"results/bench-lattice-scaling{name}.json"
        output = _bench_output(output)
        _run_at(args.threads)
        result = bench_lattice_scaling(
            threads=args.threads,
            repeats=args.repeats or 5,
            device=args.device,
            lattice=args.lattice,
        )
        for row in result["scaling"]:
            print(
                f"{row['case']:32s} {row['rows']:>8d} × {row['dim']:<5d} "
                f"{row['rows_per_s'] / 1e6:7.3f} M rows/s "
                f"{row['values_per_s'] / 1e6:8.1f} M values/s"
            )
        for case, spread in result["spread"].items():
            print(
                f"{case}: fastest / slowest values/s {spread['over_rows']:.2f} over rows, "
                f"{spread['over_dims']:.2f} over widths"
            )
        if output:
            written = write_json({**provenance(args.command_line), **result}, output)
            print(terminal_text(f"wrote {written}"))
        return 0
    output = _bench_output(args.output)
    _run_at(args.threads)
    result = bench_lattice(
        rows=16384 if args.rows is None else args.rows,
        dim=64 if args.dim is None else args.dim,
        threads=args.threads,
        repeats=args.repeats or 50,
        compile=not args.no_compile,
        device=args.device,
    )
    payload = {**provenance(args.command_line), **result}
    print(f"{'case':48s} {'median':>8s} {'best':>8s}  (M rows/s)  ratio to the floor")
    for name, case in result["cases"].items():
        ratio = f"{case['ratio_to_floor']:8.2f}" if "ratio_to_floor" in case else ""
        print(
            f"{name:48s} {case['rows_per_s'] / 1e6:8.2f} {case['rows_per_s_best'] / 1e6:8.2f}"
            f"  {ratio}"
        )
    peer = result["peers"]["compressai"]
    if peer["status"] == "measured":
        print(f"CompressAI {peer['version']}, its time over ours:", end="")
        print("".join(f"  {k} {v:.2f}x" for k, v in result["speedup_vs_compressai"].items()))
    else:
        print(terminal_text(f"CompressAI skipped: {peer['reason']}"))
    if output:
        print(f"wrote {write_json(payload, output)}")
    else:
        print(json.dumps(payload, indent=2))
    return 0


def _cmd_bench_quantizers(args: argparse.Namespace) -> int:
    import json

    import torch

    from .bench import bench_quantizers, format_quantizers
    from .results import provenance, write_json

    names = None if args.names is None else [n.strip() for n in args.names.split(",") if n.strip()]
    given = {
        "--rows": args.rows,
        "--repeats": args.repeats,
        "--min-repeats": args.min_repeats,
        "--budget": args.budget,
    }
    named = [option for option, value in given.items() if value is not None]
    if args.quick and named:
        raise ValueError(
            f"--quick sets the rows, repeats and budget itself: drop {', '.join(named)}"
        )

    def chosen(value, default):
        return default if value is None else value

    sizes = dict(
        rows=chosen(args.rows, 16384),
        repeats=chosen(args.repeats, 50),
        min_repeats=chosen(args.min_repeats, 5),
    )
    if args.quick:
        sizes = dict(rows=256, repeats=2, min_repeats=2)
    output = _bench_output(args.output)
    torch.set_num_threads(args.threads)  # so that provenance records the threads we ran with
    result = bench_quantizers(
        names=names,
        dim=args.dim,
        threads=args.threads,
        budget_s=0.0 if args.quick else chosen(args.budget, 2.0),
        device=args.device,
        compile=not args.no_compile,
        **sizes,
    )
    payload = {**provenance(args.command_line), **result}
    print(terminal_text(format_quantizers(result), lines=True))  # with the failed cases' errors
    if output:
        print(f"wrote {write_json(payload, output)}")
    else:
        print(json.dumps(payload, indent=2))
    if result["errors"]:
        print(f"qlatent: {len(result['errors'])} case(s) failed, see above", file=sys.stderr)
        return 1
    return 0


def _cmd_bench_coding(args: argparse.Namespace) -> int:
    from .bench.coding import bench_coding, format_coding
    from .results import provenance, write_json

    output = _bench_output(args.output)
    _run_at(args.threads)
    result = bench_coding(rows=args.rows, dim=args.dim, threads=args.threads, repeats=args.repeats)
    payload = {**provenance(args.command_line), **result}
    print(format_coding(result))
    if output:
        print(f"wrote {write_json(payload, output)}")
    return 0


def _cmd_bench_lattices(args: argparse.Namespace) -> int:
    from .bench.geometry import bench_lattices, format_lattices
    from .results import provenance, write_json

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    output = _bench_output(args.output)
    _run_at(args.threads)
    result = bench_lattices(
        names=names,
        rows=args.rows,
        threads=args.threads,
        repeats=args.repeats,
        target_rse=args.target_rse,
        steps=not args.no_steps,
        compile=not args.no_compile,
        device=args.device,
    )
    payload = {**provenance(args.command_line), **result}
    print(format_lattices(result))
    if output:
        print(f"wrote {write_json(payload, output)}")
    return 0


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
    from .data import binarized_mnist, synthetic_binary
    from .experiments import custom, llvq_fashion

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
        splits = custom.prepare(cfg, custom.load_data(data, data_dir))
    elif source == "mnist":
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
    from .experiments import custom, llvq_fashion
    from .image_coding import gated_vae_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if custom.is_checkpoint(ckpt):
        return custom.model_from_checkpoint(ckpt, checkpoint)[0], ckpt, (0.0, 1.0)
    if llvq_fashion.is_checkpoint(ckpt):
        model = llvq_fashion.model_from_checkpoint(ckpt, checkpoint)
        return model, ckpt, llvq_fashion.VALUE_RANGE
    return gated_vae_from_checkpoint(ckpt, checkpoint), ckpt, (0.0, 1.0)


def _cmd_compress(args: argparse.Namespace) -> int:
    import time

    from .coding import code_model
    from .image_coding import compress_images, write_atomic

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
    from .image_coding import update_code_model
    from .train import save_atomic

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


def _write_reconstructions(recon, path: str, value_range: tuple[float, float]) -> None:
    """``recon`` ``(N, D)`` (square images) or ``(N, C, H, W)`` to ``path`` in the format its
    extension names (:data:`_RECON_FORMATS`), atomically."""
    import io
    import math
    from pathlib import Path

    import numpy as np

    from .image_coding import write_atomic
    from .train import save_atomic

    suffix = Path(path).suffix.lower()
    if suffix == ".pt":
        save_atomic(recon, path)
        return
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, recon.detach().cpu().numpy(), allow_pickle=False)
    else:
        from PIL import Image

        from .data.folder import image_pixels

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

    from .data.folder import write_image_folder

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
    from .coding.container import MAGIC
    from .data.sources import check_fits

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

    from .eval import reconstruction_rows

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

    from .image_coding import decompress_images

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


#: the most IWAE samples ``eval --iwae`` takes (the papers use 1,000 to 5,000; each sample
#: costs a decoder pass over every test image)
_MAX_IWAE_SAMPLES = 1 << 20


def _iwae_samples(text: str) -> int:
    """argparse type of ``--iwae``: an integer in [1, :data:`_MAX_IWAE_SAMPLES`]."""
    value = positive_int(text)
    if value > _MAX_IWAE_SAMPLES:
        raise argparse.ArgumentTypeError(f"at most {_MAX_IWAE_SAMPLES:,} samples, got {value:,}")
    return value


def _seconds(text: str) -> float:
    """argparse type of a time budget: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text}")
    return value


def _relative_error(text: str) -> float:
    """argparse type of a target relative standard error: a number in (0, 1) (0, a negative
    number or NaN is never reached: the estimate would run to its cap of samples)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


#: what ``--png`` may write (matplotlib chooses the format by the extension)
_FIGURE_FORMATS = [".png", ".pdf", ".svg", ".jpg", ".jpeg"]

#: --device of the benchmarks
BENCH_DEVICE_HELP = "cpu (default) or cuda[:N]: where the timed tensors live"

#: the most timed calls a benchmark case takes (--repeats, --min-repeats)
_MAX_REPEATS = 10_000
#: the most rows (2^24) and the widest input (2^16) a benchmark takes: past them, the timed
#: tensors alone are gigabytes
_MAX_ROWS, _MAX_DIM = 1 << 24, 1 << 16
#: --threads may oversubscribe the cores this many times, no more
_THREADS_PER_CORE = 4


def _at_most(limit: int, what: str):
    """argparse type: an integer in [1, ``limit``]; ``what`` names the unit in the error."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"at most {limit:,} {what}, got {value:,}")
        return value

    return parse


def _threads(text: str) -> int:
    """argparse type of a benchmark's --threads: an integer in [1, 4 × the cores]."""
    import os

    cores = os.cpu_count() or 1
    return _at_most(_THREADS_PER_CORE * cores, f"threads on {cores} core(s)")(text)


def _file_seed(text: str) -> int:
    """argparse type of ``compress --seed``: an integer in [0, 2^63), as a file stores it
    (checked here, not by the coder after the images were encoded)."""
    from .coding.codec import _check_seed

    try:
        return _check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, 2^63) (the seed a file stores), got {text!r}"
        ) from None


_repeats = _at_most(_MAX_REPEATS, "timed calls")
_rows = _at_most(_MAX_ROWS, "rows")
_dim = _at_most(_MAX_DIM, "columns")


def _version() -> str:
    """``qlatent X (torch Y)``: the torch build decides much of a run's numbers and speed."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"qlatent {__version__} (torch {torch})"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that help or a version that cannot be written to stdout is an
    error for :func:`main` to report: argparse drops it, and ``qlatent --help > /dev/full``
    exited 0 having written nothing. An argument's control characters are escaped (argparse
    wrote ``unrecognized arguments: …`` as given)."""

    def _print_message(self, message: str, file=None) -> None:
        message = terminal_text(message, lines=True) if message else message
        if message and file is not None and file is sys.stdout:
            file.write(message)
        else:
            super()._print_message(message, file)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qlatent", description="Discrete latent representations: train, evaluate, code."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_parser(sub)

    p = sub.add_parser(
        "train",
        help="train any bottleneck, model and dataset from a config file (resumable; "
        "torchrun-ready); without one, the rectangular-lattice VAE of the demo",
    )
    p.add_argument(
        "config",
        nargs="*",
        default=None,
        help="TOML config file(s) (qlatent.experiments.custom), merged in order: e.g. a paper "
        "table's base.toml and a row's file",
    )
    p.add_argument(
        "--list", action="store_true", help="list the datasets, model families and bottlenecks"
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint written by `qlatent train CONFIG`")
    p.add_argument("checkpoint", help="best.pt or last.pt of a `qlatent train CONFIG` run")
    p.add_argument(
        "--iwae",
        type=_iwae_samples,
        default=None,
        metavar="S",
        help="also the IWAE NLL with S samples (bottlenecks with a density view; at most 2^20)",
    )
    p.add_argument(
        "--iwae-defensive",
        type=_mixture,
        default=None,
        metavar="ALPHA:K",
        help="with --iwae, also the IWAE NLL under the defensive mixture proposal "
        "(1-ALPHA)·q + ALPHA·N(c, (K·r)^2), which covers past a lattice cell",
    )
    p.add_argument(
        "--downstream",
        action="store_true",
        help="also k-means, NMI and a linear probe on the encoder's features (labelled data)",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="only the first N items of each split (a code model is still counted on the whole "
        "training split)",
    )
    p.add_argument("--data-dir", default=None, type=path_name)
    p.add_argument(
        "-o", "--output", default=None, type=path_name, help="also write the report as JSON here"
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="a few minutes of the lattice VAE on MNIST, then Theorem 1")
    _add_run_options(p)
    p.add_argument(
        "--record", action="store_true", help="also copy the summary and figures into results/"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("reproduce", help="reproduce a paper's table (resumable)")
    p.add_argument(
        "name",
        choices=[
            "lattice-mnist",
            "softvq-mnist",
            "llvq-fashion",
            "llvq-celeba",
            "llvq-ffhq",
            "coding-mnist",
            "text-rd",
        ],
        help="which table (llvq-celeba / llvq-ffhq need --set data.folder=PATH)",
    )
    p.add_argument("--quick", action="store_true", help="the whole pipeline in a few minutes")
    p.add_argument("--models", default=None, help="comma-separated subset of the table's rows")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="text-rd, softvq-mnist: train independent runs in this many one-thread processes",
    )
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="softvq-mnist: comma-separated seeds, every row once per seed (e.g. 0,1,2)",
    )
    p.add_argument(
        "--schedules", default=None, help="llvq: comma-separated subset of reference,constant"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default=None, type=path_name)
    p.add_argument(
        "--runs-dir", default="runs", type=path_name, help="where checkpoints go (default runs/)"
    )
    p.add_argument(
        "--results-dir", default="results", type=path_name, help="where the JSON and figures go"
    )
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "update", help="learn a model's code model (symbol frequencies) from training images"
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a gated VQ-VAE or an LL-VQ table's model (vq, vq_ema, ll_vq: last.pt)",
    )
    p.add_argument("--data", default="mnist-train", help=f"one of {', '.join(_CODING_DATA)}")
    p.add_argument("--data-dir", default=None, type=path_name)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    p.add_argument(
        "-o", "--output", required=True, type=path_name, help="the checkpoint to write, with counts"
    )
    p.set_defaults(func=_cmd_update)

    p = sub.add_parser("compress", help="entropy-code images into a .qlc file")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a gated lattice or VQ VAE, or an LL-VQ table's model (last.pt, or qlatent update's)",
    )
    p.add_argument("--data", default="mnist-test", help=f"one of {', '.join(_CODING_DATA)}")
    p.add_argument("--data-dir", default=None, type=path_name)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    p.add_argument(
        "--seed", type=_file_seed, default=0, help="seed of the dither (stored in the file)"
    )
    p.add_argument("-o", "--output", required=True, type=path_name, help="the .qlc file to write")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("decompress", help="decode a .qlc file into reconstructions")
    p.add_argument("input", type=path_name, help="a .qlc file written by qlatent compress")
    p.add_argument(
        "--checkpoint", required=True, type=path_name, help="the checkpoint that wrote the file"
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=path_name,
        help="reconstructions; the extension chooses: .pt (tensor), .npy (array), .png (grid); "
        "a name ending in / is a folder of PNGs, one per image",
    )
    p.add_argument(
        "--png", default=None, type=path_name, help="also draw the first 20 reconstructions"
    )
    p.add_argument(
        "--max-elements",
        type=positive_int,
        default=1 << 27,
        help="refuse a file whose code holds more values than this (default 2^27)",
    )
    p.set_defaults(func=_cmd_decompress)

    p = sub.add_parser("bench", help="throughput benchmarks")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    b = bench_sub.add_parser("lattice", help="lattice bottleneck forward throughput")
    b.add_argument("--rows", type=_rows, default=None, help="rows of the input (16384)")
    b.add_argument("--dim", type=_dim, default=None, help="width of the input (64)")
    b.add_argument("--threads", type=_threads, default=2)
    b.add_argument(
        "--repeats",
        type=_repeats,
        default=None,
        help="timed calls per case (50; 5 with --scaling)",
    )
    b.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    b.add_argument("--device", default="cpu", help=BENCH_DEVICE_HELP)
    b.add_argument(
        "--scaling",
        action="store_true",
        help="rows/s of the eager paths from 16k to 1M rows and dim 64 to 1024 "
        "(results/bench-lattice-scaling.json)",
    )
    b.add_argument(
        "--lattice",
        default=None,
        type=_good_lattice_name,
        help="with --scaling: a good lattice (e8, d4, leech, ...) in blocks of 8 to 512, rows "
        "256 to 4096 (results/bench-lattice-scaling-NAME.json)",
    )
    b.add_argument("--output", default="results/bench-lattice.json", help="'' prints instead")
    b.set_defaults(func=_cmd_bench_lattice)

    b = bench_sub.add_parser(
        "quantizers",
        help="forward throughput of every bottleneck next to vector-quantize-pytorch",
        description="Forward throughput (rows/s, training and eval mode) of every registered "
        "bottleneck, VectorQuantize (K = 128, 512, 4096) and FSQ on the same input. Each case "
        "gets ceil(BUDGET / one call) timed calls, between --min-repeats and --repeats.",
    )
    b.add_argument(
        "--names",
        default=None,
        help="comma-separated bottlenecks (default: all registered; '' for none: peers only)",
    )
    b.add_argument("--rows", type=_rows, default=None, help="rows of the input (16384)")
    b.add_argument("--dim", type=_dim, default=64)
    b.add_argument("--threads", type=_threads, default=2)
    b.add_argument("--repeats", type=_repeats, default=None, help="most timed calls per case (50)")
    b.add_argument(
        "--min-repeats", type=_repeats, default=None, help="fewest timed calls per case (5)"
    )
    b.add_argument(
        "--budget", type=_seconds, default=None, help="timed seconds aimed at per case (2)"
    )
    b.add_argument("--quick", action="store_true", help="256 rows, 2 calls per case (tests)")
    b.add_argument(
        "--no-compile", action="store_true", help="skip the rows of vq with compile=True"
    )
    b.add_argument("--device", default="cpu", help=BENCH_DEVICE_HELP)
    b.add_argument("--output", default="results/bench-quantizers.json", help="'' prints instead")
    b.set_defaults(func=_cmd_bench_quantizers)

    b = bench_sub.add_parser("coding", help="entropy coding throughput (compress / decompress)")
    b.add_argument("--rows", type=_rows, default=25_000)
    b.add_argument("--dim", type=_dim, default=40)
    b.add_argument("--threads", type=_threads, default=1)
    b.add_argument("--repeats", type=_repeats, default=20, help="timed calls per case")
    b.add_argument("--output", default=None, help="write the JSON here (e.g. results/...)")
    b.set_defaults(func=_cmd_bench_coding)

    b = bench_sub.add_parser(
        "lattices",
        help="G(Λ) by Monte Carlo and closest-point throughput of every lattice family",
    )
    b.add_argument(
        "--names", default=None, help="comma-separated subset (z,a2,d3*,d4,e8,bw16,leech)"
    )
    b.add_argument("--rows", type=_rows, default=16384)
    b.add_argument("--threads", type=_threads, default=2)
    b.add_argument(
        "--repeats", type=_repeats, default=10, help="timed closest-point calls per lattice"
    )
    b.add_argument(
        "--target-rse", type=_relative_error, default=5e-4, help="relative s.e. of G to reach"
    )
    b.add_argument("--no-steps", action="store_true", help="skip timing the Table-1 training steps")
    b.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile-fused Leech decoder"
    )
    b.add_argument("--device", default="cpu", help=BENCH_DEVICE_HELP)
    b.add_argument("--output", default="results/lattice-geometry.json", help="'' prints only")
    b.set_defaults(func=_cmd_bench_lattices)
    return parser


#: what to try after an allocation failed
_MEMORY_ADVICE = " (a smaller batch_size or eval_batch_size, or fewer images with --limit, may fit)"


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler), raised where Ctrl-C raises its
    KeyboardInterrupt, so that a command stops the same way (:func:`_sigterm_as_interrupt`)."""


def _terminate(signum: int, frame: object) -> None:
    import multiprocessing

    # the worker processes of a sweep (reproduce --jobs): the pool would otherwise wait for the
    # runs they are in to finish; each resumes from its last checkpoint as the others do
    for child in multiprocessing.active_children():
        child.terminate()
    raise _Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a command as Ctrl-C does: a file being written is taken back, the run
    folder is released, and one line says where the run stands (its default action ended the
    process without a word). Not in a process of a torchrun world: one blocked in a collective
    on a dead peer runs no Python handler until the call returns, and torchrun ends its workers
    with SIGTERM; the default action ends such a process at once."""
    import os
    import signal
    import threading

    in_a_world = os.environ.get("WORLD_SIZE", "1") != "1"
    if in_a_world or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def _on_interrupt(note: Callable[[], str] | None = None) -> Iterator[None]:
    """An interruption inside (Ctrl-C, SIGTERM) reaches :func:`main` as its KeyboardInterrupt,
    carrying ``note()``, what the user can do next, to its line. An error raised while the
    interruption was being handled is the interruption: a cleanup it broke (torch.save closing
    the zip file it was writing when the interruption came) would otherwise replace it."""
    try:
        yield
    except BaseException as err:
        interruption = err
        while interruption is not None and not isinstance(interruption, KeyboardInterrupt):
            interruption = interruption.__context__
        if interruption is None:
            raise
        if note is not None:
            interruption.add_note(note())
        raise interruption from None


def _interrupted(err: KeyboardInterrupt) -> int:
    """``qlatent: interrupted`` (Ctrl-C) or ``qlatent: terminated (SIGTERM)``, with the notes
    of :func:`_on_interrupt`, on one line; exit code 128 + the signal's number, as the shell
    reports a program the signal ended. In a torchrun world only rank 0 writes the line: Ctrl-C
    reaches every rank of the terminal's process group, and each wrote the same line."""
    import os
    import signal

    terminated = isinstance(err, _Terminated)
    notes = "".join(f"; {note}" for note in getattr(err, "__notes__", ()))
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    if os.environ.get("RANK", "0") == "0":
        print(terminal_text(f"qlatent: {what}{notes}"), file=sys.stderr)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    """``qlatent ARGV``: the exit code. Ctrl-C and SIGTERM end a command with one line (exit
    code 130 or 143), a reader of stdout that has gone ends it without one (141), a stdout that
    cannot take the output (a full disk) with one line (2). An exception that no command
    reports as its error (a bug, or an error of a kind the command line does not know) is one
    line too, ``qlatent: internal error: <type>: <message>`` (exit code 1); with the
    environment variable ``QLATENT_TRACEBACK`` set (to anything but ``0``) it is raised, and
    Python prints its traceback."""

    with _sigterm_as_interrupt():
        try:
            try:
                return _run(argv)
            finally:
                if sys.stdout is not None:
                    sys.stdout.flush()  # a reader that has gone shows here, not at exit
        except BrokenPipeError:
            # the reader of standard output has gone (``qlatent train --list | head -1``): what
            # is left unwritten goes nowhere, rather than failing again when Python flushes
            # stdout at exit (https://docs.python.org/3/library/signal.html#note-on-sigpipe);
            # 128 + SIGPIPE, what the shell reports for a program the closed pipe stopped
            _discard_stdout()
            return 141
        except OSError as err:
            # _run reports a command's own errors: this is stdout refusing the help or the last
            # flush (a full disk, ``> /dev/full``); what is left goes nowhere, as above
            _discard_stdout()
            message = terminal_text(f"cannot write standard output: {err}")
            print(f"qlatent: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            return _interrupted(err)
        except Exception as err:
            return _internal_error(err)


def _internal_error(err: Exception) -> int:
    """``qlatent: internal error: <type>: <message>`` on one line (exit code 1), for
    :func:`main`; ``err`` raised again where ``$QLATENT_TRACEBACK`` asks for its traceback."""
    import os

    if os.environ.get("QLATENT_TRACEBACK", "") not in ("", "0"):
        raise err
    what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    print(
        f"qlatent: internal error: {terminal_text(what)} (set QLATENT_TRACEBACK=1 to see the "
        "traceback; please report it)",
        file=sys.stderr,
    )
    return 1


def _discard_stdout() -> None:
    """Point standard output's descriptor at the null device. The descriptor opened for it is
    closed again: it stayed open before, one more for every such call of :func:`main`. A
    standard output without a descriptor (a ``StringIO``, some notebooks' streams) is left as
    it is: asking for its descriptor raised out of :func:`main`'s handlers."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def console() -> None:
    """The ``qlatent`` program (and ``python -m qlatent``): :func:`main`, whose exit code it
    exits with, except after Ctrl-C or SIGTERM: once its line is written the process ends by
    that signal itself, as Python's own default does, so that a shell loop around ``qlatent``
    stops (a shell goes on after a program that merely exits with 130)."""
    import os
    import signal

    _usable_standard_streams()
    code = main()
    signum = code - 128
    if os.name == "posix" and signum in (signal.SIGINT, signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(code)


def _usable_standard_streams() -> None:
    """The standard streams as the program needs them, whatever its caller left. A descriptor
    closed by the caller (``qlatent ... 2>&-``) is opened on the null device: Python sets its
    stream to None, so a progress bar stopped a run without a word, an error line went to
    stdout, and a file the command opened would take the free descriptor, where whatever
    writes to descriptor 2 (a library's C++ warning) would write into it. Text the encoding
    cannot show (``Λ``, ``±``, a path's ``é`` under ``PYTHONIOENCODING=ascii``) is escaped,
    not a UnicodeEncodeError after the command's work was done; the bytes of a path that is
    no text in the locale (kept as surrogates) are written back as they were."""
    import codecs
    import os

    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # the lower descriptors are open, so this is only a safeguard
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))

    def escape(err: UnicodeError) -> tuple[str | bytes, int]:
        try:
            return codecs.lookup_error("surrogateescape")(err)
        except UnicodeError:
            return codecs.backslashreplace_errors(err)

    codecs.register_error("qlatent.escape", escape)
    for stream in (sys.stdout, sys.stderr):
        if not hasattr(stream, "reconfigure"):  # replaced by something other than a text file
            continue
        if stream.errors in ("strict", "surrogateescape", "backslashreplace"):  # Python's own
            stream.reconfigure(errors="qlatent.escape")


def _run(argv: Sequence[str] | None) -> int:
    """The command ``argv`` names; its refusals and failures as one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    try:
        with _on_interrupt():
            return args.func(args)
    except BrokenPipeError:
        raise  # no error: the reader of stdout has gone (main)
    except (ValueError, KeyError, OSError, DataError) as err:
        # one line, whatever the message (a file name or a reason may span several); a missing
        # dataset's ways to get it follow on their own lines, as under ``qlatent data``
        return report_error(err)
    except MemoryError:
        print(f"qlatent: error: out of memory{_MEMORY_ADVICE}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        import torch
        from torch._dynamo.exc import BackendCompilerFailed

        if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err):
            message = terminal_text(" ".join(str(err).split()[:12]))  # torch's first sentence
            print(f"qlatent: error: out of memory: {message}{_MEMORY_ADVICE}", file=sys.stderr)
            return 2
        if not isinstance(err, BackendCompilerFailed):
            if isinstance(err.__context__, OSError):
                # torch.save's zip writer, closed after a write failed (a full disk, a file-size
                # limit), replaces that error with its own ("[enforce fail …] unexpected pos")
                return report_error(err.__context__)
            raise
        # torch.compile could not build a kernel (on the CPU: no working C++ compiler): the
        # backend's own exception, its first line (Dynamo's message adds advice on debugging)
        inner = getattr(err, "inner_exception", None) or err
        lines = str(inner).strip().splitlines()
        reason = f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__
        reason = terminal_text(reason)
        print(
            f"qlatent: error: torch.compile failed: {reason} (without it: compile = false "
            "in the bottleneck's args, or a benchmark's --no-compile)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
