"""``qlatent train | eval | demo | reproduce``: the commands that train and evaluate models."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .._utils import terminal_text
from ..config import apply_overrides, to_dict
from ._args import _check_folders, _names, _refuse_overwrite
from ._interrupt import _on_interrupt


def _lattice_config(args: argparse.Namespace, **defaults):
    from ..experiments.lattice_vae import LatticeVAEConfig

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
    """For :func:`~._interrupt._on_interrupt`: what the same command does next with the run in
    ``out_dir``, read when the run is interrupted. The training loop writes ``last.pt`` atomically
    at the end of every epoch and a run resumes from it; a ``--fresh`` run's own is one written
    since it started, resumed from without ``--fresh`` (which would start again)."""
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

    from ..experiments import custom
    from ..experiments import lattice_vae as exp

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


def _cmd_eval(args: argparse.Namespace) -> int:
    import os

    from ..experiments import custom
    from ..results import provenance, write_json

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
    from ..experiments import lattice_vae as exp

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


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import inspect
    from functools import partial

    from ..experiments import coding_mnist, lattice_mnist, llvq_fashion, softvq_mnist, text_rd

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
