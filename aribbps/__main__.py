"""``python -m aribbps``: see :mod:`aribbps.cli`."""
from __future__ import annotations

import sys

from aribbps.cli import main

if __name__ == "__main__":
    sys.exit(main())
