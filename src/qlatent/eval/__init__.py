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
    linear_probe_converged,
    nmi,
)
from .iwae import iwae_nll, iwae_summary
from .plots import reconstruction_grid, reconstruction_rows, training_curves
from .proposals import DefensiveProposal, defensive_view
from .tsne import tsne_figure, tsne_grid
from .usage import CodeUsage, code_usage, distinct_rows, row_hashes

__all__ = [
    "CodeUsage",
    "DefensiveProposal",
    "code_usage",
    "distinct_rows",
    "row_hashes",
    "CodelengthReport",
    "DownstreamReport",
    "KMeansScores",
    "PathEstimate",
    "ProbeScores",
    "cluster_accuracy",
    "codelength_report",
    "defensive_view",
    "downstream_report",
    "iwae_nll",
    "iwae_summary",
    "kmeans_scores",
    "linear_probe",
    "linear_probe_converged",
    "reconstruction_rows",
    "nmi",
    "reconstruction_grid",
    "training_curves",
    "tsne_figure",
    "tsne_grid",
]
