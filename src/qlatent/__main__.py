"""``python -m qlatent`` (what ``torchrun -m qlatent`` runs)."""

from .cli import console

console()
