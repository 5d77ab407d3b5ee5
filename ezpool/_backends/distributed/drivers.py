"""Drivers: each feeds one worker during a call, from a thread of the pool's crew.

A driver asks its call's ``Work`` (``work``) for chunks and tells it what became of
each; it does the I/O and nothing else. ``work.Driver`` is what every driver
offers; ``PushDriver`` is the one for a worker this client dials (a ``PYRO:`` or
``PYRONAME:`` address): it sends chunks over the link's connection and, while
the worker runs one, sends the next behind it (``PIPELINE``)::

    PushDriver.run                                    ezpool.serve (Servant)
    ──────────────                                    ──────────────────────
    work.take() ─▶ load the code if it lacks it ────▶ load(fid, blob)
                   run_chunk(ChunkCall) ────────────▶ runs it
    work.take_behind() ─▶ run_chunk(ChunkCall) ─────▶ (waits at the worker)
    receive the first answer ◀──────────────────────  (Status, reply)
    work.settle(chunk, Answered | Returned | Lost)

A worker takes a connection's calls one at a time, so a chunk sent behind another
has not started until the one ahead was answered: if the connection breaks, the
one ahead is judged (was the worker lost, or only its connection? see ``breaks``)
and those behind it go back at no cost. Connecting waits ``heartbeat`` seconds at
most (a stopped worker's system still accepts the connection). A worker that
dials in would get its own driver, asked for chunks by its worker rather than
pushing them; the call and the ledger stay as they are.
"""

from __future__ import annotations

import time
from collections import deque
from time import perf_counter
from typing import Any, Callable, NamedTuple, Optional

from ..._core.chunking import Chunk
from ..._core.ledger import Answered, Event, Lost, Returned, Stopped
from ..._core.logs import get_logger
from ..._core.records import ChunkCall, Status
from ..._core.serialization import pickled_size
from ..._worker.servant import GENERIC
from .breaks import judge
from .connect import rejoin
from .halting import ask_stop, restarted
from .links import Link, LinkEvent, State
from .startup import prepare
from .work import Driver, Target, Work

logger = get_logger(__name__)

__all__ = ["PushDriver", "Target"]

#: Bytes of tasks in a first chunk that the caller's thread sends itself: far less than
#: a socket's buffers hold, so that the send never waits for a worker to read it.
_SENT_AT_ONCE = 64 * 1024


class _Flight(NamedTuple):
    """A chunk sent to a worker and not answered yet."""

    chunk: Chunk
    ticket: object  # the connection's, for its answer
    sent: float  # when it was sent, or when the one ahead of it was answered
    posted: float  # when it was sent (``time.perf_counter``, read just before), for the timeline


class PushDriver(Driver):
    """Feeds a worker this client dials, over ``link``'s connection."""

    def __init__(self, work: Work, link: Link, target: Target, restart: Callable[[Link], bool]) -> None:
        self.work = work
        self.link = link
        self.name = link.text
        self.target = target
        self.restart = restart  # starts again a worker this pool started, if it died
        self._flight: deque[_Flight] = deque()  # sent, to be answered in this order
        self._first: Optional[Chunk] = None  # taken by the caller's thread, not sent yet
        self._first_error: Optional[Exception] = None  # why the caller's thread could not send it
        self._counted = False  # whether it told the call that its first chunk went out
        self._stopping: frozenset[int] = frozenset()  # positions its worker restarts to stop

    @property
    def lost_since(self) -> Optional[float]:
        return self.link.since if self.link.state is State.LOST else None

    @property
    def reason(self) -> str:
        return self.link.reason

    def __repr__(self) -> str:
        return f"PushDriver({self.link!r})"

    # --- from the caller's thread ------------------------------------------------------

    def claim_first(self) -> bool:
        link, fid = self.link, self.target.shipment.fid
        if not (link.state is State.READY and link.connection is not None and link.connection.idle
                and (link.serves != GENERIC or fid in link.loaded)):
            return False  # connecting, or loading code, could make the caller's thread wait
        self._first = self.work.next(self, time.monotonic())
        return self._first is not None

    def send_first(self) -> bool:
        first = self._first
        if first is None or sum(map(pickled_size, first.payloads)) > _SENT_AT_ONCE:
            return False  # too big: its own thread sends it
        self._count()
        self.link.on(LinkEvent.SENT)
        posted = perf_counter()
        try:
            ticket = self._send(first, queued=False)
        except Exception as exc:
            self._first_error = exc
        else:
            self._flight.append(_Flight(first, ticket, time.monotonic(), posted))
            self._first = None
        return True

    def send_behind(self) -> bool:
        if not self._flight or self.link.state is not State.RUNNING:
            return True  # nothing to send behind here: try the next worker
        behind = self.work.take_behind(self)
        if behind is None:
            return False
        self._launch(behind)
        return True

    # --- its own thread ------------------------------------------------------------------

    def run(self) -> None:
        work, link = self.work, self.link
        try:
            self._start()
            while not work.stop.is_set():
                if not self._flight:
                    if link.state is State.LOST:
                        self._count()  # no one waits for a lost worker to start
                        if not self._rejoin():
                            return
                    chunk = work.take(self)
                    if chunk is None:
                        return
                    self._launch(chunk)
                    self._count()
                    if not self._flight:  # it could not go, and was settled
                        continue
                if len(self._flight) < work.depth and link.state is State.RUNNING:
                    work.wait_to_queue(self._flight[0].sent, self._flight[0].chunk)
                    behind = work.take_behind(self)
                    if behind is not None:
                        self._launch(behind)
                self._land()
            if self._flight:  # the caller left with answers on their way
                self.abandon()
        except BaseException as exc:  # a bug or an interpreter shutting down: lose no task
            logger.exception("the thread feeding worker %s failed", link.text)
            reason = f"the client thread failed: {exc!r}"
            sent, self._first = bool(self._flight), None
            self._flight.clear()
            if sent:  # the first may have run; those behind it had not started
                work.lose(self, Lost(f"worker {link.text} was given up ({reason})"))
            else:
                work.release(self, reason)
            link.on(LinkEvent.FAILED, reason)
        finally:
            self._count()
            work.exit()

    def _start(self) -> None:
        """Go on from what the caller's thread did for this worker, if anything."""
        first, error = self._first, self._first_error
        self._first = self._first_error = None
        if first is None:
            return
        if error is not None:
            self._settle(first, self._broken(first, error))
        else:  # too big to send from the caller's thread
            self._launch(first)
            self._count()

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            self.work.started_one(self)

    def _settle(
        self, chunk: Chunk, event: Event, reply: Any = b"", trip: Optional[float] = None,
        window: Optional[tuple[float, float]] = None,
    ) -> None:
        self.work.settle(self, chunk, event, reply, trip, window)

    def _launch(self, chunk: Chunk) -> None:
        """Send ``chunk``, behind those in flight; settle it at once if it cannot go.
        Never raises for what the network does."""
        queued = bool(self._flight)
        if not queued:
            refused = self._prepare(chunk)
            if refused is not None:
                self._settle(chunk, *refused)
                return
        posted = perf_counter()
        try:
            ticket = self._send(chunk, queued)
        except Exception as exc:
            if queued:  # the chunk ahead of it finds the connection broken, and judges the worker
                logger.debug("worker %s: tasks %d..%d could not be sent behind another; they go back (%s)",
                             self.name, chunk.start, chunk.stop - 1, exc)
                self._settle(chunk, Returned(f"it could not be sent: {exc}"))
            else:
                self._settle(chunk, self._broken(chunk, exc))
            return
        self._flight.append(_Flight(chunk, ticket, time.monotonic(), posted))

    def _send(self, chunk: Chunk, queued: bool) -> object:
        """Send ``chunk`` to the worker; the ticket for its answer."""
        connection = self.link.connection
        assert connection is not None
        payloads = [b"".join(parts) for parts in chunk.payloads]
        call = ChunkCall(self.link.identity, self.target.shipment.fid, chunk.start, chunk.stop - chunk.start,
                         payloads, self.work.timeout, self.work.capture_level, self.work.limits)
        return connection.send("run_chunk", *call.wire(), queued=queued)

    def _prepare(self, chunk: Chunk) -> Optional[tuple[Event, bytes]]:
        """Connected, RUNNING and holding the call's code, or what became of ``chunk``."""
        return prepare(self, chunk)

    def _land(self) -> None:
        """Wait for the answer to the first chunk in flight and settle it. If the connection
        broke, or the worker is no longer fit to run them, those behind it go back to be
        sent again (they never started: a worker takes a connection's calls one at a time)."""
        link, flight = self.link, self._flight
        head = flight.popleft()
        connection = link.connection
        reply: Any = b""
        trip = None
        window = None
        if connection is not None and connection.is_open:
            event, reply, trip = self._receive(head, last=not flight)
            window = (head.posted, perf_counter())
        else:  # closed since it was sent (it lost a race, and was broken off)
            event = self._broken(head.chunk, ConnectionError("the connection was closed"), head.sent)
        behind: list[_Flight] = []
        if flight:
            connection = link.connection
            if link.state is not State.RUNNING or connection is None or not connection.is_open:
                behind = list(flight)
                flight.clear()
                if connection is not None:
                    connection.close()
                link.on(LinkEvent.IDLE)
            else:  # the next one starts now: its trip and its lateness count from here
                now = time.monotonic()
                flight[0] = flight[0]._replace(sent=now)
                self.work.restart_clock(self, flight[0].chunk, now)
        self._settle(head.chunk, event, reply, trip, window)
        why = getattr(event, "reason", "") or getattr(event, "what", "") or event.kind.value
        if behind:
            logger.debug("worker %s: the chunks sent behind tasks %d..%d never started; they go back (%s)",
                         link.text, head.chunk.start, head.chunk.stop - 1, why)
        for item in behind:
            why_back = Returned(f"it waited behind a chunk that did not come back ({why})")
            self._settle(item.chunk, event if isinstance(event, Stopped) else why_back)

    def _receive(self, item: _Flight, last: bool) -> tuple[Event, Any, Optional[float]]:
        """The answer to ``item``; the link leaves RUNNING only with the ``last`` in flight."""
        link = self.link
        connection = link.connection
        assert connection is not None
        try:
            status, reply = connection.receive(item.ticket)
        except Exception as exc:
            if self._stopping:  # it restarts, as asked: those tasks end cancelled
                asked, self._stopping = self._stopping, frozenset()
                return restarted(link, asked), b"", None
            return self._broken(item.chunk, exc, item.sent), b"", None
        now = time.monotonic()
        answered = Status(status)
        if answered is Status.OK:
            link.on(LinkEvent.IDLE if last else LinkEvent.ANSWERED)
            return Answered(item.chunk.stop - item.chunk.start), reply, now - item.sent
        if answered is Status.NEED_FUNCTION:  # it dropped the code from its cache: send it again
            link.loaded.discard(self.target.shipment.fid)
            if last:
                link.on(LinkEvent.IDLE)
        elif answered is Status.RESTARTING:
            link.on(LinkEvent.RESTARTING, "it restarts (to stop a task, or after its max_tasks_per_worker)")
        elif answered is Status.LEAVING:  # nothing ran; what it handed back costs nothing
            link.on(LinkEvent.LEFT, f"it left: {bytes(reply).decode(errors='replace')}")
        else:  # WRONG_WORKER: another process answers at its address; nothing ran
            link.on(LinkEvent.REPLACED, "another process answers at its address")
        return Returned(link.reason or answered.value), b"", None

    def _broken(self, chunk: Chunk, exc: Exception, started: Optional[float] = None) -> Event:
        """The call that sent ``chunk`` broke: was the worker lost, or only its connection?
        ``started``: since when the chunk may have run there (``breaks.judge``)."""
        return judge(self, self.link, self.work, self.target, chunk, exc, started)

    def _rejoin(self) -> bool:
        """Check a lost worker again and again while there is work it could do (one that
        left for good, never)."""
        work, target = self.work, self.target
        if self.link.left:
            return False
        return rejoin(self.link, target.name, target.code, self.restart, work.finished, work.stop)

    def stop_tasks(self, positions: frozenset[int]) -> bool:
        """From the caller's thread: ``positions``, held here, must stop (``halting``)."""
        with self.work.cond:
            starts = [claim.chunk.start for claim in self.work.ledger.holds(self)]
        self._stopping = self._stopping | positions
        if not ask_stop(self.link, starts, positions):
            self._stopping = frozenset()
            return False
        return True

    # --- when the call ends ----------------------------------------------------------------

    def break_off(self) -> None:
        with self.work.cond:
            holding = bool(self.work.ledger.holds(self))
        if holding and self.link.connection is not None:
            self.link.connection.abort()

    def abandon(self) -> None:
        """Give up the calls the worker has not answered, as the caller left: close the
        connection their answers would come back on (to no one), and make the link
        ready for the next call."""
        if self.link.connection is not None and self._flight:
            self.link.connection.close()
        self._flight.clear()
        self.link.on(LinkEvent.IDLE)

    def left_behind(self) -> None:
        self.link.reconnect(self.work.heartbeat)
