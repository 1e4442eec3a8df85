"""Autoencoder = encoder, bottleneck, decoder and likelihood; the loss lives outside.

x ──encoder──> y ──bottleneck──> y_hat ──decoder──> likelihood parameters of p(x | y_hat)
                      └── rate, aux_loss, indices, stats
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._utils import NoModuleBackwardHooks
from ..bottlenecks import Bottleneck, BottleneckOutput
from ..nn import Likelihood


@dataclass
class AutoencoderOutput:
    """What :meth:`Autoencoder.forward` returns.

    ``params``: the decoder's output, the likelihood parameters of p(x | y_hat) (e.g. Bernoulli
    logits), shaped like ``x`` for the library's decoders. ``bottleneck``: the bottleneck's
    :class:`~qlatent.bottlenecks.BottleneckOutput` (``y_hat``, ``rate`` ``(B,)`` in nats per
    example, ``aux_loss``, ``indices``, ``stats``).
    """

    params: Tensor
    bottleneck: BottleneckOutput


# a pytree node, as BottleneckOutput is: ``torch.export.export(model, (x,))`` returns one
torch.export.register_dataclass(AutoencoderOutput, serialized_type_name="qlatent.AutoencoderOutput")


class Autoencoder(NoModuleBackwardHooks, nn.Module):
    """Composition of the four parts. ``forward`` returns an :class:`AutoencoderOutput`.

    ``forward(x, *, generator=None)``: ``x`` ``(B, *input)`` → encoder → ``y`` ``(B, in_dim)``
    or ``(B, in_dim, *spatial)`` → bottleneck (training or hard path by ``self.training``,
    dither from ``generator``) → decoder → ``params``. The model computes no loss: the
    objective (distortion + λ·rate + aux) lives in :mod:`qlatent.losses`.

    Raises TypeError if a part is not of its kind (the likelihood a
    :class:`~qlatent.nn.Likelihood`, the bottleneck a :class:`~qlatent.bottlenecks.Bottleneck`)
    or if ``x`` is not a floating-point tensor; the bottleneck raises ValueError for an encoder
    output of the wrong shape or with NaN/Inf.
    """

    # (module backward hooks are refused by name: :class:`~qlatent._utils.NoModuleBackwardHooks`)
    _returns = "an AutoencoderOutput"
    _hook_instead = (
        "its tensors instead (out.params.register_hook(...)) or a part that returns a tensor "
        "(e.g. model.encoder or model.decoder)"
    )

    def __init__(
        self, encoder: nn.Module, bottleneck: Bottleneck, decoder: nn.Module, likelihood: Likelihood
    ) -> None:
        super().__init__()
        for name, part, kind, what in (
            ("encoder", encoder, nn.Module, "a torch.nn.Module"),
            ("bottleneck", bottleneck, Bottleneck, "a qlatent Bottleneck"),
            ("decoder", decoder, nn.Module, "a torch.nn.Module"),
            ("likelihood", likelihood, Likelihood, "a qlatent Likelihood (e.g. Bernoulli())"),
        ):
            if not isinstance(part, kind):
                got = (
                    f"the class {part.__name__}" if isinstance(part, type) else type(part).__name__
                )
                raise TypeError(f"{name} must be {what}, got {got}")
        self.encoder = encoder
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> AutoencoderOutput:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            what = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"x must be a floating-point tensor, got {what}")
        out = self.bottleneck(self.encoder(x), generator=generator)
        return AutoencoderOutput(params=self.decoder(out.y_hat), bottleneck=out)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Mean of p(x | y_hat) on the current path (hard path in eval mode)."""
        return self.likelihood.mean(self(x, generator=generator).params)
