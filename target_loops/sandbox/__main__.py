"""``python -m target_loops.sandbox``: the same as the ``target-loops-sandbox`` command."""

import sys

from target_loops.sandbox.server import main

if __name__ == "__main__":
    sys.exit(main())
