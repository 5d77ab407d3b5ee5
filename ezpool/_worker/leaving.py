"""When a worker leaves its pool cleanly: told to (SIGTERM, as SLURM sends at a job's
time limit, or a cluster scaled down), or because its job ends soon.

Told to leave, a worker takes no new chunk (it answers ``Status.LEAVING``: nothing
ran, the chunk goes back at no cost) and gives the chunk it runs ``grace`` seconds:
past them it stops it after the running task and answers with what ran (the rest
goes back at no cost). A worker that knows when its job ends takes no chunk it
cannot finish by then, judged from the time its tasks took so far, and stops one
that runs too close to the end the same way.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from .._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["Leaving", "MARGIN"]

#: Seconds kept free before a job's end, and taken off a grace period, for the last
#: answer to reach the pool.
MARGIN = 1.0


class Leaving:
    """Whether a worker still takes chunks, and whether the one it runs must stop now."""

    def __init__(self, end_at: Optional[float] = None) -> None:
        self.end_at = end_at  # seconds since the epoch, or None
        self._cut_at: Optional[float] = None  # monotonic: when a running chunk must stop
        self._why = ""
        self._lock = threading.Lock()
        self._tasks = 0  # tasks run, and the seconds they took, for the estimate
        self._seconds = 0.0
        self.told = threading.Event()  # a chunk was answered LEAVING: the pool knows
        self.on_leave: Optional[Callable[[], None]] = None  # called once, when it starts to leave

    @property
    def asked(self) -> bool:
        return self._cut_at is not None

    def leave(self, grace: float, why: str = "it was told to stop") -> None:
        """Take no more chunks; stop the running one after ``grace`` seconds."""
        with self._lock:
            first = self._cut_at is None
            if first:
                self._cut_at = time.monotonic() + max(0.0, grace - MARGIN)
                self._why = why
        if not first:
            return
        if self.on_leave is not None:
            self.on_leave()
        logger.info("leaving the pool (%s): the running chunk has %.1f s to finish", why, grace)

    def ran(self, tasks: int, seconds: float) -> None:
        """A chunk of ``tasks`` tasks ran in ``seconds``."""
        with self._lock:
            self._tasks += tasks
            self._seconds += seconds

    def refuses(self, tasks: int) -> str:
        """Why a chunk of ``tasks`` tasks is handed back unrun ("" if it may run)."""
        with self._lock:
            if self._cut_at is not None:
                self.told.set()
                return f"the worker is leaving: {self._why}"
            if self.end_at is None or not self._tasks:
                return ""
            needed = tasks * self._seconds / self._tasks
        left = self.end_at - time.time() - MARGIN
        if needed <= left:
            return ""
        why = (f"its job ends in {max(0.0, left + MARGIN):.0f} s, too soon for {tasks} tasks of "
               f"{needed / tasks:.2g} s each")
        self.leave(0.0, why)  # a worker that cannot finish one chunk leaves
        self.told.set()
        return f"the worker is leaving: {why}"

    def cut(self) -> bool:
        """Whether the running chunk must stop after its running task."""
        cut_at = self._cut_at
        if cut_at is not None and time.monotonic() >= cut_at:
            return True
        return self.end_at is not None and time.time() >= self.end_at - MARGIN
