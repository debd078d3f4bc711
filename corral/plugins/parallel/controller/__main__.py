"""``python -m corral.plugins.parallel.controller``: run a cluster controller."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
