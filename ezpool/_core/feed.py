"""Tasks read lazily, for ``imap``: numbered as they are read, held only while in flight.

A ``Feed`` stands where ``map`` has a list of distinct tasks. Backends read from it
through ``ChunkQueue.refill`` (in the caller's thread, never in a helper thread, so
a generator of tasks runs where it was written), as much as their workers can use
soon. A task stays held from the moment it is read until the ``Pool`` has handed its
outcome on and calls ``release``; no more than ``limit`` are held at once, so any
number of tasks streams through in bounded memory.

Tasks whose outcome is already known when they are read (found in a store) are not
sent anywhere: they become *settled* batches, which the backend reports like any other.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable, Optional, Union, overload

from .logs import get_logger
from .records import Batch

logger = get_logger(__name__)

__all__ = ["Admit", "Feed", "Live", "Lookup", "stored_batches"]

#: Given tasks just read, the outcomes already known for some of them, by index:
#: ``{index: (value, elapsed, worker, failed)}``.
Lookup = Callable[[Sequence[Any]], dict[int, Any]]


#: Longest wait of ``Live.put`` for a waiting reader to take what it put.
_HANDOFF = 0.005

#: A reader that took no task for this long is idle: ``Live.put`` hands work to it.
_IDLE = 0.001

#: Turns the entry at the head of a ``Live`` source into the next task to run (``None``:
#: nothing to run from it now) and whether the entry is spent (leaves the source). An
#: entry that gives no task must be spent.
Admit = Callable[[Any], tuple[Any, bool]]


class Live:
    """A source of tasks that grows while a stream runs: what an executor submits.

    ``put`` adds entries from any thread and wakes the stream's backend; ``take``
    hands out tasks made from the entries waiting, by ``admit`` (by default an entry
    is a task), which may also skip one (a cancelled future's) or cut several tasks
    from one (a slice at a time of a long ``map``). The stream ends once ``close``
    was called and nothing waits.
    """

    def __init__(self, admit: Optional[Admit] = None) -> None:
        self._waiting: deque[Any] = deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # for wait: entries came, or the close
        self._admit = admit
        self._wakers: list[Callable[[], bool]] = []
        self.reading = threading.Event()  # set once a stream reads (or waits for) tasks
        self._readers = 0  # threads in wait()
        self._reader: Optional[int] = None  # the thread that last read
        self._fed = 0.0  # when it last took tasks (time.monotonic)
        self._givers = 0  # threads in put() waiting for a reader to take what they put
        self._poked = False  # poke() was called since the last wait()
        self.closed = False

    def put(self, entries: Iterable[Any]) -> None:
        """Add entries at the back; refused once the source is closed.

        If the stream's thread was idle, waiting for them, this waits (a moment at most)
        until it has taken them: work given to an idle executor then starts at once, as
        with a pool of threads, rather than after the giver's next puts. (Not while
        it is busy taking work, nor when it puts itself, e.g. from a done-callback.)
        """
        with self._cond:
            if self.closed:
                raise RuntimeError("this source of tasks is closed")
            woke = self._add(entries, self._waiting.extend)
            if woke and threading.get_ident() != self._reader and time.monotonic() - self._fed > _IDLE:
                self._givers += 1
                try:
                    self._cond.wait_for(lambda: not self._waiting or self.closed, _HANDOFF)
                finally:
                    self._givers -= 1

    def requeue(self, entries: Sequence[Any]) -> None:
        """Put entries back at the front, closed or not: work taken once and not done."""
        with self._lock:
            self._add(reversed(entries), self._waiting.extendleft)

    def _add(self, entries: Iterable[Any], add: Callable[[Iterable[Any]], None]) -> bool:
        """Add entries; whether a reader waiting for them was woken."""
        idle = not self._waiting  # else the reader was woken already and has not read yet
        add(entries)
        return self._wake() if idle else False

    def poke(self) -> None:
        """Wake the reader, as new entries would, though nothing was put here: work came from
        elsewhere (a task to run again, now due). A ``wait`` that begins after this returns at once."""
        with self._lock:
            self._poked = True
            self._wake()

    def close(self) -> None:
        """Take no more entries; those already waiting are still handed out."""
        with self._lock:
            self.closed = True
            self._wake()

    def _wake(self) -> bool:
        self._cond.notify_all()
        woke = self._readers > 0
        for wake in self._wakers:
            woke = wake() or woke
        return woke

    def drain(self) -> list[Any]:
        """Remove and return every entry still waiting (they will not run)."""
        with self._lock:
            left, self._waiting = list(self._waiting), deque()
        return left

    def take(self, count: int) -> list[Any]:
        """Up to ``count`` tasks from the entries waiting, at once, without waiting for more."""
        taken: list[Any] = []
        if not self.reading.is_set():
            self.reading.set()
        self._reader = threading.get_ident()
        with self._lock:
            waiting, admit = self._waiting, self._admit
            if admit is None:
                while waiting and len(taken) < count:
                    taken.append(waiting.popleft())
                return taken
            while waiting and len(taken) < count:
                task, spent = admit(waiting[0])
                if spent:
                    waiting.popleft()
                if task is not None:
                    taken.append(task)
            if taken:
                self._fed = time.monotonic()
            if self._givers and not waiting:
                self._cond.notify_all()
        return taken

    @property
    def waiting(self) -> bool:
        """Whether any entry waits."""
        return bool(self._waiting)

    @property
    def done(self) -> bool:
        """Closed, and nothing is waiting: no task will ever come again."""
        with self._lock:
            return self.closed and not self._waiting

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until an entry waits, the source is closed, or ``timeout`` passes."""
        if not self.reading.is_set():
            self.reading.set()
        with self._cond:
            if not self._waiting and not self.closed and not self._poked:
                self._readers += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    self._readers -= 1
            self._poked = False

    def add_waker(self, wake: Callable[[], bool]) -> None:
        """Call ``wake`` (with the source's lock held: it must not block) whenever entries
        arrive or the source closes; it says whether it woke a reader waiting for tasks."""
        with self._lock:
            self._wakers.append(wake)

    def remove_waker(self, wake: Callable[[], bool]) -> None:
        with self._lock:
            if wake in self._wakers:
                self._wakers.remove(wake)


class Feed(Sequence[Any]):
    """An iterable of tasks read on demand; ``feed[position]`` while the task is held.

    It is a ``Sequence`` of the tasks read so far, for the code that indexes tasks
    by position, but only the held ones can be looked at. Tasks are kept in the
    blocks they were read in, and a block is let go when every one of its tasks has
    been released, so slices (what the backends pickle and the pool hands on) are
    list slices, not one lookup per task. A ``range`` is read in ``range`` slices,
    which travel to workers as three numbers.
    """

    def __init__(
        self, tasks: Union[Iterable[Any], Live], limit: int, lookup: Optional[Lookup] = None
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit!r}")
        self._range = tasks if type(tasks) is range else None
        self.live = tasks if isinstance(tasks, Live) else None
        self._source: Iterator[Any] = iter(()) if isinstance(tasks, Live) else iter(tasks)
        self._starts: list[int] = []  # first positions of the blocks held, ascending
        self._blocks: dict[int, Sequence[Any]] = {}  # first position -> the tasks read together
        self._unreleased: dict[int, int] = {}  # first position -> how many are not released yet
        self._held = 0  # tasks in the blocks held
        self._lookup = lookup
        self._settled: list[Batch] = []
        self.limit = limit
        self.read = 0  # the position the next task read will get
        self.exhausted = False

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: Union[int, slice]) -> Any:
        if isinstance(index, slice):
            start, stop, _ = index.indices(self.read)
            if start >= stop:
                return []
            first = self._block_of(start)
            block = self._blocks[first]
            found = block[start - first : stop - first]
            if first + len(block) < stop:  # it runs on into the next blocks
                found = list(found)
                while first + len(block) < stop:
                    first += len(block)
                    block = self._blocks[first]
                    found.extend(block[: stop - first])
            return found
        first = self._block_of(index)
        return self._blocks[first][index - first]

    @property
    def trickles(self) -> bool:
        """Whether tasks come a few at a time, as they are submitted (an executor's), so that
        what came in is shared out rather than chunked for one worker."""
        return self.live is not None

    def __len__(self) -> int:
        """Tasks read so far (positions ``0 .. len - 1``; only the held ones can be looked at)."""
        return self.read

    @property
    def held(self) -> int:
        """Tasks read and not yet let go."""
        return self._held

    def room(self) -> int:
        """How many more tasks may be read now."""
        return max(0, self.limit - self._held)

    def pull(self, count: int) -> list[tuple[int, int]]:
        """Read up to ``count`` tasks; the ``(start, stop)`` runs of those to compute.

        Stops early when the tasks run out (``exhausted`` is then true) or when no
        room is left. Whatever the user's iterable raises goes to the caller; the
        tasks read before it are kept.
        """
        count = min(count, self.room())
        if count <= 0 or self.exhausted:
            return []
        first = self.read
        if self.live is not None:
            block: Sequence[Any] = self.live.take(count)
            self.exhausted = not block and self.live.done
        elif self._range is not None:
            block = self._range[first : first + count]
            self.exhausted = len(block) < count
        else:
            block = list(itertools.islice(self._source, count))
            self.exhausted = len(block) < count
        if not block:
            return []
        self._starts.append(first)
        self._blocks[first] = block
        self._unreleased[first] = len(block)
        self._held += len(block)
        self.read = first + len(block)
        known = self._lookup(block) if self._lookup is not None else {}
        if not known:
            return [(first, self.read)]
        self._settled.extend(stored_batches({first + index: found for index, found in known.items()}))
        runs: list[tuple[int, int]] = []
        for index in range(len(block)):
            position = first + index
            if index in known:
                continue
            if runs and runs[-1][1] == position:
                runs[-1] = (runs[-1][0], position + 1)
            else:
                runs.append((position, position + 1))
        return runs

    def wait(self, timeout: Optional[float] = None) -> None:
        """For a live source with nothing to read: block until tasks arrive (or it closes)."""
        if self.live is not None:
            self.live.wait(timeout)

    def settled(self) -> list[Batch]:
        """Outcomes known when their tasks were read, not yet reported; each is returned once."""
        found, self._settled = self._settled, []
        return found

    def release(self, start: int, stop: int) -> None:
        """The outcomes of tasks ``start .. stop - 1`` were handed on: let the tasks go."""
        while start < stop:
            first = self._block_of(start)
            end = min(stop, first + len(self._blocks[first]))
            left = self._unreleased[first] = self._unreleased[first] - (end - start)
            if left == 0:
                self._held -= len(self._blocks.pop(first))
                del self._unreleased[first]
                self._starts.remove(first)
            start = end

    def _block_of(self, position: int) -> int:
        starts = self._starts
        index = bisect.bisect_right(starts, position) - 1
        if index < 0 or position >= self.read:
            raise IndexError(f"task {position} is not held")
        return starts[index]


def stored_batches(known: dict[int, Any]) -> Iterator[Batch]:
    """Stored outcomes ``{position: (value, elapsed, worker, failed)}`` as batches: one per
    run of consecutive positions from the same worker."""
    run: list[int] = []
    for position in sorted(known):
        if run and (position != run[-1] + 1 or known[position][2] != known[run[0]][2]):
            yield _stored_run(known, run)
            run = []
        run.append(position)
    if run:
        yield _stored_run(known, run)


def _stored_run(known: dict[int, Any], run: list[int]) -> Batch:
    found = [known[position] for position in run]
    failed = {offset for offset, item in enumerate(found) if item[3]}
    batch = Batch(run[0], [item[0] for item in found], [item[1] for item in found], failed, found[0][2])
    batch.stored = True
    return batch
