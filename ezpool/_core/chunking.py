"""How tasks are cut into pieces and pieces grouped into chunks for a worker.

Tasks are pickled up front in *pieces* whose size shrinks as the run goes on
(each takes a fixed share of what remains), so a run can end on single tasks and
no core idles while another finishes a long chunk. When a worker asks for work it
gets one *chunk*: consecutive pieces adding up to about ``TARGET_SECONDS`` of work,
judged from the run times measured so far, and never more than its share of
what is left. Tiny tasks thus travel by the thousand, slow ones one by one.

A chunk is also kept to about ``REPLY_BYTES`` of answer, judged from the sizes of
the replies seen so far (when the backend reports them): the caller gets nothing
of a chunk until all of it is done and sent, so tasks returning a megabyte each
travel one or two at a time, and their results stream back while the next ones
run. A piece that would answer with more than that is cut when it is taken.
"""

from __future__ import annotations

import collections
import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Optional

from .feed import Feed
from .logs import get_logger
from .records import Batch, GroupTimes
from .serialization import Pickled, dumps_tasks
from .unsendable import pickle_piece

logger = get_logger(__name__)

__all__ = [
    "plan_pieces",
    "least_piece",
    "ChunkSizer",
    "Chunk",
    "ChunkQueue",
    "Prior",
    "Priors",
    "TARGET_SECONDS",
    "REPLY_BYTES",
]

#: About how long one chunk should keep a worker busy.
TARGET_SECONDS = 0.01

#: Each piece is 1 / (PIECES_PER_WORKER * workers) of the tasks that remain.
PIECES_PER_WORKER = 16

#: Most tasks in one chunk when nothing else limits it (tasks that take no time).
_MOST = 1 << 20

#: Chunks are made at least this many times longer than what one costs beyond its
#: tasks (when the backend measures its round trips), up to ``LONGEST_TARGET`` seconds.
OVERHEAD_SHARE = 10
LONGEST_TARGET = 0.25

#: A large call never cuts a chunk below this much measured work for a fair share:
#: the round trip it would save another worker costs more.
LEAST_SECONDS = 0.001

#: A small call's fair shares are halved when at most this many chunks are in flight.
HALVED_UP_TO = 16

#: Calls of at least this many tasks a worker never cut pieces or chunks below
#: their first piece (see ``least_piece``).
_LEAST_FROM = 256

#: About the most bytes one reply should carry. Moving a megabyte through a pipe
#: takes about ten times what a round trip costs beyond its data, so smaller
#: replies gain little, and larger ones hold results back.
REPLY_BYTES = 1 << 20

#: Functions whose measured run times a backend keeps for their next call.
KEPT_PRIORS = 32

#: Run times the sizer sums at most, from one reply (evenly spaced).
_SAMPLED = 1024


def least_piece(count: int, workers: int) -> int:
    """The fewest tasks a piece or a fair-share chunk of a call of ``count`` tasks holds.

    One for calls of fewer than ``_LEAST_FROM`` tasks a worker, so that the few
    tasks of a small call, whose last ones may be by far the longest (``fib``
    over ``range(32)``), end one by one. A large call keeps every piece at
    ``1 / (16 * workers)`` of its tasks: each round trip to a worker costs the
    calling process about as much as a few hundred tiny tasks, so a thousand
    tiny tasks cut down to single ones cost 3-5 times their work in round trips.
    """
    if count < _LEAST_FROM * workers:
        return 1
    return count // (PIECES_PER_WORKER * workers)


def plan_pieces(
    count: int, workers: int, chunksize: Optional[int] = None, least: int = 1
) -> list[tuple[int, int]]:
    """Cut positions ``0 .. count - 1`` into ``(start, stop)`` pieces.

    With ``chunksize`` the pieces are that size; otherwise they shrink from
    ``count / (16 * workers)`` down to ``least`` tasks.
    """
    return _Plan(count, workers, chunksize, least).rest()


class _Plan:
    """The pieces of ``plan_pieces``, cut one at a time as they are taken.

    A range of tasks needs nothing pickled up front, so its pieces are never all
    made: 2,560 tasks over 128 workers are ~2,300 pieces, whose making cost the
    start of every call ~4 ms.
    """

    __slots__ = ("next", "_count", "_chunksize", "_least", "_parts")

    def __init__(self, count: int, workers: int, chunksize: Optional[int], least: int) -> None:
        self.next = 0  # the start of the next piece
        self._count = count
        self._chunksize = chunksize
        self._least = least
        self._parts = PIECES_PER_WORKER * workers

    def __bool__(self) -> bool:
        return self.next < self._count

    def _stop(self, start: int) -> int:
        size = self._chunksize or max(self._least, -(-(self._count - start) // self._parts))
        return min(self._count, start + max(1, size))

    def pop(self) -> tuple[int, int]:
        """The next piece."""
        start = self.next
        self.next = self._stop(start)
        return start, self.next

    def rest(self) -> list[tuple[int, int]]:
        """Every piece not yet taken."""
        pieces = []
        while self:
            pieces.append(self.pop())
        return pieces

    def join(self, bound: int) -> int:
        """Take the whole pieces that end at or before ``bound``; where they end."""
        while self.next < self._count:
            stop = self._stop(self.next)
            if stop > bound:
                break
            self.next = stop
        return self.next


class Prior(NamedTuple):
    """What a sizer measured in an earlier call of the same function: seconds a task,
    and bytes of reply a task (``None``: not measured)."""

    seconds: float
    reply_bytes: Optional[float]


class Priors:
    """The ``Prior`` of each function a backend ran lately, by its id (at most ``KEPT_PRIORS``).

    A call of a function run before starts from what its last call measured, as Dask
    starts a task from the mean duration of its kind: its first chunks are sized at
    once, with no round of single-task probes while nothing is known.
    """

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[str, Prior] = collections.OrderedDict()

    def get(self, key: str) -> Optional[Prior]:
        return self._kept.get(key)

    def keep(self, key: str, sizer: ChunkSizer) -> None:
        prior = sizer.prior()
        if prior is None:
            return
        self._kept[key] = prior
        self._kept.move_to_end(key)
        while len(self._kept) > KEPT_PRIORS:
            self._kept.popitem(last=False)


class ChunkSizer:
    """Decides how many tasks the next chunk may hold, from the run times seen so far."""

    def __init__(
        self, slots: int, target: float = TARGET_SECONDS, least: int = 1, prior: Optional[Prior] = None
    ) -> None:
        self._slots = slots  # chunks in flight at once: workers x chunks each holds
        self._base = self._target = target
        self._cost: Optional[float] = None  # what a chunk costs beyond its tasks, smoothed
        self._least = max(1, least)  # fewest tasks in a chunk cut for a fair share
        self._tasks = 0
        self._seconds = 0.0
        self._answered = 0  # tasks whose replies were measured in bytes
        self._bytes = 0.0
        self._round = 0  # fair shares left in the current round (over many slots, see ``limit``)
        self._share = 0  # the fair share of the current round
        if prior is not None:
            self.seed(prior)

    def seed(self, prior: Prior) -> None:
        """Start from what an earlier call measured, before anything is measured here.
        It weighs as one task for every chunk in flight: the first replies outweigh it."""
        if self._tasks:
            return
        self._tasks = self._slots
        self._seconds = self._slots * prior.seconds
        if prior.reply_bytes is not None:
            self._answered, self._bytes = self._slots, self._slots * prior.reply_bytes

    def prior(self) -> Optional[Prior]:
        """What was measured, for the next call of the same function (``None``: nothing)."""
        if not self._tasks:
            return None
        per_reply = self._bytes / self._answered if self._answered else None
        return Prior(self._seconds / self._tasks, per_reply)

    def record(
        self, times: Sequence[float], trip: Optional[float] = None, reply_bytes: Optional[int] = None
    ) -> float:
        """Learn from the measured run times of finished tasks, from ``trip``, the
        seconds from sending their chunk to having its answer, and from
        ``reply_bytes``, the size of that answer, when they are known.

        Of a long run of times, every ``len(times) // _SAMPLED``-th is summed: the
        mean is all the sizer needs, and summing a million floats costs the calling
        process more than a whole chunk of tiny tasks costs a worker.

        What a trip took beyond its tasks is the cost of a chunk (sending,
        unpickling, answering); chunks are then made long enough that this cost
        is at most ``1 / OVERHEAD_SHARE`` of their work, up to ``LONGEST_TARGET``
        (never below the target the sizer was made with). Returns the seconds the
        tasks took together (estimated from the sample for a long run).
        """
        count = len(times)
        step = count // _SAMPLED
        if isinstance(times, GroupTimes):
            seconds = times.total()
        elif step > 1:
            sample = times[::step]
            seconds = sum(sample) * count / len(sample)
        else:
            seconds = sum(times)
        self._seconds += seconds
        self._tasks += count
        if reply_bytes is not None:
            self._bytes += reply_bytes
            self._answered += count
        if trip is not None:
            cost = max(0.0, trip - seconds)
            self._cost = cost if self._cost is None else (self._cost + cost) / 2
            self._target = max(self._base, min(LONGEST_TARGET, OVERHEAD_SHARE * self._cost))
        return seconds

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def mean(self) -> Optional[float]:
        """The mean measured run time of a task so far (``None`` before any was measured)."""
        return self._seconds / self._tasks if self._tasks else None

    def by_bytes(self) -> int:
        """Most tasks whose replies add up to about ``REPLY_BYTES``, at the mean size
        measured so far (``_MOST`` before any reply was measured)."""
        if not self._bytes:
            return _MOST
        return max(1, min(_MOST, int(REPLY_BYTES * self._answered / self._bytes)))

    def limit(self, remaining: float) -> int:
        """Most tasks the next chunk should hold when ``remaining`` tasks are left
        (``math.inf`` while more tasks may still be read). Each call with a finite
        ``remaining`` is one chunk taken.

        Before anything was measured, a chunk is a single piece (the limit is 1).
        """
        if not self._tasks:
            return 1
        mean = self._seconds / self._tasks
        if mean <= 0:  # instant tasks: all that is left may go at once
            return int(remaining) if remaining != math.inf else _MOST
        fair_share = _MOST
        if remaining != math.inf:
            least = self._least
            if least > 1:  # a large call: no chunk cut below LEAST_SECONDS of measured work
                least = max(least, int(LEAST_SECONDS / mean))
            if self._least == 1 and self._slots <= HALVED_UP_TO:
                # A share of what is left for every chunk in flight, halved: a small call
                # on a few workers may have a tail far longer than its measured head.
                fair_share = min(int(remaining), max(math.ceil(remaining / (2 * self._slots)), least))
            else:
                # Over many, what is left goes out in rounds of one equal share a slot
                # (as "factoring" schedulers do). A share recomputed at every chunk would
                # shrink through the round, and those who took late would need another
                # round, each chunk of it paid by the one caller they all answer to.
                if self._round <= 0 or self._share > remaining:
                    self._round, self._share = self._slots, max(math.ceil(remaining / self._slots), least)
                self._round -= 1
                fair_share = min(int(remaining), self._share)
        return max(1, min(int(self._target / mean), fair_share, self.by_bytes(), _MOST))


class Chunk(NamedTuple):
    """Tasks ``start .. stop - 1`` of a call, pickled in one or more payloads (none
    while a piece waits to be pickled when taken)."""

    start: int
    stop: int
    payloads: tuple[Pickled, ...]
    alone: bool  # a suspect retried on its own, never joined with its neighbours


class ChunkQueue:
    """The tasks of a call that wait to be sent, pickled in pieces, joined on the way out.

    For ``map`` every task is pickled before the first one runs. For ``imap`` the
    tasks come from a ``Feed``: the backend calls ``refill`` (in the caller's
    thread) and pieces are read and pickled as the workers need them, sized by the
    run times measured so far. A task that cannot be pickled is never sent: it ends
    as a ``TaskNotSerializable``, a batch ``refill`` returns (``ezpool._core.unsendable``),
    so that no chunk ever holds it. Both the parallel and the
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
        target: float = TARGET_SECONDS,
        prior: Optional[Prior] = None,
    ) -> None:
        self._tasks = tasks
        self._fixed = chunksize is not None
        self._chunksize = chunksize
        least = 1 if isinstance(tasks, Feed) else least_piece(len(tasks), workers)
        self.sizer = ChunkSizer(workers * depth, target, least=least, prior=prior)
        self._pending: deque[Chunk] = deque()
        self._plan: Optional[_Plan] = None  # pieces not yet cut, after those pending (a range's)
        self._undispatched = 0
        self._unsent: list[Batch] = []  # tasks that cannot be pickled, ended, not yet reported
        self.feed: Optional[Feed] = tasks if isinstance(tasks, Feed) else None
        # A slice of a range cannot fail to pickle, and pickles as three numbers whatever
        # its length: it is pickled once a chunk is taken, whole (see ``take``).
        self._range = isinstance(tasks, range)
        if self.feed is not None:
            self._split = False  # pieces are cut to the measured size as they are read
            return
        # Whether a piece longer than the sizer's limit is cut: a worker's first chunk
        # is then one task, and slow tasks never travel by the hundred.
        self._split = split and not self._fixed
        plan = _Plan(len(tasks), workers, chunksize, least)
        if self._split and plan and prior is None:
            # While nothing is known, each worker's first chunk is one task: cut those off
            # the first piece now, rather than pickle it whole, cut it and pickle it again.
            start, stop = plan.pop()
            probes = [(n, n + 1) for n in range(start, min(stop - 1, start + workers))]
            self._add([*probes, (probes[-1][1] if probes else start, stop)])
        if self._range:  # nothing to pickle now: the rest is cut as it is taken
            self._plan = plan
        else:
            self._add(plan.rest())
        self._undispatched = len(tasks) - len(self._unsent)

    def _add(self, pieces: list[tuple[int, int]]) -> None:
        """Queue ``pieces``, pickled now unless the tasks are a range (see ``take``)."""
        for start, stop in pieces:
            if self._range:
                self._pending.append(Chunk(start, stop, (), False))
            else:
                self._pickle(start, self._tasks[start:stop])

    def _pickle(self, start: int, tasks: Sequence[Any]) -> int:
        """Queue ``tasks`` (from position ``start``) pickled, but for those that cannot be
        (ended in ``_unsent``); how many of them were queued."""
        pieces, unsent = pickle_piece(tasks, start)
        self._pending.extend(Chunk(first, stop, (payload,), False) for first, stop, payload in pieces)
        self._unsent.extend(unsent)
        return len(tasks) - len(unsent)

    def __bool__(self) -> bool:
        return bool(self._pending) or bool(self._plan)

    @property
    def waiting(self) -> int:
        """How many of the tasks read so far wait to be sent."""
        return self._undispatched

    @property
    def exhausted(self) -> bool:
        """Whether every task has been read (always, for a list of tasks)."""
        return self.feed is None or self.feed.exhausted

    def refill(self) -> list[Batch]:
        """Read and pickle as many tasks from the feed as the workers can use soon.

        Returns the outcomes that were known without running (found in a store, or
        tasks that cannot be pickled), for the backend to report. Raises whatever the
        iterable of tasks raises.
        """
        feed = self.feed
        if feed is None:
            return self.unsent()
        slots = self.sizer.slots
        piece = self._chunksize or min(self.sizer.limit(math.inf), max(1, feed.limit // (2 * slots)))
        wanted = 2 * slots * piece - self._undispatched
        while wanted > 0 and not feed.exhausted and feed.room():
            runs = feed.pull(min(wanted, piece * slots))
            for start, stop in runs:
                size = piece
                if feed.trickles and not self._fixed:  # what came in is shared by every worker
                    size = min(piece, math.ceil((stop - start) / slots))
                for first in range(start, stop, size):
                    last = min(stop, first + size)
                    self._undispatched += self._pickle(first, feed[first:last])
                    wanted -= last - first
            if not runs:
                break  # all it read was settled already, or there is no room left
        return [*self.unsent(), *feed.settled()] if self._unsent else feed.settled()

    def unsent(self) -> list[Batch]:
        """The tasks that could not be pickled since the last look, ended (never sent)."""
        unsent, self._unsent = self._unsent, []
        return unsent

    def take(self) -> Chunk:
        """The next chunk: consecutive pieces adding up to about the right amount of work."""
        first = self._next_piece()
        # A live source (an executor's) may have little waiting now: share it out, not
        # chunk it all for one worker.
        live = self.feed is not None and self.feed.trickles
        # Nor when the feed may read no more now (it holds all it may): what waits is all
        # there is to share out until outcomes are handed on.
        full = self.feed is not None and not self.feed.room()
        remaining = self._undispatched if self.exhausted or live or full else math.inf
        limit = self.sizer.limit(remaining) if not self._fixed else 0
        # Any backend's piece is cut when its answer would be too big to wait for whole.
        most = limit if self._split else self.sizer.by_bytes() if not self._fixed else _MOST
        if first.stop - first.start > most:
            cut = first.start + most
            self._pending.appendleft(Chunk(cut, first.stop, (), first.alone))
            first = Chunk(first.start, cut, (), first.alone)
        pieces, stop = [first], first.stop
        if not first.alone and not self._fixed:
            pending = self._pending
            while pending and not pending[0].alone and pending[0].start == stop:
                if pending[0].stop - first.start > limit:
                    break
                pieces.append(pending.popleft())
                stop = pieces[-1].stop
            if not pending and self._plan is not None and self._plan.next == stop:
                stop = self._plan.join(first.start + limit)  # a range's: nothing to join but positions
        self._undispatched -= stop - first.start
        if self._range:  # one slice: the worker runs a range as it is (see execution.run_chunk)
            payloads: tuple[Pickled, ...] = (dumps_tasks(self._tasks[first.start : stop]),)
        else:
            payloads = tuple(payload for piece in pieces for payload in self._pickled(piece))
        return Chunk(first.start, stop, payloads, first.alone)

    def _next_piece(self) -> Chunk:
        """The first piece pending, else the next of the plan (a range's, cut as taken)."""
        if self._pending:
            return self._pending.popleft()
        assert self._plan is not None
        start, stop = self._plan.pop()
        return Chunk(start, stop, (), False)

    def _pickled(self, piece: Chunk) -> tuple[Pickled, ...]:
        """The payloads of a piece, pickled now if it was cut off by an earlier split."""
        return piece.payloads or (dumps_tasks(self._tasks[piece.start : piece.stop]),)

    def put_back(self, start: int, stop: int, alone: bool = False) -> None:
        """Send tasks ``start .. stop - 1`` again, ahead of everything else."""
        if start < stop:
            payload = dumps_tasks(self._tasks[start:stop])
            self._pending.appendleft(Chunk(start, stop, (payload,), alone))
            self._undispatched += stop - start

    def drain(self) -> Iterator[Chunk]:
        """Take every chunk left, as it is (for tasks that will not be sent at all)."""
        while self:
            chunk = self._next_piece()
            self._undispatched -= chunk.stop - chunk.start
            yield chunk
