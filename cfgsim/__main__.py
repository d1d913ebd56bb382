"""``python -m cfgsim``: the command line (see :mod:`cfgsim.cli`)."""

import sys

from cfgsim.cli import main

sys.exit(main())
