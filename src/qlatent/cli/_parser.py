"""The argument parser of ``qlatent``: :func:`build_parser`, made of one function per command
(each naming its ``func``, the command that runs it). Used by :func:`~qlatent.cli.main`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._utils import path_name, positive_int, terminal_text
from ..data.cli import add_data_parser
from ._args import (
    _dim,
    _file_seed,
    _good_lattice_name,
    _iwae_samples,
    _mixture,
    _relative_error,
    _repeats,
    _rows,
    _seconds,
    _seed_list,
    _threads,
)
from ._bench import (
    _cmd_bench_coding,
    _cmd_bench_lattice,
    _cmd_bench_lattices,
    _cmd_bench_quantizers,
)
from ._coding import _CODING_DATA, _cmd_compress, _cmd_decompress, _cmd_inspect, _cmd_update
from ._train import _cmd_demo, _cmd_eval, _cmd_reproduce, _cmd_train

#: --device of the benchmarks
BENCH_DEVICE_HELP = "cpu (default) or cuda[:N]: where the timed tensors live"


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


def _version() -> str:
    """``qlatent X (torch Y)``: the torch build decides much of a run's numbers and speed."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"qlatent {__version__} (torch {torch})"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that help or a version that cannot be written to stdout is an
    error for :func:`~._main.main` to report: argparse drops it, and ``qlatent --help > /dev/full``
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
    _add_train(sub)
    _add_eval(sub)
    _add_demo(sub)
    _add_reproduce(sub)
    _add_update(sub)
    _add_compress(sub)
    _add_decompress(sub)
    _add_inspect(sub)
    _add_bench(sub)
    return parser


def _add_train(sub: Any) -> None:
    """``qlatent train [CONFIG ...]``."""
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


def _add_eval(sub: Any) -> None:
    """``qlatent eval CHECKPOINT``."""
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


def _add_demo(sub: Any) -> None:
    """``qlatent demo``."""
    p = sub.add_parser("demo", help="a few minutes of the lattice VAE on MNIST, then Theorem 1")
    _add_run_options(p)
    p.add_argument(
        "--record", action="store_true", help="also copy the summary and figures into results/"
    )
    p.set_defaults(func=_cmd_demo)


def _add_reproduce(sub: Any) -> None:
    """``qlatent reproduce NAME``."""
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


def _add_update(sub: Any) -> None:
    """``qlatent update``."""
    p = sub.add_parser(
        "update", help="learn a model's code model (symbol frequencies) from training images"
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a model with a counted code model (vq, vq_ema, ll_vq...): qlatent train's "
        "best.pt or last.pt, or a table's last.pt",
    )
    p.add_argument("--data", default="mnist-train", help=f"one of {', '.join(_CODING_DATA)}")
    p.add_argument("--data-dir", default=None, type=path_name)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    p.add_argument(
        "-o", "--output", required=True, type=path_name, help="the checkpoint to write, with counts"
    )
    p.set_defaults(func=_cmd_update)


def _add_compress(sub: Any) -> None:
    """``qlatent compress``."""
    p = sub.add_parser("compress", help="entropy-code images into a .qlc file")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a model with a lattice or VQ bottleneck: qlatent train's best.pt or last.pt, a "
        "table's last.pt, or qlatent update's",
    )
    p.add_argument("--data", default="mnist-test", help=f"one of {', '.join(_CODING_DATA)}")
    p.add_argument("--data-dir", default=None, type=path_name)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    p.add_argument(
        "--seed", type=_file_seed, default=0, help="seed of the dither (stored in the file)"
    )
    p.add_argument("-o", "--output", required=True, type=path_name, help="the .qlc file to write")
    p.set_defaults(func=_cmd_compress)


def _add_decompress(sub: Any) -> None:
    """``qlatent decompress FILE``."""
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


def _add_inspect(sub: Any) -> None:
    """``qlatent inspect FILE``."""
    p = sub.add_parser(
        "inspect",
        help="what a .qlc file holds (examples, bits, code model, writing model), "
        "from its header alone",
    )
    p.add_argument("input", type=path_name, help="a .qlc file written by qlatent compress")
    p.add_argument(
        "--checkpoint",
        default=None,
        type=path_name,
        help="also say whether this checkpoint's model wrote the file (exit code 1 if not)",
    )
    p.add_argument("--json", action="store_true", help="print the fields as JSON")
    p.set_defaults(func=_cmd_inspect)


def _add_bench(sub: Any) -> None:
    """``qlatent bench lattice | quantizers | coding | lattices``."""
    p = sub.add_parser("bench", help="throughput benchmarks")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    _add_bench_lattice(bench_sub)
    _add_bench_quantizers(bench_sub)
    _add_bench_coding(bench_sub)
    _add_bench_lattices(bench_sub)


def _add_bench_lattice(bench_sub: Any) -> None:
    """``qlatent bench lattice``."""
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


def _add_bench_quantizers(bench_sub: Any) -> None:
    """``qlatent bench quantizers``."""
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


def _add_bench_coding(bench_sub: Any) -> None:
    """``qlatent bench coding``."""
    b = bench_sub.add_parser("coding", help="entropy coding throughput (compress / decompress)")
    b.add_argument("--rows", type=_rows, default=25_000)
    b.add_argument("--dim", type=_dim, default=40)
    b.add_argument("--threads", type=_threads, default=1)
    b.add_argument("--repeats", type=_repeats, default=20, help="timed calls per case")
    b.add_argument("--output", default=None, help="write the JSON here (e.g. results/...)")
    b.set_defaults(func=_cmd_bench_coding)


def _add_bench_lattices(bench_sub: Any) -> None:
    """``qlatent bench lattices``."""
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
