"""The worker of the 512-workers workloads: tasks of half a second.

With tasks that long, two cores carry one client and hundreds of workers (whose
cost per chunk is the same whatever the task). Kept apart from ``workloads`` and as
light: every one of hundreds of worker processes imports it.
"""

from __future__ import annotations

import time

from ezpool import BaseWorker

__all__ = ["LONG_NAP_SECONDS", "LongNapWorker"]

#: How long a task of the 512-workers workloads sleeps.
LONG_NAP_SECONDS = 0.5


class LongNapWorker(BaseWorker):
    """Sleeps ``LONG_NAP_SECONDS``, then returns its task."""

    def run(self, x: int) -> int:
        time.sleep(LONG_NAP_SECONDS)
        return x
