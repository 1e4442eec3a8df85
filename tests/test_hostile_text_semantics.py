"""What the text pipeline's numbers mean: a sentence's code and loss do not depend on the other
sentences of its batch, greedy decoding is the model's own argmax, bits per word are the summed
NLL over the words, an evaluation of the first N test sentences codes them with the code model
counted on the whole training set, and a warm start never copies word embeddings to other words.
"""

from __future__ import annotations

import math

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.config import apply_mapping
from qlatent.data.text import Vocabulary
from qlatent.experiments import custom
from qlatent.models.text import TextAutoencoder
from qlatent.nn.text import EOS, PAD, TextModelConfig

CORPUS = [
    "the cat sat on the mat .".split(),
    "a dog .".split(),
    "rain fell on the old town today .".split(),
    "we .".split(),
]


def _run_config(tmp_path, name: str, **data) -> custom.RunConfig:
    return apply_mapping(
        custom.RunConfig(),
        {
            "data": {"name": "synthetic-text", "synthetic_size": 120, "vocab_size": 100} | data,
            "model": {"family": "text_gru", "hidden": [8, 16], "latent_dim": 8, "embed": 8},
            "bottleneck": {"name": "scalar_st", "args": {"levels": 4}},
            "train": {"epochs": 1, "max_steps": 1, "batch_size": 20, "progress": False},
            "out_dir": str(tmp_path / name),
        },
    )


@pytest.mark.parametrize("bottleneck", ["identity", "scalar_st", "gaussian_dither"])
def test_a_sentence_code_and_loss_ignore_the_rest_of_its_batch(bottleneck):
    """Two layers, sentences of four lengths: each one alone and cut to its own length gets the
    code and the NLL it gets in the padded batch, and the encoder's states are those of the
    GRUs run over the sentence's own tokens (the true end, not the padded one)."""
    vocab = Vocabulary.build(CORPUS, 40)
    x = vocab.encode(CORPUS, 9)
    cfg = TextModelConfig(vocab_size=len(vocab) - 4, max_tokens=9, embed=8, encoder_hidden=8,
                          encoder_layers=2, code_dim=8, decoder_hidden=16,
                          decoder_layers=2)  # fmt: skip
    torch.manual_seed(0)
    model = TextAutoencoder(build(bottleneck, dim=8), cfg).eval()
    code, out = model.encode(x), model(x)
    nll = model.likelihood.nll(x, out.params)
    for i, length in enumerate((x != PAD).sum(1).tolist()):
        alone = x[i : i + 1, :length]
        _, h = model.encoder(model.embed(alone))
        by_hand = model.to_code(torch.cat([h[-2], h[-1]], -1))
        torch.testing.assert_close(code[i : i + 1], by_hand, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.encode(alone), code[i : i + 1], rtol=1e-5, atol=1e-6)
        mine = model(alone)
        torch.testing.assert_close(
            model.likelihood.nll(alone, mine.params), nll[i : i + 1], rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(mine.bottleneck.rate, out.bottleneck.rate[i : i + 1])


def test_greedy_decoding_is_the_teacher_forced_argmax_and_stops_at_eos():
    vocab = Vocabulary.build(CORPUS, 40)
    x = vocab.encode(CORPUS, 9)
    cfg = TextModelConfig(vocab_size=len(vocab) - 4, max_tokens=9, embed=8, encoder_hidden=8,
                          code_dim=8, decoder_hidden=16, decoder_layers=2)  # fmt: skip
    for seed in range(4):
        torch.manual_seed(seed)
        model = TextAutoencoder(build("scalar_st", dim=8), cfg).eval()
        ids = model.greedy(x)
        eos = (ids == EOS).long()
        after = eos.cumsum(1) - eos > 0
        assert (ids[after] == PAD).all()
        # fed back with teacher forcing, each step's argmax is the token greedy chose
        logits = model.decode(model.bottleneck(model.encode(x)).y_hat, ids)
        assert torch.equal(logits.argmax(-1)[~after], ids[~after])


def test_bits_per_word_are_the_summed_nll_over_the_words_for_any_eval_batch(tmp_path):
    """Words are the tokens before EOS (UNK included); EOS's NLL is in the numerator; the hard
    path's numbers do not follow ``eval_batch_size``."""
    cfg = _run_config(tmp_path, "a", max_tokens=12)
    data, vocab = custom.load_text_data(cfg.data)
    torch.manual_seed(0)
    model = custom.build_model(cfg, (), 0.0, vocabulary=len(vocab) - 4)
    words = vocab.words[4:]
    x = data["test"]
    report = custom.evaluate(model, cfg, data, (), words=words, progress=False)
    n_words = sum(len(s) for s in custom._synthetic_text(120, cfg.data.split_seed)["test"])
    assert report["words"] == n_words
    model.eval()
    nll = model.likelihood.nll(x, model(x).params).double().sum().item()
    hard = report["hard_path"]
    assert hard["distortion_bits_per_word"] == pytest.approx(nll / math.log(2) / n_words)
    assert report["coded"]["bits_per_word"] == 8 * report["coded"]["bytes"] / n_words
    small = apply_mapping(cfg, {"train": {"eval_batch_size": 3}})
    again = custom.evaluate(model, small, data, (), words=words, progress=False)["hard_path"]
    for key in ("distortion_bits_per_word", "rate_bits_per_word"):
        assert again[key] == pytest.approx(hard[key], rel=1e-6)


def test_vocabulary_order_does_not_follow_the_order_of_the_sentences():
    """Ties in counts are broken alphabetically: shuffled training sentences give the same ids."""
    sentences = [["b", "a", "c"], ["c", "a", "d"], ["d", "b", "e"]]
    first = Vocabulary.build(sentences, 4)
    assert first.words[4:] == ["a", "b", "c", "d"]
    assert Vocabulary.build(sentences[::-1], 4).words == first.words


def test_eval_limit_counts_the_code_model_on_the_whole_training_set(tmp_path):
    """``eval --limit N`` evaluates the first N test sentences; the code model of a bottleneck
    that counts it (``scalar_st``) was counted on the first N training sentences only, another
    code model than the one the full evaluation counts, so the file of those N sentences and its
    ideal length (reported as counted on the training set) were other numbers."""
    cfg = _run_config(tmp_path, "run")
    custom.train(cfg, fresh=True)
    checkpoint = tmp_path / "run" / "best.pt"
    limited = custom.eval_checkpoint(checkpoint, limit=4, progress=False)
    ckpt = torch.load(checkpoint, weights_only=False)
    model, run = custom.model_from_checkpoint(ckpt)
    words = ckpt["run_config"]["derived"]["vocabulary"]
    data, _ = custom.load_text_data(run.data, words=words)
    assert data["train"].shape[0] > 4
    want = custom.evaluate(
        model, run, {"test": data["test"][:4], "train": data["train"]}, (), words=words,
        progress=False,
    )["coded"]  # fmt: skip
    got = limited["coded"]
    assert got["code_model_counted_on_train"] and limited["sentences"] == 4
    assert got["ideal_bits"] == pytest.approx(want["ideal_bits"], rel=1e-9)
    assert got["bytes"] == want["bytes"]


def test_a_warm_start_from_another_vocabulary_is_refused(tmp_path):
    """Two vocabularies of one size (another split seed orders the same words differently):
    the warm start copied the embedding and output rows by position, each to another word."""
    first = _run_config(tmp_path, "first")
    custom.train(first, fresh=True)
    other = apply_mapping(
        _run_config(tmp_path, "second", split_seed=1),
        {"init_from": str(tmp_path / "first" / "best.pt")},
    )
    _, mine = custom.load_text_data(first.data)
    _, theirs = custom.load_text_data(other.data)
    assert len(mine) == len(theirs) and mine.words != theirs.words
    with pytest.raises(ValueError, match="another vocabulary"):
        custom.train(other, fresh=True)
    # the same vocabulary still warm-starts
    same = apply_mapping(first, {"out_dir": str(tmp_path / "third"), "init_from": other.init_from})
    custom.train(same, fresh=True)
