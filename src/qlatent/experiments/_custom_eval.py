"""The evaluation of a ``qlatent train CONFIG`` model on its test set (:func:`_evaluate`, under
the seeded generator of :func:`~qlatent.experiments.custom.evaluate`): both paths' rate and
distortion, the IWAE NLL, the test set coded to a real file (:func:`_coded_size`), codebook usage;
its report as text (:func:`format_report`) and the downstream scores of the codes
(:func:`downstream_scores`). :mod:`~qlatent.experiments.custom` re-exports the public names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..losses import RateDistortionLoss, evaluate_objective
from ..models import Autoencoder
from ..nn import SquaredError
from ._custom_config import RunConfig


def _evaluate(
    model: Autoencoder,
    cfg: RunConfig,
    data: dict[str, Tensor],
    image_shape: tuple[int, ...],
    *,
    out_dir: Path | None,
    iwae_samples: int,
    iwae_defensive: tuple[float, float] | None,
    words: list[str] | None,
    progress: bool,
) -> dict[str, Any]:
    """:func:`~qlatent.experiments.custom.evaluate`'s work, under its seeded global generator."""
    from ..eval import reconstruction_rows

    model.eval()
    x = data["test"]
    loss_fn = RateDistortionLoss(lmbda=cfg.loss.rate_weight, aux_weight=cfg.loss.aux_weight)
    gen = lambda k: torch.Generator().manual_seed(cfg.eval_seed + k)  # noqa: E731
    text = words is not None
    report: dict[str, Any] = {"sentences" if text else "images": int(x.shape[0])}
    if text:  # words per sentence, for bits per word
        report["words"] = int(((x != 0) & (x != 2)).sum())
    for key, hard in (("training_path", False), ("hard_path", True)):
        parts = evaluate_objective(
            model, loss_fn, x, batch_size=cfg.train.eval_batch_size, hard=hard, generator=gen(hard)
        )
        report[key] = {
            "distortion": parts["distortion"].mean().item(),
            "rate": parts["rate"].mean().item(),
            "total": (parts["distortion"] + parts["rate"]).mean().item(),
        }
        if text:
            per_word = math.log(2) * max(1, report["words"])
            report[key]["distortion_bits_per_word"] = parts["distortion"].sum().item() / per_word
            report[key]["rate_bits_per_word"] = parts["rate"].sum().item() / per_word
    neck = model.bottleneck
    if iwae_samples and _has_density_view(neck):
        report |= _iwae_report(model, x, iwae_samples, iwae_defensive, gen, progress)
    if callable(getattr(neck, "shaping_gap", None)) and x.shape[0]:
        # eq. 12, logged beside every lattice result (DESIGN.md §3.1): per code vector, times
        # the code vectors of one example (a conv encoder's positions)
        with torch.no_grad():
            vectors = _latents(model, x[:1]).numel() // neck.in_dim
        gap = float(neck.shaping_gap())
        report["shaping_gap"] = {"nats": gap * vectors, "per_dimension": gap / neck.dim}
    report["coded"] = _coded_size(model, x, cfg.eval_seed, data.get("train"))
    if text and report["coded"].get("available"):
        n_words = max(1, report["words"])
        report["coded"]["bits_per_word"] = 8 * report["coded"]["bytes"] / n_words
        report["coded"]["ideal_bits_per_word"] = report["coded"]["ideal_bits"] / n_words
    if getattr(neck, "index_kind", None) == "scalar":  # codebooks: one index per position
        report["codes"] = _code_stats(model, x)
    if text:
        from ..data.text import Vocabulary

        vocab = Vocabulary(words)
        decoded = model.greedy(x[:8], generator=gen(3))
        report["examples"] = [
            {"sentence": " ".join(vocab.decode(a)), "hard path": " ".join(vocab.decode(b))}
            for a, b in zip(x[:8], decoded, strict=True)
        ]
    elif out_dir is not None:
        sample = x[:10]
        recon = model.reconstruct(sample, generator=gen(3)).view(-1, *image_shape)
        reconstruction_rows(
            {"test image": sample.view(-1, *image_shape), "hard path": recon},
            out_dir / "reconstructions.png",
        )
    return report


def _iwae_report(
    model: Autoencoder,
    x: Tensor,
    iwae_samples: int,
    iwae_defensive: tuple[float, float] | None,
    gen: Callable[[int], torch.Generator],
    progress: bool,
) -> dict[str, Any]:
    """The IWAE NLL of ``x`` with ``iwae_samples`` samples (``iwae``, ``iwae_samples``), and
    with ``iwae_defensive`` also under the defensive proposal on the same draws' seed
    (``iwae_defensive``): :func:`_evaluate`'s entries, drawn from ``gen(2)``."""
    from ..eval import iwae_nll, iwae_summary

    neck = model.bottleneck
    report: dict[str, Any] = {}
    nll = iwae_nll(model, x, num_samples=iwae_samples, generator=gen(2), progress=progress)
    report["iwae"] = iwae_summary(nll)
    report["iwae_samples"] = iwae_samples
    if getattr(neck, "density", None) == "gaussian":  # a good lattice's approximate prior
        report["iwae"]["approximate_prior"] = True
    if isinstance(model.likelihood, SquaredError):
        # Σ(x̂ − x)²/v is a Gaussian's −log p (variance v/2) without its normalising term
        pixels = x[0].numel()
        report["iwae"]["gaussian_constant"] = (
            0.5 * pixels * math.log(math.pi * model.likelihood.variance)
        )
    if iwae_defensive is not None:
        wide = iwae_nll(
            model,
            x,
            num_samples=iwae_samples,
            generator=gen(2),
            progress=progress,
            defensive=iwae_defensive,
        )
        diff = wide - nll
        count = diff.numel()
        report["iwae_defensive"] = {
            "mixture": list(iwae_defensive),
            **iwae_summary(wide),
            "minus_own": diff.mean().item(),
            "minus_own_se": diff.std().item() / math.sqrt(count) if count > 1 else math.nan,
        }
    return report


def _latents(model, x: Tensor) -> Tensor:
    """The bottleneck inputs of ``x``: the sentence encoder's, or the encoder network's."""
    encode = getattr(model, "encode", None) or model.encoder
    return torch.cat([encode(xb) for xb in x.split(1000)])


def _coded_size(
    model: Autoencoder, x: Tensor, seed: int, train: Tensor | None = None
) -> dict[str, Any] | None:
    """The test set's codes as a real file (``qlatent.coding.compress``), its size, and the
    time to write it and read it back. A bottleneck whose code model is counted and has none
    yet (``scalar_st``, ``learnable_lattice``) counts the ``train`` images' symbols first, in
    memory only (``qlatent update`` saves such a model)."""
    from ..coding import code_model
    from ..coding.codec import compress, decompress, ideal_bits, model_digest

    counted_here = False
    try:
        code_model(model.bottleneck)
    except (TypeError, ValueError) as err:
        if train is None or not hasattr(model.bottleneck, "update"):
            return {"available": False, "why": str(err)}
        model.eval()
        model.bottleneck.update(_latents(model, train))
        counted_here = True
    model.eval()
    y = _latents(model, x)
    started = time.perf_counter()
    digest = model_digest(model)
    data = compress(model.bottleneck, y, seed=seed, digest=digest)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    y_hat = decompress(model.bottleneck, data, digest=digest)
    decode_s = time.perf_counter() - started
    if y_hat.shape[0] != y.shape[0]:
        raise RuntimeError(f"decoded {y_hat.shape[0]} codes, expected {y.shape[0]}")
    ideal = ideal_bits(model.bottleneck, y, seed=seed)
    return {
        "available": True,
        "bytes": len(data),
        "bits_per_image": 8 * len(data) / max(1, x.shape[0]),
        #: Σ −log2 P(symbol) under the same code model: the file less the coder's overhead
        "ideal_bits": ideal,
        "overhead": 8 * len(data) / ideal - 1 if ideal > 0 else None,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "code_model_counted_on_train": counted_here,
    }


def _code_stats(model: Autoencoder, x: Tensor) -> dict[str, Any]:
    """Codes used on the hard path and the perplexity exp(H) of their usage (codebooks)."""
    from ..bottlenecks._codebook import code_counts, usage_stats

    neck = model.bottleneck
    # summed in float64: a float32 count stops at 2^24 (16.8 M uses of one code), which a test
    # set of spatial latents reaches (one code per position)
    counts = torch.zeros(neck.num_codes, dtype=torch.float64)
    for xb in x.split(1000):
        counts += code_counts(neck.quantize(_latents(model, xb), generator=torch.Generator()),
                              neck.num_codes)  # fmt: skip
    stats = usage_stats(counts)
    return {"used": int(stats["codes_used"]), "perplexity": float(stats["perplexity"])}


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as a few readable lines."""
    t, h = report["training_path"], report["hard_path"]
    unit = "sentence" if "sentences" in report else "image"
    lines = [
        f"test set, {report.get('images', report.get('sentences'))} {unit}s, nats per {unit}:",
        f"  training path: distortion {t['distortion']:.3f}  rate {t['rate']:.3f}  "
        f"sum {t['total']:.3f}",
        f"  hard path:     distortion {h['distortion']:.3f}  rate {h['rate']:.3f}  "
        f"sum {h['total']:.3f}",
    ]
    if "words" in report:
        lines.append(
            f"  bits per word ({report['words']:,} words): training path distortion "
            f"{t['distortion_bits_per_word']:.3f} rate {t['rate_bits_per_word']:.3f}; hard path "
            f"distortion {h['distortion_bits_per_word']:.3f} rate {h['rate_bits_per_word']:.3f}"
        )
    if "iwae" in report:
        i = report["iwae"]
        lines.append(
            f"  IWAE NLL: {i['mean']:.3f} ± {i['se']:.3f} ({report['iwae_samples']} samples)"
        )
        if i.get("approximate_prior"):
            lines.append(
                "    (density='gaussian': the prior's density is approximated, so this is an "
                "estimate, not a bound on log p(x))"
            )
        if "gaussian_constant" in i:
            lines.append(
                f"    (the squared-error likelihood leaves out the Gaussian's normalising term: "
                f"add {i['gaussian_constant']:.3f} nats for a density NLL)"
            )
    if "iwae_defensive" in report:
        d = report["iwae_defensive"]
        alpha, k = d["mixture"]
        lines.append(
            f"  IWAE NLL, defensive proposal {alpha:g}:{k:g}: {d['mean']:.3f} ± {d['se']:.3f} "
            f"({d['minus_own']:+.3f} ± {d['minus_own_se']:.3f} from the own proposal's)"
        )
    if "shaping_gap" in report:
        g = report["shaping_gap"]
        lines.append(
            f"  the lattice cell's shaping gap (eq. 12): {g['nats']:.3f} nats per {unit} "
            f"({g['per_dimension']:.4f} per dimension), what an ideal lattice's cell would save"
        )
    coded = report.get("coded")
    if coded and coded.get("available"):
        per = (
            f"{coded['bits_per_word']:.3f} bits per word"
            if "bits_per_word" in coded
            else f"{coded['bits_per_image']:.2f} bits per image "
            f"({coded['bits_per_image'] * math.log(2):.2f} nats)"
        )
        counted = (
            ", code model counted on the training set"
            if coded.get("code_model_counted_on_train")
            else ""
        )
        over = coded.get("overhead")
        over = f", {100 * over:.2f}% over the code model's ideal" if over is not None else ""
        lines.append(f"  coded file: {per}; {coded['bytes']:,} bytes{counted}{over}, decoded back")
    elif coded:
        lines.append(f"  coded: no code model ({coded['why']})")
    if "downstream" in report:
        d = report["downstream"]
        lines.append(
            f"  downstream: k-means accuracy {100 * d['kmeans_acc']:.2f}%, NMI {d['nmi']:.3f}, "
            f"linear probe {100 * d['linear_acc']:.2f}%"
        )
    for example in report.get("examples", [])[:3]:
        lines.append(f"  {example['sentence']!r} -> {example['hard path']!r}")
    if "codes" in report:
        codes = report["codes"]
        lines.append(f"  codes used: {codes['used']}, perplexity {codes['perplexity']:.1f}")
    return "\n".join(lines)


def _has_density_view(bottleneck: torch.nn.Module) -> bool:
    """Whether ``bottleneck`` implements ``posterior_sample`` and ``log_prior`` (the base class
    has both, raising TypeError)."""
    from ..bottlenecks.base import Bottleneck

    return all(
        getattr(type(bottleneck), name, None) not in (None, getattr(Bottleneck, name))
        for name in ("posterior_sample", "log_prior")
    )


@torch.no_grad()
def downstream_scores(
    model: Autoencoder,
    data: dict[str, Tensor],
    labels: dict[str, Tensor],
    *,
    n_init: int = 10,
    probe_steps: int = 5000,
    progress: bool = True,
) -> dict[str, Any]:
    """k-means accuracy and NMI on the test features, and a linear probe trained on the train
    features (``qlatent.eval.downstream_report``); the features are the pre-quantisation code,
    the first ``bottleneck.dim`` channels of the encoder's output (μ of a Gaussian VAE, z_e of
    Soft VQ; the other channels are scales the bottleneck consumes), flattened, as the Soft
    VQ-VAE table takes them. Fewer k-means initialisations and probe steps than that table
    (100 and 30,000): a quick look, not a reproduction."""
    from ..eval import downstream_report

    model.eval()
    dim = model.bottleneck.dim
    features = {
        k: torch.cat([model.encoder(xb)[:, :dim].flatten(1) for xb in data[k].split(1000)])
        for k in ("train", "test")
    }
    report = downstream_report(
        features["train"],
        labels["train"],
        features["test"],
        labels["test"],
        n_init=n_init,
        probe_steps=probe_steps,
        progress=progress,
    )
    return dict(report)


def _check_eval_arguments(
    iwae_samples: Any, iwae_defensive: Any, limit: Any, downstream: Any
) -> tuple[float, float] | None:
    """:func:`~qlatent.experiments.custom.eval_checkpoint`'s arguments, checked before the
    checkpoint is read (ValueError naming the argument); returns ``iwae_defensive`` as
    :func:`~qlatent.eval.proposals.check_mixture` gives it back."""
    from ..eval.iwae import MAX_SAMPLES
    from ..eval.proposals import check_mixture

    if isinstance(iwae_samples, bool) or not isinstance(iwae_samples, int):
        raise ValueError(f"iwae_samples must be an integer, got {iwae_samples!r}")
    if not 0 <= iwae_samples <= MAX_SAMPLES:
        raise ValueError(f"iwae_samples must lie in [0, {MAX_SAMPLES:,}], got {iwae_samples:,}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        # 0 evaluated no image (a report of NaN), -1 dropped the last one without a word
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(downstream, bool):
        raise ValueError(f"downstream must be True or False, got {downstream!r}")
    if iwae_defensive is not None:
        iwae_defensive = check_mixture(iwae_defensive)
        if not iwae_samples:
            raise ValueError("a defensive proposal is for the IWAE NLL: give --iwae S too")
    return iwae_defensive


def _check_iwae(
    model: Autoencoder,
    cfg: RunConfig,
    words: list[str] | None,
    iwae_samples: int,
    iwae_defensive: tuple[float, float] | None,
) -> None:
    """ValueError, before any data is read, for an IWAE NLL the checkpoint's model cannot give:
    a sentence model (``words``), an ``iwae_defensive`` its bottleneck cannot take, a
    bottleneck without a density view."""
    if iwae_samples and words is not None:
        # iwae_nll read the token ids as images: "x must be a floating-point tensor"
        raise ValueError("the IWAE NLL (--iwae) is for image models, not a sentence model")
    if iwae_defensive is not None:
        from ..eval import DefensiveProposal

        try:
            DefensiveProposal(model.bottleneck, *iwae_defensive)
        except TypeError as err:
            raise ValueError(str(err)) from None
    if iwae_samples and not _has_density_view(model.bottleneck):
        # the bottleneck's TypeError ended the command in a traceback after the evaluation
        raise ValueError(
            f"the IWAE NLL (--iwae) needs a bottleneck with a density view (posterior_sample and "
            f"log_prior: lattice, gaussian, gaussian_lattice); {cfg.bottleneck.name} has none"
        )
