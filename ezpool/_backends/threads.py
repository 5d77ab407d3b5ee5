"""The threads mode: tasks run in threads of the calling process.

For tasks that wait (downloads, database calls), and, on a free-threaded CPython
(3.13t, 3.14t), for pure-Python work too. Each call starts its threads and they end
with it::

    the caller's thread (run)                            threads "thread N (pid P)"
      reads the tasks (a list, a Feed) ── (start, tasks) runs ──▶ inbox ──▶ compute():
      sizes runs from the times measured                                  each task, timed
      ◀── Batch / a KeyboardInterrupt or SystemExit raised ── outbox ◀──
      ◀── _WAKE: tasks came to a live source, a stop was asked ── outbox

Tiny tasks travel in runs of many (their length doubles while tasks are quick),
slow ones one by one. A thread cannot be killed, so:

- ``timeout``: a task that runs longer ends as ``TaskTimeout`` at its deadline; its
  thread runs on, abandoned (it reports nothing more and takes no more tasks), and a
  fresh thread takes its place so that the other tasks are not starved;
- ``stops``: a stopped task that has not started ends as ``cancelled(task)`` without
  running; one that runs ends as it ends. ``stop_all``, or closing the stream, ends it
  at once: the threads start no more tasks and those running are abandoned (daemon
  threads, which end when their task returns);
- ``max_attempts`` has nothing to count (no process can die here) and ``capture_output``
  is ignored: tasks write to this process's ``sys.stdout``, shared by every thread.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import socket
import threading
from collections.abc import Generator, Iterator, Sequence
from time import perf_counter
from typing import Any, Callable, Optional

from .._core.feed import Feed
from .._core.logs import get_logger
from .._core.recording import Recording
from .._core.records import Batch
from .._core.stopping import Stops, cancelled
from .._core.task_errors import caught
from .._core.tasks import bind, call
from ..errors import EzPoolError, TaskTimeout
from ..options import Options
from .base import Backend
from .serial import Halt, batch_of, compute

logger = get_logger(__name__)

__all__ = ["ThreadBackend", "thread_count"]

#: About how long a run of tasks should take, once their times are known.
_RUN_SECONDS = 0.005

#: Most tasks in one run.
_MOST = 4096

#: Runs waiting for each thread (so that a thread that finishes one finds the next).
_AHEAD = 2

#: In the outbox: something the caller's loop should look at (new tasks, stops).
_WAKE = object()


def thread_count(nthreads: Optional[int]) -> int:
    """How many threads a call with ``nthreads`` runs (``None``: as ``ThreadPoolExecutor`` has)."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()  # (3.13: the CPUs this process may use)
    return nthreads or min(32, (cpus or 1) + 4)


class ThreadBackend(Backend):
    """Runs tasks on ``nthreads`` threads of this process; an exception is kept, not raised."""

    mode = "threads"

    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool,
        record: Recording, stops: Optional[Stops] = None,
    ) -> Generator[Batch, None, None]:
        if options.capture_output:
            logger.debug("threads mode: tasks write here directly (one sys.stdout for every thread); "
                         "capture_output ignored")
        crew = _Crew(bind(fun, options.context), thread_count(options.nthreads), record, per_task,
                     options.timeout, Halt(stops))
        yield from crew.run(tasks, getattr(options, "chunksize", None))


class _Raised:
    """What a thread's task raised that is not an outcome (``KeyboardInterrupt``, ``SystemExit``)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Crew:
    """One call's threads, the runs of tasks they share, and the caller's loop over them.

    ``inbox`` holds runs ``(start, tasks)`` (``None``: leave), ``outbox`` what comes back.
    With a ``timeout`` every run is one task, and ``running`` (position -> when it began,
    the thread, the task) is claimed by whoever pops an entry first: the thread when its
    task returns, or the caller when the deadline passes (the thread is then abandoned).
    """

    def __init__(
        self, fun: Callable[..., Any], size: int, record: Recording, per_task: bool,
        timeout: Optional[float], halt: Halt,
    ) -> None:
        self.fun = fun
        self.size = size
        self.record = record
        self.per_task = per_task or timeout is not None
        self.timeout = timeout
        self.halt = halt
        self.inbox: queue.SimpleQueue[Optional[tuple[int, Sequence[Any]]]] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.running: dict[int, tuple[float, str, Any]] = {}
        self.threads: dict[str, threading.Thread] = {}
        self._numbers = itertools.count(1)
        self.waiting = False  # whether the caller waits on the outbox now
        # What was measured, for the length of the next runs.
        self._seconds = 0.0
        self._tasks = 0
        self._run = 1

    # --- the caller's side --------------------------------------------------------------

    def run(self, tasks: Sequence[Any], chunksize: Optional[int]) -> Generator[Batch, None, None]:
        halt = self.halt
        live = tasks.live if isinstance(tasks, Feed) else None
        if live is not None:
            live.add_waker(self._wake)
        if halt.stops is not None:
            halt.stops.add_waker(self._wake)
        source = _Source(tasks, self, chunksize)
        finished = False
        try:
            while True:
                if halt.poll():
                    return
                yield from source.fill()
                if source.done:
                    finished = True
                    return
                item = self._next()
                if item is _WAKE or item is None:
                    continue
                if type(item) is _Raised:
                    raise item.error
                source.out -= len(item.values)
                self._measure(item)
                yield item
                del item  # hold no outcome while waiting for the next
        finally:
            if live is not None:
                live.remove_waker(self._wake)
            if halt.stops is not None:
                halt.stops.remove_waker(self._wake)
            self._end(finished)

    def _wake(self) -> bool:
        self.outbox.put(_WAKE)
        return self.waiting

    def _next(self) -> Any:
        """The next thing in the outbox, waiting for it (``None``: a deadline passed, and the
        tasks it cut short were put there)."""
        if self.timeout is None:
            self.waiting = True
            try:
                return self.outbox.get()
            finally:
                self.waiting = False
        wait = self._overdue()
        if wait is None:
            return None
        self.waiting = True
        try:
            return self.outbox.get(timeout=wait)
        except queue.Empty:
            return None
        finally:
            self.waiting = False

    def _overdue(self) -> Optional[float]:
        """Give each task past its deadline ``TaskTimeout`` (its thread is abandoned, a new
        one takes its place); ``None`` if one did, else how long until the next deadline."""
        timeout = self.timeout
        assert timeout is not None
        now = perf_counter()
        soonest = timeout
        cut = False
        for position, (began, name, task) in list(self.running.items()):
            ran = now - began
            if ran < timeout:
                soonest = min(soonest, timeout - ran)
            elif self.running.pop(position, None) is not None:  # else it ended meanwhile
                error = TaskTimeout(f"task {task!r} ran longer than its timeout of {timeout} s; its thread "
                                    "cannot be stopped and runs on, abandoned (a new thread took its place)")
                logger.warning("task %r ran past %s s: %s is abandoned (it runs on)", task, timeout, name)
                abandoned = self.threads.pop(name, None)
                if abandoned is not None:
                    abandoned.name += " (abandoned)"
                self.outbox.put(batch_of(position, [error], [ran], {0}, name, began))
                self.start_thread()
                cut = True
        return None if cut else max(0.0, soonest)

    def _measure(self, batch: Batch) -> None:
        if not batch.stored:
            self._tasks += len(batch.values)
            self._seconds += sum(batch.elapsed)

    def run_length(self, left: float) -> int:
        """Tasks in the next run: one at first, then about ``_RUN_SECONDS`` of measured work
        (at most twice the last), and a fair share of the ``left`` tasks for each thread."""
        if self.timeout is not None or not self._tasks:
            return 1
        mean = self._seconds / self._tasks
        wanted = _MOST if mean <= 0 else max(1, int(_RUN_SECONDS / mean))
        share = max(1, math.ceil(left / (_AHEAD * self.size))) if left != math.inf else _MOST
        self._run = max(1, min(wanted, 2 * self._run, share, _MOST))
        return self._run

    def start_thread(self) -> None:
        name = f"thread {next(self._numbers)} (pid {os.getpid()})"
        thread = threading.Thread(target=self._work, args=(name,), name=f"ezpool {name}", daemon=True)
        self.threads[name] = thread
        self.record.worker(name, socket.gethostname(), os.getpid(), same_clock=True)
        thread.start()

    def _end(self, finished: bool) -> None:
        """Let the threads go: each leaves once it sees ``None`` (or, stopped early, at once
        after its running task). After a call that ran to its end, wait for them to leave."""
        self.halt.everything = True  # (a thread that ran to its end finds no run left anyway)
        for _ in self.threads:
            self.inbox.put(None)
        if finished:
            for thread in self.threads.values():
                thread.join()
        logger.debug("threads mode: %d threads released", len(self.threads))

    # --- the threads' side ----------------------------------------------------------------

    def _work(self, name: str) -> None:
        inbox, outbox, halt = self.inbox, self.outbox, self.halt
        try:
            while True:
                run = inbox.get()
                if run is None:
                    return
                if halt.everything:
                    continue  # the call ended early: run nothing more
                if self.timeout is not None:
                    if not self._timed(name, *run):
                        return  # abandoned: the call went on without this thread
                    continue
                for batch in compute(self.fun, run[0], run[1], name, self.per_task, halt, polls=False):
                    outbox.put(batch)
                del run
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the caller raises it
            outbox.put(_Raised(exc))

    def _timed(self, name: str, start: int, tasks: Sequence[Any]) -> bool:
        """Run one task under a deadline; whether the thread may go on (it was not abandoned)."""
        halt, running = self.halt, self.running
        task = tasks[0]
        if halt.positions and start in halt.positions:
            halt.positions.discard(start)
            self.outbox.put(batch_of(start, [cancelled(task)], [0.0], {0}, name, perf_counter()))
            return True
        began = perf_counter()
        running[start] = (began, name, task)
        try:
            value, failed = call(self.fun, task), set()
        except Exception as exc:
            value, failed = caught(exc, self.fun, task), {0}
        except BaseException:
            if running.pop(start, None) is None:
                return False
            raise
        ended = perf_counter()
        if running.pop(start, None) is None:
            return False
        self.outbox.put(batch_of(start, [value], [ended - began], failed, name, began))
        return True


class _Source:
    """The tasks of one call as runs for the inbox: a list cut as the threads need them, or
    a ``Feed`` read as they need them. ``out`` counts the tasks in the inbox or running."""

    def __init__(self, tasks: Sequence[Any], crew: _Crew, chunksize: Optional[int]) -> None:
        self.tasks = tasks
        self.feed = tasks if isinstance(tasks, Feed) else None
        self.crew = crew
        self.chunksize = chunksize if crew.timeout is None else 1
        self.next = 0  # a list's next position to put
        self.out = 0

    @property
    def done(self) -> bool:
        exhausted = self.feed.exhausted if self.feed is not None else self.next >= len(self.tasks)
        return exhausted and not self.out

    def fill(self) -> Iterator[Batch]:
        """Put runs in the inbox while the threads may soon want them; yield the outcomes
        read from a store meanwhile. Tasks that trickle in (an executor's) are read only
        when a thread is free for them: until then, they may still be cancelled."""
        crew = self.crew
        trickles = self.feed is not None and self.feed.trickles
        most = crew.size if trickles else _AHEAD * crew.size * max(1, crew._run)
        while self.out < most:
            if self.feed is None:
                left = len(self.tasks) - self.next
                if left <= 0:
                    return
                length = min(left, self.chunksize or crew.run_length(left))
                self._put(self.next, self.tasks[self.next : self.next + length])
                self.next += length
                continue
            feed = self.feed
            if feed.exhausted:
                return
            length = 1 if trickles else self.chunksize or crew.run_length(math.inf)
            runs = feed.pull(most - self.out if trickles else length)
            settled = feed.settled()
            yield from settled
            if not runs:
                if settled:
                    continue  # all it read was stored already: read on
                if not self.out and not feed.exhausted and (feed.live is None or not feed.room()):
                    raise EzPoolError(f"no room to read more tasks: {feed.held} are held")
                return  # nothing to read now: a live source wakes the caller when tasks come
            for start, stop in runs:
                for first in range(start, stop, length):
                    self._put(first, feed[first : min(stop, first + length)])

    def _put(self, start: int, tasks: Sequence[Any]) -> None:
        crew = self.crew
        if len(crew.threads) < crew.size:
            crew.start_thread()
        crew.inbox.put((start, tasks))
        self.out += len(tasks)

