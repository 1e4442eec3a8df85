"""Hostile run configs and sentences: sizes that only pad, data too small to split, reserved
names inside a sentence."""

from __future__ import annotations

import pytest
import torch

from qlatent.data import DataError
from qlatent.data.text import Vocabulary
from qlatent.experiments.custom import DataConfig, _split, load_config, load_data, load_text_data


def test_max_tokens_past_the_longest_sentence_is_refused_before_padding():
    """Every sentence is padded to data.max_tokens + 1 ids: 200,000 held a 60-sentence run for
    minutes and gigabytes in a decoder of 200,001 steps."""
    cfg = DataConfig(name="synthetic-text", synthetic_size=60, max_tokens=200_000)
    with pytest.raises(DataError, match=r"data\.max_tokens .*at most 30"):
        load_text_data(cfg)


def test_max_tokens_within_the_bound_still_loads():
    splits, _ = load_text_data(DataConfig(name="synthetic-text", synthetic_size=60, max_tokens=30))
    assert splits["train"].shape[1] == 31


@pytest.mark.parametrize("name", ["synthetic", "synthetic-text"])
@pytest.mark.parametrize("size", [1, 2])
def test_synthetic_data_too_small_to_split_names_the_key(name, size):
    """One or two synthetic items cannot give train, validation and test one each: the text
    error blamed data.max_tokens, the image one named no key."""
    sets = [f"data.name={name}", f"data.synthetic_size={size}"]
    if name == "synthetic-text":
        sets += ["model.family=text_gru", "model.hidden=[8, 8]"]
    with pytest.raises(ValueError, match=r"data\.synthetic_size must be at least 3"):
        load_config(None, sets)


def test_three_synthetic_items_still_split():
    images = load_data(DataConfig(name="synthetic", synthetic_size=3))
    assert {k: v.shape[0] for k, v in images.items()} == {"val": 1, "test": 1, "train": 1}
    splits, _ = load_text_data(DataConfig(name="synthetic-text", synthetic_size=3))
    assert [splits[k].shape[0] for k in ("train", "val", "test")] == [1, 1, 1]


def test_held_out_sizes_past_the_data_name_their_keys():
    """Held-out sizes that leave no training image name the keys that set them."""
    with pytest.raises(ValueError, match=r"data\.val_size.*data\.test_size"):
        _split(torch.zeros(5, 1), 4, 1, 0)


def test_reserved_names_inside_a_sentence_are_unknown_words():
    """A sentence holding the word ``<eos>`` or ``<pad>`` was encoded with the reserved id: the
    sentence ended early without a word, or padding came first."""
    vocab = Vocabulary(["a", "b"])
    ids = vocab.encode([["a", "<eos>", "b"], ["<pad>", "<bos>", "<unk>"]], 4)
    assert ids.tolist() == [[4, 3, 5, 2, 0], [3, 3, 3, 2, 0]]
    assert Vocabulary.build([["<eos>", "<eos>", "a"]], 1).words[4:] == ["a"]


def test_unk_rate_counts_what_encode_writes_as_unknown():
    """``unk_rate`` counted a literal ``<eos>`` in a sentence as a known word, though ``encode``
    writes it as UNK: the reported rate was lower than the data's."""
    vocab = Vocabulary(["a", "b"])
    sentences = [["a", "<eos>", "b"], ["<pad>", "c", "<unk>", "a"]]
    ids = vocab.encode(sentences, 4)
    written_unknown = sum(ids[row, : len(s)].eq(3).sum().item() for row, s in enumerate(sentences))
    assert written_unknown == 4
    assert vocab.unk_rate(sentences) == 4 / 7


@pytest.mark.parametrize(
    "override",
    ["loss.rate_weight=0.5", "bottleneck.name=lattice", "bottleneck.args={}", "out_dir=/tmp/x"],
)
def test_text_rd_refuses_an_override_of_what_each_point_sets(override, tmp_path, capsys):
    """text-rd's points differ in their rate weight and bottleneck; ``--set loss.rate_weight``
    gave every λ point one weight (four copies of one point, labelled as four), and ``out_dir``
    one run folder for all. Such an override is refused before anything is trained."""
    from qlatent.cli import main
    from qlatent.experiments import text_rd

    with pytest.raises(ValueError, match=override.split("=")[0]):
        text_rd.point_config(
            "lattice", "λ=0.1", quick=True, runs_dir=str(tmp_path), overrides=[override]
        )
    args = ["reproduce", "text-rd", "--quick", "--set", override, "--runs-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "each operating point" in err and err.count("\n") == 1, err
    assert not (tmp_path / "text-rd").exists()  # nothing was trained


def test_text_rd_still_takes_overrides_of_what_the_points_share(tmp_path):
    from qlatent.experiments import text_rd

    cfg = text_rd.point_config(
        "lattice", "λ=0.1", quick=True, runs_dir=str(tmp_path), overrides=["train.lr=0.002"]
    )
    assert cfg.train.lr == 0.002 and cfg.loss.rate_weight == 0.1
