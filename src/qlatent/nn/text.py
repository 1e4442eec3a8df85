"""The sentence autoencoder's parts: its layers, its likelihood and its vocabulary's reserved ids.

The model they make, :class:`qlatent.models.text.TextAutoencoder` (the lattice paper's appendix
A.2), maps a ``(B, T)`` int64 batch of token ids (``EOS`` after the last word, ``PAD`` after that)
to ``(B, T, V)`` logits over the words; its loss is the summed word negative log-likelihood of each
sentence, end-of-sentence included (:class:`Categorical`), plus λ times the bottleneck's rate.

Two sizes (:data:`TEXT_CONFIGS`): ``paper`` (2-layer biGRU of 250 per direction, D = 500, 2-layer
GRU of 500, a 20k vocabulary) and ``small`` (1 layer of 128 per direction, D = 256, 1 layer of
256, 8k words, sentences of at most 20 tokens). On ``text-en``'s sentences of at most 20 tokens
(103,583 training, 1,727 test) an 8k vocabulary leaves 7.9% of the test words unknown, a 20k one
3.9% (``Vocabulary.unk_rate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_count, recording_graph
from .likelihoods import Likelihood

#: reserved token ids, shared with ``qlatent.data.text.Vocabulary``
PAD, BOS, EOS, UNK = 0, 1, 2, 3


@dataclass(frozen=True)
class TextModelConfig:
    vocab_size: int = 8000  #: words kept, besides the four reserved ids
    max_tokens: int = 20  #: longest sentence kept (words, before EOS)
    embed: int = 128
    encoder_hidden: int = 128  #: per direction
    encoder_layers: int = 1
    code_dim: int = 256  #: D
    decoder_hidden: int = 256
    decoder_layers: int = 1

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            check_count(value, name)


TEXT_CONFIGS = {
    "small": TextModelConfig(),
    "paper": TextModelConfig(
        vocab_size=20000,
        max_tokens=30,
        embed=256,
        encoder_hidden=250,
        encoder_layers=2,
        code_dim=500,
        decoder_hidden=500,
        decoder_layers=2,
    ),
}


class Categorical(Likelihood):
    """Summed negative log-likelihood of the tokens of each sentence under ``(B, T, V)`` logits,
    padding (id 0) excluded; ``mean`` is the most likely token at each position."""

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        if params.shape[:2] != x.shape or params.dim() != 3:
            raise ValueError(f"logits {tuple(params.shape)} do not fit tokens {tuple(x.shape)}")
        check_ids(x, params.shape[2])
        loss = F.cross_entropy(params.transpose(1, 2), x, ignore_index=PAD, reduction="none")
        return loss.sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return params.argmax(-1)


def check_ids(x: Tensor, vocab: int) -> None:
    """ValueError unless ``x`` is ``(B, T)`` int64 token ids in ``[0, vocab)``, ``T >= 1``."""
    if x.dim() != 2 or x.dtype != torch.int64 or x.shape[1] < 1:
        raise ValueError(f"expected (B, T) int64 token ids, T >= 1, got {tuple(x.shape)} {x.dtype}")
    if recording_graph():
        # the check as an assertion of the exported program: export cannot read values back
        # to Python (it failed here: "Could not guard on data-dependent expression")
        torch._assert_async(((x >= 0) & (x < vocab)).all(), f"token ids must lie in [0, {vocab})")
    elif x.numel():  # an id out of range was an IndexError deep inside the embedding
        lo, hi = torch.aminmax(x)
        if not 0 <= lo <= hi < vocab:
            raise ValueError(f"token ids must lie in [0, {vocab}), got values in [{lo}, {hi}]")


def unpacked_states(gru: nn.GRU, inputs: Tensor, lengths: Tensor) -> Tensor:
    """The final states ``(layers · 2, B, H)`` of the bidirectional, batch-first ``gru`` on
    ``pack_padded_sequence(inputs, lengths)``, computed on the padded ``inputs``.

    Exported, a packed sequence fails: its ``batch_sizes`` are data that the GRU op reads as
    sizes ("zeros(): argument 'size' ... got FakeTensor"; strict export does not trace
    ``pack_padded_sequence`` at all). Here each direction of each layer is one plain GRU over
    all ``T`` steps: the forward one's state after a sentence's last word is its output there
    (padding comes later), and the backward one reads each sentence's words reversed in place
    (padding left after them), its outputs put back in order for the next layer. The same
    cell on the same rows; the packed GRU multiplies only the sentences still running at each
    step, and the CPU's matrix product may sum in another order for another row count: with
    padding, last-bit differences (at most a few float32 ulps, tested); without, bit for bit.
    Eval only: the dropout between layers (0 in :func:`_layers`) is not applied."""
    batch, steps = inputs.shape[:2]
    rows = torch.arange(batch, device=inputs.device)[:, None]
    at = torch.arange(steps, device=inputs.device)
    last = (lengths - 1)[:, None]
    flip = torch.where(at < lengths[:, None], last - at, at)  # (B, T), its own inverse
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if gru.bias else [])
    h0 = inputs.new_zeros(1, batch, gru.hidden_size)
    states = []
    for layer in range(gru.num_layers):
        outs = []
        for suffix, seq in (("", inputs), ("_reverse", inputs[rows, flip])):
            weights = [getattr(gru, f"{name}_l{layer}{suffix}") for name in names]
            out, _ = torch._VF.gru(seq, h0, weights, gru.bias, 1, 0.0, False, False, True)
            states.append(out[rows[:, 0], last[:, 0]])
            outs.append(out)
        inputs = torch.cat([outs[0], outs[1][rows, flip]], dim=-1)
    return torch.stack(states)


def text_layers(cfg: TextModelConfig, in_dim: int) -> nn.ModuleDict:
    vocab = cfg.vocab_size + 4
    return nn.ModuleDict(
        {
            "embed": nn.Embedding(vocab, cfg.embed, padding_idx=PAD),
            "encoder": nn.GRU(
                cfg.embed,
                cfg.encoder_hidden,
                cfg.encoder_layers,
                batch_first=True,
                bidirectional=True,
            ),
            "to_code": nn.Linear(2 * cfg.encoder_hidden, in_dim),
            "from_code": nn.Linear(cfg.code_dim, cfg.decoder_layers * cfg.decoder_hidden),
            "decoder": nn.GRU(cfg.embed, cfg.decoder_hidden, cfg.decoder_layers, batch_first=True),
            "output": nn.Linear(cfg.decoder_hidden, vocab),
        }
    )
