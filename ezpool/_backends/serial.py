"""The serial mode: a plain loop in the calling process.

``_compute``, the loop over a run of tasks, and ``Halt``, what a call's ``stops`` asked
so far, are shared with the threads mode (``ezpool._backends.threads``), whose threads
run the same loop.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Generator, Iterator, Sequence
from time import perf_counter
from typing import Any, Callable, Optional, Union

from .._core.feed import Feed
from .._core.logs import get_logger
from .._core.recording import Recording
from .._core.records import Batch
from .._core.stopping import Stops, cancelled
from .._core.task_errors import caught
from .._core.tasks import bind, call
from ..errors import EzPoolError
from ..options import Options
from .base import Backend

logger = get_logger(__name__)

__all__ = ["SerialBackend", "Halt", "compute", "batch_of"]

#: Seconds between batches when nobody needs to hear of every task at once.
_FLUSH_EVERY = 0.05

#: Most tasks read from a feed at a time.
_READ_AHEAD = 4096


class SerialBackend(Backend):
    """Runs each task in turn in this process; an exception is kept, not raised.

    A running task cannot be stopped (it runs in the caller's thread): ``stops`` stops the
    tasks not started yet (each ends as ``cancelled(task)``, never run), and ``stop_all``
    ends the call once the running task returns.
    """

    mode = "serial"

    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool,
        record: Recording, stops: Optional[Stops] = None,
    ) -> Generator[Batch, None, None]:
        if options.timeout is not None:
            logger.debug("serial mode cannot stop a running task; timeout=%s ignored", options.timeout)
        if options.capture_output:
            logger.debug("serial mode: tasks write here directly; capture_output ignored")
        fun = bind(fun, options.context)
        worker = f"pid {os.getpid()}"
        record.worker(worker, socket.gethostname(), os.getpid(), same_clock=True)
        halt = None if stops is None else Halt(stops)
        wake = _Wake()
        live = tasks.live if isinstance(tasks, Feed) else None
        runs = _read(tasks, wake) if isinstance(tasks, Feed) else iter([(0, tasks)])
        if live is not None:
            live.add_waker(wake)
        if stops is not None:
            stops.add_waker(wake)
        try:
            for run in runs:
                if halt is not None and halt.poll():
                    return
                if run is None:  # woken while waiting for tasks
                    continue
                if isinstance(run, Batch):  # known already (from a store)
                    yield run
                else:
                    yield from compute(fun, *run, worker, per_task, halt)
                del run  # while a live source waits for more, hold none of these tasks
        finally:
            if stops is not None:
                stops.remove_waker(wake)
            if live is not None:
                live.remove_waker(wake)


class _Wake:
    """Wakes the serial loop waiting for tasks: tasks came, or a stop was asked. Called, it
    says whether the loop was waiting (a live source then hands the tasks over at once)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.waiting = False

    def __call__(self) -> bool:
        self.event.set()
        return self.waiting

    def wait(self) -> None:
        self.waiting = True
        try:
            self.event.wait()
        finally:
            self.waiting = False


class Halt:
    """What a call's ``stops`` asked so far, for the loops that run its tasks to check.

    ``positions`` are the tasks to give up when their turn comes (each then ends as
    ``cancelled(task)``); ``everything`` ends the call. ``poll`` takes what was asked
    since (in the one thread that reads the stops) and says whether everything is to stop.
    """

    __slots__ = ("stops", "positions", "everything")

    def __init__(self, stops: Optional[Stops]) -> None:
        self.stops = stops  # None: only the backend itself stops its call (``everything``)
        self.positions: set[int] = set()
        self.everything = False

    def poll(self) -> bool:
        if self.stops is not None and self.stops.asked:
            positions, everything = self.stops.take()
            self.positions |= positions
            self.everything = self.everything or everything
        return self.everything


def compute(
    fun: Callable[..., Any], start: int, tasks: Sequence[Any], worker: str, per_task: bool,
    halt: Optional[Halt] = None, polls: bool = True,
) -> Iterator[Batch]:
    """Run consecutive tasks, the first at position ``start``; a batch every so often.

    With ``halt``, a task whose position was stopped ends as ``cancelled(task)`` without
    running, and the loop ends (yielding nothing more) once everything is to stop; it
    polls the stops itself before each task where ``polls`` (else another thread does).
    """
    values: list[Any] = []
    times: list[float] = []
    failed: set[int] = set()
    flushed = origin = perf_counter()
    for position, task in enumerate(tasks, start):
        if halt is not None:
            if (polls and halt.poll()) or halt.everything:
                return
            if halt.positions and position in halt.positions:
                halt.positions.discard(position)
                failed.add(position - start)
                values.append(cancelled(task))
                times.append(0.0)
                continue
        began = perf_counter()
        if not values:
            origin = began
        try:
            value = call(fun, task)
        except Exception as exc:
            value = caught(exc, fun, task)
            failed.add(position - start)
        finished = perf_counter()
        values.append(value)
        times.append(finished - began)
        if per_task or finished - flushed >= _FLUSH_EVERY:
            yield batch_of(start, values, times, failed, worker, origin)
            start, values, times, failed = position + 1, [], [], set()
            flushed = finished
    if values:
        yield batch_of(start, values, times, failed, worker, origin)


def batch_of(
    start: int, values: list[Any], times: list[float], failed: set[int], worker: str, origin: float
) -> Batch:
    """A batch of tasks run here, the first from ``origin`` (this process's clock)."""
    batch = Batch(start, values, times, failed, worker)
    batch.origin = origin
    return batch


def _read(feed: Feed, wake: _Wake) -> Iterator[Union[Batch, tuple[int, Sequence[Any]], None]]:
    """A feed's tasks in runs ``(start, tasks)``, and the outcomes known without running.

    A run is one task at first, and twice as many each time the last took less than
    ``_FLUSH_EVERY``, so slow tasks are read one by one and fast ones by the thousand.
    From a live source (an executor's) a task is read only when it is about to run:
    until then, it may still be cancelled. ``wake`` is set when tasks arrive or stops
    are asked; ``None`` then says it was woken, for the caller to look at the stops.
    """
    ahead, most = 1, 1 if feed.trickles else _READ_AHEAD
    while not feed.exhausted:
        began = perf_counter()
        wake.event.clear()
        runs = feed.pull(ahead)
        settled = feed.settled()
        yield from settled
        for start, stop in runs:
            yield start, feed[start:stop]
        if not runs and not settled and not feed.exhausted:
            if feed.live is None or not feed.room():
                raise EzPoolError(f"no room to read more tasks: {feed.held} are held")
            feed.live.reading.set()
            wake.wait()  # a live source: until more tasks arrive (or a stop is asked)
            yield None
            continue
        quick = perf_counter() - began < _FLUSH_EVERY
        ahead = min(2 * ahead, most) if quick else max(1, ahead // 2)
