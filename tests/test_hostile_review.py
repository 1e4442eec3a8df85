"""Hostile inputs to the code paths changed in the latest review round."""

import pytest
import torch

from qlatent.cli import _draw_decoded


def test_draw_decoded_refuses_rows_of_no_values(tmp_path):
    # (N, 0) passed the square test (0 = 0²) and failed inside reshape with a RuntimeError
    with pytest.raises(ValueError, match="0 values are no square image"):
        _draw_decoded(torch.rand(3, 0), str(tmp_path / "grid.png"), (0.0, 1.0))
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("shape", [(0, 16), (0, 1, 4, 4)])
def test_draw_decoded_names_an_empty_decode(tmp_path, shape):
    # no image: the error was about a row labelled "1–0"
    with pytest.raises(ValueError, match="decoded to no image"):
        _draw_decoded(torch.rand(shape), str(tmp_path / "grid.png"), (0.0, 1.0))
    assert not (tmp_path / "grid.png").exists()
