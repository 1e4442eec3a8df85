"""Each lattice row of Table 1 against the rectangular row of its prior and start, epoch by epoch.

Reads the table's JSON (``qlatent reproduce lattice-mnist`` writes it, and the same figure, at the
end of every run; this redraws it from the committed results without training) and writes the
validation negative ELBO of every lattice row minus that of the rectangular row with the same
prior and start (``rect_lattice``, ``rect_gauss_lattice``, ``rect_gl_lattice``: one panel each),
with each row's theoretical gain over the rectangular cell dashed.

    python examples/lattice-mnist-gain.py [RESULTS_JSON] [OUT_PNG]

Defaults: ``results/lattice-mnist.json`` and ``results/lattice-mnist-gain.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qlatent.experiments.lattice_mnist import figure_gain
from qlatent.results import number

source = Path(sys.argv[1] if len(sys.argv) > 1 else "results/lattice-mnist.json")
target = Path(sys.argv[2] if len(sys.argv) > 2 else "results/lattice-mnist-gain.png")
models = json.loads(source.read_text())["models"]
# an epoch the file holds as null (a NaN or an infinity when it was written) is a gap in the line
for row in models.values():
    if "val_neg_elbo_curve" in row:
        row["val_neg_elbo_curve"] = [number(v) for v in row["val_neg_elbo_curve"]]
if figure_gain(models, target) is None:
    sys.exit(f"{source}: no lattice row beside the rectangular row of its prior and start")
print(f"wrote {target}")
