"""The record of one call, kept as it runs, from which its ``Timeline`` is built.

Fed from two sides, each time with a few numbers per *batch* or *chunk*, never per
task (a million tiny tasks cost what a few hundred chunks cost)::

    stream (ezpool._core.stream) ── every batch: its first position, run times,
                                    origin (when its first task started, on the
                                    clock of its worker), worker, attempt, errors
    backend ── worker(name, host, pid)    who a worker is
            ── trip(name, sent, answered, origin, ran)
                                          a chunk's round trip, on this clock: it
                                          bounds the worker's clock offset, and
                                          what is not running is transfer
            ── span(kind, name, start, end, detail)
                                          start-ups, backup copies
            ── lost(position, name, start, end, what)
                                          a run cut by its worker's death

Clocks: the calling process reads ``time.perf_counter``; a worker's ``origin`` is
on its own ``perf_counter``. Processes of this machine share that clock (on Linux,
``CLOCK_MONOTONIC``), so a backend says ``same_clock`` for them; a distant worker's
offset is the middle of what every round trip allows (``_offset``).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ..timeline import Span, Timeline, WorkerInfo
from .logs import get_logger
from .records import Batch, GroupTimes

if TYPE_CHECKING:
    from ..options import Options
    from .ledger import Ledger

logger = get_logger(__name__)

__all__ = ["Recording", "settings_of", "cut"]

#: How long a task label may be where tasks are let go as they finish (``imap``, executors).
_LABEL = 80


class _Run(NamedTuple):
    """A batch as recorded: where its tasks are, when they ran, and how they ended."""

    start: int
    size: int
    times: Sequence[float]
    origin: Optional[float]  # the worker's clock, or None: see ``arrived``
    arrived: float  # when the batch reached the stream, on this clock
    worker: str
    attempt: int
    errors: dict[int, BaseException]  # by offset in the batch
    labels: Optional[list[str]]  # the tasks' reprs, where the tasks are let go


class _Trip(NamedTuple):
    sent: float
    answered: float
    origin: float
    ran: float


class Recording:
    """What one call (or an executor's life) did, batch by batch, for its ``Timeline``.

    ``tasks`` is what the stream runs (positions in batches index it); ``keep``
    says whether batches are kept at all (``imap`` and executors keep them only
    when a trace or report is asked for: they let their tasks go as they finish);
    ``labels`` whether to keep each task's ``repr`` rather than the task. An
    executor's tasks are its own wrappers: ``describe`` names one, and ``failure``
    finds the exception its call raised inside its value.
    """

    def __init__(
        self, tasks: Sequence[Any], mode: str, settings: dict[str, str], keep: bool = True,
        labels: bool = False, describe: Optional[Callable[[Any], str]] = None,
        failure: Optional[Callable[[Any], Optional[BaseException]]] = None,
    ) -> None:
        self.began = perf_counter()
        self.started_at = time.time()
        self.ended: Optional[float] = None
        self.mode = mode
        self.settings = settings
        self.keep = keep
        self._tasks = tasks
        self._labels = labels
        self._describe = describe or _label
        self._failure = failure
        self._runs: list[_Run] = []
        self.workers: dict[str, WorkerInfo] = {}
        self._same_clock: set[str] = set()
        self._trips: dict[str, list[_Trip]] = {}
        self._spans: list[Span] = []  # on this clock, made relative when built
        self._lost: list[tuple[str, float, float, str, int, Any]] = []
        self.live: set[str] = set()  # workers that answered and were not lost since
        self.stored = 0

    # --- fed by the stream ------------------------------------------------------------

    def add(self, batch: Batch) -> None:
        """A batch reached the stream."""
        if batch.stored:
            self.stored += len(batch.values)
            return
        self.live.add(batch.worker)
        if not self.keep:
            return
        times = batch.elapsed
        count = len(batch.values)
        origin = batch.origin
        if origin is None and isinstance(times, GroupTimes):
            origin = times.origin
        errors = {offset: batch.values[offset] for offset in batch.failed} if batch.failed else {}
        if self._failure is not None:
            for offset, value in enumerate(batch.values):
                error = None if offset in errors else self._failure(value)
                if error is not None:
                    errors[offset] = error
        labels = None
        if self._labels:
            tasks, describe = self._tasks, self._describe
            labels = [describe(tasks[position]) for position in range(batch.start, batch.start + count)]
        self._runs.append(_Run(batch.start, count, times, origin, perf_counter(), batch.worker,
                               batch.attempt, errors, labels))

    def reading(self, tasks: Sequence[Any]) -> None:
        """Positions from now on index ``tasks`` (an executor's next stream reads a new feed)."""
        self._tasks = tasks

    def end(self) -> None:
        if self.ended is None:
            self.ended = perf_counter()

    # --- fed by the backend -----------------------------------------------------------

    def worker(self, name: str, host: str, pid: int, same_clock: bool = False) -> None:
        """Who the worker ``name`` is; ``same_clock``: it reads this process's clock."""
        self.workers[name] = WorkerInfo(name, host, pid)
        if same_clock:
            self._same_clock.add(name)

    def local(self, name: str, pid: int, born: float, origin: Optional[float]) -> None:
        """A process of this machine, started at ``born``, ran its first chunk from ``origin``:
        its start-up, if it started in this call."""
        self.worker(name, socket.gethostname(), pid, same_clock=True)
        if born >= self.began and origin is not None:
            self.span("start-up", name, born, origin, "the process started")

    def trip(self, name: str, sent: float, answered: float, origin: Optional[float], ran: float) -> None:
        """A chunk went to ``name`` at ``sent`` and its answer came at ``answered`` (this
        clock); its first task began at ``origin`` there, and its tasks ran ``ran`` seconds."""
        if origin is not None and self.keep:
            self._trips.setdefault(name, []).append(_Trip(sent, answered, origin, ran))

    def span(self, kind: str, name: str, start: float, end: float, detail: str = "") -> None:
        """Time ``name`` spent on ``kind`` (see ``ezpool.timeline.Span``), on this clock."""
        if self.keep:
            self._spans.append(Span(kind, name, start, end, detail))

    def lost(self, position: int, name: str, start: float, end: float, what: str, attempt: int) -> None:
        """Run ``attempt`` of the task at ``position`` on ``name`` was cut by ``what`` (its
        worker died); the task runs again."""
        self.live.discard(name)
        if self.keep:
            task = self._tasks[position]
            shown = self._describe(task) if self._labels else task
            self._lost.append((name, start, end, what, attempt, shown))

    def struck(self, ledger: Ledger) -> None:
        """Take the runs ``ledger`` has cut by a crash since last asked (``Ledger.struck``)."""
        if ledger.struck:
            now = perf_counter()
            for position, name, what, seconds, attempt in ledger.struck:
                if attempt:
                    self.lost(position, name, now - seconds, now, what, attempt)
                else:  # a group of tiny tasks, one of which was running: none is counted yet
                    self.gone(name)
                    first = self._describe(self._tasks[position])
                    self.span("lost", name, now - seconds, now, f"a group from {first}: {what}; run again")
            ledger.struck.clear()

    def gone(self, name: str) -> None:
        """The worker ``name`` is lost: it no longer counts as live."""
        self.live.discard(name)

    # --- read -------------------------------------------------------------------------

    def timeline(self) -> Timeline:
        """Everything recorded so far, on the caller's clock, from the call's start."""
        from ..errors import WorkerCrashed

        began = self.began
        wall = (self.ended if self.ended is not None else perf_counter()) - began
        offsets = {name: self._offset(name) for name in self._trips}
        names: dict[str, int] = {}
        tasks: list[Any] = []
        attempts = array("i")
        owners = array("i")
        starts = array("d")
        ends = array("d")
        errors: dict[int, BaseException] = {}
        for run in self._runs:
            owner = names.setdefault(run.worker, len(names))
            times = run.times.expand() if isinstance(run.times, GroupTimes) else run.times
            if run.origin is not None:
                at = run.origin - offsets.get(run.worker, 0.0) - began
            else:  # no clock of the worker's: it ended as the batch came
                at = run.arrived - began - sum(times)
            first = len(tasks)
            if run.labels is not None:
                tasks.extend(run.labels)
            else:
                tasks.extend(self._tasks[run.start : run.start + run.size])
            attempts.extend(array("i", (run.attempt,)) * run.size)
            owners.extend(array("i", (owner,)) * run.size)
            for seconds in times:
                starts.append(at)
                at += seconds
                ends.append(at)
            for offset, error in run.errors.items():
                errors[first + offset] = error
        for worker, start, end, what, attempt, task in self._lost:
            owner = names.setdefault(worker, len(names))
            errors[len(tasks)] = WorkerCrashed(f"{what}; the task ran again")
            tasks.append(task)
            attempts.append(attempt)
            owners.append(owner)
            starts.append(start - began)
            ends.append(end - began)
        spans = [span._replace(start=span.start - began, end=span.end - began) for span in self._spans]
        spans.extend(self._transfers(offsets, began))
        for name in names:
            self.workers.setdefault(name, _local(name))
        workers = {name: self.workers[name] for name in names}
        for span in spans:  # a worker that only started, or only lost runs
            if span.worker not in workers and span.worker in self.workers:
                workers[span.worker] = self.workers[span.worker]
        return Timeline(
            mode=self.mode, settings=self.settings, started_at=self.started_at, wall_time=wall,
            workers=workers, tasks=tasks, attempts=attempts, owners=owners, starts=starts, ends=ends,
            errors=errors, spans=spans, offsets=offsets, stored=self.stored,
        )

    def _offset(self, name: str) -> float:
        """The clock of worker ``name`` minus this one: what every round trip allows
        (``sent <= origin - offset`` and ``origin + ran - offset <= answered``), its middle."""
        if name in self._same_clock:
            return 0.0
        trips = self._trips[name]
        low = max(trip.origin + trip.ran - trip.answered for trip in trips)
        high = min(trip.origin - trip.sent for trip in trips)
        if low <= high:
            return (low + high) / 2
        # The bounds cross (a clock stepped while the call ran): the latest trip's middle.
        last = trips[-1]
        return (last.origin + last.ran - last.answered + last.origin - last.sent) / 2

    def _transfers(self, offsets: dict[str, float], began: float) -> list[Span]:
        """Each chunk's way to its worker and back: from when it was sent (or the worker's
        previous chunk ended) to its first task, and from its last task to its answer."""
        spans: list[Span] = []
        ready: dict[str, float] = {}  # when each worker's start-up ended
        for span in self._spans:
            if span.kind == "start-up":
                ready[span.worker] = max(span.end, ready.get(span.worker, span.end))
        for name, trips in self._trips.items():
            offset = offsets.get(name, 0.0)
            free = ready.get(name, -float("inf"))  # when the worker's previous chunk (or start-up) ended
            for trip in sorted(trips, key=lambda trip: trip.origin):
                start = trip.origin - offset
                end = start + trip.ran
                going = max(trip.sent, free)
                if start > going:
                    spans.append(Span("transfer", name, going - began, start - began, "to the worker"))
                if trip.answered > end:
                    spans.append(Span("transfer", name, end - began, trip.answered - began, "back"))
                free = max(free, end)
        return spans


def _label(task: Any) -> str:
    return cut(repr(task))


def cut(text: str) -> str:
    """``text``, cut short enough to name a task in a trace."""
    return text if len(text) <= _LABEL else text[: _LABEL - 1] + "…"


def _local(name: str) -> WorkerInfo:
    """A worker known only by its name: ``pid N`` is a process of this machine."""
    pid = int(name[4:]) if name.startswith("pid ") and name[4:].isdigit() else 0
    return WorkerInfo(name, socket.gethostname() if pid else "", pid)


def settings_of(mode: str, options: Options, workers: int) -> dict[str, str]:
    """A call's settings as the trace and report show them."""
    from .._version import __version__

    shown = {
        "mode": mode,
        "workers": str(workers),
        "ezpool": __version__,
        "python": platform.python_version(),
        "platform": sys.platform,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
    }
    for name in ("ncpu", "chunksize", "timeout", "max_attempts", "backup", "store", "start_method"):
        value = getattr(options, name, None)
        if value is not None:
            shown[name] = str(value)
    return shown
