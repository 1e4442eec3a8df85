"""t-SNE pictures of learned latents, one panel per method (the Soft VQ-VAE paper's Fig. 4).

L. van der Maaten and G. Hinton, "Visualizing Data using t-SNE" (JMLR 2008), through sklearn's
Barnes-Hut ``TSNE``; Wu & Flierl (AAAI 2020) draw the test latents z_e of each model this way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D
from sklearn.manifold import TSNE

from ._features import ArrayLike, _check_features, _check_labels, _check_positive_int
from .plots import save_figure, subplots  # figures outside pyplot, drawn into files


# ------------------------------------------------------------------------------------ t-SNE
def tsne_figure(
    features: ArrayLike,
    labels: ArrayLike,
    path: str | Path,
    *,
    title: str = "",
    seed: int = 0,
    max_points: int | None = None,
    perplexity: float = 30.0,
) -> Path:
    """Scatter of a 2-D t-SNE of ``features`` coloured by label (the paper's Fig. 4), as PNG.

    sklearn ``TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)``; with
    ``max_points`` a seeded random subset of that many examples is embedded.

    Args:
        features: ``(N, d)`` real features.
        labels: ``(N,)`` integer labels; one colour and legend entry per distinct label.
        path: where the PNG goes (parent folders are created).

    Raises:
        ValueError: bad shapes or values, or ``perplexity`` not in (0, number of points).
    """
    return tsne_grid(
        {title: features},
        labels,
        path,
        seed=seed,
        max_points=max_points,
        perplexity=perplexity,
        ncols=1,
    )


def tsne_grid(
    named_features: Mapping[str, ArrayLike],
    labels: ArrayLike,
    path: str | Path,
    *,
    seed: int = 0,
    max_points: int | None = None,
    perplexity: float = 30.0,
    ncols: int | None = None,
) -> Path:
    """Several methods' t-SNE scatters side by side, one subplot per name, as one PNG.

    Every entry of ``named_features`` is ``(N, d_m)`` features of the same N examples (e.g. the
    MNIST test set through each model's encoder); ``labels`` ``(N,)`` colour all subplots alike.
    The same seeded subset of ``max_points`` examples is used for every method, and each is
    embedded as in :func:`tsne_figure`. ``ncols`` defaults to min(4, number of methods).

    Raises:
        ValueError: no methods, entries of different N, bad shapes or values, or ``perplexity``
            not in (0, number of points).
    """
    if not named_features:
        raise ValueError("named_features is empty: give at least one name -> (N, d) features")
    arrays = {name: _check_features(f"features {name!r}", f) for name, f in named_features.items()}
    sizes = {name: x.shape[0] for name, x in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every method needs features of the same N examples, got {sizes}")
    n = next(iter(sizes.values()))
    y = _check_labels("labels", labels, n)
    keep = _subsample(n, max_points, seed)
    points = keep.size
    if not (0 < perplexity < points):
        raise ValueError(
            f"t-SNE needs 0 < perplexity < number of points, got perplexity={perplexity} "
            f"with {points} points; pass a smaller perplexity"
        )
    y = y[keep]
    classes = np.unique(y)
    palette = _class_colours(classes.size)
    colours = palette[np.searchsorted(classes, y)]

    ncols = min(4, len(arrays)) if ncols is None else ncols
    _check_positive_int("ncols", ncols)
    # every embedding before the figure exists, so a failing t-SNE leaves no open figure
    embeddings = {}
    for name, x in arrays.items():
        x = _in_range(x[keep])
        embeddings[name] = TSNE(
            n_components=2, init=_initialisation(x), perplexity=perplexity, random_state=seed
        ).fit_transform(x)
    marker_size = float(np.clip(4000 / points, 1, 16))  # dots for 10,000 points, discs for 100

    nrows = -(-len(arrays) // ncols)
    panel, legend_width = 3.6, 0.7  # inches
    width = panel * ncols + legend_width
    fig, axes = subplots(nrows, ncols, figsize=(width, panel * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")  # t-SNE coordinates carry no units
    for ax, (name, e) in zip(axes.flat, embeddings.items(), strict=False):
        ax.scatter(e[:, 0], e[:, 1], c=colours, s=marker_size, linewidths=0)
        ax.set_title(name, fontsize=9)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=palette[i], label=str(c))
        for i, c in enumerate(classes)
    ]
    fig.legend(handles=handles, loc="center right", fontsize=8, markerscale=1.2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - legend_width / width, 1))
    return save_figure(fig, path)


#: features whose largest magnitude lies outside this range are divided by it first
_ORDINARY = (1e-100, 1e100)
#: below this spread (the first principal component's standard deviation over the largest
#: magnitude) the features are taken as constant
_FLAT = 1e-3


def _in_range(x: np.ndarray) -> np.ndarray:
    """``x``, divided by its largest magnitude where that is extreme: squared distances of
    features near 1e300 overflow (sklearn failed on them with an unrelated reshape error) and
    those of features near 1e-310 vanish. t-SNE's affinities adapt each point's bandwidth to its
    neighbours' distances, so a common scale changes nothing else; ordinary features are passed
    on untouched."""
    largest = float(np.abs(x).max())
    low, high = _ORDINARY
    return x / largest if largest > 0 and not low <= largest <= high else x


def _initialisation(x: np.ndarray) -> str:
    """``"pca"`` (sklearn's default, the paper's figures), or ``"random"`` for features that
    are constant or nearly so, or of one column: sklearn scales its PCA start by the standard
    deviation of its first column, 0 for constant features, and the Barnes-Hut tree built on the
    NaN coordinates crashed the process (a segmentation fault), so an encoder whose features
    collapsed took the run down; one column has no second component at all. A start from
    random points embeds such features as well as anything can."""
    if x.shape[1] < 2:
        return "random"
    centred = x - x.mean(0)
    spread = float(np.linalg.norm(centred, 2)) / np.sqrt(x.shape[0])  # first component's sd
    return "pca" if spread > _FLAT * float(np.abs(x).max()) else "random"


def _class_colours(k: int) -> np.ndarray:
    """``(k, 4)`` RGBA: tab10's first k colours (tab20's for k ≤ 20), else k samples of turbo."""
    if k <= 20:
        return colormaps["tab10" if k <= 10 else "tab20"](np.arange(k))
    return colormaps["turbo"](np.linspace(0, 1, k))


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``max_points`` of n (all n when None or ≥ n)."""
    if max_points is None:
        return np.arange(n)
    _check_positive_int("max_points", max_points)
    if max_points >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
