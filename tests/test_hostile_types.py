"""Bugs that a type checker points at: values of a type that a code path does not expect.

- A good-lattice checkpoint whose saved config holds an unknown bottleneck argument with a
  True/False value (``compile = true``, a key this coder does not read) raised
  ``TypeError: argument of type 'NoneType' is not iterable`` from the type check of the
  arguments (``bool not in kinds`` with no kinds for an unknown key) instead of the
  ``CheckpointError`` that names the argument; ``qlatent compress`` reported it as an internal
  error.
"""

from __future__ import annotations

import pytest

from cli_helpers import one_line_error, run_cli
from qlatent.image_coding import gated_vae_from_checkpoint
from qlatent.models import gated_vae
from qlatent.train import CheckpointError, save_atomic


def _good_lattice_checkpoint(**args) -> dict:
    """A small gated-MLP VAE with an E8 lattice, its config naming the lattice with bottleneck
    arguments ``args``."""
    model = gated_vae("lattice", latent_dim=8, hidden=16, data_dim=20, lattice="e8")
    return {
        "model": model.state_dict(),
        "run_config": {
            "model": {"bottleneck": "lattice", "bottleneck_args": {"lattice": "e8", **args}}
        },
    }


@pytest.mark.parametrize("value", [True, False])
def test_unknown_bool_argument_is_a_checkpoint_error(value):
    ckpt = _good_lattice_checkpoint(compile=value)
    with pytest.raises(CheckpointError, match=r"unexpected bottleneck argument compile="):
        gated_vae_from_checkpoint(ckpt, "row.pt")


@pytest.mark.parametrize("value", [1, "yes", None, [1]])
def test_unknown_argument_of_other_types_is_a_checkpoint_error(value):
    ckpt = _good_lattice_checkpoint(compile=value)
    with pytest.raises(CheckpointError, match=r"unexpected bottleneck argument compile="):
        gated_vae_from_checkpoint(ckpt, "row.pt")


def test_known_bool_argument_is_still_accepted_and_bool_for_int_refused():
    # debias takes a bool; eval_samples an int, and a bool is no count
    with pytest.raises(CheckpointError, match=r"eval_samples=True"):
        gated_vae_from_checkpoint(_good_lattice_checkpoint(eval_samples=True), "row.pt")
    model = gated_vae_from_checkpoint(_good_lattice_checkpoint(debias=False), "row.pt")
    assert model.bottleneck.dim == 8 and model.bottleneck.debias is False


def test_compress_reports_an_unknown_bool_argument_as_an_error(tmp_path, capsys):
    path = tmp_path / "row.pt"
    save_atomic(_good_lattice_checkpoint(compile=True), path)
    code, err = run_cli(
        ["compress", "--checkpoint", path, "--data", "synthetic", "-o", tmp_path / "x.qlc"],
        capsys,
    )
    assert code != 0
    assert one_line_error(err), err
    assert "unexpected bottleneck argument compile=True" in err
    assert not (tmp_path / "x.qlc").exists()
