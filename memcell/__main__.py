"""``python -m memcell ...``: the same command line as ``memcell ...``."""

import sys

from memcell.cli import main

if __name__ == "__main__":
    sys.exit(main())
