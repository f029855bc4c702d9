"""Kept for old commands: the sweep collector is the ``voszoo-collect`` console script (``voszoo/collect.py``).

python benchmarks/collect.py MULTIRUN_DIR [options]   ==   voszoo-collect MULTIRUN_DIR [options]
"""

import sys

from voszoo.collect import main

if __name__ == "__main__":
    sys.exit(main())
