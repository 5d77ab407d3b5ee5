"""``python -m bench``: run EzPool's benchmark suite (see ``bench/run.py``)."""

import sys

from bench.run import main

sys.exit(main())
