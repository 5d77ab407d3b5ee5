"""What a run looked like: every task run on every worker, on the caller's clock.

Every call records its timeline as it goes (``ezpool._core.recording``): for each
batch of outcomes, the worker that ran it, when its first task started there and
the tasks' run times; for each worker, when it started and each chunk's round trip.
A ``Timeline`` is that record put in order, read from ``Results.timeline`` (or an
executor's), written as a Chrome trace (``ezpool.trace``) or an HTML report
(``ezpool.report``)::

    worker clock ── a chunk's first task began at w0, its tasks took t1, t2, ...
                     │  minus the worker's clock offset (round trips bound it:
                     ▼  sent <= w0 - offset and w0 + sum(t) - offset <= answered)
    caller clock ── task k of the chunk ran from w0 - offset + t1 + ... + t(k-1)
                     for t(k) seconds; times count from the call's start

A task that ran several times (its worker died under it, then it ran again) has
one ``TaskRun`` per attempt.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Optional

from ._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["Timeline", "TaskRun", "Span", "WorkerInfo", "WorkerTimes"]


class WorkerInfo(NamedTuple):
    """A worker as the timeline names it.

    Attributes:
        name: a stable name: ``"pid 1234"`` for this machine's processes, the URI
            of a served worker (the same in every call of a pool).
        host: the machine it runs on.
        pid: its process id (0 where unknown).
    """

    name: str
    host: str
    pid: int


class TaskRun(NamedTuple):
    """One run of one task.

    Attributes:
        task: the task (for ``imap`` and executors, its ``repr``, cut short).
        attempt: 1 for its first run, 2 for the run after its worker died, ...
        worker: the name of the worker that ran it (a key of ``Timeline.workers``).
        start: when it started, in seconds from the call's start, on the caller's clock.
        end: when it ended, likewise.
        error: the exception it ended with, or ``None``.
    """

    task: Any
    attempt: int
    worker: str
    start: float
    end: float
    error: Optional[BaseException]

    @property
    def failed(self) -> bool:
        return self.error is not None


class Span(NamedTuple):
    """Time a worker spent on something other than a task.

    Attributes:
        kind: ``"start-up"`` (a process starting, a connection opening and its
            code loading), ``"transfer"`` (a chunk on its way there and back),
            ``"backup"`` (a copy of a late chunk), or ``"lost"`` (a run cut by the
            worker's death, its task run again).
        worker: the worker's name.
        start: seconds from the call's start, on the caller's clock.
        end: likewise.
        detail: what it was about, in words (``"tasks 0..99"``).
    """

    kind: str
    worker: str
    start: float
    end: float
    detail: str = ""


class WorkerTimes(NamedTuple):
    """How one worker spent the call, in seconds: ``startup + working + transfer +
    waiting`` is the call's wall time (``waiting``: idle, or not there yet)."""

    startup: float
    working: float
    transfer: float
    waiting: float
    tasks: int
    failed: int


class Timeline:
    """Every task run of one call (or of an executor's life), with its workers.

    Built by EzPool (``Results.timeline``); the columns are public for writers that
    handle a million runs: ``tasks``, ``attempts``, ``owners`` (an index into
    ``names``), ``starts`` and ``ends`` hold one entry per run, batch by batch in
    the order the batches came back (runs cut by a crash last), and ``errors``
    maps a run's index to its exception.

    Attributes:
        mode: ``"serial"``, ``"parallel"`` or ``"distributed"``.
        settings: the run's settings, by name, as text (workers, versions, options).
        started_at: when the call started, in seconds since the epoch.
        wall_time: seconds from the call's start to its end.
        workers: every worker that took part, by name.
        spans: start-ups, transfers, backup copies and lost runs, by start.
        offsets: each worker's clock minus the caller's, in seconds, as estimated.
        stored: how many outcomes came from a store rather than from a run.
    """

    def __init__(
        self,
        *,
        mode: str,
        settings: dict[str, str],
        started_at: float,
        wall_time: float,
        workers: dict[str, WorkerInfo],
        tasks: Sequence[Any],
        attempts: Sequence[int],
        owners: Sequence[int],
        starts: Sequence[float],
        ends: Sequence[float],
        errors: dict[int, BaseException],
        spans: Sequence[Span] = (),
        offsets: Optional[dict[str, float]] = None,
        stored: int = 0,
    ) -> None:
        count = len(tasks)
        if not len(attempts) == len(owners) == len(starts) == len(ends) == count:
            raise ValueError("a timeline needs one attempt, owner, start and end per task run")
        self.mode = mode
        self.settings = dict(settings)
        self.started_at = started_at
        self.wall_time = wall_time
        self.workers = dict(workers)
        self.names = list(self.workers)
        self.tasks = tasks
        self.attempts = attempts
        self.owners = owners
        self.starts = starts
        self.ends = ends
        self.errors = errors
        self.spans = sorted(spans, key=lambda span: span.start)
        self.offsets = dict(offsets or {})
        self.stored = stored

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[TaskRun]:
        return self.runs()

    def runs(self) -> Iterator[TaskRun]:
        """Every task run, in the order of the columns (sort by ``start`` for time order)."""
        names, errors = self.names, self.errors
        for index, (task, attempt, owner, start, end) in enumerate(
            zip(self.tasks, self.attempts, self.owners, self.starts, self.ends)
        ):
            yield TaskRun(task, attempt, names[owner], start, end, errors.get(index))

    def split(self) -> dict[str, WorkerTimes]:
        """How each worker spent the call: start-up, working, transfer and waiting."""
        count = len(self.names)
        working = [0.0] * count
        tasks = [0] * count
        failed = [0] * count
        for owner, start, end in zip(self.owners, self.starts, self.ends):
            working[owner] += end - start
            tasks[owner] += 1
        for index in self.errors:
            failed[self.owners[index]] += 1
        startup = dict.fromkeys(self.names, 0.0)
        transfer = dict.fromkeys(self.names, 0.0)
        for span in self.spans:
            if span.kind == "start-up" and span.worker in startup:
                startup[span.worker] += span.end - span.start
            elif span.kind == "transfer" and span.worker in transfer:
                transfer[span.worker] += span.end - span.start
        split = {}
        for index, name in enumerate(self.names):
            busy = startup[name] + working[index] + transfer[name]
            split[name] = WorkerTimes(startup[name], working[index], transfer[name],
                                      max(0.0, self.wall_time - busy), tasks[index], failed[index])
        return split

    def slowest(self, count: int = 10) -> list[TaskRun]:
        """The ``count`` longest runs, longest first."""
        import heapq

        durations = array("d", (end - start for start, end in zip(self.starts, self.ends)))
        picked = heapq.nlargest(count, range(len(durations)), key=durations.__getitem__)
        names = self.names
        return [TaskRun(self.tasks[index], self.attempts[index], names[self.owners[index]],
                        self.starts[index], self.ends[index], self.errors.get(index)) for index in picked]

    def failures(self) -> dict[str, list[int]]:
        """The indices of the failed runs, grouped by the name of their exception type
        (a remote error's own), the most common first."""
        groups: dict[str, list[int]] = {}
        for index in sorted(self.errors):
            error = self.errors[index]  # (one read back from a trace keeps its type's name)
            groups.setdefault(getattr(error, "type_name", type(error).__name__), []).append(index)
        return dict(sorted(groups.items(), key=lambda item: -len(item[1])))

    def __repr__(self) -> str:
        return (f"Timeline({self.mode}, {len(self)} runs on {len(self.workers)} workers, "
                f"{len(self.errors)} failed, wall {self.wall_time:.3f} s)")
