"""``python -m waolb``: the same as the ``waolb`` command."""

import sys

from waolb.cli import main

sys.exit(main())
