"""Importance-sampled negative log-likelihood (IWAE-S), written once against the density view.

Paper: Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
(arXiv 1509.00519). The lattice paper's Table 1 reports it with S = 1000; the VampPrior code
(Tomczak & Welling) that it adapted uses S = 5000.

    x ──encoder──> y ──posterior_sample──> z_s ~ q(· | y), log q(z_s)        s = 1..S
                                    └──────> log_prior(z_s)
                   z_s ──decoder──> params_s ──likelihood──> log p(x | z_s)
    log p̂(x) = logsumexp_s[log p(x | z_s) + log_prior(z_s) − log q(z_s)] − log S

Any model with ``encoder``, ``bottleneck``, ``decoder`` and ``likelihood`` whose bottleneck has a
density view (``posterior_sample`` and ``log_prior``, see ``qlatent.bottlenecks.base``) is
evaluated by the same code: nothing here is per model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .._utils import check_finite, from_rows, to_rows, tqdm
from .proposals import check_mixture, defensive_view

#: default bound on ``sample_chunk · batch · data elements`` (floats) for one decoder call: on a
#: CPU about 8 MB, so a chunk's tensors stay in cache (1.8x faster than 2^24 on the MNIST model);
#: on an accelerator large calls amortise the launches
_CHUNK_ELEMENTS_CPU = 2**21
_CHUNK_ELEMENTS_ACCELERATOR = 2**24
_PARTS = ("encoder", "bottleneck", "decoder", "likelihood")
#: the most importance samples per example (the papers use 1,000 to 5,000; ``qlatent eval
#: --iwae`` and the paper tables' ``eval.iwae_samples`` take as many)
MAX_SAMPLES = 2**20
#: the most numbers one decoder call's copy of the data may hold (``sample_chunk · batch ·
#: data elements``; 4 GiB of float32)
_MAX_CHUNK_NUMBERS = 2**30


def iwae_nll(
    model: nn.Module,
    x: Tensor,
    *,
    num_samples: int = 1000,
    batch_size: int = 100,
    sample_chunk: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    defensive: tuple[float, float] | None = None,
) -> Tensor:
    """Per-example IWAE-S negative log-likelihood ``-log p̂(x)`` in nats, ``(N,)`` float64 on CPU.

    For each example, with ``z_s ~ q(· | x)`` drawn by ``model.bottleneck.posterior_sample``::

        log p̂(x) = logsumexp_s [log p(x | z_s) + log_prior(z_s) − log q(z_s | x)] − log S

    ``p̂(x)`` is unbiased for ``p(x)``, so by Jensen ``E[-log p̂(x)] ≥ -log p(x)``; the bound
    tightens monotonically in S and reaches ``-log p(x)`` as S → ∞ (Burda et al., Theorem 1).
    With S = 1 its expectation is the negative ELBO, i.e. the training-path objective
    ``distortion + rate`` of ``RateDistortionLoss`` at λ = 1. For a dithered lattice, "prior" is
    the density f_{X̂−U} of Theorem 1, so the estimate is of the model's marginal likelihood on
    the training path, with one caveat: its posterior, y_hat uniform on the cell around the
    encoder's output, is zero outside that cell, so as S grows the estimate reaches
    log ∫_cell p(x | z)·f(z) dz, not log p(x), whose posterior may reach into the neighbouring
    cells. ``defensive=(α, k)`` draws from a mixture that also covers them
    (:mod:`qlatent.eval.proposals`); on the trained E8^3 ⊕ Z^16 rows of ``reproduce
    lattice-mnist`` it reads 2.5–2.7 nats per image lower at S = 1000, on the rectangular rows
    about 4 (``examples/iwae-proposal-support.py``).

    Args:
        model: an ``Autoencoder`` (or anything with the four parts), possibly wrapped in
            ``DistributedDataParallel`` / ``DataParallel`` (unwrapped via ``.module``).
        x: ``(N, *data_shape)`` floating-point data, as the encoder takes it.
        num_samples: S, importance samples per example.
        batch_size: examples per encoder call.
        sample_chunk: samples per decoder call; the decoder sees ``sample_chunk · batch_size``
            rows at once. Default: as many as keep ``sample_chunk · batch_size · prod(data_shape)``
            under 2^21 floats on a CPU (cache-sized: 26 for 100 MNIST images) or 2^24 on an
            accelerator (213), capped at S.
        generator: source of the posterior samples (a seeded CPU generator makes the result
            reproducible; the draws depend on the batch and chunk layout, the estimate's law does
            not, except for a good lattice, whose Monte-Carlo density points are shared by the
            rows of one ``log_prior`` call: there the weights of one chunk share them, which
            loosens the bound and widens its spread where ``eval_samples`` is small). ``None``
            uses torch's default generator.
        progress: show a tqdm bar over examples.
        defensive: ``(α, k)`` with 0 ≤ α < 1, 1e-6 ≤ k ≤ 1e6: draw from the defensive mixture
            ``(1 − α)·q + α·N(c, diag (k·r)²)`` around the posterior's centre c with r its
            per-coordinate standard deviation (:class:`~qlatent.eval.proposals.DefensiveProposal`;
            a lattice or Gaussian bottleneck). Still a lower bound on the same log p(x) in
            expectation; α = 0 is the own posterior bit for bit. ``None``: the own posterior.

    Shapes per decoder call: ``z`` ``(S_c, B, dim)`` is flattened to ``(S_c·B, dim)`` and ``x``
    to ``(S_c·B, *data_shape)`` (expanded once per batch, S-major, and sliced for a shorter last
    chunk); log-weights ``(S_c, B)`` are folded into a running float64 logsumexp over chunks.

    Cost: N encoder passes and N·S decoder and likelihood passes, i.e. about S times one
    evaluation of the negative ELBO; memory is set by ``sample_chunk · batch_size`` rows through
    the decoder, independent of S. Runs on the device of the model's parameters, under
    ``torch.no_grad`` with every module in eval mode; each module's previous mode is restored
    afterwards, also on error.

    Raises:
        ValueError: bad ``num_samples`` (at most :data:`MAX_SAMPLES`) / ``batch_size`` /
            ``sample_chunk`` (at most 2^30 numbers of data per decoder call) / ``defensive``,
            or ``x`` that is not a finite floating-point tensor of shape ``(N ≥ 1, ...)`` in
            the model's floating-point type.
        TypeError: the model lacks one of the four parts, or its bottleneck has no density view
            (raised by the bottleneck, naming it), or ``defensive`` is given for a bottleneck
            other than a lattice or a Gaussian.
    """
    net = _unwrap(model)
    _check_arguments(x, num_samples, batch_size, sample_chunk)
    parameter = next(net.parameters(), None)
    if parameter is not None and parameter.is_floating_point() and x.dtype != parameter.dtype:
        # the encoder's first layer failed with "mat1 and mat2 must have the same dtype"
        raise ValueError(f"x is {x.dtype} but the model computes in {parameter.dtype}")
    if defensive is not None:
        net = defensive_view(net, *check_mixture(defensive))
    device = parameter.device if parameter is not None else x.device
    if sample_chunk is None:
        budget = _CHUNK_ELEMENTS_CPU if device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
        sample_chunk = max(1, budget // (min(batch_size, x.shape[0]) * x[0].numel()))
    sample_chunk = min(sample_chunk, num_samples)
    if sample_chunk * min(batch_size, x.shape[0]) * x[0].numel() > _MAX_CHUNK_NUMBERS:
        raise ValueError(
            f"sample_chunk={sample_chunk:,} with batch_size={batch_size:,} makes decoder calls of "
            f"more than {_MAX_CHUNK_NUMBERS:,} numbers of data"
        )

    modes = [(module, module.training) for module in model.modules()]
    nll = []
    try:
        model.eval()
        with (
            torch.no_grad(),
            tqdm(
                total=x.shape[0],
                desc=f"IWAE-{num_samples}",
                unit="ex",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            ) as bar,
        ):
            for xb in x.split(batch_size):
                log_px = _log_likelihood(net, xb.to(device), num_samples, sample_chunk, generator)
                nll.append(log_px.neg().cpu())
                bar.update(xb.shape[0])
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(nll)


def iwae_summary(nll: Tensor) -> dict[str, float | int]:
    """``{"mean", "se", "count"}`` of per-example NLLs (nats), e.g. from :func:`iwae_nll`.

    ``se`` is the standard error of the mean over examples (NaN for one example); it covers the
    spread of the data and the Monte-Carlo noise, not the estimator's downward-shrinking bias.
    ValueError for anything but a non-empty 1-D floating-point tensor of finite values (a NaN
    or an infinity would make the mean one).
    """
    if not isinstance(nll, Tensor) or nll.dim() != 1 or nll.numel() == 0:
        shape = tuple(nll.shape) if isinstance(nll, Tensor) else type(nll).__name__
        raise ValueError(f"nll must be a non-empty 1-D tensor of per-example values, got {shape}")
    if not nll.is_floating_point():
        raise ValueError(f"nll must be a floating-point tensor, got {nll.dtype}")
    values = nll.detach().double().cpu()
    bad = int((~values.isfinite()).sum())
    if bad:
        raise ValueError(
            f"nll holds {bad} non-finite value(s) (NaN or Inf) of {values.numel()} per-example "
            "NLLs: their mean would be one too"
        )
    count = values.numel()
    se = values.std().item() / math.sqrt(count) if count > 1 else math.nan
    return {"mean": values.mean().item(), "se": se, "count": count}


def _log_likelihood(
    net: nn.Module, x: Tensor, num_samples: int, chunk: int, generator: torch.Generator | None
) -> Tensor:
    """``(B,)`` float64 log p̂(x) for one batch: one encoder call, ⌈S / chunk⌉ decoder calls."""
    bottleneck = net.bottleneck
    y = net.encoder(x)
    batch = x.shape[0]
    # a conv encoder's code (B, D, *spatial) is one row of the bottleneck per position: the
    # density view takes rows (B·P, D), the positions are independent under q and the prior,
    # so an image's log q and log prior are the sums over its P positions (as its rate is)
    spatial = tuple(y.shape[2:])
    positions = math.prod(spatial)
    y = to_rows(y)
    # x repeated for every sample of a chunk, S-major like z.reshape(S_c·B, dim): built once per
    # batch, the last (shorter) chunk takes a prefix
    x_rep = x.expand(chunk, *x.shape).reshape(chunk * batch, *x.shape[1:])
    acc = torch.full((batch,), -math.inf, dtype=torch.float64, device=x.device)
    for start in range(0, num_samples, chunk):
        s = min(chunk, num_samples - start)
        z, log_q = bottleneck.posterior_sample(y, s, generator=generator)
        log_prior = bottleneck.log_prior(z)
        _check_density_shapes(bottleneck, z, log_q, log_prior, s, batch * positions)
        log_q = log_q.reshape(s, batch, positions).sum(-1)
        log_prior = log_prior.reshape(s, batch, positions).sum(-1)
        params = net.decoder(
            from_rows(
                z.reshape(s * batch * positions, z.shape[-1]), (s * batch, z.shape[-1], *spatial)
            )
        )
        log_px = net.likelihood.nll(x_rep[: s * batch], params).neg().view(s, batch)
        log_w = log_px.double() + log_prior.double() - log_q.double()
        acc = torch.logaddexp(acc, log_w.logsumexp(0))
    return acc - math.log(num_samples)


def _unwrap(model: nn.Module) -> nn.Module:
    net = model.module if isinstance(model, DistributedDataParallel | DataParallel) else model
    missing = [part for part in _PARTS if not hasattr(net, part)]
    if missing:
        raise TypeError(
            f"iwae_nll needs a model with {', '.join(_PARTS)} (an Autoencoder); "
            f"{type(net).__name__} has no {', '.join(missing)}"
        )
    return net


def _check_arguments(
    x: Tensor, num_samples: int, batch_size: int, sample_chunk: int | None
) -> None:
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_samples > MAX_SAMPLES:
        raise ValueError(f"num_samples must be at most {MAX_SAMPLES:,}, got {num_samples:,}")
    if sample_chunk is not None and (
        not isinstance(sample_chunk, int) or isinstance(sample_chunk, bool) or sample_chunk < 1
    ):
        raise ValueError(f"sample_chunk must be a positive integer or None, got {sample_chunk!r}")
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must have shape (N >= 1, *data_shape), got {tuple(x.shape)}")
    check_finite("x", x)


def _check_density_shapes(
    bottleneck: nn.Module, z: Tensor, log_q: Tensor, log_prior: Tensor, s: int, batch: int
) -> None:
    """The density view's contract; a violation is the bottleneck's bug, named as such."""
    name = type(bottleneck).__name__
    if z.dim() != 3 or z.shape[:2] != (s, batch):
        raise RuntimeError(
            f"{name}.posterior_sample returned z of shape {tuple(z.shape)}, "
            f"expected ({s}, {batch}, dim)"
        )
    for label, value in (("log_q", log_q), ("log_prior", log_prior)):
        if value.shape != (s, batch):
            raise RuntimeError(
                f"{name} returned {label} of shape {tuple(value.shape)}, expected ({s}, {batch})"
            )
