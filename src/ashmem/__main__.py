"""``python -m ashmem …``: the same commands as the ``ashmem`` console script."""

import sys

from .cli import main

sys.exit(main())
