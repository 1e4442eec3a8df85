"""Rate-distortion losses, kept outside the models (the models do not know the weights).

For a likelihood decoder and λ = 1 the loss is the negative ELBO, which for the lattice bottleneck
is the lattice paper's objective (15): ``-log Q(x | y_hat) + rate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._utils import NoModuleBackwardHooks, check_nonnegative
from .bottlenecks._codebook import local_updates
from .models import AutoencoderOutput
from .nn import Likelihood


@dataclass
class LossOutput:
    """``loss`` is the scalar to minimise; ``distortion`` and ``rate`` are ``(B,)`` per-example
    nats; ``aux_loss`` is the bottleneck's ``()`` auxiliary term (already inside ``loss``)."""

    loss: Tensor
    distortion: Tensor
    rate: Tensor
    aux_loss: Tensor

    @property
    def objective(self) -> Tensor:
        """Per-example distortion + rate at λ = 1: the negative ELBO / two-part codelength."""
        return self.distortion + self.rate


# a pytree node, as the bottlenecks' and models' outputs are (``torch.func.grad(...,
# has_aux=True)`` with it as the auxiliary value failed: "Expected tensors, got unsupported type")
torch.export.register_dataclass(LossOutput, serialized_type_name="qlatent.LossOutput")


class RateDistortionLoss(NoModuleBackwardHooks, nn.Module):
    """``mean(distortion + λ·rate) + w·aux``, with distortion = -log p(x | y_hat).

    ``aux_weight`` w scales the bottleneck's auxiliary term (codebook, commitment ...), which
    bottlenecks report as a mean over rows and dimensions, to the distortion's units. It returns
    a :class:`LossOutput`, on which torch runs no module backward hook: registering one is a
    TypeError (:class:`~qlatent._utils.NoModuleBackwardHooks`).
    """

    _returns = "a LossOutput"
    _hook_instead = "its tensors instead (out.loss.register_hook(...))"

    def __init__(self, *, lmbda: float = 1.0, aux_weight: float = 1.0) -> None:
        super().__init__()
        self.lmbda = check_nonnegative(lmbda, "lmbda")
        self.aux_weight = check_nonnegative(aux_weight, "aux_weight")

    def forward(
        self,
        x: Tensor,
        out: AutoencoderOutput,
        likelihood: Likelihood,
        *,
        lmbda: float | None = None,
    ) -> LossOutput:
        weight = self.lmbda if lmbda is None else lmbda
        distortion = likelihood.nll(x, out.params)
        rate = out.bottleneck.rate
        loss = (distortion + weight * rate).mean() + self.aux_weight * out.bottleneck.aux_loss
        return LossOutput(loss, distortion, rate, out.bottleneck.aux_loss)


@torch.no_grad()
def evaluate_objective(
    model: nn.Module,
    loss_fn: RateDistortionLoss,
    x: Tensor,
    *,
    batch_size: int = 1000,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per-example distortion and rate over ``x`` on the training path or the hard path.

    The networks are put in eval mode either way; only the bottleneck's mode selects the path
    (training path: dither / noise; hard path: real quantization). Returns ``(N,)`` float64 CPU
    tensors ``"distortion"`` and ``"rate"`` (nats). Whatever the training path updates in the
    bottleneck's buffers (an EMA codebook's M-step) is put back after every batch, so that each
    batch is scored with the model's own buffers and evaluating never changes the model. (Put
    back only at the end, each batch met the codebook the batches before it had moved: an EMA
    codebook's training-path values followed ``batch_size``, 14.16 nats of distortion in one
    batch of 300 against 16.31 in batches of 7 on a toy model, where the hard path gave 14.16.)
    Every module's own mode is restored afterwards, also on error (restored as the top module's,
    a bottleneck kept in eval mode inside a training model was left in training mode, where an
    EMA codebook goes on updating).
    """
    net = getattr(model, "module", model)  # unwrap DistributedDataParallel
    modes = [(module, module.training) for module in model.modules()]
    net.eval()
    net.bottleneck.train(not hard)
    device = next(net.parameters()).device
    distortion, rate = [], []
    buffers = {name: b.clone() for name, b in net.bottleneck.named_buffers()}

    def put_back() -> None:
        for name, b in net.bottleneck.named_buffers():
            b.copy_(buffers[name])

    # the updates are put back, so under torch.distributed they stay this rank's own: each rank
    # scores its own shard, and shards of unequal size take unequal numbers of batches
    try:
        with local_updates():
            for xb in x.split(batch_size):
                xb = xb.to(device)
                losses = loss_fn(xb, net(xb, generator=generator), net.likelihood)
                distortion.append(losses.distortion.double().cpu())
                rate.append(losses.rate.double().cpu())
                if not hard:
                    put_back()
    finally:
        for module, training in modes:
            module.training = training
        put_back()
    return {"distortion": torch.cat(distortion), "rate": torch.cat(rate)}
