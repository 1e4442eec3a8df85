"""The paper tables' ``reproduce`` called from Python: a mistaken argument is one ValueError or
TypeError naming it, raised before any row is trained (the command line checks these itself)."""

from __future__ import annotations

import pytest

from qlatent.experiments import coding_mnist, lattice_mnist, llvq_fashion, softvq_mnist, text_rd

#: a table's module, the function that would train its first row, and a row it knows
TABLES = {
    "lattice-mnist": (lattice_mnist, "fit", "rect_lattice"),
    "softvq-mnist": (softvq_mnist, "_run_task", "vq"),
    "llvq-fashion": (llvq_fashion, "run_row", "vq"),
    "coding-mnist": (coding_mnist, "fit", "lattice"),
    "text-rd": (text_rd, "_train_point", "scalar_st"),
}


def _refused(monkeypatch, tmp_path, table, error, match, **kwargs):
    module, trainer, row = TABLES[table]

    def trained(*args, **kw):
        raise AssertionError("a row was trained before the argument was refused")

    monkeypatch.setattr(module, trainer, trained)
    arguments = dict(quick=True, models=[row], runs_dir=tmp_path / "runs")
    arguments |= dict(results_dir=tmp_path / "results") | kwargs
    with pytest.raises(error, match=match) as caught:
        module.reproduce(**arguments)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize(
    ("given", "error", "match"),
    [
        (lambda row: {"models": row}, TypeError, "models must be a list of names"),
        (lambda row: {"models": []}, ValueError, "models must name at least one"),
        (lambda row: {"models": [row, row]}, ValueError, "models names .* more than once"),
        (lambda row: {"quick": "yes"}, TypeError, "quick must be True or False, got 'yes'"),
        (lambda row: {"overrides": "train.epochs=1"}, TypeError, "overrides must be a list"),
        (lambda row: {"overrides": [1]}, TypeError, "overrides must be a list"),
        (lambda row: {"command": 3}, TypeError, "command must be a string"),
        (lambda row: {"data_dir": 5}, TypeError, "data_dir must name a folder, got 5"),
    ],
    ids=["models-string", "models-empty", "models-twice", "quick-string", "overrides-string",
         "overrides-number", "command-number", "data-dir-number"],
)  # fmt: skip
def test_mistaken_arguments_are_refused_before_training(
    monkeypatch, tmp_path, table, given, error, match
):
    kwargs = given(TABLES[table][2])
    _refused(monkeypatch, tmp_path, table, error, match, **kwargs)


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("argument", ["runs_dir", "results_dir", "data_dir"])
@pytest.mark.parametrize("under", [False, True])
def test_a_folder_that_is_a_file_is_refused_before_training(
    monkeypatch, tmp_path, table, argument, under
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folder = blocker / "sub" if under else blocker
    match = f"{argument} cannot be a folder: .*a-file is a file"
    _refused(monkeypatch, tmp_path, table, ValueError, match, **{argument: folder})


@pytest.mark.parametrize(
    "schedules", ["reference", [], ["constant", "constant"]], ids=["string", "empty", "twice"]
)
def test_llvq_schedules_are_a_list_of_distinct_names(monkeypatch, tmp_path, schedules):
    _refused(
        monkeypatch, tmp_path, "llvq-fashion", (TypeError, ValueError), "^schedules ",
        schedules=schedules,
    )  # fmt: skip


@pytest.mark.parametrize("jobs", [0, "2", True])
def test_text_rd_jobs_are_checked_before_the_warm_start(monkeypatch, tmp_path, jobs):
    _refused(monkeypatch, tmp_path, "text-rd", ValueError, "jobs must be a positive", jobs=jobs)


@pytest.mark.parametrize("seeds", ["01", [1.5], [True, 0]])
def test_softvq_seeds_are_distinct_integers(monkeypatch, tmp_path, seeds):
    _refused(monkeypatch, tmp_path, "softvq-mnist", ValueError, "seeds must be", seeds=seeds)
