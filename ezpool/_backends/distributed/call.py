"""One ``dmap`` call, from the caller's thread: start the drivers, hand the batches on.

The drivers (``drivers``), one per worker, share the call's ``Work`` (``work``);
this thread only starts them, moves batches on as they come, reads more tasks
(from a feed), starts again the drivers that left when work comes back, and makes
sure that every task is reported once when the call ends, whatever ended it::

    caller thread (Call.batches)                  driver threads
    ────────────────────────────                  ──────────────
    first chunks, for drivers that can send
      them from here (claim_first, send_first,
      send_behind)
    start each driver on a crew thread ─────────▶ Driver.run: take, send, settle
    work.outbox.get() ◀── Batch ──────────────── (see ``work``)
      yield it; read more tasks; start again
      the drivers that left (UNPARK)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator
from typing import Callable, NamedTuple, Optional

from ..._core.logs import get_logger
from ..._core.records import Batch
from ..._core.stopping import Stops
from ...errors import WorkerCrashed
from .crew import Crew
from .halting import stop_left
from .work import EXIT, UNPARK, Driver, Work, failed

logger = get_logger(__name__)

__all__ = ["Call"]

#: Seconds a finished call waits for its drivers' threads before leaving them behind.
_JOIN_TIMEOUT = 5.0

_WAKE = object()  # tasks arrived in a live source: read them
_STOP = object()  # tasks were asked to stop (``Stops``)


class _Joined(NamedTuple):
    """A worker that dialed in while the call ran: start its driver."""

    driver: Driver


def no_more() -> bool:
    return False


class Call:
    """Runs one call's drivers on the pool's crew, and hands their batches to the caller.

    ``more()`` says whether workers may still join (a cluster that is starting them):
    until it says no, tasks left when every worker has gone wait for one.
    """

    def __init__(
        self, work: Work, crew: Crew, more: Callable[[], bool] = no_more, stops: Optional[Stops] = None
    ) -> None:
        self.work = work
        self.stops = stops
        self.crew = crew  # the pool's threads: each runs a driver during the call
        self.more = more
        self._joining = threading.Lock()  # a driver joins before the drivers run, or after
        self._running = False

    @property
    def drivers(self) -> list[Driver]:
        return self.work.drivers

    def add(self, driver: Driver) -> None:
        """A worker for this call, before it runs."""
        self.work.add(driver)

    def join(self, driver: Driver) -> None:
        """A worker that joined (from any thread): it gets work at once. Before the drivers
        run, it is one of them; after, the caller's thread starts it (``_Joined``)."""
        with self._joining:
            with self.work.cond:
                self.work.add(driver)
            if self._running:
                self.work.outbox.put(_Joined(driver))

    # --- the caller's thread ---------------------------------------------------------

    def batches(self) -> Generator[Batch, None, None]:
        """Run the call: every task's outcome, exactly once, as it comes."""
        ended: list[tuple[Driver, threading.Event]] = []  # once its thread runs
        live = self.work.pending.feed.live if self.work.pending.feed is not None else None
        wake = self._wake
        if live is not None:
            live.add_waker(wake)
        stops = self.stops
        if stops is not None:
            stops.add_waker(self._stop_asked)
        try:
            self._first_round()
            with self._joining:
                for driver in self.drivers:
                    ended.append((driver, self.crew.run(driver.run)))
                self._running = True
            alive = len(ended)
            yield from self._refill()
            while alive or self._may_get_workers():
                try:
                    item = self.work.outbox.get(timeout=0.25)
                except queue.Empty:
                    self._give_up_if_all_lost()
                    alive += self._unpark(ended, only_if_stuck=True)
                    yield from self._refill()
                    continue
                if item is EXIT:
                    alive -= 1
                    if not alive:  # work may be left, and drivers that left early
                        alive += self._unpark(ended)
                elif item is UNPARK:
                    alive += self._unpark(ended)
                elif item is _WAKE:
                    yield from self._refill()
                elif item is _STOP:
                    if not self._stop(stops):
                        return  # stop_all: the outcomes not known yet are never yielded
                elif isinstance(item, _Joined):
                    ended.append((item.driver, self.crew.run(item.driver.run)))
                    alive += 1
                else:
                    yield item
                    if not self.work.pending.exhausted:
                        self._give_up_if_all_lost()
                        yield from self._refill()
            while not self.work.outbox.empty():  # batches put after the last exit (none expected)
                item = self.work.outbox.get()
                if isinstance(item, Batch):  # not one of the markers
                    yield item
            yield from self._orphans()
        finally:
            if live is not None:
                live.remove_waker(wake)
            if stops is not None:
                stops.remove_waker(self._stop_asked)
            self.work.stop.set()
            with self.work.cond:
                self.work.cond.notify_all()
                held = [(driver, [claim.chunk.start for claim in self.work.ledger.holds(driver)])
                        for driver in self.drivers]
            for driver in self.drivers:  # the caller left early: workers stop when their client hangs up
                driver.break_off()
            stop_left(held)  # those whose worker still runs a chunk after a moment restart
            started = {driver for driver, _ in ended}
            for driver in self.drivers:
                if driver not in started:  # interrupted before its thread ran
                    driver.abandon()
            deadline = time.monotonic() + _JOIN_TIMEOUT
            for driver, done in ended:
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    logger.debug("thread for %s still busy; it keeps its old connections", driver.name)
                    driver.left_behind()

    def _stop_asked(self) -> None:
        self.work.outbox.put(_STOP)

    def _stop(self, stops: Optional[Stops]) -> bool:
        """Stop the positions asked (``Stops``): the workers running them restart, those not
        sent yet are cancelled when taken. False: everything is to stop."""
        if stops is None:
            return True
        positions, everything = stops.take()
        if everything:
            return False
        by_driver: dict[Driver, set[int]] = {}
        with self.work.cond:
            for claim in list(self.work.ledger.claims()):
                asked = {p for p in positions if claim.chunk.start <= p < claim.chunk.stop}
                for holder in claim.holders if asked else ():
                    by_driver.setdefault(holder, set()).update(asked)
            held = set().union(*by_driver.values()) if by_driver else set()
            self.work.cancelled.update(positions - held)  # not sent: cancelled when taken
        for driver, asked in by_driver.items():
            stop = getattr(driver, "stop_tasks", None)
            if stop is not None and not stop(frozenset(asked)):
                logger.debug("tasks %s had finished on %s: not stopped", sorted(asked), driver.name)
        return True

    def _first_round(self) -> None:
        """The first chunk of each driver that can send it from this thread, sent one after
        another, then the next chunk of each (see ``PIPELINE``), before any driver's thread
        wakes. Sent by their own threads, the first chunks of 128 workers went out over
        ~50 ms, a thread's wakeup and a turn at the GIL each, while those workers started
        theirs on the same cores; the last worker started that much later."""
        with self.work.cond:
            firsts = [driver for driver in self.drivers if self.work.pending and driver.claim_first()]
        sent = [driver for driver in firsts if driver.send_first()]
        if self.work.depth > 1 and self.work.started.is_set():
            for driver in sent:
                if not driver.send_behind():
                    break

    def _orphans(self) -> Generator[Batch, None, None]:
        """Fail what is left when every driver has ended with work not done (only a bug
        in a driver, logged where it happened, leaves any): no task goes unreported."""
        with self.work.cond:
            left = list(self.work.pending.drain())
        error = WorkerCrashed("no thread was left to send this task (see the errors logged)")
        for chunk in left:
            yield failed(chunk, error)

    def _unpark(self, ended: list[tuple[Driver, threading.Event]], only_if_stuck: bool = False) -> int:
        """Start again the drivers that left, when work is waiting to be sent
        (``only_if_stuck``: and no driver waits to take it); how many started."""
        with self.work.cond:
            if not self.work.parked or not self.work.pending or (only_if_stuck and self.work.lingering):
                return 0
            drivers, self.work.parked = self.work.parked, []
        for driver in drivers:
            ended.append((driver, self.crew.run(driver.run)))
        return len(drivers)

    def _wake(self) -> bool:
        """Tasks arrived in a live source: read them now if they could go out now (nothing
        is pending and a worker holds no chunk). If not, they are read with the next
        batch, many at once, rather than each waking the caller's thread. (Read without
        the lock: a wake missed in a race is made good by that batch, or the outbox's
        timeout.)"""
        if self.work.pending or self.work.ledger.busy >= len(self.drivers):
            return False
        self.work.outbox.put(_WAKE)
        return True

    def _refill(self) -> list[Batch]:
        """Read more tasks from a feed, here in the caller's thread, and wake the drivers."""
        if self.work.pending.exhausted:
            with self.work.cond:  # drivers waiting for more input learn there is none (retries)
                self.work.cond.notify_all()
                return self.work.pending.unsent()  # tasks that could not be pickled, if any
        with self.work.cond:
            settled = self.work.pending.refill()
            self.work.cond.notify_all()
        return settled

    def _may_get_workers(self) -> bool:
        """Whether tasks wait for a worker to join, with no driver left to run them."""
        if self.work.stop.is_set() or not (self.work.pending or not self.work.pending.exhausted):
            return False
        return self.more()

    def _give_up_if_all_lost(self) -> None:
        """When every worker has been lost for ``heartbeat`` seconds, and no other can
        join, the tasks left fail."""
        if self.more():
            return
        now = time.monotonic()
        lost = [driver.lost_since for driver in self.drivers]
        if any(since is None or now - since < self.work.heartbeat for since in lost):
            return
        with self.work.cond:
            if self.work.ledger.busy or self.work.stop.is_set():
                return
            left = list(self.work.pending.drain())
            self.work.cond.notify_all()
        reasons = "; ".join(f"{driver.name}: {driver.reason}" for driver in self.drivers)
        error = WorkerCrashed(f"every worker was lost before this task ran ({reasons})")
        for chunk in left:
            self.work.outbox.put(failed(chunk, error))

