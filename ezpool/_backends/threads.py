"""The threads mode: tasks run in threads of the calling process.

(Being written for issue 28; until then, it says so.)
"""

from __future__ import annotations

import os
from typing import Optional

from .._core.logs import get_logger
from .base import Backend

logger = get_logger(__name__)

__all__ = ["ThreadBackend", "thread_count"]


def thread_count(nthreads: Optional[int]) -> int:
    """How many threads a call with ``nthreads`` runs (``None``: as ``ThreadPoolExecutor`` has)."""
    return nthreads or min(32, (os.cpu_count() or 1) + 4)


class ThreadBackend(Backend):
    mode = "threads"

    def run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError("the threads mode is being written (issue 28)")
