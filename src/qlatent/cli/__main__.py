"""``python -m qlatent.cli``: :func:`~qlatent.cli.main`, whose exit code the process exits with."""

import sys

from . import main

sys.exit(main())
