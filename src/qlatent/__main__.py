"""``python -m qlatent`` (what ``torchrun -m qlatent`` runs)."""

import sys

from .cli import main

sys.exit(main())
