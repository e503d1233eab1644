"""``python -m symnet``: the ``symnet`` command, where the script is not on PATH."""

import sys

from .cli import main

sys.exit(main())
