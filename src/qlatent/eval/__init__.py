"""Evaluation: two-part codelength vs negative ELBO, plots."""

from .codelength import CodelengthReport, PathEstimate, codelength_report
from .downstream import (
    DownstreamReport,
    KMeansScores,
    ProbeScores,
    cluster_accuracy,
    downstream_report,
    kmeans_scores,
    linear_probe,
    nmi,
)
from .iwae import iwae_nll, iwae_summary
from .plots import reconstruction_grid, training_curves
from .tsne import tsne_figure, tsne_grid

__all__ = [
    "CodelengthReport",
    "DownstreamReport",
    "KMeansScores",
    "PathEstimate",
    "ProbeScores",
    "cluster_accuracy",
    "codelength_report",
    "downstream_report",
    "iwae_nll",
    "iwae_summary",
    "kmeans_scores",
    "linear_probe",
    "nmi",
    "reconstruction_grid",
    "training_curves",
    "tsne_figure",
    "tsne_grid",
]
