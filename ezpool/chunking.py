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
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Optional

from .serialization import dumps_tasks

logger = logging.getLogger(__name__)

__all__ = ["plan_pieces", "ChunkSizer", "Chunk", "ChunkQueue", "TARGET_SECONDS"]

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


class Chunk(NamedTuple):
    """Tasks ``start .. stop - 1`` of a call, pickled in one or more payloads."""

    start: int
    stop: int
    payloads: tuple[bytes, ...]
    alone: bool  # a suspect retried on its own, never joined with its neighbours


class ChunkQueue:
    """The tasks of a call that wait to be sent, pickled up front, joined on the way out.

    Pickling everything before the first task runs is what lets a task that
    cannot be sent be a ``TypeError`` before any work. Both the parallel and the
    distributed backends draw their chunks from here; neither locks it itself
    (the distributed one holds its own lock around every use).
    """

    def __init__(
        self,
        tasks: Sequence[Any],
        workers: int,
        chunksize: Optional[int],
        depth: int = 1,
        split: bool = False,
    ) -> None:
        self._tasks = tasks
        self._fixed = chunksize is not None
        # Whether a piece longer than the sizer's limit is cut: a worker's first chunk
        # is then one task, and slow tasks never travel by the hundred.
        self._split = split and not self._fixed
        pieces = plan_pieces(len(tasks), workers, chunksize)
        if self._split and pieces:
            # Each worker's first chunk is one task: cut those off the first piece now,
            # rather than pickle the whole piece and cut it (and pickle it again) later.
            start, stop = pieces[0]
            probes = [(n, n + 1) for n in range(start, min(stop - 1, start + workers))]
            pieces[:1] = [*probes, (probes[-1][1] if probes else start, stop)]
        self._pending = deque(
            Chunk(start, stop, (dumps_tasks(tasks[start:stop]),), False) for start, stop in pieces
        )
        self.sizer = ChunkSizer(workers * depth)
        self._undispatched = len(tasks)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def take(self) -> Chunk:
        """The next chunk: consecutive pieces adding up to about the right amount of work."""
        first = self._pending.popleft()
        limit = self.sizer.limit(self._undispatched) if not self._fixed else 0
        if self._split and first.stop - first.start > limit:
            cut = first.start + limit
            self._pending.appendleft(Chunk(cut, first.stop, (), first.alone))
            first = Chunk(first.start, cut, (), first.alone)
        if not first.payloads:  # a piece cut off by an earlier split
            first = first._replace(payloads=(dumps_tasks(self._tasks[first.start : first.stop]),))
        payloads, stop = [*first.payloads], first.stop
        if not first.alone and not self._fixed:
            pending = self._pending
            while pending and not pending[0].alone and pending[0].payloads and pending[0].start == stop:
                if pending[0].stop - first.start > limit:
                    break
                piece = pending.popleft()
                payloads.extend(piece.payloads)
                stop = piece.stop
        self._undispatched -= stop - first.start
        return Chunk(first.start, stop, tuple(payloads), first.alone)

    def put_back(self, start: int, stop: int, alone: bool = False) -> None:
        """Send tasks ``start .. stop - 1`` again, ahead of everything else."""
        if start < stop:
            payload = dumps_tasks(self._tasks[start:stop])
            self._pending.appendleft(Chunk(start, stop, (payload,), alone))
            self._undispatched += stop - start

    def drain(self) -> Iterator[Chunk]:
        """Take every chunk left, as it is (for tasks that will not be sent at all)."""
        while self._pending:
            chunk = self._pending.popleft()
            self._undispatched -= chunk.stop - chunk.start
            yield chunk
