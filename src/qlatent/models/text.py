"""A sentence autoencoder around any bottleneck: the lattice paper's appendix A.2 model.

    tokens ─Embedding→ bidirectional GRU ─[last states of both directions]─Linear→ in_dim
           ──bottleneck──> y_hat (D) ─Linear·tanh→ initial state of a GRU decoder
    [BOS] + tokens[:-1] ─Embedding→ GRU decoder (teacher forcing) ─Linear→ logits over words

The loss is the summed word negative log-likelihood of each sentence, end-of-sentence included
(:class:`~qlatent.nn.text.Categorical`), plus λ times the bottleneck's rate: ``RateDistortionLoss``
and the training loop take it unchanged, since the model maps a ``(B, T)`` int64 batch of token ids
(``EOS`` after the last word, ``PAD`` after that) to ``(B, T, V)`` logits. Its layers, likelihood
and two sizes (:data:`~qlatent.nn.text.TEXT_CONFIGS`) are in :mod:`qlatent.nn.text`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from .._size import sized
from .._utils import NoModuleBackwardHooks, recording_graph
from ..bottlenecks import Bottleneck
from ..nn.text import (
    BOS,
    EOS,
    PAD,
    TEXT_CONFIGS,
    Categorical,
    TextModelConfig,
    check_ids,
    text_layers,
    unpacked_states,
)
from .autoencoder import AutoencoderOutput

__all__ = ["TextAutoencoder"]


class TextAutoencoder(NoModuleBackwardHooks, nn.Module):
    """The model above; ``bottleneck`` takes ``(B, in_dim)`` rows and gives ``(B, D)`` codes.

    Its layers are counted before they are allocated (ValueError past
    :data:`~qlatent._size.MAX_MODEL_NUMBERS`); the batches it takes are checked: int64
    ids of its vocabulary, padding only after a sentence's last token."""

    # (module backward hooks are refused by name: :class:`~qlatent._utils.NoModuleBackwardHooks`)
    _returns = "an AutoencoderOutput"
    _hook_instead = (
        "its tensors instead (out.params.register_hook(...)) or a part that returns a tensor "
        "(e.g. model.to_code or model.output)"
    )

    def __init__(self, bottleneck: Bottleneck, cfg: TextModelConfig = TEXT_CONFIGS["small"]):
        super().__init__()
        if not isinstance(bottleneck, Bottleneck):
            raise TypeError(f"bottleneck must be a Bottleneck, got {type(bottleneck).__name__}")
        if not isinstance(cfg, TextModelConfig):
            raise TypeError(f"cfg must be a TextModelConfig, got {type(cfg).__name__}")
        if bottleneck.dim != cfg.code_dim:
            raise ValueError(
                f"the bottleneck's codes have {bottleneck.dim} dimensions, cfg.code_dim is "
                f"{cfg.code_dim}"
            )
        self.cfg = cfg
        layers = sized(lambda: text_layers(cfg, bottleneck.in_dim), "the text autoencoder")
        self.embed = layers["embed"]
        self.encoder = layers["encoder"]
        self.to_code = layers["to_code"]
        self.bottleneck = bottleneck
        self.from_code = layers["from_code"]
        self.decoder = layers["decoder"]
        self.output = layers["output"]
        self.likelihood = Categorical()

    def check(self, x: Tensor) -> None:
        """ValueError unless ``x`` is a batch of sentences this model reads (see above)."""
        check_ids(x, self.cfg.vocab_size + 4)
        words = x != PAD
        early = (words[:, 1:] & ~words[:, :-1]).any()
        if recording_graph():  # (as in check_ids)
            torch._assert_async(~early, "padding (id 0) must come after a sentence's last token")
        elif early:
            raise ValueError("padding (id 0) must come after a sentence's last token, not before")

    def encode(self, x: Tensor) -> Tensor:
        """``(B, T)`` token ids → ``(B, in_dim)`` bottleneck inputs (the final states of the
        top layer in both directions, padding skipped)."""
        self.check(x)
        if x.shape[0] == 0:  # nothing to pack
            _, h = self.encoder(self.embed(x))
        elif recording_graph():  # a packed sequence does not export
            h = unpacked_states(self.encoder, self.embed(x), (x != PAD).sum(1).clamp_min(1))
        else:
            lengths = (x != PAD).sum(1).clamp_min(1).cpu()
            packed = pack_padded_sequence(
                self.embed(x), lengths, batch_first=True, enforce_sorted=False
            )
            _, h = self.encoder(packed)  # (layers · 2, B, H)
        return self.to_code(torch.cat([h[-2], h[-1]], dim=-1))

    def decode(self, y_hat: Tensor, x: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` of each token given the code and the previous tokens."""
        cfg = self.cfg
        h0 = torch.tanh(self.from_code(y_hat)).view(-1, cfg.decoder_layers, cfg.decoder_hidden)
        previous = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], dim=1)
        out, _ = self.decoder(self.embed(previous), h0.transpose(0, 1).contiguous())
        return self.output(out)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> AutoencoderOutput:
        out = self.bottleneck(self.encode(x), generator=generator)
        return AutoencoderOutput(params=self.decode(out.y_hat, x), bottleneck=out)

    @torch.no_grad()
    def greedy(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Reconstructions ``(B, T)``: the code of ``x`` decoded greedily (each step feeds back
        its most likely token), up to ``x``'s length; ids after the first EOS are PAD."""
        cfg = self.cfg
        y_hat = self.bottleneck(self.encode(x), generator=generator).y_hat
        h = torch.tanh(self.from_code(y_hat)).view(-1, cfg.decoder_layers, cfg.decoder_hidden)
        h = h.transpose(0, 1).contiguous()
        token = torch.full_like(x[:, :1], BOS)
        steps = []
        for _ in range(x.shape[1]):
            out, h = self.decoder(self.embed(token), h)
            token = self.output(out).argmax(-1)
            steps.append(token)
        ids = torch.cat(steps, 1)
        ended = (ids == EOS).long().cumsum(1) - (ids == EOS).long() > 0
        return ids.masked_fill(ended, PAD)
