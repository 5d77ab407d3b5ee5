"""A task function for the start-up tests: which modules a worker process holds.

It lives in a small importable module of its own, so that a worker can find it by
name without importing anything more than it says.
"""

from __future__ import annotations

import sys


def loaded(name: str) -> bool:
    """Whether the module ``name`` is imported in the process running this task."""
    return name in sys.modules
