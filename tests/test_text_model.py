"""The sentence autoencoder (``qlatent.models.text``) and its vocabulary, on a tiny corpus.

Checked: ids (reserved PAD/BOS/EOS/UNK, frequency order, UNK rate, encode/decode round trip,
overlong sentences refused); the model's shapes, that the NLL sums over words and EOS and
ignores padding, that padding never changes a sentence's code or loss, that the training loop
fits it (the loss falls well below its start, with the lattice bottleneck's rate included), and
that greedy decoding reproduces memorised sentences.
"""

from __future__ import annotations

import math

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.data.text import Vocabulary
from qlatent.losses import RateDistortionLoss
from qlatent.models.text import TextAutoencoder
from qlatent.nn.text import EOS, PAD, TextModelConfig
from qlatent.train import TrainConfig, fit

CORPUS = [
    "the cat sat on the mat .".split(),
    "a dog ran in the park .".split(),
    "the bird sang a song today .".split(),
    "rain fell on the old town .".split(),
    "we ate bread and cheese .".split(),
    "the sun rose over the hill .".split(),
]
TINY = TextModelConfig(
    vocab_size=40, max_tokens=8, embed=16, encoder_hidden=16, code_dim=8, decoder_hidden=32
)


def test_vocabulary():
    vocab = Vocabulary.build(CORPUS, size=5)
    assert vocab.words[:4] == list(Vocabulary.SPECIALS)
    assert vocab.words[4:6] == ["the", "."]  # most frequent first
    ids = vocab.encode(CORPUS[:2], max_tokens=8)
    assert ids.shape == (2, 9) and ids.dtype == torch.int64
    assert (ids[0, 7] == EOS) and (ids[0, 8] == PAD)
    assert vocab.decode(ids[0]) == [w if w in vocab.index else "<unk>" for w in CORPUS[0]]
    assert 0 < vocab.unk_rate(CORPUS) < 1
    full = Vocabulary.build(CORPUS, size=100)
    assert full.unk_rate(CORPUS) == 0 and full.decode(full.encode(CORPUS, 8)[3]) == CORPUS[3]
    with pytest.raises(ValueError, match="tokens"):
        full.encode(CORPUS, max_tokens=3)


def _model(bottleneck: str = "identity", seed: int = 0) -> TextAutoencoder:
    torch.manual_seed(seed)
    return TextAutoencoder(build(bottleneck, dim=TINY.code_dim), TINY)


def test_shapes_and_padding():
    vocab = Vocabulary.build(CORPUS, size=40)
    x = vocab.encode(CORPUS, max_tokens=8)
    model = _model().eval()
    out = model(x)
    assert out.params.shape == (6, 9, TINY.vocab_size + 4)
    nll = model.likelihood.nll(x, out.params)
    by_hand = torch.nn.functional.cross_entropy(out.params[0, :8], x[0, :8], reduction="sum")
    assert nll.shape == (6,) and torch.allclose(nll[0], by_hand)  # 7 words + EOS, not PAD
    # extra padding changes neither the code nor the loss
    wider = torch.cat([x, torch.zeros(6, 3, dtype=torch.int64)], 1)
    torch.testing.assert_close(model.encode(wider), model.encode(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model.likelihood.nll(wider, model(wider).params), nll, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="int64"):
        model(x.float())


@pytest.mark.parametrize("bottleneck", ["identity", "lattice"])
def test_the_training_loop_fits_sentences(tmp_path, bottleneck):
    vocab = Vocabulary.build(CORPUS, size=40)
    x = vocab.encode(CORPUS, max_tokens=8)
    model = _model(bottleneck)
    data = {"train": x, "val": x}
    start = RateDistortionLoss()(x, model(x), model.likelihood).objective.mean().item()
    cfg = TrainConfig(epochs=80, batch_size=6, lr=1e-2, progress=False)
    result = fit(model, data, cfg, out_dir=tmp_path, loss_fn=RateDistortionLoss())
    end = result.history[-1]["val_objective"]
    assert math.isfinite(end) and end < 0.25 * start, (start, end)
    if bottleneck == "identity":
        model.eval()
        got = [vocab.decode(row) for row in model.greedy(x)]
        assert got == CORPUS


def test_text_rd_quick_pipeline(tmp_path):
    """``reproduce text-rd --quick`` trains every point of the chosen methods on the synthetic
    language (after the warm start, in two processes), writes the JSON and the figure, and a
    second call reads the finished points back instead of retraining or re-evaluating."""
    import json

    from qlatent.experiments import text_rd

    kwargs = dict(
        quick=True,
        models=["scalar_st", "vector_st", "language_model", "identity"],
        runs_dir=str(tmp_path / "runs"),
        results_dir=str(tmp_path / "results"),
    )
    payload = text_rd.reproduce(**kwargs, jobs=2)
    curves = payload["curves"]
    for method in ("scalar_st", "vector_st"):
        assert [p["point"] for p in curves[method]] == ["M=2", "M=4", "M=8", "M=16"]
        for point in curves[method]:
            assert point["rate_kind"] == "file" and point["rate_bits_per_word"] > 0
            assert math.isfinite(point["nll_bits_per_word"])
    # the rate-0 point: one level per coordinate, the file holds (almost) only its header
    no_code = curves["language_model"][0]
    assert no_code["rate_estimate_bits_per_word"] == 0.0
    assert no_code["rate_bits_per_word"] < curves["scalar_st"][0]["rate_bits_per_word"]
    assert [p["point"] for p in curves["identity"]] == ["unquantized", "fine-tuned"]
    assert curves["identity"][0]["rate_bits_per_word"] == 0.0
    fine_tuned = tmp_path / "runs" / "text-rd" / "identity" / "fine-tuned" / "config.json"
    assert json.loads(fine_tuned.read_text())["init_from"].endswith("unquantized/best.pt")
    fine = json.loads(
        (tmp_path / "runs" / "text-rd" / "vector_st" / "M-4" / "config.json").read_text()
    )
    assert fine["train"]["max_steps"] == 4 and fine["train"]["anneal_steps"] == 1
    written = json.loads((tmp_path / "results" / "text-rd-quick.json").read_text())
    assert written["curves"] == json.loads(json.dumps(curves))
    assert (tmp_path / "results" / "text-rd-quick.png").stat().st_size > 0
    again = text_rd.reproduce(**kwargs)
    first, second = curves["identity"][0], again["curves"]["identity"][0]
    assert second == first  # finished points are read back: no training, no evaluation
    assert again["curves"]["vector_st"] == json.loads(json.dumps(curves["vector_st"]))
    with pytest.raises(ValueError, match="unknown methods"):
        text_rd.reproduce(quick=True, models=["nope"], runs_dir=str(tmp_path / "r"))


def test_jobs_is_refused_where_the_table_has_no_parallel_runs(tmp_path, capsys):
    from qlatent.cli import main

    runs = str(tmp_path / "runs")
    assert main(["reproduce", "lattice-mnist", "--quick", "--jobs", "2", "--runs-dir", runs]) == 2
    assert "--jobs applies to text-rd" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="jobs"):
        from qlatent.experiments._jobs import run_jobs

        run_jobs(print, [{}], jobs=0)
