"""What a ``pmap`` call may ask of its worker processes beyond running chunks: limits on
each process (``max_tasks_per_worker``, ``max_memory``) and stops asked from other
threads (``ezpool._core.stopping``). The call's loop (``backend._Call``) asks these
what to do; they keep the state and do no waiting of their own::

    _feed:      CallLimits.tell (a Limits message when max_memory changes), .room / .cut
                (no chunk holds more tasks than the process has left to run);
                CallStops.cut (stopped tasks never sent: yielded as cancelled)
    an answer:  CallLimits.due: the process ran its last task, or outgrew max_memory
                (mark[1]): what it still holds goes back at no cost, a new one starts
    a death:    CallLimits.memory_error: its watchdog's size in mark[1], or the OOM
                killer's count rising: WorkerOutOfMemory for the task it ran
    the Alarm:  CallStops.take: the processes holding stopped tasks are killed (Stopped)
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

from ..._core.chunking import Chunk, ChunkQueue
from ..._core.feed import Live
from ..._core.ledger import Claim
from ..._core.logs import get_logger
from ..._core.records import Batch
from ..._core.serialization import dumps, dumps_tasks
from ..._worker.memory import human_size, out_of_memory
from ...errors import WorkerOutOfMemory
from ...options import Options
from . import pipes
from .child import Limits
from .processes import WorkerProcess
from .sending import Alarm

if TYPE_CHECKING:
    from ..._core.stopping import Stops

logger = get_logger(__name__)

__all__ = ["CallLimits", "CallStops"]


class CallLimits:
    """The limits a call sets on each worker process, and what they decide."""

    def __init__(self, options: Options, tasks: Sequence[Any]) -> None:
        self.tasks = tasks
        self.max_tasks: float = options.max_tasks_per_worker or math.inf
        self.max_memory: Optional[int] = options.max_memory
        #: Every task marked as it starts, so that a process killed for memory names its task.
        self.exact = self.max_memory is not None

    def tell(self, proc: WorkerProcess) -> None:
        """Send ``proc`` this call's memory limit, if it runs under another (``OSError``: it died)."""
        if proc.limit != self.max_memory:
            pipes.send(proc.conn, [dumps(Limits(self.max_memory))])
            proc.limit = self.max_memory

    def room(self, proc: WorkerProcess, held: Iterable[Claim]) -> float:
        """How many more tasks ``proc`` may be sent (``math.inf``: no limit)."""
        if self.max_tasks == math.inf:
            return math.inf
        return self.max_tasks - proc.ran - sum(claim.chunk.stop - claim.chunk.start for claim in held)

    def cut(self, chunk: Chunk, room: float, pending: ChunkQueue) -> Chunk:
        """``chunk`` cut to ``room`` tasks, the rest put back first in line."""
        if chunk.stop - chunk.start <= room:
            return chunk
        cut = chunk.start + int(room)
        pending.put_back(cut, chunk.stop, alone=chunk.alone)
        return Chunk(chunk.start, cut, (dumps_tasks(self.tasks[chunk.start : cut]),), chunk.alone)

    def due(self, proc: WorkerProcess) -> bool:
        """Whether ``proc``, which just answered, must be replaced now."""
        if proc.outgrown:
            logger.info("worker process %s grew to %s, past its max_memory of %s: replaced",
                        proc.name, human_size(proc.outgrown), human_size(self.max_memory or 0))
            return True
        return proc.ran >= self.max_tasks

    def memory_error(
        self, proc: WorkerProcess, position: int, count: int, how: str
    ) -> Optional[WorkerOutOfMemory]:
        """The error of the task at ``position`` (running alone: ``count`` 1) if ``proc``
        died for memory: its own watchdog killed it, or the operating system's OOM killer
        (``how`` says how it ended, in words)."""
        if position < 0 or count != 1:
            return None
        task = self.tasks[position]
        if proc.outgrown:
            return out_of_memory(task, self.max_memory, proc.outgrown, f"worker process {proc.name}")
        if proc.process.exitcode == -signal.SIGKILL and proc.witness.oom_killed():
            return out_of_memory(task, self.max_memory, None, f"worker process {proc.name} {how}")
        return None


class CallStops:
    """The stops asked of one call: positions asked, and the cancelled outcomes to yield."""

    def __init__(self, stops: Stops, tasks: Sequence[Any], live: Optional[Live] = None) -> None:
        self.stops = stops
        self.tasks = tasks
        self.alarm = Alarm()
        self.asked: set[int] = set()  # asked and not settled yet (or yielded already: ignored)
        self.ready: list[Batch] = []  # cancelled before they were sent, to yield
        self.live = live  # a live source the call may wait on for tasks: poked awake too
        stops.add_waker(self.alarm.ring)
        if live is not None:
            stops.add_waker(live.poke)

    def take(self) -> bool:
        """Take what was asked since the last time; whether everything is to stop."""
        self.alarm.clear()
        positions, everything = self.stops.take()
        self.asked |= positions
        return everything

    def hit(self, held: Iterable[Claim]) -> frozenset[int]:
        """The positions asked to stop among the chunks ``held``, now settled as cancelled."""
        if not self.asked:
            return frozenset()
        spans = [(claim.chunk.start, claim.chunk.stop) for claim in held]
        found = frozenset(spot for spot in self.asked if any(start <= spot < stop for start, stop in spans))
        self.asked -= found
        return found

    def cut(self, chunk: Chunk, pending: ChunkQueue, worker: str) -> Optional[Chunk]:
        """``chunk``, unless tasks of it were asked to stop: those are cancelled (in
        ``ready``), the rest put back, and ``None`` returned."""
        inside = sorted(spot for spot in self.asked if chunk.start <= spot < chunk.stop)
        if not inside:
            return chunk
        from ..._core.stopping import cancelled  # concurrent.futures: only where tasks are stopped

        self.asked -= set(inside)
        for spot in inside:
            self.ready.append(Batch(spot, [cancelled(self.tasks[spot])], [0.0], {0}, worker))
        ends = [chunk.start - 1, *inside, chunk.stop]
        for low, high in reversed(list(zip(ends, ends[1:]))):
            pending.put_back(low + 1, high, alone=chunk.alone)
        return None

    def flush(self) -> list[Batch]:
        """The cancelled outcomes to yield now."""
        ready, self.ready = self.ready, []
        return ready

    def close(self) -> None:
        if self.live is not None:
            self.stops.remove_waker(self.live.poke)
        self.stops.remove_waker(self.alarm.ring)
        self.alarm.close()
