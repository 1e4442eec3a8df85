"""Behaviours found by reading ruff's wider rule sets (S, BLE, TRY, PLW, ARG, RUF, DTZ ...) over
``src/qlatent``, each checked through the public API."""

from __future__ import annotations

import math

import pytest

from run_helpers import tiny_fit


def _edit_group(out, **changes) -> None:
    """Set ``changes`` in the first optimizer group of ``out/last.pt``, with a matching digest."""
    from qlatent.train import load, save_atomic

    saved = load(out / "last.pt")
    saved["optimizer"]["param_groups"][0].update(changes)
    save_atomic(saved, out / "last.pt")


@pytest.mark.parametrize(
    "changes",
    [
        {"eps": math.inf},
        {"eps": -math.inf},
        {"weight_decay": math.inf},
        {"betas": (0.9, math.inf)},
    ],
    ids=["eps", "eps-negative", "weight_decay", "betas"],
)
def test_an_infinite_optimizer_hyperparameter_is_refused_on_resume(tmp_path, changes):
    """PLR0124 (``saved == saved``): the resume check of a saved hyperparameter refused NaN
    only, though it promises a finite number; an infinite weight decay or beta turned every
    weight into NaN at the first resumed step, and an infinite eps froze them."""
    from qlatent.train import CheckpointError

    out = tmp_path / "run"
    tiny_fit(out)
    _edit_group(out, **changes)
    (key,) = changes
    with pytest.raises(CheckpointError, match=f"the optimizer's {key} is"):
        tiny_fit(out, epochs=2)


def test_a_finite_edited_optimizer_hyperparameter_still_resumes(tmp_path):
    """The check above refuses what is not finite, not what differs from the fresh value."""
    out = tmp_path / "run"
    tiny_fit(out)
    _edit_group(out, eps=1e-6, betas=(0.8, 0.99))
    result = tiny_fit(out, epochs=2)
    assert len(result.history) == 2
    assert all(math.isfinite(record["val_objective"]) for record in result.history)


# ------------------------------------------------------------------ provenance's commit
def _repository(folder):
    """A git repository with one commit at ``folder``; its commit."""
    import subprocess

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    folder.mkdir(parents=True, exist_ok=True)
    git("init", "-q")
    (folder / "other.txt").write_text("x\n")
    git("add", "other.txt")
    git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "other")
    return git("rev-parse", "HEAD")


def test_provenance_records_the_packages_commit_not_the_working_folders(tmp_path, monkeypatch):
    """Run from inside another repository, a result recorded that repository's commit."""
    from qlatent import results

    monkeypatch.delenv("QLATENT_COMMIT", raising=False)
    ours = results.git_commit()
    other = _repository(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    recorded = results.git_commit()
    assert recorded["commit"] != other
    assert recorded["commit"] == ours["commit"]


def test_a_package_git_does_not_track_has_no_commit(tmp_path, monkeypatch):
    """Installed inside another repository (a virtual environment in a project's folder),
    the package's folder belongs to that repository, whose commit is not the package's."""
    from qlatent import results

    monkeypatch.delenv("QLATENT_COMMIT", raising=False)
    _repository(tmp_path / "project")
    installed = tmp_path / "project" / ".venv" / "qlatent"
    installed.mkdir(parents=True)
    (installed / "results.py").write_text("")
    monkeypatch.setattr(results, "__file__", str(installed / "results.py"))
    assert results.git_commit() == {"commit": None, "dirty": None}
