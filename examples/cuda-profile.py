"""Where the time of the eager paths goes on a GPU: torch.profiler over a few calls of each case
(16384 x 64 float32, as ``qlatent bench``), with kernel launches and host-device syncs per call.

Usage (on a machine with CUDA, from the repository root): ``PYTHONPATH=src python3
examples/cuda-profile.py``. Prints one table per case; nothing is written to ``results/``.
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from qlatent.bottlenecks import build

ROWS, DIM, CALLS = 16384, 64, 10


def cases(device: torch.device):
    torch.manual_seed(0)
    y = torch.randn(ROWS, DIM).to(device)
    y_grad = y.clone().requires_grad_(True)
    gen = torch.Generator()
    out = {}
    lattice = build("lattice", dim=DIM).to(device)

    def lattice_train():
        lattice.zero_grad(set_to_none=True)
        y_grad.grad = None
        o = lattice(y_grad)
        (o.rate.sum() + o.y_hat.sum()).backward()

    out["lattice, train, forward + backward"] = lattice_train
    hard = build("lattice", dim=DIM).to(device).eval()

    def lattice_hard():
        with torch.no_grad():
            hard(y, generator=gen.manual_seed(0))

    out["lattice, hard path (eval)"] = lattice_hard
    for k in (128, 4096):
        vq = build("vq", dim=DIM, num_codes=k).to(device).eval()

        def vq_eval(vq=vq):
            with torch.inference_mode():
                vq(y)

        out[f"vq[K={k}], eval"] = vq_eval
    vq_train = build("vq", dim=DIM, num_codes=128).to(device).train()

    def vq_step():
        o = vq_train(y_grad)
        (o.y_hat.sum() + o.aux_loss).backward()

    out["vq[K=128], train, forward + backward"] = vq_step
    e8 = build("lattice", dim=DIM, lattice="e8", samples=32, prior_samples=8).to(device)
    y_small = y_grad[:1024]

    def e8_train():
        o = e8(y_small)
        (o.rate.sum() + o.y_hat.sum()).backward()

    out["e8^8 (S=32, S_q=8), train, forward + backward, 1024 rows"] = e8_train
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda-profile: CUDA is not available here", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    for name, fn in cases(device).items():
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(CALLS):
                fn()
            torch.cuda.synchronize()
        events = prof.key_averages()
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
        syncs = sum(
            e.count
            for e in events
            if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync")
        )
        print(
            f"\n### {name}: {launches / CALLS:.0f} kernel launches, {syncs / CALLS:.0f} "
            "syncs or copies per call"
        )
        print(events.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    sys.exit(main())
