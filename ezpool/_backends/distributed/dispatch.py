"""One ``dmap`` call: chunks go out to workers, and each comes back exactly once.

A thread per worker (from the pool's ``crew``) takes a chunk, sends it, and turns
whatever happened into a ``Verdict`` (the first chunks of workers ready for them
go out from the caller's thread, before those threads wake: ``_first_round``).
While the worker runs it, the thread sends the next chunk too (``PIPELINE``, where
backup copies run: see ``held_at_once``): it waits at the worker's end of the
connection and starts the moment the first is answered, with no round trip
between. A worker takes a connection's calls one at a time, so a chunk sent
behind another has not started until the one ahead was answered: if the
connection breaks, the one ahead is judged as below and those behind it are
``returned``.
``Call.settle`` is the one place that decides what a verdict means for the
chunk's tasks:

``done``
    the worker answered: its outcomes become a ``Batch``; tasks it did not run
    (it stopped early for a timeout) are sent again, at no cost.
``returned``
    nothing is known to have run, or the same worker process still answers
    after its connection broke: the chunk is sent again, at no cost (a task
    returned ``MAX_RETURNS`` times ends as ``WorkerCrashed``).
``lost``
    the worker process died, was replaced, or went silent while it held the
    chunk: each task counts an attempt, and is retried on its own or, after
    ``max_attempts``, ends as ``WorkerCrashed``.

When no task waits to be sent, an idle worker (one holding nothing) may run a
backup copy of a chunk that is late (see ``backups``); a chunk is then held by two links. The first
``done`` settles it, and the other copy is broken off and its answer dropped; a
copy that fails while the other still runs is dropped too, counting nothing.

Whatever a worker's thread meets, any exception included, the chunk it holds is
settled before the thread ends, so no task is ever lost or reported twice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Generator, Sequence
from typing import Any, Callable, NamedTuple, Optional

from ... import _pyro
from ..._core.chunking import Chunk, ChunkQueue
from ..._core.feed import Feed
from ..._core.logs import get_logger
from ..._core.records import Batch, ChunkReply
from ..._core.relay import capture_level
from ..._core.serialization import loads, pickled_size, rebuild
from ..._core.shipping import Shipment
from ..._worker.running import failed_chunk, pack_chunk
from ..._worker.servant import GENERIC
from ...errors import ResultNotSerializable, WorkerCrashed
from ...options import Options
from .backups import Claim, pick
from .connect import CONNECT_TIMEOUT, fits, hello, version_table
from .crew import Crew
from .links import Link, State

logger = get_logger(__name__)

__all__ = ["Call", "Target", "Verdict", "MAX_RETURNS", "PIPELINE", "backups", "held_at_once"]

#: Times a task may come back unfinished from a live worker before it counts as crashed.
MAX_RETURNS = 8

#: Chunks a worker holds at once: the one it runs, and the next, which waits at the
#: worker's end of the connection so that it starts the moment the first is answered
#: (no round trip between, nor a wait for this process to be free to send it).
PIPELINE = 2

#: Seconds a finished call waits for its worker threads before leaving them behind.
_JOIN_TIMEOUT = 5.0

#: Bytes of tasks in a first chunk that the caller's thread sends itself: far less than
#: a socket's buffers hold, so that the send never waits for a worker to read it.
_SENT_AT_ONCE = 64 * 1024

_EXIT = object()  # a worker thread's last word on the outbox
_WAKE = object()  # tasks arrived in a live source: read them
_UNPARK = object()  # work came back while threads that could run it had left: start them again


class Target(NamedTuple):
    """What a call runs: its name, the fingerprint of its code, and its shipment."""

    name: str
    code: str
    shipment: Shipment


class _Flight(NamedTuple):
    """A chunk sent to a worker and not answered yet."""

    chunk: Chunk
    ticket: object  # the connection's, for its answer
    sent: float  # when it was sent, or when the one ahead of it was answered


class _Start(NamedTuple):
    """How the caller's thread leaves a worker at the start of a call (``_first_round``)."""

    flight: deque[_Flight]  # what it sent there: the first chunk, and maybe the next
    unsent: Optional[Chunk] = None  # the first chunk, taken and left for the worker's thread
    error: Optional[Exception] = None  # why ``unsent`` could not be sent, if it was tried


class Verdict(NamedTuple):
    """What became of a chunk sent to a worker."""

    kind: str  # "done", "returned" or "lost"
    reply: bytes = b""
    reason: str = ""
    trip: Optional[float] = None  # for "done": seconds from sending the chunk to its answer


class Call:
    """The chunks of one call, the workers it uses, and the outcomes on their way back."""

    def __init__(
        self,
        tasks: Sequence[Any],
        pending: ChunkQueue,
        links: list[Link],
        target: Target,
        options: Options,
        restart: Callable[[Link], bool],
        crew: Crew,
    ) -> None:
        self.tasks = tasks
        self.pending = pending  # guarded by self.cond, like held and the counters
        self.links = links
        self.target = target
        self.timeout = options.timeout
        self.heartbeat = options.heartbeat
        self.max_attempts = options.max_attempts
        self.backup = backups(options, pending.feed)
        self.depth = held_at_once(options, pending.feed)
        # Sent only when wanted, so that a call without it is one any worker knows.
        level = capture_level(options)
        self.capture = [] if level is None else [level]
        self.restart = restart  # starts again a worker this pool started, if it died
        self.crew = crew  # the pool's threads, one drives each worker during the call
        # What each link holds, the one it runs first; a chunk with a backup copy is held by two links.
        self.held: dict[Link, list[Claim]] = {}
        self.attempts: dict[int, int] = {}
        self.returns: dict[int, int] = {}
        # Per worker (its text): tasks measured and their seconds, so that a slow
        # worker's times do not make the others' chunks look slow (see ``_take``).
        self.rates: dict[str, tuple[int, float]] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        # Set once every worker has been sent its first chunk (or given up): until
        # then the threads send no second chunks, so that the last worker to get
        # one does not wait behind them.
        self.started = threading.Event()
        self._starting = len(links)
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Threads that wait in ``_take`` for work that may come back or a copy to run,
        # and the links whose threads left instead, since enough others wait (see
        # ``_park``); both guarded by cond.
        self.lingering = 0
        self.parked: list[Link] = []

    # --- the caller's thread ---------------------------------------------------------

    def batches(self) -> Generator[Batch, None, None]:
        starts: dict[Link, _Start] = {}
        ended: list[threading.Event] = []  # one per link, in order, once its thread runs
        again: list[tuple[Link, threading.Event]] = []  # threads started again for parked links
        live = self.pending.feed.live if self.pending.feed is not None else None
        wake = self._wake
        if live is not None:
            live.add_waker(wake)
        try:
            self._first_round(starts)
            for link in self.links:
                ended.append(self.crew.run(self._drive, link, starts.get(link)))
            alive = len(ended)
            yield from self._refill()
            while alive:
                try:
                    item = self.outbox.get(timeout=0.25)
                except queue.Empty:
                    self._give_up_if_all_lost()
                    alive += self._unpark(again, only_if_stuck=True)
                    yield from self._refill()
                    continue
                if item is _EXIT:
                    alive -= 1
                    if not alive:  # work may be left, and links whose threads left early
                        alive += self._unpark(again)
                elif item is _UNPARK:
                    alive += self._unpark(again)
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
                busy = list(self.held)
            for link in busy:  # the caller left early: workers stop when their client hangs up
                if link.connection is not None:
                    link.connection.abort()
            for link in self.links[len(ended):]:  # interrupted before its thread ran
                start = starts.get(link)
                if start is not None and start.flight:
                    _abandon(link)
                elif link.state is State.RUNNING:
                    link.move(State.READY)
            deadline = time.monotonic() + _JOIN_TIMEOUT
            for link, done in [*zip(self.links, ended), *again]:
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    logger.debug("thread for %s still busy; it keeps its old connections", link.text)
                    link.reconnect(self.heartbeat)

    def _first_round(self, starts: dict[Link, _Start]) -> None:
        """Send the first chunk of each worker that is ready for one, from this thread,
        one after another, then the next chunk of each (see ``PIPELINE``), before any
        worker's thread wakes. Sent by their own threads, the first chunks of 128
        workers went out over ~50 ms, a thread's wakeup and a turn at the GIL each,
        while those workers started theirs on the same cores; the last worker started
        that much later.

        Only what cannot make this thread wait: a worker connected, idle and holding the
        call's code, and a first chunk small enough for the socket to take at once
        (a chunk sent behind it never waits: see ``client.Connection.send``).
        Connecting, loading code, a large chunk and judging a failed send are left to
        the worker's thread. What it did for each worker goes into ``starts`` as it goes.
        """
        fid = self.target.shipment.fid
        ready = [
            link for link in self.links
            if link.state is State.READY and link.connection is not None and link.connection.idle
            and (link.serves != GENERIC or fid in link.loaded)
        ]
        with self.cond:
            now = time.monotonic()
            for link in ready:
                if not self.pending:
                    break
                chunk = self.pending.take()
                self._hold(link, Claim(chunk, link, now))
                starts[link] = _Start(deque(), chunk)
        sent = 0
        for link, start in starts.items():
            first = start.unsent
            assert first is not None
            if sum(map(pickled_size, first.payloads)) > _SENT_AT_ONCE:
                continue
            sent += 1
            link.move(State.RUNNING)
            try:
                ticket = self._send(link, first, queued=False)
            except Exception as exc:
                starts[link] = start._replace(error=exc)
            else:
                start.flight.append(_Flight(first, ticket, time.monotonic()))
                starts[link] = start._replace(unsent=None)
        if sent:
            self._started(sent)
        if self.depth > 1 and self.started.is_set():
            for link, start in starts.items():
                if start.flight and link.state is State.RUNNING:
                    behind = self._take_queued(link)
                    if behind is None:
                        break
                    self._launch(link, behind, start.flight)

    def _orphans(self) -> Generator[Batch, None, None]:
        """Fail what is left when every thread has ended with work not done (only a bug
        in a thread, logged where it happened, leaves any): no task goes unreported."""
        with self.cond:
            left = list(self.pending.drain())
        error = WorkerCrashed("no thread was left to send this task (see the errors logged)")
        for chunk in left:
            yield _failed(chunk, error)

    def _unpark(self, again: list[tuple[Link, threading.Event]], only_if_stuck: bool = False) -> int:
        """Start again the threads of parked links, when work is waiting to be sent
        (``only_if_stuck``: and no thread waits to take it); how many started."""
        with self.cond:
            if not self.parked or not self.pending or (only_if_stuck and self.lingering):
                return 0
            links, self.parked = self.parked, []
        for link in links:
            again.append((link, self.crew.run(self._drive, link, None)))
        return len(links)

    def _wake(self) -> bool:
        """Tasks arrived in a live source: read them now if they could go out now (nothing
        is pending and a worker holds no chunk). If not, they are read with the next
        batch, many at once, rather than each waking the caller's thread. (Read without
        the lock: a wake missed in a race is made good by that batch, or the outbox's
        timeout.)"""
        if self.pending or len(self.held) >= len(self.links):
            return False
        self.outbox.put(_WAKE)
        return True

    def _refill(self) -> list[Batch]:
        """Read more tasks from a feed, here in the caller's thread, and wake the workers."""
        if self.pending.exhausted:
            return []
        with self.cond:
            settled = self.pending.refill()
            self.cond.notify_all()
        return settled

    def _give_up_if_all_lost(self) -> None:
        """When every worker has been lost for ``heartbeat`` seconds, the tasks left fail."""
        now = time.monotonic()
        if any(link.state is not State.LOST or now - link.since < self.heartbeat for link in self.links):
            return
        with self.cond:
            if self.held or self.stop.is_set():
                return
            left = list(self.pending.drain())
            self.cond.notify_all()
        reasons = "; ".join(f"{link.text}: {link.reason}" for link in self.links)
        error = WorkerCrashed(f"every worker was lost before this task ran ({reasons})")
        for chunk in left:
            self.outbox.put(_failed(chunk, error))

    # --- one thread per worker -------------------------------------------------------

    def _drive(self, link: Link, start: Optional[_Start] = None) -> None:
        """Feed one worker until the work runs out; settle every chunk it holds.

        While the worker runs a chunk, the next one (if one waits to be sent) is
        already on its way and waits at the worker (see ``PIPELINE``). ``start``:
        what the caller's thread sent or took for it (see ``_first_round``).
        """
        flight: deque[_Flight] = deque()  # sent to this worker, to be answered in this order
        taken: Optional[Chunk] = None  # taken and not yet sent nor settled
        starting = True
        try:
            if start is not None:
                flight = start.flight
                taken = start.unsent
                if taken is not None and start.error is not None:
                    self.settle(link, taken, self._broken(link, taken, start.error))
                elif taken is not None:  # too big to send from the caller's thread
                    self._launch(link, taken, flight)
                    self._started()
                taken = None
                starting = False  # the caller's thread counted the others
            while not self.stop.is_set():
                if not flight:
                    if link.state is State.LOST:
                        if starting:  # no one waits for a lost worker to start
                            starting = self._started()
                        if not self._rejoin(link):
                            return
                    taken = self._take(link)
                    if taken is None:
                        return
                    self._launch(link, taken, flight)
                    taken = None
                    if starting:
                        starting = self._started()
                    if not flight:  # it could not go, and was settled
                        continue
                if len(flight) < self.depth and link.state is State.RUNNING:
                    self._wait_to_queue(flight[0])
                    taken = self._take_queued(link)
                    if taken is not None:
                        self._launch(link, taken, flight)
                        taken = None
                self._land(link, flight)
            if flight:  # the caller left with answers on their way
                _abandon(link)
        except BaseException as exc:  # a bug or an interpreter shutting down: lose no task
            logger.exception("the thread feeding worker %s failed", link.text)
            reason = f"the client thread failed: {exc!r}"
            if flight:  # the first may have run; those behind it had not started
                self.settle(link, flight.popleft().chunk, Verdict("lost", reason=reason))
            for item in flight:
                self.settle(link, item.chunk, Verdict("returned", reason=reason))
            if taken is not None:
                self.settle(link, taken, Verdict("returned", reason=reason))
            if link.state is not State.LOST:
                link.move(State.LOST, reason)
        finally:
            if starting:
                self._started()
            self.outbox.put(_EXIT)

    def _started(self, count: int = 1) -> bool:
        """This thread has sent the first chunk of ``count`` workers, or will send none;
        always False."""
        with self.cond:
            self._starting -= count
            if self._starting <= 0:
                self.started.set()
        return False

    def _wait_to_queue(self, head: _Flight) -> None:
        """Wait until a chunk may be sent behind ``head``: once every worker has its
        first, or once ``head`` is half done (by the run times measured so far)."""
        if self.started.is_set():
            return
        mean = self.pending.sizer.mean
        expected = (head.chunk.stop - head.chunk.start) * mean if mean is not None else 0.0
        self.started.wait(max(0.0, head.sent + expected / 2 - time.monotonic()))

    def _take(self, link: Link) -> Optional[Chunk]:
        """The next chunk, or a backup copy of a late one when none waits to be sent;
        waiting while other workers may still give some back."""
        with self.cond:
            while not self.stop.is_set():
                now = time.monotonic()
                if self.pending:
                    chunk = self.pending.take()
                    self._hold(link, Claim(chunk, link, now))
                    return chunk
                if not self.held and self.pending.exhausted:
                    return None
                if self._park(link):
                    return None
                pause = 0.5
                if self.backup:
                    claims = dict.fromkeys(claim for claims in self.held.values() for claim in claims)
                    claim, wait = pick(claims, self._expected(link), now)
                    if claim is not None:
                        logger.info("worker %s has held tasks %d..%d for %.1f s; %s runs a backup copy",
                                    claim.links[0].text, claim.chunk.start, claim.chunk.stop - 1,
                                    now - claim.since, link.text)
                        claim.links.append(link)
                        claim.since = now
                        self._hold(link, claim)
                        return claim.chunk
                    pause = min(pause, wait)
                self.lingering += 1
                try:
                    self.cond.wait(pause)
                finally:
                    self.lingering -= 1
            return None

    def _park(self, link: Link) -> bool:
        """Whether the idle ``link``'s thread should leave now, because enough others wait
        for what may still come (work given back, a late chunk to copy). Called with
        ``cond`` held.

        Every idle thread used to wait to the end of the call: at 128 workers, the
        tail woke dozens of them at every answer, on the cores the last chunks ran
        on, and the end woke all of them at once. A copy needs at most one waiting
        thread for each worker still holding chunks, and work given back one; more
        is wasted. The link stays ready, and its thread is started again when work is
        given back (``_unpark``), or found waiting with no thread to take it.
        """
        if not self.pending.exhausted:  # more input may come: every thread waits for it
            return False
        wanted = max(1, len(self.held)) if self.backup else 1
        if self.lingering < wanted:
            return False
        self.parked.append(link)
        return True

    def _take_queued(self, link: Link) -> Optional[Chunk]:
        """A chunk to wait at a worker behind the one it runs, if one waits to be sent
        now (never a backup copy: those go to idle workers)."""
        with self.cond:
            if self.stop.is_set() or not self.pending:
                return None
            waiting = self.pending.waiting
            if waiting <= len(self.links) - len(self.held) and waiting <= sum(
                1 for other in self.links if other not in self.held and other.state is not State.LOST
            ):  # an idle worker will want it: leave it
                return None
            chunk = self.pending.take()
            self._hold(link, Claim(chunk, link, time.monotonic()))
            return chunk

    def _hold(self, link: Link, claim: Claim) -> None:
        """``link`` now holds ``claim``'s chunk, behind any it holds. Called with ``cond`` held."""
        self.held.setdefault(link, []).append(claim)

    def _expected(self, link: Link) -> Optional[float]:
        """Seconds a task is expected to take, for judging whether ``link`` should copy a
        late chunk: its own mean run time in this call once it has one (a copy is worth
        running if it would finish well before the first), else the call's mean.
        Called with ``cond`` held."""
        tasks, seconds = self.rates.get(link.text, (0, 0.0))
        return seconds / tasks if tasks else self.pending.sizer.mean

    def _claim(self, link: Link, chunk: Chunk) -> Optional[Claim]:
        """The claim by which ``link`` holds ``chunk``. Called with ``cond`` held."""
        return next((claim for claim in self.held.get(link, ()) if claim.chunk is chunk), None)

    def _superseded(self, link: Link, chunk: Chunk) -> bool:
        """Whether another copy of ``chunk``, which ``link`` holds, has already settled it."""
        with self.cond:
            claim = self._claim(link, chunk)
            return claim is not None and claim.settled

    def _launch(self, link: Link, chunk: Chunk, flight: deque[_Flight]) -> None:
        """Send ``chunk`` to ``link``'s worker, behind those in ``flight``; settle it at
        once if it cannot go. Never raises for what the network does."""
        queued = bool(flight)
        if not queued:
            verdict = self._prepare(link, chunk)
            if verdict is not None:
                self.settle(link, chunk, verdict)
                return
        try:
            ticket = self._send(link, chunk, queued)
        except Exception as exc:
            if queued:  # the chunk ahead of it finds the connection broken, and judges the worker
                logger.debug("worker %s: tasks %d..%d could not be sent behind another; they go back (%s)",
                             link.text, chunk.start, chunk.stop - 1, exc)
                self.settle(link, chunk, Verdict("returned", reason=f"it could not be sent: {exc}"))
            else:
                self.settle(link, chunk, self._broken(link, chunk, exc))
            return
        flight.append(_Flight(chunk, ticket, time.monotonic()))

    def _send(self, link: Link, chunk: Chunk, queued: bool) -> object:
        """Send ``chunk`` to ``link``'s worker; the ticket for its answer."""
        connection = link.connection
        assert connection is not None
        return connection.send(
            "run_chunk", link.identity, self.target.shipment.fid, chunk.start, chunk.stop - chunk.start,
            [b"".join(parts) for parts in chunk.payloads], self.timeout, *self.capture, queued=queued,
        )

    def _prepare(self, link: Link, chunk: Chunk) -> Optional[Verdict]:
        """Make ``link`` ready to run the first of its chunks: connected, RUNNING, and
        holding the call's code. A verdict when ``chunk`` cannot go there now."""
        connection = link.connection
        assert connection is not None
        try:
            connection.open()
        except Exception as exc:  # nothing was sent
            link.move(State.LOST, f"cannot connect: {_pyro.translate(exc, link.text)}")
            return Verdict("returned", reason=link.reason)
        link.move(State.RUNNING)
        if self._superseded(link, chunk):  # from now on, settling the chunk breaks this connection off
            link.move(State.READY)
            return Verdict("returned", reason="another copy of the chunk answered first")
        fid = self.target.shipment.fid
        if link.serves != GENERIC or fid in link.loaded:
            return None
        try:
            status, reply = connection.call("load", fid, self.target.shipment.blob)
        except Exception as exc:
            return self._broken(link, chunk, exc)
        if status != "ok":  # the code cannot run there: every task says why
            link.move(State.READY)
            failed = failed_chunk(chunk.stop - chunk.start, loads(reply))
            return Verdict("done", reply=pack_chunk(chunk.start, failed))
        link.loaded.add(fid)
        return None

    def _land(self, link: Link, flight: deque[_Flight]) -> None:
        """Wait for the answer to the first chunk in ``flight`` and settle it. If the
        connection broke, or the worker is no longer fit to run them, those behind it
        go back to be sent again (they never started: a worker takes a connection's
        calls one at a time)."""
        head = flight.popleft()
        connection = link.connection
        if connection is not None and connection.is_open:
            verdict = self._receive(link, head, last=not flight)
        else:  # closed since it was sent (it lost a race, and was broken off)
            verdict = self._broken(link, head.chunk, ConnectionError("the connection was closed"))
        behind: list[_Flight] = []
        if flight:
            connection = link.connection
            if link.state is not State.RUNNING or connection is None or not connection.is_open:
                behind = list(flight)
                flight.clear()
                if connection is not None:
                    connection.close()
                if link.state is State.RUNNING:
                    link.move(State.READY)
            else:  # the next one starts now: its trip and its lateness count from here
                now = time.monotonic()
                flight[0] = flight[0]._replace(sent=now)
                with self.cond:
                    claim = self._claim(link, flight[0].chunk)
                    if claim is not None and claim.links[-1] is link:
                        claim.since = now
        self.settle(link, head.chunk, verdict)
        if behind:
            logger.debug("worker %s: the chunks sent behind tasks %d..%d never started; they go back (%s)",
                         link.text, head.chunk.start, head.chunk.stop - 1, verdict.reason or verdict.kind)
        for item in behind:
            self.settle(link, item.chunk, Verdict("returned", reason=f"it waited behind a chunk that did not "
                                                  f"come back ({verdict.reason or verdict.kind})"))

    def _receive(self, link: Link, item: _Flight, last: bool) -> Verdict:
        """The answer to ``item``; the link leaves RUNNING only with the ``last`` in flight."""
        connection = link.connection
        assert connection is not None
        try:
            status, reply = connection.receive(item.ticket)
        except Exception as exc:
            return self._broken(link, item.chunk, exc)
        now = time.monotonic()
        if status == "ok":
            if last:
                link.move(State.READY)
            else:
                link.alive_at = now
            return Verdict("done", reply=reply, trip=now - item.sent)
        if status == "need-function":  # it dropped the code from its cache: send it again
            link.loaded.discard(self.target.shipment.fid)
            if last:
                link.move(State.READY)
        elif status == "restarting":
            link.move(State.LOST, "it restarts to stop a task that overran its timeout")
        else:  # "wrong-worker": another process answers at its address; nothing ran
            link.move(State.LOST, "another process answers at its address")
        return Verdict("returned", reason=link.reason)

    def _broken(self, link: Link, chunk: Chunk, exc: Exception) -> Verdict:
        """The call that sent ``chunk`` on ``link`` broke: was the worker lost, or only its connection?"""
        if link.connection is not None:
            link.connection.close()
        if self.stop.is_set():
            link.move(State.READY)
            return Verdict("returned", reason="the call was stopped")
        if link.state is State.SILENT:
            reason = f"it left a check unanswered for {self.heartbeat} s"
            link.move(State.LOST, reason)
            return Verdict("lost", reason=reason)
        if self._superseded(link, chunk):  # broken off on purpose: the worker is fine
            link.move(State.READY)
            return Verdict("returned", reason="another copy of the chunk answered first")
        try:
            info = hello(link, min(CONNECT_TIMEOUT, self.heartbeat))
        except Exception as error:
            reason = f"{exc} (and then: {error})"
            link.move(State.LOST, reason)
            logger.warning("lost worker %s (%s); its tasks go to the others", link.text, exc)
            return Verdict("lost", reason=reason)
        if info["identity"] == link.identity:
            logger.info("connection to worker %s broke (%s); it still answers, so its chunk is resent",
                        link.text, exc)
            link.move(State.READY)
            return Verdict("returned", reason=str(exc))
        reason = f"its process was replaced while it held the chunk ({exc})"
        unfit = self._unfit(info)
        if unfit:
            logger.warning("lost worker %s: %s; the process there now gets no work: %s",
                           link.text, reason, unfit)
            link.move(State.LOST, unfit)
        else:
            logger.warning("lost worker %s: %s; a new process answers there, and gets work",
                           link.text, reason)
            link.admit(info)
        return Verdict("lost", reason=reason)

    def _rejoin(self, link: Link) -> bool:
        """Check a lost worker again and again while there is work it could do."""
        pause = min(1.0, self.heartbeat / 2)
        wrong = ""
        while True:
            with self.cond:
                if self.stop.is_set() or (not self.pending and not self.held and self.pending.exhausted):
                    return False
            if self.restart(link):
                return True
            try:
                info = hello(link, max(pause, 0.5))
            except Exception as exc:
                logger.debug("worker %s still does not answer: %s", link.text, exc)
            else:
                unfit = self._unfit(info)
                if not unfit:
                    replaced = info["identity"] != link.identity
                    link.admit(info)
                    logger.warning("worker %s answers again%s; it gets work again",
                                   link.text, " (a new process)" if replaced else "")
                    return True
                if unfit != wrong:
                    wrong = unfit
                    logger.warning("worker %s answers, but %s; it gets no work", link.text, unfit)
            if self.stop.wait(pause):
                return False

    def _unfit(self, info: dict[str, Any]) -> str:
        """Why the worker that said ``info`` may not run this call's code ("" if it may)."""
        refusal, _ = version_table(info, info.get("serves") == GENERIC)
        return fits(info, self.target.name, self.target.code) or refusal or ""

    # --- the one place a chunk's fate is decided -----------------------------------

    def settle(self, link: Link, chunk: Chunk, verdict: Verdict) -> None:
        """Report or requeue every task of ``chunk``, exactly once, whichever copy answers."""
        with self.cond:
            claim = self._claim(link, chunk)
            assert claim is not None, f"{link.text} settles a chunk it does not hold"
            claims = self.held[link]
            claims.remove(claim)
            if not claims:
                del self.held[link]
            claim.links.remove(link)
            if claim.settled or (verdict.kind != "done" and claim.links):
                self.cond.notify_all()
                dropped = "another copy answered first" if claim.settled else "another copy still runs"
            else:
                dropped = ""
                claim.settled = True
                for other in claim.links:  # they lost the race: their workers stop after this task
                    if other.connection is not None:
                        other.connection.abort()
        if dropped:
            logger.debug("dropped the %s answer of %s for tasks %d..%d: %s",
                         verdict.kind, link.text, chunk.start, chunk.stop - 1, dropped)
            if claim.settled and link.connection is not None:
                link.connection.close()  # it may have been broken off just after answering
            return
        batches: list[Batch] = []
        again: list[tuple[int, int, bool]] = []  # (start, stop, alone) to send again
        try:
            if verdict.kind == "done":
                self._accept(verdict.reply, chunk, link.text, batches, again, verdict.trip)
            elif verdict.kind == "returned":
                self._strike(chunk, self.returns, MAX_RETURNS, link.text, verdict.reason, batches, again,
                             alone=False)
            else:
                self._strike(chunk, self.attempts, self.max_attempts, link.text, verdict.reason, batches,
                             again, alone=True)
        except Exception as exc:  # never lose a chunk to a bug in deciding its fate
            logger.exception("could not settle tasks %d..%d", chunk.start, chunk.stop - 1)
            error = WorkerCrashed(f"the outcome from {link.text} could not be handled: {exc!r}")
            batches, again = [_failed(chunk, error, link.text)], []
        with self.cond:
            for start, stop, alone in reversed(again):
                self.pending.put_back(start, stop, alone=alone)
            # Idle threads wait for work, or for the last chunk to be settled (then they
            # end). Woken all for every chunk, 128 of them would cost a burst of wakeups:
            # one is enough to see whether what was learnt makes a backup copy due.
            if again or not self.held:
                self.cond.notify_all()
            elif self.backup:
                self.cond.notify()
            unpark = bool(again) and bool(self.parked)
        for batch in batches:
            self.outbox.put(batch)
        if unpark:
            self.outbox.put(_UNPARK)

    def _accept(
        self,
        reply: bytes,
        chunk: Chunk,
        worker: str,
        batches: list[Batch],
        again: list[tuple[int, int, bool]],
        trip: Optional[float] = None,
    ) -> None:
        try:
            first, values, times, failures, outputs = ChunkReply.decode(reply)
        except Exception as exc:
            if chunk.stop - chunk.start > 1:
                logger.warning("results of tasks %d..%d from %s could not be unpickled here (%s); "
                               "redoing them one by one", chunk.start, chunk.stop - 1, worker, exc)
                again.extend((spot, spot + 1, True) for spot in range(chunk.start, chunk.stop))
                return
            error = ResultNotSerializable(
                f"the value of task {self.tasks[chunk.start]!r} came back from {worker} "
                f"but could not be unpickled here: {exc!r}"
            )
            batches.append(Batch(chunk.start, [error], [0.0], {0}, worker))
            return
        for offset, record in failures.items():
            values[offset] = rebuild(record)
        if values:
            with self.cond:
                took = self.pending.sizer.record(times, trip, reply_bytes=len(reply))
                tasks, seconds = self.rates.get(worker, (0, 0.0))
                self.rates[worker] = (tasks + len(times), seconds + took)
            batches.append(Batch(first, values, times, set(failures), worker, outputs))
        if first + len(values) < chunk.stop:  # it stopped early: the rest never ran
            again.append((first + len(values), chunk.stop, False))

    def _strike(
        self,
        chunk: Chunk,
        counts: dict[int, int],
        limit: int,
        worker: str,
        reason: str,
        batches: list[Batch],
        again: list[tuple[int, int, bool]],
        alone: bool,
    ) -> None:
        """Count one strike against each task of ``chunk``; retry it or give up on it."""
        retry: list[int] = []
        for position in range(chunk.start, chunk.stop):
            tries = counts[position] = counts.get(position, 0) + 1
            if tries < limit:
                retry.append(position)
                continue
            how = "was lost" if alone else "kept breaking off"
            error = WorkerCrashed(
                f"worker {worker} {how} while holding task {self.tasks[position]!r} "
                f"(attempt {tries} of {limit}): {reason}"
            )
            batches.append(Batch(position, [error], [0.0], {0}, worker))
        if alone:
            again.extend((position, position + 1, True) for position in retry)
        else:
            again.extend(_runs(retry, chunk.alone))


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


def _runs(positions: list[int], alone: bool) -> list[tuple[int, int, bool]]:
    """Consecutive positions joined into ``(start, stop, alone)`` ranges."""
    runs: list[tuple[int, int, bool]] = []
    for position in positions:
        if runs and runs[-1][1] == position and not alone:
            runs[-1] = (runs[-1][0], position + 1, alone)
        else:
            runs.append((position, position + 1, alone))
    return runs


def _failed(chunk: Chunk, error: Exception, worker: str = "") -> Batch:
    """Every task of ``chunk`` ending with ``error``, none of them run."""
    count = chunk.stop - chunk.start
    return Batch(chunk.start, [error] * count, [0.0] * count, set(range(count)), worker)


def _abandon(link: Link) -> None:
    """Give up the calls ``link``'s worker has not answered, as the caller left: close the
    connection their answers would come back on (to no one), and make the link ready
    for the next call."""
    if link.connection is not None:
        link.connection.close()
    if link.state is State.RUNNING:
        link.move(State.READY)
