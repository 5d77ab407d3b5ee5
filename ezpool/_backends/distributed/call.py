"""One ``dmap`` call: the chunks that wait, the ledger of those out, and the batches on their way.

A *driver* feeds one worker (``drivers``); the call is what every driver shares,
and what it asks of the call is all it may ask::

    caller thread (Call.batches)            driver threads (Driver.run, one per worker)
    ────────────────────────────            ───────────────────────────────────────────
    first chunks, for drivers that can
      send them from here (claim_first,
      send_first, send_behind)
    start each driver on a crew thread ───▶ take() ─── a chunk, or a backup copy of a
                                              late one when none waits (or wait)
                                            take_behind() ─── the next, sent behind the
                                              one the worker runs (PIPELINE)
                                            ... the worker runs it ...
    outbox.get() ◀── Batch ───────────────── settle(chunk, event): the ledger decides;
      yield it; read more tasks                what goes again is put back in front
      (a feed), wake drivers that left

Everything a driver shares with the others (``pending``, the ledger, the counters)
is guarded by ``cond``. A driver whose worker holds nothing and may get nothing
more soon leaves (``take`` parks it) once enough others wait for what may still
come; the caller's thread starts it again when work comes back. Whatever a
driver's thread meets, every chunk it holds is settled before it ends, so no task
is lost or reported twice; the ledger (``ezpool._core.ledger``) says what each
event means for the tasks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, Optional

from ..._core.chunking import Chunk, ChunkQueue
from ..._core.feed import Feed
from ..._core.ledger import Answered, Event, Fate, Garbled, Ledger, Lost, Returned, Settlement
from ..._core.logs import get_logger
from ..._core.records import Batch, ChunkReply
from ..._core.relay import capture_level
from ..._core.serialization import rebuild
from ...errors import WorkerCrashed
from ...options import Options
from .crew import Crew

if TYPE_CHECKING:
    from .drivers import Driver

logger = get_logger(__name__)

__all__ = ["Call", "PIPELINE", "backups", "held_at_once"]

#: Chunks a worker holds at once: the one it runs, and the next, which waits at the
#: worker's end of the connection so that it starts the moment the first is answered
#: (no round trip between, nor a wait for this process to be free to send it).
PIPELINE = 2

#: Seconds a finished call waits for its drivers' threads before leaving them behind.
_JOIN_TIMEOUT = 5.0

_EXIT = object()  # a driver's last word on the outbox
_WAKE = object()  # tasks arrived in a live source: read them
_UNPARK = object()  # work came back while drivers that could run it had left: start them again


class Call:
    """The chunks of one call, the drivers that feed its workers, and the outcomes on their way back."""

    def __init__(self, tasks: Sequence[Any], pending: ChunkQueue, options: Options, crew: Crew) -> None:
        self.pending = pending  # guarded by cond, like the ledger and the counters
        self.drivers: list[Driver] = []
        self.heartbeat = options.heartbeat
        self.timeout = options.timeout
        self.backup = backups(options, pending.feed)
        self.depth = held_at_once(options, pending.feed)
        self.capture = capture_level(options)  # sent only when set: a call without it is one any worker knows
        self.ledger = Ledger(tasks, options.max_attempts, name=lambda driver: driver.name)
        self.crew = crew  # the pool's threads: each runs a driver during the call
        # Per worker (its name): tasks measured and their seconds, so that a slow
        # worker's times do not make the others' chunks look slow (see ``take``).
        self.rates: dict[str, tuple[int, float]] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        # Set once every worker has been sent its first chunk (or given up): until then
        # no second chunk goes out, so that the last worker to get one does not wait
        # behind them. Each driver counts itself once (``started_one``).
        self.started = threading.Event()
        self._starting = 0
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Drivers waiting in ``take`` for work that may come back or a copy to run, and
        # those that left instead, since enough others wait (see ``_park``); both
        # guarded by cond.
        self.lingering = 0
        self.parked: list[Driver] = []

    def add(self, driver: Driver) -> None:
        """A worker for this call, before it runs."""
        self.drivers.append(driver)
        self._starting += 1

    # --- the caller's thread ---------------------------------------------------------

    def batches(self) -> Generator[Batch, None, None]:
        """Run the call: every task's outcome, exactly once, as it comes."""
        ended: list[tuple[Driver, threading.Event]] = []  # once its thread runs
        live = self.pending.feed.live if self.pending.feed is not None else None
        wake = self._wake
        if live is not None:
            live.add_waker(wake)
        try:
            self._first_round()
            for driver in self.drivers:
                ended.append((driver, self.crew.run(driver.run)))
            alive = len(ended)
            yield from self._refill()
            while alive:
                try:
                    item = self.outbox.get(timeout=0.25)
                except queue.Empty:
                    self._give_up_if_all_lost()
                    alive += self._unpark(ended, only_if_stuck=True)
                    yield from self._refill()
                    continue
                if item is _EXIT:
                    alive -= 1
                    if not alive:  # work may be left, and drivers that left early
                        alive += self._unpark(ended)
                elif item is _UNPARK:
                    alive += self._unpark(ended)
                elif item is _WAKE:
                    yield from self._refill()
                else:
                    yield item
                    if not self.pending.exhausted:
                        self._give_up_if_all_lost()
                        yield from self._refill()
            while not self.outbox.empty():  # batches put after the last exit (none expected)
                item = self.outbox.get()
                if isinstance(item, Batch):  # not one of the markers
                    yield item
            yield from self._orphans()
        finally:
            if live is not None:
                live.remove_waker(wake)
            self.stop.set()
            with self.cond:
                self.cond.notify_all()
            for driver in self.drivers:  # the caller left early: workers stop when their client hangs up
                driver.break_off()
            started = {driver for driver, _ in ended}
            for driver in self.drivers:
                if driver not in started:  # interrupted before its thread ran
                    driver.abandon()
            deadline = time.monotonic() + _JOIN_TIMEOUT
            for driver, done in ended:
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    logger.debug("thread for %s still busy; it keeps its old connections", driver.name)
                    driver.left_behind()

    def _first_round(self) -> None:
        """The first chunk of each driver that can send it from this thread, sent one after
        another, then the next chunk of each (see ``PIPELINE``), before any driver's thread
        wakes. Sent by their own threads, the first chunks of 128 workers went out over
        ~50 ms, a thread's wakeup and a turn at the GIL each, while those workers started
        theirs on the same cores; the last worker started that much later."""
        with self.cond:
            firsts = [driver for driver in self.drivers if self.pending and driver.claim_first()]
        sent = [driver for driver in firsts if driver.send_first()]
        if self.depth > 1 and self.started.is_set():
            for driver in sent:
                if not driver.send_behind():
                    break

    def _orphans(self) -> Generator[Batch, None, None]:
        """Fail what is left when every driver has ended with work not done (only a bug
        in a driver, logged where it happened, leaves any): no task goes unreported."""
        with self.cond:
            left = list(self.pending.drain())
        error = WorkerCrashed("no thread was left to send this task (see the errors logged)")
        for chunk in left:
            yield _failed(chunk, error)

    def _unpark(self, ended: list[tuple[Driver, threading.Event]], only_if_stuck: bool = False) -> int:
        """Start again the drivers that left, when work is waiting to be sent
        (``only_if_stuck``: and no driver waits to take it); how many started."""
        with self.cond:
            if not self.parked or not self.pending or (only_if_stuck and self.lingering):
                return 0
            drivers, self.parked = self.parked, []
        for driver in drivers:
            ended.append((driver, self.crew.run(driver.run)))
        return len(drivers)

    def _wake(self) -> bool:
        """Tasks arrived in a live source: read them now if they could go out now (nothing
        is pending and a worker holds no chunk). If not, they are read with the next
        batch, many at once, rather than each waking the caller's thread. (Read without
        the lock: a wake missed in a race is made good by that batch, or the outbox's
        timeout.)"""
        if self.pending or self.ledger.busy >= len(self.drivers):
            return False
        self.outbox.put(_WAKE)
        return True

    def _refill(self) -> list[Batch]:
        """Read more tasks from a feed, here in the caller's thread, and wake the drivers."""
        if self.pending.exhausted:
            return []
        with self.cond:
            settled = self.pending.refill()
            self.cond.notify_all()
        return settled

    def _give_up_if_all_lost(self) -> None:
        """When every worker has been lost for ``heartbeat`` seconds, the tasks left fail."""
        now = time.monotonic()
        lost = [driver.lost_since for driver in self.drivers]
        if any(since is None or now - since < self.heartbeat for since in lost):
            return
        with self.cond:
            if self.ledger.busy or self.stop.is_set():
                return
            left = list(self.pending.drain())
            self.cond.notify_all()
        reasons = "; ".join(f"{driver.name}: {driver.reason}" for driver in self.drivers)
        error = WorkerCrashed(f"every worker was lost before this task ran ({reasons})")
        for chunk in left:
            self.outbox.put(_failed(chunk, error))

    # --- what drivers ask --------------------------------------------------------------

    def finished(self) -> bool:
        """Whether no task is left anywhere: none waits, none is out, none will be read."""
        with self.cond:
            return not self.pending and not self.ledger.busy and self.pending.exhausted

    def started_one(self) -> None:
        """A driver has sent its worker's first chunk, or will send none."""
        with self.cond:
            self._starting -= 1
            if self._starting <= 0:
                self.started.set()

    def wait_to_queue(self, sent: float, chunk: Chunk) -> None:
        """Wait until a chunk may be sent behind ``chunk`` (sent at ``sent``): once every
        worker has its first, or once ``chunk`` is half done (by the run times so far)."""
        if self.started.is_set():
            return
        mean = self.pending.sizer.mean
        expected = (chunk.stop - chunk.start) * mean if mean is not None else 0.0
        self.started.wait(max(0.0, sent + expected / 2 - time.monotonic()))

    def take(self, driver: Driver) -> Optional[Chunk]:
        """The next chunk, or a backup copy of a late one when none waits to be sent;
        waiting while other workers may still give some back. ``None``: nothing more
        for this driver (the work is done, the call stopped, or it leaves for now)."""
        ledger = self.ledger
        with self.cond:
            while not self.stop.is_set():
                now = time.monotonic()
                if self.pending:
                    chunk = self.pending.take()
                    ledger.take(driver, chunk, now)
                    return chunk
                if not ledger.busy and self.pending.exhausted:
                    return None
                if self._park(driver):
                    return None
                pause = 0.5
                if self.backup:
                    claim, wait = ledger.late(self._expected(driver), now)
                    if claim is not None:
                        logger.info("worker %s has held tasks %d..%d for %.1f s; %s runs a backup copy",
                                    claim.holders[0].name, claim.chunk.start, claim.chunk.stop - 1,
                                    now - claim.since, driver.name)
                        ledger.copy(driver, claim, now)
                        return claim.chunk
                    pause = min(pause, wait)
                self.lingering += 1
                try:
                    self.cond.wait(pause)
                finally:
                    self.lingering -= 1
            return None

    def take_behind(self, driver: Driver) -> Optional[Chunk]:
        """A chunk to wait at a worker behind the one it runs, if one waits to be sent
        now (never a backup copy: those go to idle workers)."""
        with self.cond:
            if self.stop.is_set() or not self.pending:
                return None
            idle = [other for other in self.drivers if not self.ledger.holds(other)]
            waiting = self.pending.waiting
            if waiting <= len(idle) and waiting <= sum(1 for other in idle if other.lost_since is None):
                return None  # an idle worker will want it: leave it
            chunk = self.pending.take()
            self.ledger.take(driver, chunk, time.monotonic())
            return chunk

    def restart_clock(self, driver: Driver, chunk: Chunk, now: float) -> None:
        """The chunk ``driver`` holds behind another starts now: its lateness counts from here."""
        with self.cond:
            claim = self.ledger.claim(driver, chunk)
            if claim is not None and claim.holders[-1] is driver:
                claim.since = now

    def superseded(self, driver: Driver, chunk: Chunk) -> bool:
        """Whether another copy of ``chunk``, which ``driver`` holds, has settled it already."""
        with self.cond:
            return self.ledger.superseded(driver, chunk)

    def settle(
        self, driver: Driver, chunk: Chunk, event: Event, reply: Any = b"", trip: Optional[float] = None
    ) -> None:
        """What became of ``driver``'s copy of ``chunk``: the ledger decides what it means for
        each task, exactly once whichever copy answers. An ``Answered`` event comes with
        the worker's ``reply`` and the ``trip``, seconds from sending to answer."""
        answer = None
        if isinstance(event, Answered):
            try:
                answer = ChunkReply.decode(reply)
            except Exception as exc:
                event = Garbled(driver.name, exc)
            else:
                event = Answered(len(answer.values))
                for offset, record in answer.failures.items():
                    answer.values[offset] = rebuild(record)
        self._apply(driver, chunk, event, answer, len(reply), trip)

    def lose(self, driver: Driver, event: Lost) -> None:
        """``driver``'s worker is gone with all it holds: the chunk it ran first meets
        ``event``; those behind it had not started, and go back at no cost."""
        with self.cond:
            chunks = [claim.chunk for claim in self.ledger.holds(driver)]
        behind = Returned(f"it waited behind a chunk that did not come back ({event.what})")
        for index, chunk in enumerate(chunks):
            self._apply(driver, chunk, event if index == 0 else behind, None, 0, None)

    def release(self, driver: Driver, reason: str) -> None:
        """``driver`` gives back all it holds, none of it started."""
        with self.cond:
            chunks = [claim.chunk for claim in self.ledger.holds(driver)]
        for chunk in chunks:
            self._apply(driver, chunk, Returned(reason), None, 0, None)

    def _apply(
        self, driver: Driver, chunk: Chunk, event: Event, answer: Optional[ChunkReply], size: int,
        trip: Optional[float],
    ) -> None:
        batches: list[Batch] = []
        with self.cond:
            try:
                settled = self.ledger.settle(driver, chunk, event)
            except Exception as exc:  # never lose a chunk to a bug in deciding its fate
                logger.exception("could not settle tasks %d..%d", chunk.start, chunk.stop - 1)
                error = WorkerCrashed(f"the outcome from {driver.name} could not be handled: {exc!r}")
                settled = Settlement(Fate.NONE, [_failed(chunk, error, driver.name)], [], [])
            batches.extend(settled.failed)
            if settled.fate is Fate.REPORT and answer is not None and answer.values:
                took = self.pending.sizer.record(answer.times, trip, reply_bytes=size)
                tasks, seconds = self.rates.get(driver.name, (0, 0.0))
                self.rates[driver.name] = (tasks + len(answer.times), seconds + took)
                batches.append(Batch(answer.first, answer.values, answer.times, set(answer.failures),
                                     driver.name, answer.outputs))
            for piece in reversed(settled.again):
                self.pending.put_back(*piece)
            # Idle drivers wait for work, or for the last chunk to be settled (then they
            # end). Woken all for every chunk, 128 of them would cost a burst of wakeups:
            # one is enough to see whether what was learnt makes a backup copy due.
            if settled.again or not self.ledger.busy:
                self.cond.notify_all()
            elif self.backup:
                self.cond.notify()
            unpark = bool(settled.again) and bool(self.parked)
        for other in settled.break_off:  # they lost the race: their workers stop after this task
            other.break_off()
        if settled.fate is Fate.DROP:
            logger.debug("dropped what %s said of tasks %d..%d: another copy decides",
                         driver.name, chunk.start, chunk.stop - 1)
        for batch in batches:
            self.outbox.put(batch)
        if unpark:
            self.outbox.put(_UNPARK)

    def exit(self) -> None:
        """A driver's thread leaves the call (the caller's thread counts them)."""
        self.outbox.put(_EXIT)

    def _park(self, driver: Driver) -> bool:
        """Whether the idle ``driver``'s thread should leave now, because enough others
        wait for what may still come (work given back, a late chunk to copy). Called
        with ``cond`` held.

        Every idle thread used to wait to the end of the call: at 128 workers, the
        tail woke dozens of them at every answer, on the cores the last chunks ran
        on, and the end woke all of them at once. A copy needs at most one waiting
        thread for each worker still holding chunks, and work given back one; more
        is wasted. The driver's thread is started again when work is given back
        (``_unpark``), or found waiting with no thread to take it.
        """
        if not self.pending.exhausted:  # more input may come: every thread waits for it
            return False
        wanted = max(1, self.ledger.busy) if self.backup else 1
        if self.lingering < wanted:
            return False
        self.parked.append(driver)
        return True

    def _expected(self, driver: Driver) -> Optional[float]:
        """Seconds a task is expected to take, for judging whether ``driver`` should copy a
        late chunk: its own mean run time in this call once it has one (a copy is worth
        running if it would finish well before the first), else the call's mean.
        Called with ``cond`` held."""
        tasks, seconds = self.rates.get(driver.name, (0, 0.0))
        return seconds / tasks if tasks else self.pending.sizer.mean


def backups(options: Options, feed: Optional[Feed]) -> bool:
    """Whether idle workers run backup copies of late chunks in a call with ``options``.

    Not for a live source (the executor): there an idle worker is waiting for the
    next call, and a copy of a late one would make that call wait behind it.
    """
    return options.backup and (feed is None or feed.live is None)


def held_at_once(options: Options, feed: Optional[Feed]) -> int:
    """Chunks a worker holds at once: ``PIPELINE`` where backup copies run, else one.

    A chunk sent behind one that a slow worker runs waits as long as it does; only a
    backup copy on an idle worker gets it done sooner. Without backups (``backup=False``
    or a live source) a worker holds only the chunk it runs.
    """
    return PIPELINE if backups(options, feed) else 1


def _failed(chunk: Chunk, error: Exception, worker: str = "") -> Batch:
    """Every task of ``chunk`` ending with ``error``, none of them run."""
    count = chunk.stop - chunk.start
    return Batch(chunk.start, [error] * count, [0.0] * count, set(range(count)), worker)
