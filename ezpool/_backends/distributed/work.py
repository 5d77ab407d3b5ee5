"""The work of one ``dmap`` call as its drivers see it: what they share, and all they may ask.

A *driver* feeds one worker (``drivers``): it asks ``Work`` for chunks and tells it
what became of each; the ledger (``ezpool._core.ledger``) says what that means for
the tasks, and what must go again is put back in front of the chunks that wait::

    driver threads (Driver.run, one per worker)          Work (guarded by ``cond``)
    ───────────────────────────────────────────          ──────────────────────────
    take() ────────────────────────────────────────────▶ a chunk that waits, or a backup
                                                           copy of a late one when none
                                                           does; or wait; or None: leave
    take_behind() ─────────────────────────────────────▶ the next, to send behind the one
                                                           the worker runs (PIPELINE)
    settle(chunk, Answered | Returned | Lost | ...) ───▶ the ledger decides; batches go to
                                                           the outbox, for the caller
                                                           (``call.Call``)

A driver whose worker holds nothing, and may get nothing more soon, leaves (``take``
parks it) once enough others wait for what may still come; the caller's thread
starts it again when work comes back. Whatever a driver meets, every chunk it holds
is settled before it leaves, so no task is lost or reported twice.
"""

from __future__ import annotations

import abc
import queue
import threading
import time
from collections.abc import Sequence
from time import perf_counter
from typing import Any, Callable, NamedTuple, Optional

from ..._core.chunking import Chunk, ChunkQueue
from ..._core.feed import Feed
from ..._core.ledger import Answered, Event, Fate, Garbled, Ledger, Lost, Settlement, Stopped
from ..._core.logs import get_logger
from ..._core.recording import Recording
from ..._core.records import Batch, ChunkReply, run_time
from ..._core.relay import capture_level
from ..._core.shipping import Shipment
from ..._core.unsendable import rebuild_answer
from ...errors import WorkerCrashed
from ...options import Options

logger = get_logger(__name__)

__all__ = ["Driver", "Target", "Work", "PIPELINE", "EXIT", "UNPARK", "backups", "held_at_once", "failed"]

#: Chunks a worker holds at once: the one it runs, and the next, which waits at the
#: worker's end of the connection so that it starts the moment the first is answered
#: (no round trip between, nor a wait for this process to be free to send it).
PIPELINE = 2

EXIT = object()  # a driver's last word on the outbox
UNPARK = object()  # work came back while drivers that could run it had left: start them again


class Target(NamedTuple):
    """What a call runs: its name, the fingerprint of its code, and its shipment."""

    name: str
    code: str
    shipment: Shipment


class Driver(abc.ABC):
    """Feeds one worker for one call. ``name`` names the worker in results and errors;
    ``lost_since`` is when it was lost (``None``: it is not), ``reason`` why."""

    name: str

    @property
    @abc.abstractmethod
    def lost_since(self) -> Optional[float]: ...

    @property
    @abc.abstractmethod
    def reason(self) -> str: ...

    @abc.abstractmethod
    def run(self) -> None:
        """Feed the worker until the call's work runs out, settling every chunk it holds
        before returning, whatever happens; then ``work.exit()``. May run again in the
        same call (after it left, when work comes back)."""

    def claim_first(self) -> bool:
        """In the caller's thread, with the call's lock held: take a first chunk to send
        from there, if this driver can; whether it did."""
        return False

    def send_first(self) -> bool:
        """In the caller's thread: send the chunk ``claim_first`` took, if it can go from
        there without waiting; whether it was tried."""
        return False

    def send_behind(self) -> bool:
        """In the caller's thread: send a second chunk behind the first; whether one went."""
        return False

    def break_off(self) -> None:  # noqa: B027 - a driver without a connection has nothing to break
        """Stop the worker's current chunk (another copy answered, or the caller left)."""

    def abandon(self) -> None:  # noqa: B027
        """The caller left before this driver's thread ran: give up what was sent."""

    def left_behind(self) -> None:  # noqa: B027
        """The call ended while this driver's thread still ran: it keeps what it has."""


class Work:
    """The chunks of one call that wait, the ledger of those out, and the outbox of batches."""

    def __init__(
        self, tasks: Sequence[Any], pending: ChunkQueue, options: Options, record: Recording
    ) -> None:
        self.pending = pending  # guarded by cond, like the ledger and the counters
        self.record = record  # hears of every chunk's round trip, and of the workers' start-ups
        self.drivers: list[Driver] = []
        self.heartbeat = options.heartbeat
        self.timeout = options.timeout
        self.backup = backups(options, pending.feed)
        self.depth = held_at_once(options, pending.feed)
        # The call's limits on the workers' processes, as they travel (``ChunkCall.limits``).
        self.limits = limits(options)
        # The lowest log level kept with what tasks print, or None; sent only when set.
        self.capture_level = capture_level(options)
        # A worker's mark is only what it last reported (``breaks``): a loss is laid on a
        # task once it runs alone.
        self.ledger = Ledger(tasks, options.max_attempts, name=lambda driver: driver.name,
                             marks_at_death=False)
        # Per worker (its name): tasks measured and their seconds, so that a slow
        # worker's times do not make the others' chunks look slow (see ``take``).
        self.rates: dict[str, tuple[int, float]] = {}
        self.cond = threading.Condition()
        # Set when the call ends: its work is finished (see ``_apply``), or the caller left.
        self.stop = threading.Event()
        # Set once every worker has been sent its first chunk (or given up): until then
        # no second chunk goes out, so that the last worker to get one does not wait
        # behind them. Each driver counts itself once (``started_one``).
        self.started = threading.Event()
        self._starting = 0
        self._started_ids: set[int] = set()  # the drivers counted (guarded by cond)
        self._saving = 0  # drivers waiting for the others to start (``_saves_for_others``)
        self._biggest = 1  # tasks in the biggest chunk taken so far (guarded by cond)
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Drivers waiting in ``take`` for work that may come back or a copy to run, and
        # those that left instead, since enough others wait (see ``_park``); both
        # guarded by cond.
        self.lingering = 0
        self.parked: list[Driver] = []
        # Positions asked to stop before they were sent (guarded by cond): each ends
        # cancelled when its chunk is taken (``_next``), and never runs.
        self.cancelled: set[int] = set()

    def add(self, driver: Driver) -> None:
        """A worker for this call, before it runs: it counts itself once started (``started_one``)."""
        self.drivers.append(driver)
        self._starting += 1

    def finished(self) -> bool:
        """Whether no task is left anywhere: none waits, none is out, none will be read."""
        with self.cond:
            return not self.pending and not self.ledger.busy and self.pending.exhausted

    def started_one(self, driver: Optional[Driver] = None) -> None:
        """A driver has sent its worker's first chunk, or will send none."""
        with self.cond:
            self._starting -= 1
            if driver is not None:
                self._started_ids.add(id(driver))
            if self._starting <= 0:
                self.started.set()
            if self._saving:
                self.cond.notify_all()

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
                if _saves_for_others(self, driver):
                    self._saving += 1
                    try:
                        self.cond.wait(0.5)
                    finally:
                        self._saving -= 1
                    continue
                chunk = self.next(driver, now)
                if chunk is not None:
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
            if self.stop.is_set() or not self.pending or _saves_for_others(self, driver):
                return None
            idle = [other for other in self.drivers if not self.ledger.holds(other)]
            waiting = self.pending.waiting
            if waiting <= len(idle) and waiting <= sum(1 for other in idle if other.lost_since is None):
                return None  # an idle worker will want it: leave it
            return self.next(driver, time.monotonic())

    def next(self, driver: Driver, now: float) -> Optional[Chunk]:
        """The next chunk waiting, now ``driver``'s, or ``None``; with ``cond`` held. One
        holding positions asked to stop ends there: they are cancelled, the rest go back."""
        while self.pending:
            chunk = self.pending.take()
            self._biggest = max(self._biggest, chunk.stop - chunk.start)
            self.ledger.take(driver, chunk, now)
            if not self.cancelled:
                return chunk
            asked = frozenset(p for p in self.cancelled if chunk.start <= p < chunk.stop)
            if not asked:
                return chunk
            self.cancelled -= asked
            event = Stopped("it was asked to stop before it was sent", asked)
            self._apply(driver, [chunk], lambda chunk=chunk, event=event: [  # type: ignore[misc]
                self.ledger.settle(driver, chunk, event)])
        return None

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
        self, driver: Driver, chunk: Chunk, event: Event, reply: Any = b"", trip: Optional[float] = None,
        window: Optional[tuple[float, float]] = None,
    ) -> None:
        """What became of ``driver``'s copy of ``chunk``: the ledger decides what it means for
        each task, exactly once whichever copy answers. An ``Answered`` event comes with
        the worker's ``reply``, the ``trip``, seconds from sending to answer, and the
        ``window``: when it was sent and answered (``time.perf_counter``)."""
        answer = None
        if isinstance(event, Answered):
            try:
                answer = ChunkReply.decode(reply)
            except Exception as exc:
                event = Garbled(driver.name, exc)
            else:
                event = Answered(len(answer.values))
                unloaded = rebuild_answer(answer, self.ledger.tasks, driver.name)
                if unloaded is not None:  # its tasks could not be unpickled there: each runs again alone
                    event, answer = Garbled(driver.name, unloaded), None
        decided = event  # (what the answer turned out to be)

        def decide() -> list[Settlement]:
            return [self.ledger.settle(driver, chunk, decided)]

        self._apply(driver, [chunk], decide, answer, len(reply), trip, window)

    def lose(self, driver: Driver, event: Lost) -> None:
        """``driver``'s worker is gone with all it holds: the chunk it ran meets ``event``,
        those behind it go back at no cost (``Ledger.lose``)."""
        self.record.gone(driver.name)
        self._apply(driver, self._held_by(driver), lambda: self.ledger.lose(driver, event))

    def release(self, driver: Driver, reason: str) -> None:
        """``driver`` gives back all it holds, none of it started."""
        self._apply(driver, self._held_by(driver), lambda: self.ledger.release(driver, reason))

    def _held_by(self, driver: Driver) -> list[Chunk]:
        with self.cond:
            return [claim.chunk for claim in self.ledger.holds(driver)]

    def _apply(
        self, driver: Driver, chunks: list[Chunk], decide: Callable[[], list[Settlement]],
        answer: Optional[ChunkReply] = None, size: int = 0, trip: Optional[float] = None,
        window: Optional[tuple[float, float]] = None,
    ) -> None:
        """Ask the ledger what happened to ``chunks`` (``decide``), under the lock; put back
        what goes again, and hand on the batches: those of tasks that failed, and the
        ``answer``'s, where the ledger reports it."""
        batches: list[Batch] = []
        with self.cond:
            try:
                settlements = decide()
            except Exception as exc:  # never lose a chunk to a bug in deciding its fate
                logger.exception("could not settle what %s held", driver.name)
                error = WorkerCrashed(f"the outcome from {driver.name} could not be handled: {exc!r}")
                settlements = [Settlement(Fate.NONE, [failed(chunk, error, driver.name)], [], [])
                               for chunk in chunks]
            again = [piece for settled in settlements for piece in settled.again]
            for settled in settlements:
                batches.extend(settled.failed)
                if settled.fate is Fate.REPORT and answer is not None and answer.values:
                    took = self.pending.sizer.record(answer.times, trip, reply_bytes=size)
                    tasks, seconds = self.rates.get(driver.name, (0, 0.0))
                    self.rates[driver.name] = (tasks + len(answer.times), seconds + took)
                    batches.append(self._recorded(driver, answer, window))
                elif settled.fate is Fate.DROP and window is not None:
                    fate = "its answer was not used" if answer is not None else "it was cut short"
                    self.record.span("backup", driver.name, *window,
                                     f"tasks {chunk_of(answer, chunks)}: another copy answered first; {fate}")
            self.record.struck(self.ledger)
            for piece in reversed(again):
                self.pending.put_back(*piece)
            # Idle drivers wait for work, or for the last chunk to be settled (then they
            # end). Woken all for every chunk, 128 of them would cost a burst of wakeups:
            # one is enough to see whether what was learnt makes a backup copy due.
            if again or not self.ledger.busy:
                if not self.ledger.busy and not self.pending and self.pending.exhausted:
                    self.stop.set()  # finished: a driver waiting for its lost worker leaves now
                self.cond.notify_all()
            elif self.backup:
                self.cond.notify()
            unpark = bool(again) and bool(self.parked)
        for settled in settlements:
            for other in settled.break_off:  # copies settled all they hold: their workers stop
                other.break_off()
            if settled.fate is Fate.DROP:
                logger.debug("dropped what %s said of a chunk: another copy decides", driver.name)
        for batch in batches:
            self.outbox.put(batch)
        if unpark:
            self.outbox.put(UNPARK)

    def _recorded(self, driver: Driver, answer: ChunkReply, window: Optional[tuple[float, float]]) -> Batch:
        """The batch of ``answer``, placed for the timeline: when it began on its worker,
        which attempt it was, and the round trip that bounds the worker's clock."""
        batch = Batch(answer.first, answer.values, answer.times, set(answer.failures), driver.name,
                      answer.outputs)
        batch.origin = getattr(answer.times, "origin", None)
        if len(answer.values) == 1:
            batch.attempt = self.ledger.attempt(answer.first)
        record = self.record
        if driver.name not in record.workers:
            info = getattr(getattr(driver, "link", None), "info", {})
            record.worker(driver.name, str(info.get("host", "")), int(info.get("pid", 0) or 0))
        if window is not None:
            record.trip(driver.name, window[0], window[1], batch.origin, run_time(answer.times))
        return batch

    def started_up(self, driver: Driver, began: float, what: str) -> None:
        """``driver``'s worker became ready for the call's code between ``began`` and now."""
        self.record.span("start-up", driver.name, began, perf_counter(), what)

    def exit(self) -> None:
        """A driver's thread leaves the call (the caller's thread counts them)."""
        self.outbox.put(EXIT)

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


def _saves_for_others(work: Work, driver: Driver) -> bool:
    """Whether ``driver``, which has had its first chunk, should leave the tasks left
    to the drivers that have not had theirs yet (they are no more than those, with the
    biggest chunk so far to spare): with ``work.cond`` held. Drivers start one after another
    (a thread each, and a round trip to load the code on a generic worker); the first
    ones, once they had measured a task, took all of a short call between them, and
    19 of 128 dial-in workers ran nothing."""
    return (not work.started.is_set() and id(driver) in work._started_ids
            and 0 < work.pending.waiting < work._starting + work._biggest)


def backups(options: Options, feed: Optional[Feed]) -> bool:
    """Whether idle workers run backup copies of late chunks in a call with ``options``.

    Not for a live source (the executor): there an idle worker is waiting for the
    next call, and a copy of a late one would make that call wait behind it.
    """
    return options.backup and (feed is None or not feed.trickles)


def held_at_once(options: Options, feed: Optional[Feed]) -> int:
    """Chunks a worker holds at once: ``PIPELINE`` where backup copies run, else one.

    A chunk sent behind one that a slow worker runs waits as long as it does; only a
    backup copy on an idle worker gets it done sooner. Without backups (``backup=False``
    or a live source) a worker holds only the chunk it runs.
    """
    if options.max_tasks_per_worker is not None:  # a chunk behind would find its worker restarting
        return 1
    return PIPELINE if backups(options, feed) else 1


def limits(options: Options) -> Optional[list[int]]:
    """``[max_tasks_per_worker, max_memory]`` (0: none) for the workers, or ``None`` when neither is set."""
    if options.max_tasks_per_worker is None and options.max_memory is None:
        return None
    return [options.max_tasks_per_worker or 0, options.max_memory or 0]


def chunk_of(answer: Optional[ChunkReply], chunks: list[Chunk]) -> str:
    """Which tasks a copy ran, in words."""
    if chunks:
        return f"{chunks[0].start}..{chunks[0].stop - 1}"
    return f"from {answer.first}" if answer is not None else "?"


def failed(chunk: Chunk, error: Exception, worker: str = "") -> Batch:
    """Every task of ``chunk`` ending with ``error``, none of them run."""
    count = chunk.stop - chunk.start
    return Batch(chunk.start, [error] * count, [0.0] * count, set(range(count)), worker)
