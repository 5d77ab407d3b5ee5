"""``python -m ezpool.status``."""

import sys

from .cli import main

sys.exit(main())
