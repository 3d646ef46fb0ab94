"""``python -m tools.kcl fetch``: KCL's jars and ``KclDeaggregate`` into ``.cache/kcl`` (once)."""

import sys

from tools.kcl import main

if __name__ == "__main__":
    sys.exit(main())
