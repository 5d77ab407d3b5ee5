"""The fate of every chunk of a call, decided in one place, without I/O.

Both the parallel and the distributed backends hand out chunks to workers (a
process, a connection: a *holder*) and tell the ledger what became of each: the
worker answered, gave it back untouched, was lost with it, timed out on a task,
or answered with bytes that cannot be read here. The ledger keeps no socket,
thread or clock of its own: it is fed events and says what becomes of every task
of the chunk, so it is tested by feeding it events (``tests/test_ledger.py``).

A chunk's life is one table, ``CLAIMS``, in the manner of h11's ``_state.py``:
the state of the claim and what happened to one copy of it give its next state
and the *fate* of its tasks::

    taken ──▶ HELD ──a copy taken (backups)──▶ COPIED
               │                                  │
               │ answered / returned / lost /     │ answered: REPORT, the other copy
               │ timed out / garbled / stopped /  │   is broken off; anything else:
               │ out of memory                    │   DROP, back to HELD (the other
               ▼                                  │   copy decides)
            SETTLED ◀─────────────────────────────┘
               (anything more: DROP)

The events, the states and the table are in ``ezpool._core.fates``. The fates, per task:

``REPORT``
    the answer's outcomes are reported; tasks it did not run (a worker that
    stopped early) go back at no cost.
``REQUEUE``
    nothing is known to have run: the chunk goes back at no cost (a task given
    back ``MAX_RETURNS`` times ends as ``WorkerCrashed``).
``CHARGE``
    its worker died holding it. The worker's *mark* (what it was running, see
    ``ezpool._worker.running.group_mark``) says which task: that one counts an
    attempt, and the others go back at no cost. A mark on a group of tasks (tiny
    ones run together, or every task from the last one a distant worker reported
    to the end of its chunk) sends the group back to run again, counting nothing
    yet: each task marked where marks are read as the worker dies (the parallel
    backend's, in shared memory), else one task per chunk (``marks_at_death``).
    Without a mark every task counts an attempt. A task retried runs on its own;
    after ``max_attempts`` it ends as ``WorkerCrashed``.
``TIME_OUT``
    the marked task ran past its timeout and ends as ``TaskTimeout``; the
    others go back at no cost.
``OUT_OF_MEMORY``
    the marked task took its worker past its memory and ends as
    ``WorkerOutOfMemory`` (never retried as a crash); the others go back at no cost.
``CANCEL``
    tasks were asked to stop (``ezpool._core.stopping``) and their worker was
    killed: those of the chunk asked end as cancelled, the others go back at no cost.
``SPLIT``
    the answer came but cannot be read here: its tasks run again one by one,
    at no cost; a single task ends as ``ResultNotSerializable``.
``DROP``
    another copy decides: nothing happens to the tasks.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Optional, Union

from ..errors import ResultNotSerializable, TaskTimeout, WorkerCrashed
from .chunking import Chunk
from .fates import (
    CLAIMS,
    Answered,
    Event,
    Fate,
    Garbled,
    Happened,
    Held,
    Lost,
    OutOfMemory,
    Piece,
    Returned,
    Settlement,
    Stopped,
    TimedOut,
)
from .logs import get_logger
from .records import Batch

logger = get_logger(__name__)

__all__ = [
    "Answered", "Claim", "CLAIMS", "COPIES", "Event", "Fate", "Garbled", "Happened", "Held", "Ledger",
    "Lost", "MAX_RETURNS", "OutOfMemory", "Piece", "Returned", "Settlement", "Stopped", "TimedOut",
]

#: Times a task may be given back untouched before it counts as crashed.
MAX_RETURNS = 8

#: Most copies of one chunk running at once (the first included; see ``Ledger.late``).
COPIES = 2

#: A chunk may be copied once it has been out this many times its expected run time...
PATIENCE = 2.0

#: ...and at least this many seconds.
FLOOR = 0.2


class Claim:
    """A chunk that workers took, and who runs a copy of it now.

    Attributes:
        chunk: the tasks.
        holders: the holders running a copy now, the first taken first.
        since: when the latest copy was sent (the caller's clock, given to ``take``).
        state: see ``Held``.
    """

    __slots__ = ("chunk", "holders", "since", "state")

    def __init__(self, chunk: Chunk, holder: Hashable, since: float) -> None:
        self.chunk = chunk
        self.holders: list[Any] = [holder]
        self.since = since
        self.state = Held.HELD

    def __repr__(self) -> str:
        return f"Claim({self.chunk.start}..{self.chunk.stop - 1}, {self.state.name}, {self.holders!r})"


class Ledger:
    """Every chunk of one call from the moment a worker takes it until it is settled.

    ``tasks`` are the call's tasks (read only, to name them in errors). A holder is
    any hashable object; ``name(holder)`` is the worker's name that results show.
    ``marks_at_death``: whether a lost holder's mark says what it ran as it died, so
    that a group sent again as one chunk, every task marked, finds its task; if
    not (a distant worker's mark is the last it reported), a group is sent again
    one task per chunk.
    """

    def __init__(
        self,
        tasks: Sequence[Any],
        max_attempts: int,
        name: Any = str,
        max_returns: int = MAX_RETURNS,
        marks_at_death: bool = True,
    ) -> None:
        self.tasks = tasks
        self.max_attempts = max_attempts
        self.max_returns = max_returns
        self.marks_at_death = marks_at_death
        self._name = name
        self.attempts: dict[int, int] = {}  # position -> crashes counted
        # Runs cut by a crash, run again: (position, holder, what, seconds, attempt: 0 for a group).
        self.struck: list[tuple[int, str, str, float, int]] = []
        self.returns: dict[int, int] = {}  # position -> times given back untouched
        self._held: dict[Any, list[Claim]] = {}  # holder -> its claims, in the order taken

    # --- taking ------------------------------------------------------------------------

    def take(self, holder: Hashable, chunk: Chunk, now: float = 0.0) -> Claim:
        """``holder`` takes ``chunk``, behind any it holds."""
        claim = Claim(chunk, holder, now)
        self._held.setdefault(holder, []).append(claim)
        return claim

    def copy(self, holder: Hashable, claim: Claim, now: float = 0.0) -> None:
        """``holder`` runs a backup copy of ``claim``'s chunk too."""
        claim.state, _ = CLAIMS[(claim.state, Happened.COPY)]
        claim.holders.append(holder)
        claim.since = now
        self._held.setdefault(holder, []).append(claim)

    def attempt(self, position: int) -> int:
        return self.attempts.get(position, 0) + 1  # which run of the task the next one is

    def holds(self, holder: Hashable) -> list[Claim]:
        """What ``holder`` holds, in the order it took it."""
        return self._held.get(holder, [])

    def claim(self, holder: Hashable, chunk: Chunk) -> Optional[Claim]:
        """The claim by which ``holder`` holds ``chunk``, if it does."""
        return next((claim for claim in self._held.get(holder, ()) if claim.chunk is chunk), None)

    @property
    def busy(self) -> int:
        """How many holders hold something."""
        return len(self._held)

    def claims(self) -> Iterable[Claim]:
        """Every chunk held, once each."""
        return dict.fromkeys(claim for claims in self._held.values() for claim in claims)

    def superseded(self, holder: Hashable, chunk: Chunk) -> bool:
        """Whether another copy of ``chunk``, which ``holder`` holds, settled it already."""
        claim = self.claim(holder, chunk)
        return claim is not None and claim.state is Held.SETTLED

    def late(self, expected: Optional[float], now: float) -> tuple[Optional[Claim], float]:
        """The chunk an idle worker should copy now, held longest; else ``None`` and the
        seconds until one may be due (``math.inf``: none will be without news).

        A chunk is late once out ``PATIENCE`` times the ``expected`` run time of its
        tasks (the idle worker's own mean, so that a slow worker's times do not delay
        the very copies meant to overtake it), and at least ``FLOOR`` seconds. Nothing
        is copied before a task was measured: until then no chunk can be told late.
        """
        if expected is None:
            return None, math.inf
        best: Optional[Claim] = None
        wait = math.inf
        for claim in self.claims():
            if claim.state is not Held.HELD or len(claim.holders) >= COPIES:
                continue
            due = claim.since + max(FLOOR, PATIENCE * expected * (claim.chunk.stop - claim.chunk.start))
            if due > now:
                wait = min(wait, due - now)
            elif best is None or claim.since < best.since:
                best = claim
        return best, 0.0 if best is not None else wait

    # --- settling ----------------------------------------------------------------------

    def settle(self, holder: Hashable, chunk: Chunk, event: Event) -> Settlement:
        """What ``event``, which happened to ``holder``'s copy of ``chunk``, means for its tasks."""
        claim = self.claim(holder, chunk)
        if claim is None:
            raise AssertionError(f"{self._name(holder)} settles tasks {chunk.start}..{chunk.stop - 1}, "
                                 "which it does not hold")
        claims = self._held[holder]
        claims.remove(claim)
        if not claims:
            del self._held[holder]
        claim.holders.remove(holder)
        claim.state, fate = CLAIMS[(claim.state, event.kind)]
        failed: list[Batch] = []
        again: list[Piece] = []
        break_off: list[Any] = []
        if fate is Fate.REPORT:
            break_off = [other for other in claim.holders if self._needless(other)]
            if isinstance(event, Answered) and chunk.start + event.ran < chunk.stop:
                again.append((chunk.start + event.ran, chunk.stop, False))  # it stopped early
        elif fate is Fate.REQUEUE:
            assert isinstance(event, Returned)
            self._requeue(holder, chunk, event.reason, failed, again)
        elif fate is Fate.CHARGE:
            assert isinstance(event, Lost)
            self._charge(holder, chunk, event, failed, again)
        elif fate is Fate.TIME_OUT:
            assert isinstance(event, TimedOut)
            error = TaskTimeout(f"task {self.tasks[event.position]!r} ran longer than its timeout of "
                                f"{event.timeout} s; {event.what}")
            self._end(holder, chunk, event.position, error, event.seconds, failed, again)
        elif fate is Fate.OUT_OF_MEMORY:
            assert isinstance(event, OutOfMemory)
            self._end(holder, chunk, event.position, event.error, event.seconds, failed, again)
        elif fate is Fate.CANCEL:
            assert isinstance(event, Stopped)
            self._cancel(holder, chunk, event.positions, failed, again)
        elif fate is Fate.SPLIT:
            assert isinstance(event, Garbled)
            self._split(chunk, event, failed, again)
        if self._needless(holder):  # what it still holds, behind this chunk, was settled by copies
            break_off.append(holder)
        return Settlement(fate, failed, [piece for piece in again if piece[0] < piece[1]], break_off)

    def _needless(self, holder: Any) -> bool:
        """Whether ``holder`` holds chunks, all of them settled by other copies."""
        claims = self._held.get(holder, [])
        return bool(claims) and all(claim.state is Held.SETTLED for claim in claims)

    def lose(self, holder: Hashable, event: Union[Lost, TimedOut, OutOfMemory, Stopped]) -> list[Settlement]:
        """``holder`` is gone with everything it holds: the chunk it was running (the
        one its mark is in, else the first) meets ``event``; those behind it never
        started, and go back at no cost. A ``Stopped`` meets every chunk it holds."""
        claims = list(self.holds(holder))
        if not claims:
            return []
        if isinstance(event, Stopped):
            return [self.settle(holder, claim.chunk, event) for claim in claims]
        if isinstance(event, (TimedOut, OutOfMemory)):
            position = event.position
        else:
            position = event.mark[0] if event.mark is not None else -1
        running = next((c for c in claims if c.chunk.start <= position < c.chunk.stop), claims[0])
        settled = []
        for claim in claims:
            happened: Event = event if claim is running else Returned(f"it waited behind tasks "
                                                                    f"{running.chunk.start}.."
                                                                    f"{running.chunk.stop - 1}")
            settled.append(self.settle(holder, claim.chunk, happened))
        return settled

    def release(self, holder: Hashable, reason: str) -> list[Settlement]:
        """``holder`` gives back everything it holds, none of it started (``reason``)."""
        return [self.settle(holder, claim.chunk, Returned(reason)) for claim in list(self.holds(holder))]

    def _requeue(
        self, holder: Any, chunk: Chunk, reason: str, failed: list[Batch], again: list[Piece]
    ) -> None:
        retry = []
        for position in range(chunk.start, chunk.stop):
            count = self.returns[position] = self.returns.get(position, 0) + 1
            if count < self.max_returns:
                retry.append(position)
            else:
                error = WorkerCrashed(
                    f"worker {self._name(holder)} kept giving back task {self.tasks[position]!r} unfinished "
                    f"(attempt {count} of {self.max_returns}): {reason}"
                )
                failed.append(_failure(position, error, 0.0, self._name(holder)))
        again.extend(_runs(retry, chunk.alone))

    def _charge(
        self, holder: Any, chunk: Chunk, event: Lost, failed: list[Batch], again: list[Piece]
    ) -> None:
        start, stop = chunk.start, chunk.stop
        position, count = event.mark if event.mark is not None else (-1, 0)
        if not start <= position < stop:  # nothing says which task ran: each counts
            for spot in range(start, stop):
                self._strike(holder, spot, event.what, "while holding", 0.0, failed, again)
            return
        end = min(stop, position + count)
        again.append((start, position, False))
        if end - position > 1:  # a group: again, nothing counted yet, till each task is known apart
            self.struck.append((position, self._name(holder), event.what, event.seconds, 0))
            logger.warning("%s while running one of tasks %r .. %r; running them again one by one",
                           event.what, self.tasks[position], self.tasks[end - 1])
            if self.marks_at_death:  # one chunk, each task marked as it starts
                again.append((position, end, True))
            else:
                again.extend((spot, spot + 1, True) for spot in range(position, end))
        else:
            logger.warning("%s while running task %r", event.what, self.tasks[position])
            self._strike(holder, position, event.what, "while running", event.seconds, failed, again)
        again.append((end, stop, False))

    def _strike(
        self, holder: Any, position: int, what: str, where: str, seconds: float, failed: list[Batch],
        again: list[Piece],
    ) -> None:
        """Count a crash against a task: run it again on its own, or give up on it."""
        tries = self.attempts[position] = self.attempts.get(position, 0) + 1
        if tries < self.max_attempts:
            self.struck.append((position, self._name(holder), what, seconds, tries))
            again.append((position, position + 1, True))
            return
        error = WorkerCrashed(
            f"{what} {where} task {self.tasks[position]!r} (attempt {tries} of {self.max_attempts})"
        )
        failed.append(_failure(position, error, seconds, self._name(holder), tries))

    def _end(
        self, holder: Any, chunk: Chunk, position: int, error: BaseException, seconds: float,
        failed: list[Batch], again: list[Piece],
    ) -> None:
        """The task at ``position`` ends with ``error``; the others go back at no cost."""
        again.append((chunk.start, position, False))
        failed.append(_failure(position, error, seconds, self._name(holder), self.attempt(position)))
        again.append((position + 1, chunk.stop, False))

    def _cancel(
        self, holder: Any, chunk: Chunk, positions: frozenset[int], failed: list[Batch], again: list[Piece]
    ) -> None:
        """The tasks at ``positions`` end as cancelled; the others go back at no cost."""
        from .stopping import cancelled  # concurrent.futures: only a call that stops tasks pays for it

        kept = []
        for position in range(chunk.start, chunk.stop):
            if position in positions:
                failed.append(_failure(position, cancelled(self.tasks[position]), 0.0, self._name(holder)))
            else:
                kept.append(position)
        again.extend(_runs(kept, chunk.alone))

    def _split(self, chunk: Chunk, event: Garbled, failed: list[Batch], again: list[Piece]) -> None:
        if chunk.stop - chunk.start > 1:
            logger.warning("the answer for tasks %d..%d from %s could not be used (%r: a value could not be "
                           "unpickled, here or there); redoing them one by one", chunk.start, chunk.stop - 1,
                           event.worker, event.error)
            again.extend((spot, spot + 1, True) for spot in range(chunk.start, chunk.stop))
            return
        error = ResultNotSerializable(
            f"the value of task {self.tasks[chunk.start]!r} came back from {event.worker} "
            f"but could not be unpickled here: {event.error!r}"
        )
        failed.append(_failure(chunk.start, error, 0.0, event.worker))


def _failure(position: int, error: BaseException, seconds: float, worker: str, attempt: int = 1) -> Batch:
    batch = Batch(position, [error], [seconds], {0}, worker)
    batch.attempt = attempt
    return batch


def _runs(positions: list[int], alone: bool) -> list[Piece]:
    """Consecutive positions joined into pieces (each alone, where ``alone``)."""
    runs: list[Piece] = []
    for position in positions:
        if runs and runs[-1][1] == position and not alone:
            runs[-1] = (runs[-1][0], position + 1, alone)
        else:
            runs.append((position, position + 1, alone))
    return runs
