"""Figures: reconstruction grids and training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: str | Path, *, title: str = ""
) -> Path:
    """Originals (odd rows) above their reconstructions; inputs ``(n, 784)`` or ``(n, H, W)``."""
    n = originals.shape[0]
    side = int(round(originals[0].numel() ** 0.5))
    orig = originals.reshape(n, side, side).detach().cpu().numpy()
    recon = reconstructions.reshape(n, side, side).detach().cpu().numpy()
    cols = min(n, 10)
    rows = 2 * ((n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
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

    ``rows``: label -> ``(n, C, H, W)`` with C = 1 (grey) or 3 (RGB), values in ``value_range``.
    """
    if not rows:
        raise ValueError("no rows to draw")
    lo, hi = value_range
    n = max(images.shape[0] for images in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9 + 1.4, len(rows) * 0.95), squeeze=False)
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


def training_curves(history: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Train and validation objective (nats) and the rate per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h["train_objective"] for h in history], label="train (−ELBO)")
    ax1.plot(epochs, [h["val_objective"] for h in history], label="validation (−ELBO)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("nats per image")
    ax1.legend()
    ax2.plot(epochs, [h["train_rate"] for h in history], label="train")
    ax2.plot(epochs, [h["val_rate"] for h in history], label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("rate (nats per image)")
    ax2.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


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
        plt.close(fig)
    return write_atomic(path, buffer.getvalue())
