"""Soft-EM VQ-VAE: sample m codes per latent, decode their average, EMA with fractional counts.

Papers: A. Roy, A. Vaswani, A. Neelakantan, N. Parmar, "Theory and Experiments on Vector Quantized
Autoencoders" (arXiv 1805.11063), Monte-Carlo EM; H. Wu and M. Flierl, "Variational Information
Bottleneck on Vector Quantized Autoencoders" (arXiv 1808.01048), which reads it as the variational
information bottleneck with stochastic encoder p(Z = k | x) = τ_k.

    z ──τ = softmax_k(−‖z − e_k‖² / T)──> k_1 … k_m ~ τ   (E-step by sampling; T = 1 in the paper)
    │
    ├─ training: y_hat = z + sg(ē − z), ē = (1/m) Σ_l e_{k_l}
    │            M-step: EMA with counts n_k = Σ_i (1/m) Σ_l 1[k_l = k]  (fractional)
    │            aux = β ‖z − sg(ē)‖² + β_VIB · mean_i (log K − H(τ_i))
    ├─ eval:     hard path, k = argmax τ = nearest codeword, y_hat = e_k
    └─ rate  = log K per row

Shapes as for ``vq``: one codeword index per row on the hard path (``index_kind = "scalar"``);
the training path has m samples per row and returns ``indices = None``.
``stats``: ``codes_used`` / ``perplexity`` of the sampled (fractional) usage on the training path
and of the hard codes on the hard path; ``posterior_entropy`` = mean H(τ) in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_nonnegative, check_torch_generator, shown_setting
from ._codebook import (
    CodebookQuantizer,
    EMACodebook,
    EMASettings,
    check_num_codes,
    mean_square_error,
    straight_through,
    usage_stats,
)
from .base import BOTTLENECKS, BottleneckOutput, Setting

#: the most codes sampled per latent (10^12 tried to allocate 48 TB in ``torch.multinomial``)
MAX_SAMPLES = 1 << 20


def _check_num_samples(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value > MAX_SAMPLES:
        raise ValueError(f"{name} must be at most {MAX_SAMPLES:,}, got {value!r}")
    return value


def _check_temperature(value, name: str) -> float:
    value = check_nonnegative(value, name)
    # below 1e-30 (float32 rounds 1e-300 to 0) the logits −d/T are infinite or NaN
    if value < 1e-30:
        raise ValueError(
            f"{name} must be at least 1e-30 (T → 0 is hard EM: use vq_ema), got {value!r}"
        )
    return value


@BOTTLENECKS.register("soft_em_vq")
class SoftEMVectorQuantizer(EMASettings, CodebookQuantizer):
    """Monte-Carlo (soft) EM vector quantizer with an EMA codebook.

    Args:
        dim: code dimension d.
        num_codes: codebook size K.
        num_samples: m, codes sampled per latent (10 in tensor2tensor).
        commitment: β of the commitment term (0.25).
        temperature: T of the E-step τ ∝ exp(−‖z − e_k‖² / T). The reference code uses 1; with
            codewords of norm ~1 (``uniform_unit_scaling``) and a small encoder output, τ then
            starts near uniform, the EMA pulls every codeword to the batch mean and the codes carry
            nothing; a smaller T keeps τ peaked. The hard path (argmax τ) does not depend on T.
        vib_weight: β_VIB of the variational-IB term β_VIB·(log K − H(τ)) = β_VIB·KL(τ ‖ uniform);
            0 (the default, as in tensor2tensor) leaves it out. Its gradient reaches the encoder
            only (the codebook is kept by EMA).
        decay, eps: of the EMA codebook (0.99, 1e-5).
        compile: the hard path's nearest-codeword search fused by ``torch.compile`` on the CPU
            (as ``vq``'s).

    Each training-mode forward performs one M-step, whether or not its output is
    backpropagated, also under ``torch.no_grad()`` and ``torch.inference_mode()``; an eval-mode
    forward performs none. Gradient accumulation over m micro-batches therefore performs m
    M-steps (decay λ each), not one on their union. Under ``torch.utils.checkpoint``
    (``use_reentrant`` True or False) the forward recomputed in backward (detected as a forward
    run inside the autograd engine's graph task) reuses the codebook and the sampled codes of
    its original forward, draws nothing from ``generator`` or torch's RNG and performs no
    M-step, so buffers, outputs and gradients equal those without checkpointing (see
    :class:`~qlatent.bottlenecks._codebook.EMACodebook` for its limits).
    """

    num_samples = Setting(_check_num_samples)
    temperature = Setting(_check_temperature)
    commitment = Setting(check_nonnegative)
    vib_weight = Setting(check_nonnegative)
    # the training path's E-step and losses read these; the hard path is the nearest codeword
    _FREE_OF_CODE = {"num_samples": 10, "temperature": 1.0, "commitment": 0.25, "vib_weight": 0.0}

    def __init__(
        self,
        *,
        dim: int,
        num_codes: int = 512,
        num_samples: int = 10,
        temperature: float = 1.0,
        commitment: float = 0.25,
        vib_weight: float = 0.0,
        decay: float = 0.99,
        eps: float = 1e-5,
        compile: bool = False,
    ) -> None:
        super().__init__(dim=dim, compile=compile)
        self.num_codes = check_num_codes(num_codes)
        self.num_samples = num_samples
        self.temperature = temperature
        self.commitment = commitment
        self.vib_weight = vib_weight
        self.ema = EMACodebook(self.num_codes, dim, decay=decay, eps=eps)

    @property
    def codebook(self) -> Tensor:
        """``(K, d)`` current codewords."""
        return self.ema.codebook

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        if not self.training:
            return self._hard_path(y)

        # the forward a checkpoint recomputes, if any: its codebook and samples, no M-step
        recorded = self.ema.recorded_step(y)
        # the M-step below rewrites the codebook in place, and the VIB term's backward still
        # reads the codewords the posterior was formed from: a copy of those (K × d)
        codebook = self.codebook.clone() if recorded is None else recorded.codebook
        log_tau = log_posterior(y, codebook, self.temperature)  # (N, K)
        if recorded is None:
            samples = _sample(log_tau.detach(), self.num_samples, generator)  # (N, m)
        else:  # neither the generator's state nor torch's must be replayed
            samples = recorded.samples
        mean_code = codebook[samples].mean(1)  # (N, d), before this batch's M-step
        # fractional one-hot: row i puts weight 1/m on each of its m samples
        share = y.new_full(samples.shape, 1.0 / self.num_samples)
        assign = y.new_zeros(log_tau.shape).scatter_add_(1, samples, share)  # (N, K)
        counts = assign.sum(0)
        if recorded is None:
            self.ema.record_step(y, codebook, samples)
            self.ema.update(counts, assign.t() @ y.detach())

        entropy = -(log_tau.exp() * log_tau).sum(1)  # H(τ_i), nats
        aux = self.commitment * mean_square_error(y, mean_code)
        if self.vib_weight:
            aux = aux + self.vib_weight * (math.log(self.num_codes) - entropy).mean()
        stats = usage_stats(counts)
        stats["posterior_entropy"] = entropy.detach().mean()
        return BottleneckOutput(
            straight_through(y, mean_code), self._fixed_rate(y), aux, None, stats
        )

    def extra_repr(self) -> str:
        def shown(name: str):
            return shown_setting(self, name)

        return (
            f"dim={self.dim}, num_codes={self.num_codes}, num_samples={shown('num_samples')}, "
            f"temperature={shown('temperature')}, commitment={shown('commitment')}, "
            f"vib_weight={shown('vib_weight')}{self._compile_repr()}"
        )


def log_posterior(z: Tensor, codebook: Tensor, temperature: float) -> Tensor:
    """log τ = log_softmax_k(−‖z − e_k‖² / T): ``(N, d), (K, d) -> (N, K)``, finite for every T
    the constructor takes and every input the contract accepts.

    Formed from the distances' excess over each row's nearest code, (‖e_k‖² − 2 z·e_k) minus its
    row minimum, which the softmax cannot tell from the distances themselves:

    - ‖z‖², common to every code, is never added: far from the codebook its rounding swamps
      the differences (at |z| = 1e6 in float32 and T = 1e-6 several codes tied);
    - the nearest code's logit is exactly 0, so the logits cannot all overflow, and those that
      pass the dtype's range at a tiny T are its lowest finite value (probability 0) instead of
      −∞: rows of −∞ were NaN (``torch.multinomial`` failed), a single −∞ made the entropy
      0·∞ = NaN.

    The shift is detached: it moves every logit of a row alike, which changes neither τ nor
    its gradient.
    """
    cross = torch.addmm(codebook.square().sum(1), z, codebook.t(), alpha=-2.0)
    logits = (cross - cross.detach().amin(1, keepdim=True)).div_(-temperature)
    return torch.log_softmax(logits.clamp_(min=torch.finfo(logits.dtype).min), dim=1)


def _sample(log_tau: Tensor, num_samples: int, generator: torch.Generator | None) -> Tensor:
    """``m`` codes per row from ``τ = exp(log_tau)``, with replacement: ``(N, K) -> (N, m)``.

    Drawn on the generator's device (a CPU generator with CUDA rows moves the probabilities).
    """
    check_torch_generator(generator, "sampling codes")
    probs = log_tau.exp()
    device = probs.device if generator is None else generator.device
    draws = torch.multinomial(probs.to(device), num_samples, replacement=True, generator=generator)
    return draws.to(probs.device)
