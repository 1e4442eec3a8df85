"""Exported programs of the sentence autoencoder (``qlatent.models.text``): its eval forward and
its training objective (model + ``RateDistortionLoss``), strict and non-strict, with a dynamic
batch and sentence length.

Fixed here: the id check (``check_ids``, called by the model and by ``Categorical.nll``) and the
padding check read values back to Python ("Could not guard on data-dependent expression"); they
are assertions of the program now, which a program run on bad ids raises by name. The encoder
packed its padded batch (``pack_padded_sequence``), which does not export (the packed
``batch_sizes`` are data the GRU op reads as sizes; strict export refuses to trace the packing);
exported, it runs each direction of each layer as a plain GRU over the padded steps, the
backward one on each sentence reversed in place: the packed GRU's numbers to float32 rounding
(the packed GRU multiplies fewer rows at the steps after a sentence ends, and the CPU's matrix
product may round another row count differently; bit for bit without padding).

The GRU ops are unrolled over the steps when exported, so a program holds its sentence length
(the example's); its batch is dynamic."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

from qlatent.bottlenecks import build
from qlatent.losses import RateDistortionLoss
from qlatent.models.text import TextAutoencoder
from qlatent.nn.text import PAD, TextModelConfig

TINY = TextModelConfig(
    vocab_size=40, max_tokens=8, embed=16, encoder_hidden=16, code_dim=8, decoder_hidden=32
)
#: two layers each side: the backward direction's outputs feed the next layer
DEEP = TextModelConfig(
    vocab_size=40,
    max_tokens=8,
    embed=16,
    encoder_hidden=12,
    encoder_layers=2,
    code_dim=8,
    decoder_hidden=16,
    decoder_layers=2,
)
VOCAB = TINY.vocab_size + 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sentences(batch: int, steps: int, seed: int) -> torch.Tensor:
    """Token ids ``(batch, steps)``: words, then padding, of lengths 1 to ``steps``."""
    g = _gen(seed)
    x = torch.randint(PAD + 1, VOCAB, (batch, steps), generator=g)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    lengths[0] = steps  # one sentence without padding
    return x.masked_fill(torch.arange(steps) >= lengths[:, None], PAD)


def _model(bottleneck: str, cfg: TextModelConfig = TINY) -> TextAutoencoder:
    torch.manual_seed(0)
    return TextAutoencoder(build(bottleneck, dim=cfg.code_dim), cfg).eval()


class _Forward(nn.Module):
    def __init__(self, model: TextAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out.params, out.bottleneck.y_hat, out.bottleneck.rate


class _Objective(nn.Module):
    """Model forward, then the rate-distortion loss (its distortion: ``Categorical.nll``)."""

    def __init__(self, model: TextAutoencoder) -> None:
        super().__init__()
        self.model, self.loss = model, RateDistortionLoss(lmbda=0.5)

    def forward(self, x):
        out = self.loss(x, self.model(x), self.model.likelihood)
        return out.loss, out.distortion, out.rate


def _export(module: nn.Module, strict: bool, dynamic: bool = True):
    x = _sentences(5, 9, seed=3)
    shapes = ({0: Dim("batch")},) if dynamic else None
    return torch.export.export(module, (x,), dynamic_shapes=shapes, strict=strict).module()


def _assert_equal(program, module, x, rounded: bool = True) -> None:
    """Equal bit for bit; ``rounded``: to float32 rounding (the packed encoder, see above)."""
    torch.manual_seed(1)
    found = program(x)
    torch.manual_seed(1)
    expected = module(x)
    for i, (a, b) in enumerate(zip(found, expected, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"item {i}"
        if rounded:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"item {i}")
        else:
            assert torch.equal(a, b), f"item {i}"


_CASES = [
    pytest.param(which, bottleneck, cfg, strict, id=f"{which}-{bottleneck}-{name}-{kind}")
    for which, bottleneck, name, cfg, strict, kind in [
        ("forward", "lattice", "tiny", TINY, False, "nonstrict"),
        ("forward", "lattice", "tiny", TINY, True, "strict"),
        ("loss", "lattice", "tiny", TINY, False, "nonstrict"),
        ("loss", "lattice", "deep", DEEP, False, "nonstrict"),
        ("loss", "identity", "tiny", TINY, True, "strict"),
    ]
]


@pytest.mark.parametrize(("which", "bottleneck", "cfg", "strict"), _CASES)
def test_text_model_exports_and_gives_the_eager_numbers(which, bottleneck, cfg, strict):
    """The eval forward (logits, code, rate) and the loss export (the id check and the packed
    encoder failed the export) and equal eager's packed GRU bit for bit, on batches and
    lengths other than the example's (one row, one step, all padded but the first word)."""
    model = _model(bottleneck, cfg)
    module = _Forward(model) if which == "forward" else _Objective(model)
    program = _export(module, strict)
    for batch, seed in [(5, 3), (1, 4), (7, 5), (33, 6)]:
        x = _sentences(batch, 9, seed)
        _assert_equal(program, module, x)
        _assert_equal(program, module, x.masked_fill(x == PAD, 7), rounded=False)
    one_word = torch.zeros(4, 9, dtype=torch.int64)
    one_word[:, 0] = torch.arange(4, 8)
    _assert_equal(program, module, one_word)


def test_unpacked_encoder_gives_the_packed_states(monkeypatch):
    """With ``is_exporting`` patched to True the encoder (2 layers each way) takes its
    unpacked path and gives the packed path's bottleneck inputs: to a few float32 ulps with
    padding, bit for bit without."""
    model = _model("identity", DEEP)
    x = _sentences(17, 11, seed=7)
    full = x.masked_fill(x == PAD, 7)
    expected, expected_full = model.encode(x), model.encode(full)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.testing.assert_close(model.encode(x), expected, rtol=0, atol=1e-7)
    assert torch.equal(model.encode(full), expected_full)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_program_refuses_bad_ids_by_name(strict):
    """Ids out of range or negative, and padding before a word: a RuntimeError of the
    program that names the check (eagerly the ValueError, unchanged)."""
    model = _model("lattice")
    programs = [_export(_Objective(model), strict)]  # the model's checks, then the loss's
    for bad, message in [
        (VOCAB, rf"token ids must lie in \[0, {VOCAB}\)"),
        (-1, rf"token ids must lie in \[0, {VOCAB}\)"),
        (PAD, "padding \\(id 0\\) must come after a sentence's last token"),
    ]:
        x = _sentences(5, 9, seed=3)
        x[0, 4] = bad  # row 0 has no padding: PAD here comes before words
        for program in programs:
            with pytest.raises(RuntimeError, match=message):
                program(x)
        with pytest.raises(ValueError, match=message):
            model(x)
    # the likelihood's own check, given the logits directly
    x = _sentences(5, 9, seed=3)
    params = model(x).params
    x[2, 0] = VOCAB

    class _Nll(nn.Module):
        def forward(self, x, params):
            return model.likelihood.nll(x, params)

    nll = torch.export.export(_Nll(), (x.clamp_max(VOCAB - 1), params), strict=strict).module()
    with pytest.raises(RuntimeError, match=rf"token ids must lie in \[0, {VOCAB}\)"):
        nll(x, params)


def test_program_holds_the_checks_and_no_packed_sequence():
    """The non-strict program carries both checks as assertions and no packing op."""
    program = torch.export.export(_Objective(_model("lattice")), (_sentences(5, 9, 3),))
    code = program.graph_module.code
    assert "token ids must lie in [0, 44)" in code
    assert "padding (id 0) must come after" in code
    assert "_pack_padded_sequence" not in code
