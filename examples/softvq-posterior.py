"""How sharp the Soft VQ-VAE rows' soft assignments are, from their trained runs.

For every finished seed run of the four Soft VQ-VAE rows of ``qlatent reproduce softvq-mnist``
(eq. (5)'s weights or the notebook's, each with and without latent noise), the final weights
(``last.pt``: the table evaluates after the last update) encode the 10,000 test images and the
posterior p(μ_k | z_e) of each is measured: its mean entropy (nats), the perplexity of the mean
posterior, the codes used as argmax and their perplexity, and the mean σ_k.

    OMP_NUM_THREADS=1 python examples/softvq-posterior.py RUNS_DIR [OUT_JSON]

RUNS_DIR is the ``--runs-dir`` of the table's runs; OUT_JSON defaults to
``results/softvq-mnist-posterior.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from qlatent.bottlenecks._codebook import code_counts, usage_stats
from qlatent.bottlenecks.soft_vq import soft_assignment_logits
from qlatent.experiments import softvq_mnist
from qlatent.results import provenance, write_json
from qlatent.train import load, load_weights

ROWS = ("soft_vq", "soft_vq_reference", "soft_vq_noiseless", "soft_vq_reference_noise")


@torch.no_grad()
def posterior(model, x: torch.Tensor) -> dict[str, float]:
    neck = model.bottleneck
    entropy, total, mean_sigma = 0.0, None, 0.0
    hard = torch.zeros(neck.num_codes)
    for xb in x.split(2000):
        y = model.encoder(xb)
        z, log_sigma = y[:, : neck.dim], y[:, neck.dim :]
        log_p = torch.log_softmax(
            soft_assignment_logits(z, log_sigma, neck.codebook, variant=neck.variant), dim=1
        )
        p = log_p.exp()
        entropy += float(-(p * log_p).sum())
        total = p.sum(0) if total is None else total + p.sum(0)
        hard += code_counts(p.argmax(1), neck.num_codes)
        mean_sigma += float(log_sigma.exp().sum())
    n = x.shape[0]
    return {
        "posterior_entropy": entropy / n,
        "mean_posterior_perplexity": float(usage_stats(total)["perplexity"]),
        "argmax_codes_used": float(usage_stats(hard)["codes_used"]),
        "argmax_perplexity": float(usage_stats(hard)["perplexity"]),
        "mean_sigma": mean_sigma / (n * neck.num_codes),
    }


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__.strip().splitlines()[-4].strip(), file=sys.stderr)
        return 2
    runs = Path(argv[0]).expanduser() / "softvq-mnist"
    out = Path(argv[1]) if len(argv) > 1 else Path("results/softvq-mnist-posterior.json")
    data = softvq_mnist.load_data(
        softvq_mnist.model_config("soft_vq", quick=False, overrides=[]), None
    )
    variance = data["x_train"].var().item()
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name in ROWS:
        cfg = softvq_mnist.model_config(name, quick=False, overrides=[])
        for folder in sorted((runs / name).glob("seed-*")):
            checkpoint = folder / "last.pt"
            if not checkpoint.is_file():
                continue
            state = load(checkpoint)
            if not state["state"].get("stopped"):  # still training: not a finished run
                continue
            model = softvq_mnist.build_model(cfg.model, data["x_test"].shape[1], variance)
            load_weights(model, state["model"], checkpoint)
            model.eval()
            rows.setdefault(name, {})[folder.name] = posterior(model, data["x_test"])
            print(name, folder.name, rows[name][folder.name], flush=True)
    command = "python examples/softvq-posterior.py " + " ".join(argv)
    write_json({**provenance(command), "rows": rows}, out)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main(sys.argv[1:]))
