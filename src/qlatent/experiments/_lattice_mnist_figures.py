"""The figures of the lattice-mnist table: the validation negative ELBO per epoch
(:func:`figure_3`, the paper's Figure 3) and each lattice row's against the rectangular row with
its prior and start (:func:`figure_gain`, :func:`control_row`). Drawn by
:func:`~qlatent.experiments.lattice_mnist.reproduce`, which re-exports the names; the gain figure
is also drawn by ``examples/lattice-mnist-gain.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..results import number
from ._lattice_mnist_config import BLOCK_NSM, LABELS, model_config, theoretical_gap


def figure_3(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Validation negative ELBO per epoch, one line per model (the paper's Figure 3)."""
    from matplotlib import colormaps

    from ..eval.plots import epoch_axis, isolated_markers, save_figure, subplots

    # beside the axes once there are more rows than a legend inside can leave room for; a colour
    # per row from a 20-colour map (the default cycle repeats after 10)
    many = len(models) > 6
    fig, ax = subplots(figsize=(11, 4.5) if many else (6, 4))
    colors = colormaps["tab20"].colors
    for i, (name, result) in enumerate(models.items()):
        curve = _curve(result)
        color = colors[(2 * i) % 20 + (2 * i // 20) % 2]  # the dark shades first
        ax.plot(
            range(1, len(curve) + 1), curve, label=LABELS[name], color=color,
            **isolated_markers(curve),
        )  # fmt: skip
        ax.axvline(result["best_epoch"], color=color, ls=":", lw=0.8)
    low = min((v for r in models.values() for v in _curve(r) if math.isfinite(v)), default=None)
    if low is not None:  # matplotlib refuses NaN limits
        ax.set_ylim(low - 2, low + 30)
    epoch_axis(ax)
    ax.set_ylabel("validation negative ELBO (nats)")
    ax.set_title("binarized MNIST, m = 40 (dotted: best epoch)")
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def _curve(row: dict[str, Any]) -> list[float]:
    """A row's validation negative ELBO per epoch, NaN (a gap in its line) where an epoch's
    value was not finite: null in a results file read back."""
    return [number(v) for v in row["val_neg_elbo_curve"]]


#: the rectangular rows the gain figure measures the others against, one panel each
RECTANGULAR_ROWS = ("rect_lattice", "rect_gauss_lattice", "rect_gl_lattice")


def control_row(name: str) -> str | None:
    """The rectangular row trained like lattice row ``name`` in all but the cell: the same prior
    and the same start (``rect_gl_lattice`` for a row started from the Gaussian-lattice VAE,
    ``rect_gauss_lattice`` for a Gaussian prior from scratch, ``rect_lattice`` for a Laplace
    prior from scratch). None for the rectangular rows themselves and rows without a lattice."""
    if name not in BLOCK_NSM or name in RECTANGULAR_ROWS:
        return None
    cfg = model_config(name, quick=False, overrides=[])
    if cfg.init_from == "gaussian_lattice":
        return "rect_gl_lattice"
    gaussian = cfg.model.bottleneck_args.get("prior", "laplace") == "gaussian"
    return "rect_gauss_lattice" if gaussian else "rect_lattice"


def figure_gain(models: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Each lattice row's validation negative ELBO minus that of the rectangular row with its
    prior and start (:func:`control_row`), per epoch, one panel per rectangular row, with the
    row's theoretical gain over the rectangular cell (7.06 minus its own gap) dashed: where in
    training a better cell pays. None (no figure) where no lattice row has its rectangular row."""
    from ..eval.plots import epoch_axis, isolated_markers, save_figure, subplots

    panels: dict[str, list[str]] = {}
    for name in models:
        control = control_row(name)
        if control in models:
            panels.setdefault(control, []).append(name)
    if not panels:
        return None
    full = theoretical_gap("rect_lattice")
    order = [c for c in RECTANGULAR_ROWS if c in panels]
    fig, axes = subplots(1, len(order), figsize=(6 * len(order), 4.5), squeeze=False)
    for ax, control in zip(axes[0], order, strict=True):
        base = _curve(models[control])
        for name in panels[control]:
            curve = _curve(models[name])
            epochs = min(len(curve), len(base))
            diff = [curve[i] - base[i] for i in range(epochs)]
            ax.plot(range(1, epochs + 1), diff, label=LABELS[name], **isolated_markers(diff))
            gain = theoretical_gap(name) - full
            ax.axhline(gain, color=ax.lines[-1].get_color(), ls="--", lw=0.8)
        ax.axhline(0.0, color="black", lw=0.6)
        epoch_axis(ax)
        ax.set_ylabel("validation −ELBO − the rectangular row's (nats)")
        ax.set_title(f"against: {LABELS[control]}", fontsize="medium")
        ax.legend(fontsize="x-small")
    fig.suptitle("binarized MNIST, m = 40 (dashed: −(theoretical gain over Z^40))")
    fig.tight_layout()
    return save_figure(fig, path)
