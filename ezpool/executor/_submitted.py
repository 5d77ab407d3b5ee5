"""The stream behind a ``PoolExecutor``: what waits, what was taken, where outcomes go.

Submitted calls wait in a ``Live`` source as entries: ``(future, task)`` for a
``submit``, ``MapCalls`` for the calls of a ``map`` (cut into slices when taken),
``Again`` for a task sent again after its stream broke off. ``Dispatcher.loop`` runs
one ``Pool`` stream over that source in a thread of its own and settles each batch:
futures one by one, each map's slices at once (``MapRun``).

Where the mode can stop a running task (parallel, distributed), each stream has a
``Stops`` and every task taken knows its position in the stream: a submitted call's
``CallFuture`` holds it (``cancel()`` stops the task), a map holds those of its
running slices (a map left unread stops them). ``shutdown(cancel_futures=True)``
stops the whole stream: the running calls end cancelled, and the calls of a map's
running slices raise ``CancelledError`` where they are read, as its waiting calls do.
A stopped slice's other calls are not run again.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

from .. import _backends as backends
from .._core.feed import Live
from .._core.logs import get_logger
from .._core.recording import Recording, settings_of
from .._core.records import Batch
from .._core.stopping import Stops
from .._core.stream import open_feed, open_sweep, stream
from ..errors import TaskNotSerializable
from ..options import Options
from ._calls import call_failure, describe, failure, run_in_context, run_task, unwrap
from ._future import CallFuture, settle_future

logger = get_logger(__name__)

__all__ = ["Submitted", "MapRun", "MapCalls", "Calls", "Errors"]

#: About how long one slice of a ``map`` should run, judged from the calls measured so far.
SLICE_SECONDS = 0.001

#: Most calls of a ``map`` in one slice.
SLICE_MOST = 64

#: Calls of a ``map`` measured before slices hold more than one: a first call's
#: time alone says little, and a quick call is not held back by a slow one next to it.
SLICE_PROBES = 4

#: The modes that can stop a running task (they kill its worker and start another).
STOPPABLE = frozenset({"parallel", "distributed"})

#: The calls of a map: tuples of arguments or, over one iterable, the arguments themselves.
Calls = Sequence[Any]
Errors = Optional[dict[int, BaseException]]


class MapRun:
    """The results of one ``map`` call: slices filled in any order, read in order."""

    __slots__ = ("cond", "ready", "cancelled", "running", "_calls", "_seconds")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: dict[int, tuple[list[Any], Errors]] = {}  # first position -> values, errors
        self.cancelled = False  # nobody reads the results any more: run nothing more
        # first position of a running slice -> its stream's stops, its position there
        self.running: dict[int, tuple[Stops, int]] = {}
        self._calls = 0  # measured by the dispatcher thread, for the size of the next slices
        self._seconds = 0.0

    def measure(self, calls: int, seconds: float) -> None:
        self._calls += calls
        self._seconds += seconds

    def slice_size(self) -> int:
        """Calls in the next slice: one until a few have run, then about ``SLICE_SECONDS``."""
        if self._calls < SLICE_PROBES:
            return 1
        mean = self._seconds / self._calls
        return SLICE_MOST if mean * SLICE_MOST <= SLICE_SECONDS else max(1, int(SLICE_SECONDS / mean))

    def started(self, first: int, stops: Stops, position: int) -> None:
        with self.cond:
            self.running[first] = (stops, position)

    def abandon(self) -> None:
        """Nobody reads the results any more: run nothing more, and stop the slices running."""
        with self.cond:
            self.cancelled = True
            running, self.running = self.running, {}
        for stops, position in running.values():
            stops.stop((position,))

    def deliver(self, slices: dict[int, tuple[list[Any], Errors]]) -> None:
        with self.cond:
            self.ready.update(slices)
            if self.running:
                for first in slices:
                    self.running.pop(first, None)
            self.cond.notify_all()

    def fail(self, first: int, count: int, error: BaseException) -> None:
        """Calls ``first .. first + count - 1`` will not run; reading the first raises ``error``."""
        self.deliver({first: ([None] * count, {0: error})})

    def next(self, index: int, deadline: Optional[float]) -> tuple[list[Any], Errors]:
        """The slice that starts at position ``index``, once it is there."""
        with self.cond:
            while index not in self.ready:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise concurrent.futures.TimeoutError()
                self.cond.wait(left)
            return self.ready.pop(index)


class MapCalls:
    """Consecutive calls of one ``map`` that wait in the source: cut into slices when taken."""

    __slots__ = ("run", "fn", "first", "calls", "how", "offset", "single")

    def __init__(
        self, run: MapRun, fn: Any, first: int, calls: Calls, how: Optional[bool], single: bool = False
    ) -> None:
        self.run = run
        self.fn = fn
        self.first = first
        self.calls = calls
        self.how = how  # True: each call is one argument (see run_task)
        self.offset = 0  # calls before it were taken
        self.single = single  # one call a slice: retries of a slice that failed as a whole


class Again:
    """A task taken once and not run (its stream broke off): it goes again as it is."""

    __slots__ = ("task", "target", "first")

    def __init__(self, task: Any, target: Target, first: int) -> None:
        self.task = task
        self.target = target
        self.first = first


#: Where a task's outcome goes: a submitted call's future, or a map (with the position
#: of the slice's first call).
Target = Union[CallFuture, MapRun]


class Submitted:
    """What an executor was given to run, the stream that runs it, and that stream's thread.

    The executor object itself is not referenced from here, so that an executor
    nobody holds is collected (and its stream closed) like a ``ThreadPoolExecutor``.
    ``taken`` is touched only by the thread that runs the stream. The backend lives
    as long as this, and is closed with it.
    """

    def __init__(self, mode: str, options: Options) -> None:
        self.mode = mode
        self.options = options
        self.backend = backends.create(mode)
        self.live = Live(admit=self.admit)
        self.lock = threading.Lock()  # guards thread, and put against close
        self.thread: Optional[threading.Thread] = None
        self.taken: dict[int, tuple[Any, Target, int]] = {}  # id(task) -> task, target, first
        self.remote = mode != "serial"
        self.stoppable = mode in STOPPABLE
        self.stops: Optional[Stops] = None  # the running stream's, where tasks can be stopped
        self.position = 0  # the running stream's position of the next task taken
        # Every call's run, kept only where a trace or report is asked for (an executor may
        # run for ever): written when the stream ends, and on demand (``PoolExecutor.timeline``).
        wanted = options.trace is not None or options.report is not None
        self.record = Recording((), mode, settings_of(mode, options, 0), keep=wanted, labels=True,
                                describe=describe, failure=failure)

    def put(self, entries: Sequence[Any]) -> None:
        with self.lock:
            if self.live.closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.live.put(entries)
            self._start()

    def start(self) -> None:
        """Start the stream now (its processes, its workers), before anything is submitted."""
        with self.lock:
            self._start()

    def _start(self) -> None:
        if self.thread is None and not self.live.closed:
            self.thread = threading.Thread(target=self.loop, name="ezpool-executor", daemon=True)
            self.thread.start()

    def close(self, wait: bool, cancel: bool = False) -> None:
        with self.lock:
            self.live.close()
            waiting = self.live.drain() if cancel else []
            stops = self.stops if cancel and self.stoppable else None
            again = [entry for entry in waiting if type(entry) is Again]
            if again and stops is None:
                self.live.requeue(again)  # running already: they cannot be cancelled
            thread = self.thread
        self.cancel(waiting)  # (outside the lock: a future's callbacks may run here)
        if stops is not None and thread is not None:
            logger.debug("shutdown(cancel_futures=True): stopping the running calls")
            stops.stop_all()  # the stream ends; run_stream cancels what it had taken
        if thread is None:
            self.backend.close()
        elif wait and thread is not threading.current_thread():
            thread.join()

    def cancel(self, entries: list[Any]) -> None:
        """Cancel entries that were waiting: futures, and the map calls not cut yet."""
        for entry in entries:
            if type(entry) is tuple:
                entry[0].cancel()
            elif type(entry) is MapCalls:
                left = len(entry.calls) - entry.offset
                entry.run.fail(entry.first + entry.offset, left, concurrent.futures.CancelledError())
            elif type(entry) is Again:  # taken by a stream that broke off: a running call
                cancel_target(entry.target, entry.first, len(entry.task[1]))

    # --- the thread that runs the stream ---------------------------------------------------

    def admit(self, entry: Any) -> tuple[Any, bool]:
        """The next task from an entry (called by the stream, with the source's lock held)."""
        kind = type(entry)
        if kind is tuple:  # (future, task) from submit
            future, task = entry
            stops = self.stops
            if stops is not None:
                future.stop = (stops, self.position)
            if not future.set_running_or_notify_cancel():
                return None, True
            self.taken[id(task)] = (task, future, 0)
            self.position += 1
            return task, True
        if kind is Again:
            self.taken[id(entry.task)] = (entry.task, entry.target, entry.first)
            if self.stops is not None:
                if isinstance(entry.target, MapRun):
                    entry.target.started(entry.first, self.stops, self.position)
                else:
                    entry.target.stop = (self.stops, self.position)
            self.position += 1
            return entry.task, True
        run = entry.run
        if run.cancelled:
            return None, True
        size = 1 if entry.single else run.slice_size()
        start, calls = entry.offset, entry.calls
        piece = calls if start == 0 and size >= len(calls) else calls[start : start + size]
        entry.offset = start + len(piece)
        task = (entry.fn, piece, entry.how)
        self.taken[id(task)] = (task, run, entry.first + start)
        if self.stops is not None:
            run.started(entry.first + start, self.stops, self.position)
        self.position += 1
        return task, entry.offset >= len(calls)

    def loop(self) -> None:
        """Run the stream; after a failure, run a new one for the calls still waiting."""
        while True:
            try:
                self.run_stream()
            except BaseException as exc:  # the stream itself failed
                logger.warning("the executor's stream of tasks failed: %r", exc)
                self.fail_taken(exc)
                self.live.reading.set()  # (the constructor waits no more)
            with self.lock:
                if not self.live.waiting:
                    self.thread = None  # a later submit starts another
                    finished = self.live.closed
                    break
        if finished:
            self.backend.close()
            logger.debug("the executor's %s backend is closed", self.mode)

    def run_stream(self) -> None:
        """One stream over what waits, until the source is closed and drained."""
        # With a context, the stream gives it to each task: run_in_context passes it on.
        runner = run_task if self.options.context is None else run_in_context
        sweep = open_sweep(self.options, runner)
        stops = Stops() if self.stoppable else None
        self.stops, self.position = stops, 0  # (no stream takes tasks meanwhile: this is its thread)
        try:
            feed = open_feed(self.live, self.options.buffersize, sweep)
            self.record.reading(feed)
            batches = stream(self.backend, runner, feed, self.options, sweep, eager=True, record=self.record,
                             stops=stops, failure=call_failure)
            try:
                for batch in batches:
                    stop = batch.start + len(batch.values)
                    self.settle(feed[batch.start : stop], batch)
                    feed.release(batch.start, stop)
                    del batch  # hold no call's arguments or values while waiting
            finally:
                batches.close()
        finally:
            if sweep is not None:
                sweep.close()
        if stops is not None and stops.everything:  # shutdown(cancel_futures=True): the stream ended
            taken = list(self.taken.values())
            self.taken.clear()
            for task, target, first in taken:
                cancel_target(target, first, len(task[1]))

    def settle(self, tasks: Sequence[Any], batch: Batch) -> None:
        """Hand a batch's outcomes on: futures one by one, each map's slices at once."""
        taken, values, failed, elapsed = self.taken, batch.values, batch.failed, batch.elapsed
        slices: dict[MapRun, dict[int, tuple[list[Any], Errors]]] = {}
        for offset, task in enumerate(tasks):
            _, target, first = taken.pop(id(task))
            if failed and offset in failed:  # the task as a whole: its worker died, it timed out...
                self.failed(task, target, first, values[offset])
                continue
            results, errors = values[offset]
            if isinstance(target, MapRun):
                target.measure(len(results), elapsed[offset])
                ready = slices.get(target)
                if ready is None:
                    ready = slices[target] = {}
                ready[first] = (results, errors)
            elif errors is not None:
                settle_future(target, error=unwrap(errors))
            else:
                settle_future(target, results)
        for run, ready in slices.items():
            run.deliver(ready)

    def failed(self, task: Any, target: Target, first: int, error: BaseException) -> None:
        """A task failed as a whole: a slice of several calls is retried call by call."""
        fn, calls, how = task
        if isinstance(error, TaskNotSerializable) and len(calls) == 1:
            error = unpicklable_error(task)  # it names the call, not the tuple it travels in
        if not isinstance(target, MapRun):
            settle_future(target, error=error)
        elif target.cancelled or isinstance(error, concurrent.futures.CancelledError):
            target.fail(first, len(calls), error)  # a slice stopped: its calls are not run again
        elif len(calls) > 1:
            logger.debug("a slice of %d calls failed as a whole (%r); retrying them alone", len(calls), error)
            self.live.requeue([MapCalls(target, fn, first, calls, how, single=True)])
        else:
            target.fail(first, 1, error)

    def fail_taken(self, exc: BaseException) -> None:
        """The stream broke off: fail what it had taken, and what waits, with ``exc``.

        If it broke because some tasks cannot be pickled, only those fail (a slice of
        several calls is split first to find the call); the others go again.
        """
        taken = list(self.taken.values())
        self.taken.clear()
        stuck = [] if not self.remote else [item for item in taken if not picklable(item[0])]
        if stuck:
            self.live.requeue([Again(*item) for item in taken if not any(item is bad for bad in stuck)])
            for task, target, first in stuck:
                self.failed(task, target, first, unpicklable_error(task))
            return
        for task, target, first in taken:
            fail(target, first, len(task[1]), exc)  # (a future ignores the count)
        for entry in self.live.drain():
            if type(entry) is tuple:
                if entry[0].set_running_or_notify_cancel():
                    settle_future(entry[0], error=exc)
            elif type(entry) is Again:
                fail(entry.target, entry.first, len(entry.task[1]), exc)
            else:
                entry.run.fail(entry.first + entry.offset, len(entry.calls) - entry.offset, exc)


def fail(target: Target, first: int, count: int, error: BaseException) -> None:
    if isinstance(target, MapRun):
        target.fail(first, count, error)
    else:
        settle_future(target, error=error)


def cancel_target(target: Target, first: int, count: int) -> None:
    """A running call is stopped: its future ends cancelled, a map's calls raise ``CancelledError``."""
    if isinstance(target, MapRun):
        target.fail(first, count, concurrent.futures.CancelledError())
    else:
        target.cancel()  # (refused once it has finished)


def picklable(task: Any) -> bool:
    from .._core.serialization import dumps

    try:
        dumps(task)
    except Exception:
        return False
    return True


def unpicklable_error(task: Any) -> TaskNotSerializable:
    from .._core.serialization import dumps
    from .._core.unsendable import ADVICE

    fn, calls, how = task
    try:
        dumps(task)
    except Exception as exc:
        args = calls if how is False or isinstance(how, dict) else calls[0] if how is None else (calls[0],)
        what = f"{fn!r} with arguments {args!r}" + (f" and {how!r}" if isinstance(how, dict) else "")
        error = TaskNotSerializable(f"cannot send the call of {what} to another process: {exc}. {ADVICE}.")
        error.__cause__ = exc
        return error
    return TaskNotSerializable(f"cannot send {fn!r} to another process")
