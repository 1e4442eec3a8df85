"""Run by tests/test_train.py under ``torchrun --nproc_per_node=2``: the unchanged training loop.

Each rank writes its final weights' digest and its history so the test can compare ranks.
"""

import hashlib
import json
import os
import sys

import torch

from qlatent.data import synthetic_binary
from qlatent.models import lattice_vae
from qlatent.train import TrainConfig, fit

out = sys.argv[1]
data = synthetic_binary(n=600, dim=64, seed=3)
torch.manual_seed(0)
model = lattice_vae(latent_dim=4, hidden=16, data_dim=64)
result = fit(
    model,
    data,
    TrainConfig(epochs=2, batch_size=50, progress=False),
    out_dir=os.path.join(out, "run"),
)
digest = hashlib.sha256()
for tensor in model.state_dict().values():
    digest.update(tensor.numpy().tobytes())
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"digest": digest.hexdigest(), "history": result.history}, f)
