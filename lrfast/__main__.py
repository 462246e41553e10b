"""``python -m lrfast``: the ``lrfast`` command."""

import sys

from .cli import main

sys.exit(main())
