"""Config values take the effect they name, or are refused: a key a pipeline does not read is
no silent no-op, ``--set`` wins over the files and ``--quick``, values parse to the field's type,
and the config recorded in a checkpoint is the one the loop ran."""

from __future__ import annotations

import json

import pytest

from qlatent.config import apply_mapping, apply_overrides
from qlatent.experiments import custom, lattice_mnist, softvq_mnist
from qlatent.train import TrainConfig


def test_lattice_mnist_refuses_an_aux_weight_it_does_not_apply():
    # its loss is RateDistortionLoss() (aux weight 1); a VQ row trained with the full
    # commitment term while the user asked for a quarter of it
    with pytest.raises(ValueError, match="loss.aux_weight"):
        lattice_mnist.model_config(
            "rect_lattice",
            quick=True,
            overrides=["bottleneck.name=vq", "bottleneck.args={}", "loss.aux_weight=0.25"],
        )
    cfg = lattice_mnist.model_config("rect_lattice", quick=True, overrides=["loss.aux_weight=1"])
    assert cfg.model.bottleneck == "lattice"


@pytest.mark.parametrize(
    "setting",
    [
        "data.split_seed=7",
        "data.synthetic_size=100",
        "data.channels=3",
        "data.image_size=16",
        "data.test_size=50",
    ],
)
@pytest.mark.parametrize(
    "config",
    [
        lambda ov: lattice_mnist.model_config("rect_lattice", quick=True, overrides=ov),
        lambda ov: softvq_mnist.model_config("vq", quick=True, overrides=ov),
    ],
    ids=["lattice-mnist", "softvq-mnist"],
)
def test_paper_tables_refuse_data_keys_they_do_not_read(config, setting):
    # their synthetic sets have a fixed size, one channel and train.seed as their seed, and
    # MNIST its fixed split: these keys were accepted and changed nothing
    key = setting.split("=")[0]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config(["data.name=synthetic", setting])
    config(["data.name=synthetic"])  # the schema's defaults are accepted


def test_set_wins_over_the_row_and_quick_files():
    cfg = lattice_mnist.model_config(
        "gaussian_lattice", quick=True, overrides=["train.epochs=5", "train.warmup_epochs=0"]
    )
    assert cfg.train.epochs == 5 and cfg.train.warmup_epochs == 0  # quick.toml says 3 and 2
    assert cfg.train.patience == 1  # quick.toml's, not overridden
    assert cfg.eval.iwae_samples == 20


@pytest.mark.parametrize(
    ("raw", "value"), [("1e-3", 1e-3), ("0.001", 1e-3), ("1", 1.0), (" 5e-4 ", 5e-4)]
)
def test_numbers_parse_to_the_fields_type(raw, value):
    cfg = apply_overrides(TrainConfig(), [f"lr={raw}", "lr_decay=1", "max_minutes=2"])
    assert cfg.lr == value and type(cfg.lr) is float
    assert type(cfg.lr_decay) is float and type(cfg.max_minutes) is float


@pytest.mark.parametrize("raw", ["false", "False", "0", "no"])
def test_a_false_flag_is_false_from_the_command_line_and_toml(raw):
    assert apply_overrides(TrainConfig(), [f"progress={raw}"]).progress is False
    # a TOML string "false" (or the boolean) is the flag false, not a truthy string
    assert apply_mapping(TrainConfig(), {"progress": raw}).progress is False
    assert apply_mapping(TrainConfig(), {"progress": False}).progress is False


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "2"])
def test_a_learning_rate_outside_its_range_is_refused(raw):
    with pytest.raises(ValueError, match="lr"):
        apply_overrides(TrainConfig(), [f"lr={raw}"])


def test_the_loop_runs_the_set_values_and_records_them(tmp_path):
    from qlatent.train import load

    out = tmp_path / "run"
    cfg = custom.load_config(
        None,
        [
            "data.name=synthetic",
            "data.synthetic_size=30",
            "model.hidden=[8]",
            "model.latent_dim=4",
            "train.epochs=1",
            "train.max_steps=1",
            "train.batch_size=10",
            "train.lr=0.02",
            "train.optimizer=adam_normgrad",
            "train.progress=false",
            "loss.rate_weight=0.5",
            f"out_dir={out}",
        ],
    )
    custom.train(cfg)
    last = load(out / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == 0.02
    assert last["train_config"]["optimizer"] == "adam_normgrad"
    assert last["run_config"]["loss"]["rate_weight"] == 0.5
    assert last["run_config"]["train"] == last["train_config"]
    assert last["state"]["step"] == 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["lr"] == 0.02 and saved["loss"]["rate_weight"] == 0.5


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ("binarized-mnist", "data.split_seed=3"),
        ("binarized-mnist", "data.val_size=100"),
        ("mnist", "data.test_size=200"),
        ("synthetic", "data.image_size=16"),
        ("synthetic", "data.val_size=10"),
        ("text-en", "data.split_seed=1"),
        ("mnist", "data.folder=digits"),
    ],
)
def test_a_new_run_refuses_a_data_setting_its_data_does_not_read(data, setting, tmp_path):
    """``qlatent train`` on binarized MNIST with ``data.split_seed = 3`` trained on the same
    fixed split as every other seed (so "seeds" of a split were copies of one run); likewise a
    held-out size or an image size its data ignores. A new run refuses it, before any data is
    read."""
    family = ["model.family=text_gru", "model.hidden=[8,8]"] if data == "text-en" else []
    cfg = custom.load_config(None, [f"data.name={data}", setting, *family, f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=setting.split("=")[0] + ".* has no effect"):
        custom.train(cfg, data_dir=str(tmp_path / "no-data-here"))


def test_every_data_setting_is_read_by_some_data_and_the_defaults_pass():
    """The table of what each data set reads covers every data set and every setting, and a
    config that leaves the ignored settings at their defaults passes."""
    assert set(custom.DATA_SETTINGS) == set(custom.DATASETS)
    names = {f for reads in custom.DATA_SETTINGS.values() for f in reads}
    assert names == {f for f in custom.DataConfig.__dataclass_fields__ if f != "name"}
    for name in custom.DATASETS:
        custom.check_data_settings(
            custom.DataConfig(name=name, folder="x" if name == "folder" else None)
        )
    # the synthetic size and the text settings are a template's leftovers for other data
    custom.check_data_settings(custom.DataConfig(name="mnist", synthetic_size=60, vocab_size=9))


def test_lattice_mnist_refuses_a_validation_size_its_data_does_not_read():
    """Binarized MNIST's validation split is fixed and the synthetic set's is a sixth:
    ``--set data.val_size`` on lattice-mnist was recorded and changed nothing."""
    with pytest.raises(ValueError, match=r"data\.val_size"):
        lattice_mnist.model_config("rect_lattice", quick=True, overrides=["data.val_size=100"])
