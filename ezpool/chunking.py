"""How tasks are cut into pieces and pieces grouped into chunks for a worker.

Tasks are pickled up front in *pieces* whose size shrinks as the run goes on
(each takes a fixed share of what remains), so a run can end on single tasks and
no core idles while another finishes a long chunk. When a worker asks for work it
gets one *chunk*: consecutive pieces adding up to about ``TARGET_SECONDS`` of work,
judged from the run times measured so far, and never more than its share of
what is left. Tiny tasks thus travel by the thousand, slow ones one by one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Optional

logger = logging.getLogger(__name__)

__all__ = ["plan_pieces", "ChunkSizer", "TARGET_SECONDS"]

#: About how long one chunk should keep a worker busy.
TARGET_SECONDS = 0.01

#: Each piece is 1 / (PIECES_PER_WORKER * workers) of the tasks that remain.
PIECES_PER_WORKER = 16


def plan_pieces(count: int, workers: int, chunksize: Optional[int] = None) -> list[tuple[int, int]]:
    """Cut positions ``0 .. count - 1`` into ``(start, stop)`` pieces.

    With ``chunksize`` the pieces are that size; otherwise they shrink from
    ``count / (16 * workers)`` down to single tasks.
    """
    pieces: list[tuple[int, int]] = []
    start = 0
    while start < count:
        size = chunksize or math.ceil((count - start) / (PIECES_PER_WORKER * workers))
        stop = min(count, start + max(1, size))
        pieces.append((start, stop))
        start = stop
    return pieces


class ChunkSizer:
    """Decides how many tasks the next chunk may hold, from the run times seen so far."""

    def __init__(self, slots: int, target: float = TARGET_SECONDS) -> None:
        self._slots = slots  # chunks in flight at once: workers x chunks each holds
        self._target = target
        self._tasks = 0
        self._seconds = 0.0

    def record(self, times: Sequence[float]) -> None:
        """Learn from the measured run times of finished tasks."""
        self._tasks += len(times)
        self._seconds += sum(times)

    def limit(self, remaining: int) -> int:
        """Most tasks the next chunk should hold when ``remaining`` tasks are left.

        Before anything was measured, a chunk is a single piece (the limit is 1).
        """
        if not self._tasks:
            return 1
        mean = self._seconds / self._tasks
        if mean <= 0:
            return remaining
        fair_share = math.ceil(remaining / (2 * self._slots))
        return max(1, min(int(self._target / mean), fair_share))
