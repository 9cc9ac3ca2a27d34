"""``python -m natsgate.cli``, as before the package (``python -m natsgate`` is the usual way)."""

import sys

from . import main

sys.exit(main())
