"""Running a task again when it raised one of the exceptions ``retry_on`` names.

The backends never hear of retries. Where a call asks for them, the stream gives
its backend a ``RetryFeed``: a feed whose positions are *runs* rather than tasks,
the call's tasks in their order and, between them, each task to run again as it
falls due. A run again goes to the back of the queue: behind every task read so
far, ahead of those not read yet (a generator of tasks may never end). The stream
turns each batch of runs back into the call's positions (``RetryFeed.settle``),
keeps back the failures that will run again, and hands on the last outcome of
every task, so that the store, the progress bar and ``Results`` see each task
once::

    tasks (a list, or the call's Feed) ──▶ RetryFeed ── runs ──▶ backend
    stream ◀── final outcomes, by task ◀── settle ◀── batches of runs ◀──┘
                                             └── failed, to retry ──▶ (after its backoff) ──▶ RetryFeed

Every run, kept back or not, goes into the call's record, so the timeline shows
each attempt. A run that is due later (``retry_backoff``) waits in a heap; one
thread per call moves it to the front when due and wakes the backend through the
feed's ``Live`` (``Live.poke``).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Union, overload

from ..errors import TaskNotSerializable
from .feed import Feed, Live
from .logs import get_logger
from .records import Batch
from .stopping import Stops

if TYPE_CHECKING:
    from ..options import Options
    from .recording import Recording

logger = get_logger(__name__)

__all__ = ["RetryPolicy", "RetryFeed", "RunStops", "open_retries"]

#: The longest wait before a run again, whatever ``retry_backoff`` doubles to
#: (unless ``retry_backoff`` itself is longer).
BACKOFF_CAP = 60.0

#: Exceptions that end a task whatever ``retry_on`` says (a task that cannot be sent would
#: fail again); so does a task stopped on purpose (a ``CancelledError``, see
#: ``ezpool._core.stopping``), found by ``_never``.
_NEVER = (KeyboardInterrupt, SystemExit, TaskNotSerializable)

#: The modules whose ``CancelledError`` ends a task (looked up only if already imported:
#: an instance of one cannot exist otherwise, and importing them costs a cold start).
_CANCELLED_IN = ("concurrent.futures", "asyncio")


class RetryPolicy(NamedTuple):
    """Which failures run again, how many times, and after how long."""

    retries: int
    retry_on: tuple[type[BaseException], ...]
    backoff: float

    def wants(self, error: Any, tries: int) -> bool:
        """Whether a task that failed with ``error`` on its ``tries``-th run runs again."""
        return tries <= self.retries and isinstance(error, self.retry_on) and not _never(error)

    def delay(self, tries: int, rng: random.Random) -> float:
        """Seconds to wait before the run after the ``tries``-th: ``backoff`` doubled each time,
        capped, and drawn between half of that and all of it (jitter, so that tasks that failed
        together do not all come back at once)."""
        if not self.backoff:
            return 0.0
        longest = self.backoff * 2.0 ** min(tries - 1, 64)
        return min(longest, max(BACKOFF_CAP, self.backoff)) * rng.uniform(0.5, 1.0)


def _never(error: BaseException) -> bool:
    """Whether ``error`` ends its task whatever ``retry_on`` says."""
    if isinstance(error, _NEVER):
        return True
    for name in _CANCELLED_IN:
        module = sys.modules.get(name)
        if module is not None and isinstance(error, module.CancelledError):
            return True
    return False


def open_retries(
    tasks: Sequence[Any], options: Options, failure: Optional[Failure] = None
) -> Optional[RetryFeed]:
    """The ``RetryFeed`` over ``tasks`` that ``options`` ask for, or ``None``. ``failure`` finds
    the exception of a task that failed inside its value (an executor's call), if any."""
    if not options.retries:
        return None
    if not options.retry_on:
        logger.warning("retries=%d without retry_on runs no task again: name the exceptions to retry, "
                       "e.g. retry_on=ConnectionError (or retry_on=Exception for all)", options.retries)
        return None
    policy = RetryPolicy(options.retries, options.retry_on, options.retry_backoff)
    return RetryFeed(tasks, policy, failure)


class _Again(NamedTuple):
    """A task to run again: at ``due`` (``time.monotonic``), its ``tries``-th run over."""

    due: float
    order: int  # ties on ``due`` go first come, first served (and tasks are never compared)
    task: Any
    position: int  # in the call's tasks
    tries: int  # runs so far
    before: int  # attempts so far, crash retries included (for the timeline)


#: Finds the exception of a failed task in its value, where the value holds it (else ``None``).
Failure = Callable[[Any], Optional[BaseException]]

#: A block of runs: the first call position and how many (consecutive), or the one task run again.
_Block = tuple[int, int, Optional[_Again]]


class RetryFeed(Feed):
    """The runs of a call with retries, read on demand as a ``Feed`` (see the module's text).

    ``tasks`` are the call's: a list (``map``: every run is kept, for the timeline) or
    the call's ``Feed`` (``imap``, executors: runs are let go once settled).
    """

    def __init__(  # no Feed.__init__: all it sets up is replaced here
        self, tasks: Sequence[Any], policy: RetryPolicy, failure: Optional[Failure] = None
    ) -> None:
        self.outer = tasks
        self.policy = policy
        self._failure = failure
        self._feed = tasks if isinstance(tasks, Feed) else None
        live = self._feed.live if self._feed is not None else None
        self._waker = live if live is not None else Live()  # wakes the backend when a run falls due
        self.live = self._waker
        self.limit = self._feed.limit if self._feed is not None else max(1, len(tasks))
        self.read = 0
        self._starts: list[int] = []  # first runs of the blocks held, ascending
        self._runs_held: dict[int, _Block] = {}
        self._left: dict[int, int] = {}  # first run -> runs of its block not yet settled
        self._unsettled = 0  # runs read and not yet settled
        self._next = 0  # a list's: the position of the next task to read
        self._outer_done = self._feed is None and not tasks
        self._stored: list[Batch] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._due: deque[_Again] = deque()
        self._later: list[_Again] = []  # a heap, by due time
        self._order = itertools.count()
        self._rng = random.Random()
        self._timer: Optional[threading.Thread] = None
        self._closed = False
        self._stopping: set[int] = set()  # tasks stopped while they waited to run again
        self._stops: Optional[RunStops] = None

    # --- the Feed, as the backends read it ----------------------------------------------

    @property
    def exhausted(self) -> bool:  # type: ignore[override]  # an attribute of Feed
        """Every task read, every run read settled, and none waits to run again. (A run not
        yet settled may fail and run again: until then the feed is not exhausted, so that it
        never seems exhausted and then, once a failure is kept back, not.)"""
        return self._outer_done and not self._unsettled and not self._due and not self._later

    @property
    def trickles(self) -> bool:
        return self._feed is not None and self._feed.trickles

    @property
    def held(self) -> int:
        return self._feed.held if self._feed is not None else self._next

    def room(self) -> int:
        # A run due later counts as room: a reader with nothing else to read then waits for it.
        waiting = len(self._due) + (1 if self._later else 0)
        if self._feed is not None:
            return self._feed.room() + waiting
        return len(self.outer) - self._next + waiting

    def pull(self, count: int) -> list[tuple[int, int]]:
        """Up to ``count`` runs: those due again first, then tasks not read yet."""
        runs: list[tuple[int, int]] = []
        with self._lock:
            due = [self._due.popleft() for _ in range(min(count, len(self._due)))]
        for again in due:
            runs.append(self._add(again.position, 1, again))
            if again.position in self._stopping:  # stopped while it waited to run again
                self._stopping.discard(again.position)
                if self._stops is not None:
                    self._stops.later(runs[-1][0])
        rest = count - len(due)
        if rest <= 0 or self._outer_done:
            return runs
        if self._feed is None:
            start, stop = self._next, min(len(self.outer), self._next + rest)
            if stop > start:
                runs.append(self._add(start, stop - start, None))
            self._next = stop
            self._outer_done = stop >= len(self.outer)
            return runs
        for start, stop in self._feed.pull(rest):
            runs.append(self._add(start, stop - start, None))
        self._stored.extend(self._feed.settled())
        self._outer_done = self._feed.exhausted
        return runs

    def settled(self) -> list[Batch]:
        """Outcomes the call's feed found stored (in the call's positions, marked ``stored``)."""
        found, self._stored = self._stored, []
        return found

    def wait(self, timeout: Optional[float] = None) -> None:
        """Until tasks may be read again: a run falls due, or the call's live source has more."""
        with self._lock:
            if self._due:
                return
            soon = self._later[0].due - time.monotonic() if self._later else None
        if soon is not None and (timeout is None or soon < timeout):
            timeout = max(0.0, soon)
        self._waker.wait(timeout)

    def release(self, start: int, stop: int) -> None:
        """Runs are let go as ``settle`` hands them on; nothing to do here."""

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: Union[int, slice]) -> Any:
        if not isinstance(index, slice):
            first = self._block_of(index)
            start, _, again = self._runs_held[first]
            return again.task if again is not None else self.outer[start + index - first]
        begin, end, _ = index.indices(self.read)
        found: list[Any] = []
        run = begin
        while run < end:
            first = self._block_of(run)
            start, count, again = self._runs_held[first]
            stop = min(end, first + count)
            if again is not None:
                found.append(again.task)
            elif run == begin and stop == end:  # within one block: the tasks' own slice (a range's)
                return self.outer[start + run - first : start + stop - first]
            else:
                found.extend(self.outer[start + run - first : start + stop - first])
            run = stop
        return found

    def _add(self, start: int, count: int, again: Optional[_Again]) -> tuple[int, int]:
        first = self.read
        self._starts.append(first)
        self._runs_held[first] = (start, count, again)
        self._left[first] = count
        self._unsettled += count
        self.read = first + count
        return first, self.read

    def _block_of(self, run: int) -> int:
        index = bisect.bisect_right(self._starts, run) - 1
        if index < 0 or run >= self.read:
            raise IndexError(f"run {run} is not held")
        return self._starts[index]

    def runs_of(self, positions: set[int]) -> set[int]:
        """The runs held of the tasks at ``positions`` (to stop them). A task waiting to run
        again is made due now, its run to be stopped as soon as it is read."""
        if not positions:
            return set()
        runs: set[int] = set()
        for first in list(self._starts):
            start, count, again = self._runs_held[first]
            if again is not None:
                if again.position in positions:
                    runs.add(first)
                continue
            runs.update(first + spot - start for spot in positions if start <= spot < start + count)
        with self._lock:
            waiting = [again for again in self._later if again.position in positions]
            if waiting:
                self._later = [again for again in self._later if again.position not in positions]
                heapq.heapify(self._later)
                self._due.extendleft(waiting)
            self._stopping.update(again.position for again in [*waiting, *self._due]
                                  if again.position in positions)
        if waiting:
            self._waker.poke()
        return runs

    def stops(self, stops: Optional[Stops]) -> Optional[Stops]:
        """``stops`` as the backend must read them: of runs, not tasks."""
        if stops is None:
            return None
        self._stops = RunStops(stops, self)
        return self._stops

    # --- the stream's side -------------------------------------------------------------

    def settle(self, batch: Batch, record: Recording) -> Iterator[tuple[Batch, bool]]:
        """``batch`` (of runs) as batches of the call's positions, each with whether it is final
        (else its task runs again: show what it printed, but hand nothing on). Every run goes
        into ``record``, with its attempt counted from the task's first run."""
        if batch.stored:  # found in the store: the call's positions already
            record.add(batch)
            yield batch, True
            return
        run, end = batch.start, batch.start + len(batch.values)
        while run < end:
            first = self._block_of(run)
            start, count, again = self._runs_held[first]
            stop = min(end, first + count)
            part = _cut(batch, run - batch.start, stop - batch.start, run)
            part.attempt = batch.attempt + (again.before if again is not None else 0)
            record.add(part)
            part.start = start + run - first  # from here on, in the call's positions
            part.tries = again.tries + 1 if again is not None else 1
            yield from self._kept_back(part, again)
            left = self._left[first] = self._left[first] - (stop - run)
            if not left and self._feed is not None:  # map keeps every run, for its timeline
                del self._runs_held[first], self._left[first]
                self._starts.remove(first)
            self._unsettled -= stop - run
            run = stop
        if self.exhausted:  # readers waiting for runs that may still fail learn there are none
            self._waker.poke()

    def _kept_back(self, part: Batch, again: Optional[_Again]) -> Iterator[tuple[Batch, bool]]:
        """``part``, split around the failures that run again, which are scheduled."""
        tries, wants, values = part.tries, self.policy.wants, part.values
        retried = [offset for offset in sorted(part.failed) if wants(values[offset], tries)]
        if self._failure is not None:
            found = self._failure
            retried = sorted({*retried, *(offset for offset, value in enumerate(values)
                                          if offset not in part.failed and wants(found(value), tries))})
        if not retried:
            yield part, True
            return
        before = part.attempt
        done = 0
        for offset in [*retried, len(part.values)]:
            if offset > done:
                yield _cut(part, done, offset, part.start + done), True
            if offset < len(part.values):
                position = part.start + offset
                task = again.task if again is not None else self.outer[position]
                self._schedule(task, position, tries, before)
                yield _cut(part, offset, offset + 1, position), False
            done = offset + 1

    def _schedule(self, task: Any, position: int, tries: int, before: int) -> None:
        delay = self.policy.delay(tries, self._rng)
        logger.debug("a task failed on run %d of at most %d; running it again%s", tries,
                     self.policy.retries + 1, f" in {delay:.2f} s" if delay else "")
        again = _Again(time.monotonic() + delay, next(self._order), task, position, tries, before)
        with self._lock:
            if not delay:
                self._due.append(again)
                return
            heapq.heappush(self._later, again)
            if self._timer is None:
                self._timer = threading.Thread(target=self._wake_when_due, name="ezpool-retries", daemon=True)
                self._timer.start()
            self._cond.notify()

    def _wake_when_due(self) -> None:
        """The call's timer: moves runs to the front as they fall due, and wakes the backend."""
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                moved = False
                while self._later and self._later[0].due <= now:
                    self._due.append(heapq.heappop(self._later))
                    moved = True
                if not moved:
                    self._cond.wait(self._later[0].due - now if self._later else None)
                    continue
            self._waker.poke()

    def close(self) -> None:
        """The stream ended: forget what waits to run again, and stop the timer."""
        with self._lock:
            self._closed = True
            self._due.clear()
            self._later.clear()
            self._cond.notify()


class RunStops(Stops):
    """A call's ``Stops`` as its backend reads them when it runs a ``RetryFeed``: each task
    asked to stop becomes the runs of it (``RetryFeed.runs_of``)."""

    def __init__(self, stops: Stops, feed: RetryFeed) -> None:
        super().__init__()
        self._asked = stops
        self._feed = feed
        self._runs: set[int] = set()  # runs found to stop as they were read

    def stop(self, positions: Iterable[int]) -> None:
        self._asked.stop(positions)

    def stop_all(self) -> None:
        self._asked.stop_all()

    @property
    def everything(self) -> bool:
        return self._asked.everything

    @property
    def asked(self) -> bool:
        return self._asked.asked or bool(self._runs)

    def take(self) -> tuple[set[int], bool]:
        positions, everything = self._asked.take()
        runs = self._feed.runs_of(positions)
        with self._lock:
            runs |= self._runs
            self._runs = set()
        return runs, everything

    def later(self, run: int) -> None:
        """Stop ``run`` too (read by the backend, which asks next time it looks)."""
        with self._lock:
            self._runs.add(run)

    def add_waker(self, wake: Callable[[], object]) -> None:
        self._asked.add_waker(wake)

    def remove_waker(self, wake: Callable[[], object]) -> None:
        self._asked.remove_waker(wake)


def _cut(batch: Batch, begin: int, end: int, start: int) -> Batch:
    """Offsets ``begin .. end - 1`` of ``batch``, as a batch starting at position ``start``."""
    if begin == 0 and end == len(batch.values):
        part = Batch(start, batch.values, batch.elapsed, batch.failed, batch.worker, batch.outputs)
    else:
        outputs = None
        if batch.outputs:
            outputs = {spot - begin: text for spot, text in batch.outputs.items() if begin <= spot < end}
        failed = {offset - begin for offset in batch.failed if begin <= offset < end}
        part = Batch(start, batch.values[begin:end], batch.elapsed[begin:end], failed, batch.worker, outputs)
    origin = batch.origin if batch.origin is not None else getattr(batch.elapsed, "origin", None)
    part.origin = origin + sum(batch.elapsed[:begin]) if origin is not None and begin else origin
    part.attempt = batch.attempt
    part.tries = batch.tries
    return part
