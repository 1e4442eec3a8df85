"""Each coding-mnist row's file against the ideal bits of its code model, from the JSON alone.

Reads the table's JSON (``qlatent reproduce coding-mnist`` writes it, and the same figure, at the
end of every run; this redraws it from the committed results without any checkpoint) and writes
the coded bits per image of every row, sorted, with its ideal and hard-path rates marked and the
overhead in percent beside it, next to that overhead split into the header and the coder's part.

    python examples/coding-mnist-plot.py [RESULTS_JSON] [OUT_PNG]

Defaults: ``results/coding-mnist.json`` and ``results/coding-mnist.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qlatent.experiments.coding_mnist import figure_coded_bits

source = Path(sys.argv[1] if len(sys.argv) > 1 else "results/coding-mnist.json")
target = Path(sys.argv[2] if len(sys.argv) > 2 else "results/coding-mnist.png")
try:
    figure_coded_bits(json.loads(source.read_text()), target)
except (OSError, ValueError) as err:  # no file, no JSON, or no results the figure can draw
    sys.exit(f"{source}: {err}")
print(f"wrote {target}")
