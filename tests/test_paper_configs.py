"""The paper tables' rows are described in the schema of ``qlatent train`` (one way to describe a
run) and resolve to exactly the configs the tables were run with.

``tests/data/paper-configs.json`` holds every row's resolved pipeline config (full and
``--quick``, every schedule and dataset of the LL-VQ table) as the pipelines read them before
their files moved to the common schema; the same inputs must give the same configs, so the
``--quick`` runs (and the full ones) are unchanged bit for bit. Also checked: every row file is
a valid ``qlatent train`` config on its own, ``--set`` reaches entries of the free-form tables
(``eval.*``, ``bottleneck.args.*``), a run the pipeline cannot honour is refused with the key,
and the runner that trains a table's runs in parallel processes keeps their order and raises a
failure.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from qlatent.config import to_dict
from qlatent.experiments import custom, lattice_mnist, llvq_fashion, softvq_mnist

REFERENCE = json.loads((Path(__file__).parent / "data" / "paper-configs.json").read_text())


def resolved() -> dict[str, dict]:
    out = {}
    for quick in (False, True):
        for name in lattice_mnist.MODELS:
            cfg = lattice_mnist.model_config(name, quick=quick, overrides=[])
            out[f"lattice-mnist/{name}/quick={quick}"] = cfg
        for name in softvq_mnist.MODELS:
            cfg = softvq_mnist.model_config(name, quick=quick, overrides=[])
            out[f"softvq-mnist/{name}/quick={quick}"] = cfg
        for dataset in ("fashion", "celeba", "ffhq"):
            for schedule in llvq_fashion.SCHEDULES:
                for name in llvq_fashion.ROWS:
                    cfg = llvq_fashion.model_config(name, schedule, quick=quick, dataset=dataset)
                    out[f"llvq-{dataset}/{name}/{schedule}/quick={quick}"] = cfg
    return {key: json.loads(json.dumps(to_dict(cfg))) for key, cfg in out.items()}


def test_every_row_resolves_to_the_config_its_table_was_run_with():
    got = resolved()
    new, gone = sorted(set(got) - set(REFERENCE)), sorted(set(REFERENCE) - set(got))
    assert not new and not gone, (
        f"rows without a reference config {new}, references without a row {gone}: a new row's "
        "resolved configs (full and quick) go into tests/data/paper-configs.json as resolved() "
        "gives them, once its config is final"
    )
    for key, cfg in got.items():
        assert cfg == REFERENCE[key], key


@pytest.mark.parametrize("experiment", ["lattice-mnist", "softvq-mnist", "llvq"])
def test_row_files_are_train_configs(experiment):
    folder = resources.files("qlatent.configs") / experiment
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".toml"))
    assert len(files) >= 5
    for path in files:  # raises with the file's name on a bad key (folder rows name no folder)
        custom.load_config(Path(str(path)), ["data.folder=/images"])
    row = custom.load_config(Path(str(folder / "base.toml")))
    assert row.eval  # the pipeline's evaluation settings travel in the same file


def test_overrides_reach_free_form_tables_and_unhonoured_keys_are_refused():
    cfg = lattice_mnist.model_config(
        "e8_lattice",
        quick=True,
        overrides=[
            "eval.iwae_samples=7",
            "bottleneck.args.samples=64",
            "bottleneck.args.proposal=tilted",
        ],
    )
    assert cfg.eval.iwae_samples == 7 and cfg.eval.test_examples == 500  # quick.toml kept
    assert cfg.model.bottleneck_args["samples"] == 64
    assert cfg.model.bottleneck_args["proposal"] == "tilted"
    assert cfg.model.bottleneck_args["lattice"] == "e8"
    with pytest.raises(ValueError, match="model.family"):
        lattice_mnist.model_config("gaussian", quick=False, overrides=["model.family=relu_mlp"])
    with pytest.raises(ValueError, match="eval: .*iwae_sample"):
        lattice_mnist.model_config("gaussian", quick=False, overrides=["eval.iwae_sample=7"])
    with pytest.raises(ValueError, match="loss.rate_weight"):
        llvq_fashion.model_config("vq", "constant", overrides=["loss.rate_weight=1"])
    with pytest.raises(ValueError, match="data.name"):
        softvq_mnist.model_config("vq", quick=False, overrides=["data.name=binarized-mnist"])
    with pytest.raises(ValueError, match="proposal must be 'prior', 'box' or 'tilted'"):
        lattice_mnist.model_config(
            "e8_lattice", quick=True, overrides=["bottleneck.args.proposal=cell"]
        )


def test_train_runs_a_table_row_from_its_base_and_row_files(tmp_path, capsys):
    from qlatent.cli import main

    folder = resources.files("qlatent.configs") / "lattice-mnist"
    files = [str(folder / "base.toml"), str(folder / "e8_lattice.toml")]
    small = ["data.name=synthetic", "model.hidden=[16,16]", "train.epochs=1", "train.max_steps=2"]
    small += ["train.progress=false", "bottleneck.args.samples=8", "bottleneck.args.eval_samples=8"]
    args = ["train", *files, "--out", str(tmp_path / "run")]
    assert main(args + [x for item in small for x in ("--set", item)]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["bottleneck"]["args"]["lattice"] == "e8"  # the row's file
    assert saved["train"]["warmup_epochs"] == 100 and saved["eval"]["iwae_samples"] == 1000  # base
    assert saved["model"]["hidden"] == [16, 16]  # --set last
    assert "training lattice" in capsys.readouterr().out


def test_override_of_a_table_entry_below_a_value_is_refused():
    with pytest.raises(ValueError, match="'lattice' is not a table"):
        lattice_mnist.model_config(
            "e8_lattice", quick=False, overrides=["bottleneck.args.lattice.x=1"]
        )
    cfg = custom.paper_config("lattice-mnist", ["rect_lattice"], ["eval.new.deep=[1, 2]"])
    assert cfg.eval["new"] == {"deep": [1, 2]} and cfg.eval["iwae_samples"] == 1000


def test_parallel_runs_keep_their_order_and_raise_the_first_failure():
    from qlatent.experiments._jobs import run_jobs

    powers = [dict(base=2, exp=e) for e in range(5)]
    assert run_jobs(pow, powers, jobs=2) == run_jobs(pow, powers, jobs=1) == [1, 2, 4, 8, 16]
    with pytest.raises(TypeError):  # int() takes no keyword "base" without a string
        run_jobs(int, [{}, {"base": 2}, {}], jobs=2)
