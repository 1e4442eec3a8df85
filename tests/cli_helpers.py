"""What the command-line tests share: run ``qlatent`` in-process and read its error, put other
work in place of its commands, and a tiny training config."""

from __future__ import annotations


def run_cli(args, capsys) -> tuple[int, str]:
    """``qlatent ARGS`` through :func:`qlatent.cli.main` (arguments made strings): its exit code
    and what it wrote to stderr (output captured before the call is dropped)."""
    from qlatent.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def commands_run(monkeypatch, func) -> None:
    """Every command of ``qlatent`` runs ``func(args)`` in place of its own work."""
    import qlatent.cli as cli
    from qlatent.cli import _main

    parser = cli.build_parser()
    monkeypatch.setattr(_main, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=func)


def one_line_error(err: str) -> bool:
    """Whether ``err`` is exactly one ``qlatent: error: …`` line."""
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("qlatent: error:")


#: the same kind of run as ``--set`` overrides of the defaults (one epoch of 60 synthetic
#: images in batches of 20, a gated MLP of width 8, latent dimension 4)
TINY_OVERRIDES = [
    "data.name=synthetic",
    "data.synthetic_size=60",
    "model.hidden=[8]",
    "model.latent_dim=4",
    "train.epochs=1",
    "train.batch_size=20",
    "train.progress=false",
]

#: a run of ``qlatent train`` small enough for a test: a bottleneck ``{name}`` in a ``{family}``
#: model of widths ``{hidden}`` on 60 synthetic images, three updates
TINY_RUN = """
[data]
name = "synthetic"
synthetic_size = 60

[model]
family = "{family}"
hidden = {hidden}
latent_dim = 4

[bottleneck]
name = "{name}"

[train]
epochs = 1
max_steps = 3
batch_size = 10
eval_batch_size = 20
progress = false
"""
