"""A chunk as a served worker runs it (``servant``): what it holds, what it has done so
far, and how it learns that it must stop early.

A ``Job`` is run either by the thread that received the request (no ``timeout``, no
``max_memory``: ``Hangup`` looks for the client's hang-up between groups of tasks) or
by the servant's runner thread, watched by the request's thread (see
``Servant._watch``), which answers for it when a task overruns its timeout, the
worker's memory passes its limit, or a client asks it to stop (``Servant.stop``).
"""

from __future__ import annotations

import select
import threading
import time
from array import array
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .._core.logs import get_logger
from .._core.records import ChunkOutcome, ExceptionRecord, GroupTimes, TaskOutput
from .._core.serialization import record_exception
from .leaving import Leaving
from .running import run_chunk, run_chunk_captured

logger = get_logger(__name__)

__all__ = ["ClientGone", "Hangup", "Job", "WATCH_EVERY", "cut", "execute", "or_leaving", "stays"]

#: Seconds between two looks at a running chunk (its client, its timeout) at first
#: (at most, for a chunk run by the request's thread).
WATCH_EVERY = 0.05

#: ``client_gone(seconds, wake)``: see ``Servant.run_chunk``.
ClientGone = Callable[[float, Optional[int]], bool]


def stays(seconds: float = 0.0, wake: Optional[int] = None) -> bool:
    """A client that never goes: wait ``seconds``, or until ``wake`` becomes readable."""
    if seconds > 0:
        select.select([] if wake is None else [wake], [], [], seconds)
    return False


class Job:
    """One chunk, run by the request's thread or handed to the runner thread, and what
    it has done so far.

    ``exact``: run by the runner, each task marked as it starts (a ``timeout`` or a
    ``max_memory`` needs it). ``over``: set by the memory watch,
    ``(position, size reached)`` of the task that passed ``max_memory``. ``stopped``:
    a client asked to stop it (``Servant.stop``); the process restarts.
    """

    __slots__ = (
        "run", "tasks", "fid", "first", "level", "exact", "mark", "cancel", "done", "values", "times",
        "failures", "outputs", "memory", "recycle", "over", "stopped", "halt",
    )

    def __init__(
        self, run: Callable[..., Any], tasks: Sequence[Any], fid: str, first: int, level: Optional[int],
        exact: bool, memory: Optional[int] = None, recycle: Optional[int] = None,
    ) -> None:
        self.run = run
        self.tasks = tasks
        self.fid = fid  # what the client called the code it runs (see ``ping``)
        self.first = first
        self.level = level  # None, or the lowest log level to keep with what tasks print
        self.exact = exact  # whether the mark names every task: run by the runner
        self.memory = memory  # bytes of resident memory the process may reach, or None
        self.recycle = recycle  # max_tasks_per_worker: the process restarts once it ran that many
        self.halt: Any = None  # what the runner reads as its ``stop``, if not this job
        self.mark = [-1]  # what runs now (see execution.group_mark), -1 between tasks
        self.cancel = False  # set by the watching thread: stop after the current task
        self.over: Optional[tuple[int, int]] = None  # (position, bytes): past max_memory
        self.stopped = False  # a client asked to stop it: the process restarts
        self.done = threading.Event()
        # Filled by the runner as tasks finish, so that a timeout can answer with them.
        # Times by group: a reply carries 16 bytes a group, not 8 a task.
        self.values: list[Any] = []
        self.times = GroupTimes()
        self.failures: dict[int, ExceptionRecord] = {}
        self.outputs: dict[int, TaskOutput] = {}


def cut(job: Job, position: int, ran: float, error: BaseException) -> ChunkOutcome:
    """What ``job`` answers when its task at ``position`` fails with ``error`` (ran ``ran``
    seconds) and the process restarts to stop it: the tasks before it, and it."""
    offset = position - job.first
    values, times = job.values[:offset], array("d", job.times[:offset])
    # Times are added a group at a time (see execution.run_chunk): the tasks of the
    # unfinished group, all short ones, were not timed.
    times.extend(array("d", bytes(8 * (offset - len(times)))))
    failures = {k: v for k, v in list(job.failures.items()) if k < offset}
    failures[offset] = record_exception(error)
    values.append(None)
    times.append(ran)
    return ChunkOutcome(values, times, failures)


def or_leaving(leaving: Leaving, client_gone: ClientGone) -> ClientGone:
    def gone(seconds: float, wake: Optional[int]) -> bool:
        return leaving.cut() or client_gone(seconds, wake)

    return gone


def execute(job: Job, stop: Any) -> None:
    """Run ``job``'s tasks into it; ``stop.cancel`` ends it after the running task or group."""
    into = ChunkOutcome(job.values, job.times, job.failures)
    if job.level is None:
        run_chunk(job.run, job.tasks, job.first, job.mark, into, stop, job.exact)
    else:
        run_chunk_captured(job.run, job.tasks, job.first, job.mark, job.level, job.outputs, into, stop)


class Hangup:
    """``stop`` for a chunk run in the request's thread: ``cancel`` is whether its client
    has hung up, looked at when a group of tasks ends, at most every ``WATCH_EVERY``
    seconds (a chunk shorter than that never looks). Once gone, a client stays gone."""

    __slots__ = ("_client_gone", "_first", "_next", "_gone")

    def __init__(self, client_gone: ClientGone, first: int) -> None:
        self._client_gone = client_gone
        self._first = first
        self._next = time.monotonic() + WATCH_EVERY
        self._gone = False

    @property
    def cancel(self) -> bool:
        if not self._gone:
            now = time.monotonic()
            if now >= self._next:
                self._next = now + WATCH_EVERY
                self._gone = self._client_gone(0.0, None)
                if self._gone:
                    logger.info("client gone: the chunk from task %d stops after the running task",
                                self._first)
        return self._gone
