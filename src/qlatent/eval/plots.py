"""Figures: reconstruction grids and training curves (matplotlib, headless).

Each figure is a :class:`matplotlib.figure.Figure` of its own, outside pyplot, drawn straight
into its file: neither importing this module nor drawing a figure touches the caller's
matplotlib (its backend, its pyplot figures). It selected the Agg backend on import, which left
a notebook's inline backend or a desktop's GUI one switched to Agg for the rest of the session.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # only to close a pyplot figure handed to save_figure
import torch
from matplotlib.figure import Figure
from torch import Tensor

#: what :func:`training_curves` draws from each epoch's record
_CURVES = ("train_objective", "val_objective", "train_rate", "val_rate")


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` makes them, on a figure pyplot does not
    manage (no backend chosen, no window, nothing to close): ``kwargs`` go to
    :meth:`~matplotlib.figure.Figure.subplots`."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: str | Path, *, title: str = ""
) -> Path:
    """Originals (odd rows) above their reconstructions; inputs ``(n, 784)`` (square grey
    images, flattened) or ``(n, H, W)``, both of one shape, n ≥ 1, finite values. ValueError
    otherwise (another width was drawn as a square of the wrong side, or failed in a reshape)."""
    _check_images("originals", originals, (2, 3))
    _check_images("reconstructions", reconstructions, (2, 3))
    if reconstructions.shape != originals.shape:
        raise ValueError(
            f"reconstructions have shape {tuple(reconstructions.shape)}, "
            f"originals {tuple(originals.shape)}"
        )
    n = originals.shape[0]
    if originals.dim() == 2:
        side = math.isqrt(originals.shape[1])
        if side * side != originals.shape[1]:
            raise ValueError(
                f"originals of {originals.shape[1]} values per image are no square image; "
                "give them as (n, H, W)"
            )
        height = width = side
    else:
        height, width = originals.shape[1:]
    orig = originals.reshape(n, height, width).detach().cpu().numpy()
    recon = reconstructions.reshape(n, height, width).detach().cpu().numpy()
    cols = min(n, 10)
    rows = 2 * ((n + cols - 1) // cols)
    fig, axes = subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    for i in range(rows * cols // 2):
        r, c = 2 * (i // cols), i % cols
        for ax, img in ((axes[r][c], orig), (axes[r + 1][c], recon)):
            ax.axis("off")
            if i < n:
                ax.imshow(img[i], cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def reconstruction_rows(
    rows: dict[str, Tensor], path: str | Path, *, value_range: tuple[float, float] = (0.0, 1.0)
) -> Path:
    """One labelled row per entry (e.g. "original", then one per model), images side by side.

    ``rows``: label -> ``(n, C, H, W)`` with C = 1 (grey) or 3 (RGB), n ≥ 1, finite values,
    shown clipped to ``value_range`` = (lo, hi), lo < hi. ValueError otherwise.
    """
    if not isinstance(rows, dict) or not rows:
        raise ValueError("no rows to draw")
    for label, images in rows.items():
        _check_images(f"row {label!r}", images, (4,))
        if images.shape[1] not in (1, 3):
            raise ValueError(
                f"row {label!r} has {images.shape[1]} channels; images have 1 (grey) or 3 (RGB)"
            )
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (lo, hi), got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        # lo == hi divided by zero: every image drawn blank
        raise ValueError(f"value_range must be finite numbers lo < hi, got {value_range!r}")
    n = max(images.shape[0] for images in rows.values())
    fig, axes = subplots(len(rows), n, figsize=(n * 0.9 + 1.4, len(rows) * 0.95), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        shown = ((images.detach().cpu().float() - lo) / (hi - lo)).clamp(0, 1)
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < shown.shape[0]:
                img = shown[c].permute(1, 2, 0).numpy()
                if img.shape[2] == 1:
                    ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves(
    history: list[dict[str, Any]], path: str | Path, *, title: str = "", unit: str = "image"
) -> Path:
    """Train and validation objective (nats per ``unit``: "image", or "sentence" for a text
    run) and the rate per epoch, one point per epoch, the epochs on whole-number ticks.

    ``history``: the training loop's records (``epoch`` and the values of :data:`_CURVES`). An
    epoch without a value is left out of that curve (at learning rate 0 an epoch trains nothing
    and records no training values). A value that is not finite (a diverged validation) is a
    gap in its curve: no point, and no line across it from its neighbours, which drew the
    epoch as though it had the value between theirs; non-finite values at either end of a
    curve are left out, so the figure of the epochs before a divergence is still drawn.
    ValueError for a history without a finite value to draw, a record that is not a table, an
    epoch that is not a finite number or a value that is not a number (a string was drawn as
    a category), or a ``unit`` that is no name.
    """
    if not isinstance(unit, str) or not unit.strip():
        raise ValueError(f"unit must name what a value is per (e.g. 'image'), got {unit!r}")
    if not isinstance(history, list | tuple) or not history:
        raise ValueError(f"history must be a non-empty list of epoch records, got {history!r:.80}")
    curves: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in _CURVES}
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise ValueError(f"history[{i}] must be a table, got {type(record).__name__}")
        for key in ("epoch", *_CURVES):
            value = record.get(key)
            if key not in record and key != "epoch":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"history[{i}]: {key} must be a number, got {value!r:.80}")
            if key == "epoch" and not math.isfinite(value):
                raise ValueError(f"history[{i}]: epoch is {value}, not a finite number")
            if key != "epoch":  # a value that is not finite: NaN, a gap in its line
                curves[key][0].append(record["epoch"])
                curves[key][1].append(value if math.isfinite(value) else math.nan)
    curves = {key: _trimmed(*curve) for key, curve in curves.items()}
    if not any(epochs for epochs, _ in curves.values()):
        raise ValueError(f"history holds no {', '.join(_CURVES)} to draw")
    fig, (ax1, ax2) = subplots(1, 2, figsize=(9, 3.4))
    # a marker on every point: a curve of one epoch is one point, which a line alone never draws
    style = {"marker": "o", "markersize": 3}
    ax1.plot(*curves["train_objective"], label="train (−ELBO)", **style)
    ax1.plot(*curves["val_objective"], label="validation (−ELBO)", **style)
    ax1.set_ylabel(f"nats per {unit}")
    ax2.plot(*curves["train_rate"], label="train", **style)
    ax2.plot(*curves["val_rate"], label="validation", **style)
    ax2.set_ylabel(f"rate (nats per {unit})")
    for ax in (ax1, ax2):
        epoch_axis(ax)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _trimmed(epochs: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    """``epochs`` and ``values`` without the NaN values at either end (gaps only inside)."""
    finite = [i for i, v in enumerate(values) if not math.isnan(v)]
    if not finite:
        return [], []
    keep = slice(finite[0], finite[-1] + 1)
    return epochs[keep], values[keep]


def epoch_axis(ax) -> None:
    """Label the x axis of ``ax`` "epoch" with ticks at whole epochs only: matplotlib's own
    ticks put a run of one epoch at 0.94, 0.96, ... 1.06, epochs that no run has."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def isolated_markers(values: list[float]) -> dict[str, Any]:
    """The ``plot`` options that mark each finite value of ``values`` with no finite
    neighbour (a curve of one epoch, or an epoch between two non-finite ones): a line alone
    draws such a point as nothing. No options where there is none."""
    n = len(values)

    def ok(i: int) -> bool:
        return 0 <= i < n and math.isfinite(values[i])

    alone = [i for i in range(n) if ok(i) and not ok(i - 1) and not ok(i + 1)]
    return {"marker": "o", "markersize": 3, "markevery": alone} if alone else {}


def _check_images(name: str, images: Any, ranks: tuple[int, ...]) -> None:
    """``images``: a real tensor of one of ``ranks`` with at least one image of at least one
    value, all finite (NaN or Inf were drawn as blank images); ValueError naming ``name``."""
    if not isinstance(images, Tensor) or images.dim() not in ranks or images.is_complex():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name} must be a real {want} tensor of images, got {got}")
    if images.shape[0] == 0 or images[0].numel() == 0:
        raise ValueError(f"{name} holds no image to draw: shape {tuple(images.shape)}")
    if images.is_floating_point() and not torch.isfinite(images).all():
        raise ValueError(f"{name} holds NaN or infinite values")


def save_figure(fig, path: str | Path) -> Path:
    """``fig`` drawn into ``path`` (the format from its extension) by an atomic write: a
    symlink, a pipe or a device at ``path`` is never written through (ValueError instead)."""
    import io

    from .._utils import write_atomic

    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=120, format=path.suffix.lstrip(".").lower() or None)
    finally:
        plt.close(fig)  # a figure made with pyplot; nothing for one made by subplots
    return write_atomic(path, buffer.getvalue())
