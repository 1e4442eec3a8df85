"""Shared test settings: the hypothesis profiles of the property-based (fuzz) tests, and the
fixtures several files use.

``make test`` runs a bounded, derandomized profile (the same examples on every run, a few
seconds per property); ``make fuzz`` selects the ``fuzz`` profile (many more examples, fresh
ones each run) with ``HYPOTHESIS_PROFILE=fuzz``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture()
def coding_checkpoint(tmp_path):
    """A small untrained lattice VAE (784 → 4) saved as a checkpoint the coding commands read."""
    from qlatent.models import gated_vae
    from qlatent.train import save_atomic

    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=4, hidden=8, data_dim=784)
    path = tmp_path / "model.pt"
    save_atomic({"model": model.state_dict()}, path)
    return path
