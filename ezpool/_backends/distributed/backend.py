"""The distributed mode: a Pyro4 client that feeds chunks to ``ezpool.serve`` workers.

How data flows (the links, their connections, the threads that drive them and the
watcher all live as long as the pool: a second call starts no thread, opens no
connection and checks no worker that has not changed)::

    caller thread (call.Call)          crew threads (drivers.PushDriver)     ezpool.serve (Servant)
    ─────────────────────────          ─────────────────────────────────     ──────────────────────
    pickle tasks in pieces; check
    each new worker: hello() ─────────────────────────────────────────────▶ identity, what it serves
      (start a local one that does not answer)
                                       work.take(): a chunk (shared queue,
                                       sized by the run times seen so far) ─▶ run_chunk(ChunkCall)
                                       work.take_behind(): the next ───────▶ (waits at the worker)
                                                                             runs it (with a
                                                                             ``timeout``: in its
                                                                             runner thread, which
                                                                             stops a task past it)
    outbox.get() ◀── Batch ─────────── work.settle(chunk, event) ◀─────── (Status, outcomes)
      yield it                         the ledger: report, send again at
                                       no cost, charge an attempt, or fail
                                       each task, exactly once
    watcher thread (one per pool) ─── ping() every heartbeat/4 to each RUNNING worker;
                                       no answer for ``heartbeat`` s: break its call off

A worker replaced since the last call is noticed by the chunk it is sent (it
carries the identity the check saw), and is checked again then. With many
workers a chunk holds more work (``chunk_target``): all their chunks pass through
this one process, whose cost per chunk would otherwise grow into their wait.

Dynamic load balancing comes from the shared queue: a worker holds at most two
chunks (the one it runs and the next), and asks for another when it has sent
back one, so fast and slow machines both stay busy.
When no chunk is left to send, an idle worker runs a backup copy of one that is
late (``Ledger.late``), so that a slow but live worker does not hold up the end.
A worker's states, and the events that move it between them, are in ``links``;
what happens to a chunk, whatever went wrong, is the ledger's to decide
(``ezpool._core.ledger``), as it is for ``pmap``. Running tasks stop only with their
worker's process: ``Stops``, and a call left early, make the workers running them
restart themselves (``halting``).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any, Callable, Optional

from ... import _pyro, security
from ..._core.chunking import TARGET_SECONDS, ChunkQueue, Priors
from ..._core.feed import Feed
from ..._core.logs import get_logger
from ..._core.recording import Recording
from ..._core.records import Batch
from ..._core.serialization import dumps, short_repr
from ..._core.shipping import Shipment, Shipper, fingerprint
from ..._core.stopping import Stops
from ..._core.tasks import bind
from ..._worker.servant import GENERIC
from ...errors import AuthenticationError, WorkerUnavailable
from ...options import DEFAULT_WORKER, Options
from ..base import Backend
from .call import Call, no_more
from .connect import can_start, fits, hello, may_start, name_of, not_started, version_table
from .crew import Crew
from .dialin import DialIn, wants_dial_in
from .drivers import PushDriver, Target
from .halting import await_restarts
from .links import Link, LinkEvent, State
from .started import Started
from .watch import Watcher
from .work import Work, held_at_once

logger = get_logger(__name__)

__all__ = ["DistributedBackend"]

#: Workers checked at once when a call starts.
_CONNECTORS = 32

#: Seconds of work a chunk should hold per worker of the call. Every chunk costs
#: this process about half a millisecond of CPU (signing, sending, unpickling the
#: answer), and all workers' chunks come back here: with chunks of ``w`` times this
#: long, ``w`` workers keep the client busy about 10% of the time at most.
CHUNK_SECONDS_PER_WORKER = 0.004


class DistributedBackend(Backend):
    """Sends tasks to ``ezpool.serve`` workers; starts local ones that do not answer."""

    mode = "distributed"

    def __init__(self) -> None:
        self._links: dict[tuple[str, Optional[bytes], Any], Link] = {}
        self._tls: dict[tuple[Any, Any, Any], ssl.SSLContext] = {}
        self._started = Started()  # the workers this pool started: they die with it
        self._works: set[Work] = set()  # the calls running, for terminate
        self._lock = threading.Lock()  # guards _works
        self._watcher: Optional[Watcher] = None
        self._crew = Crew()
        self._priors = Priors()  # run times measured in earlier calls, by function
        self._shipper = Shipper()  # what the calls shipped lately: the next one hashes only what is new
        self._dial: Optional[DialIn] = None  # where workers dial in, once a call asked for it
        self._said: set[tuple[str, str]] = set()  # (worker, why it may not run a call), said once

    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool,
        record: Recording, stops: Optional[Stops] = None,
    ) -> Generator[Batch, None, None]:
        target = Target(name_of(fun), fingerprint(fun), _shipment(self._shipper, fun, options))
        key = security.resolve_key(options.hmac_key, insecure=options.insecure)
        tls = self._tls_context(options)
        dial = self._dial_in(options, key) if wants_dial_in(options) else None
        uris = options.workers if isinstance(options.workers, tuple) else None
        texts = list(dict.fromkeys(uris or (() if dial else (DEFAULT_WORKER,))))
        links: list[Link] = [self._link(text, key, tls) for text in texts]
        if dial is not None:
            links += self._fitting(dial.links(wait=not links), target)
        planned = max(len(links), dial.expected if dial else 0)
        seconds = chunk_target(planned)
        fid = target.shipment.fid
        feed = tasks if isinstance(tasks, Feed) else None
        pending = ChunkQueue(
            tasks, planned, options.chunksize, depth=held_at_once(options, feed), split=True,
            target=seconds, prior=self._priors.get(fid),
        )
        checking = perf_counter()
        fresh = [link for link in links if link.state is not State.READY]
        for link in links:
            link.heartbeat = options.heartbeat
            if link.connection is None and link.address is not None:
                link.reconnect(options.heartbeat)  # the check opens it, and chunks use it
        await_restarts(links, options.heartbeat)  # workers the last call stopped, coming back
        self._check(links, target, options.spawn)
        for link in fresh:  # started (with spawn), reached and checked in this call
            record.span("start-up", link.text, checking, perf_counter(), "reached and checked")
        if options.context is not None:
            for link in links:
                if link.state is State.READY and link.serves != GENERIC:
                    raise WorkerUnavailable(
                        f"worker {link.text} serves {link.serves!r} with code of its own, which "
                        "takes no context: give context to generic workers (python -m ezpool.serve "
                        "without MODULE:NAME), or load the data in the worker's setup()"
                    )
        if not pending and pending.exhausted:
            yield from pending.unsent()  # tasks that could not be pickled, if any
            return
        for link in links:
            if link.connection is None:
                link.reconnect(options.heartbeat)
            if link.pinger is not None:
                link.pinger.timeout = options.heartbeat
        if self._watcher is None:
            self._watcher = Watcher(self._all_links)
        work = Work(tasks, pending, options, record)
        call = Call(work, self._crew, dial.more if dial is not None else no_more, stops)
        for link in links:
            call.add(PushDriver(work, link, target, self._started.restart))
        if dial is not None:
            driven = {id(link) for link in links}  # each worker gets one driver, however it came
            joining = threading.Lock()

            def joined(link: Any) -> None:
                with joining:
                    if id(link) in driven or not self._fitting([link], target):
                        return
                    driven.add(id(link))
                link.heartbeat = options.heartbeat
                if link.pinger is not None:
                    link.pinger.timeout = options.heartbeat
                call.join(PushDriver(work, link, target, self._started.restart))

            dial.listener.on_join = joined
            for link in dial.listener.ready():  # joined after the links were counted, before now
                joined(link)
        with self._lock:
            self._works.add(work)
        try:
            yield from call.batches()
        finally:
            if dial is not None:
                dial.listener.on_join = None
            with self._lock:
                self._works.discard(work)
            self._priors.keep(fid, pending.sizer)

    def prepare(self, options: Options) -> None:
        """Listen for workers that dial in, and start their cluster, if ``options`` ask for it."""
        if wants_dial_in(options):
            self._dial_in(options, security.resolve_key(options.hmac_key, insecure=options.insecure))

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        dial, self._dial = self._dial, None
        if dial is not None:
            dial.close()
        self._crew.stop()
        for link in self._links.values():
            link.release()
        self._links = {}
        self._started.stop()
        self._shipper.close()

    def terminate(self) -> None:
        """Stop the running calls' drivers, and kill the workers this pool started and
        wait for them to exit (the tasks they ran fail); from any thread, at once."""
        with self._lock:
            works = list(self._works)
        for work in works:
            work.stop.set()
            with work.cond:
                work.cond.notify_all()
            for driver in work.drivers:
                driver.break_off()
        self._started.stop(grace=0)
        dial = self._dial
        if dial is not None and dial.cluster is not None:
            dial.cluster.stop()  # the workers it started for this pool

    def _all_links(self) -> list[Link]:
        """Every worker the watcher looks at: those named, and those that dialed in."""
        dial = self._dial
        joined = list(dial.listener.links.values()) if dial is not None else []
        return [*self._links.values(), *joined]

    def _dial_in(self, options: Options, key: Optional[bytes]) -> DialIn:
        """The pool's listener (made at the first call that asks), for workers that dial in."""
        dial = self._dial
        if dial is not None:
            if not dial.fits(options):
                raise ValueError(
                    f"this pool listens at {dial.listener.address} already: a pool has one listen "
                    "address and one cluster; use another Pool for another"
                )
            return dial
        files = (options.tls_ca, options.tls_cert, options.tls_key)
        tls = security.client_tls_context(*files, check_hostname=False) if any(files) else None
        self._dial = DialIn(options, key, tls)
        return self._dial

    def _fitting(self, links: list[Any], target: Target) -> list[Any]:
        """The dial-in workers of ``links`` that may run ``target``; the others are said once."""
        fitting = []
        for link in links:
            reason = fits(link.info, target.name, target.code) or version_table(
                link.info, link.info.get("serves") == GENERIC)[0]
            if reason:
                if (link.identity, reason) not in self._said:
                    self._said.add((link.identity, reason))
                    logger.warning("worker %s dialed in, but %s; it gets no work", link.text, reason)
                continue
            fitting.append(link)
        return fitting

    def _link(self, text: str, key: Optional[bytes], tls: Optional[ssl.SSLContext]) -> Link:
        link = self._links.get((text, key, tls))
        if link is None:
            link = self._links[(text, key, tls)] = Link(text, _pyro.parse_uri(text), key, tls)
        return link

    def _tls_context(self, options: Options) -> Optional[ssl.SSLContext]:
        """The client's TLS context for these options, made once per pool."""
        files = (options.tls_ca, options.tls_cert, options.tls_key)
        if not any(files):
            return None
        context = self._tls.get(files)
        if context is None:
            context = self._tls[files] = security.client_tls_context(*files)
        return context

    def _check(self, links: list[Link], target: Target, spawn: Optional[bool]) -> None:
        """Check every worker not known to be ready, at once: 32 workers cost one round trip.

        A worker that cannot run ``target`` (it serves something else, or other
        code, or has other versions where code travels), or refuses the key, stops
        the call before any work; one that does not answer is left out (and gets
        work if it answers later in the call) unless none answers.
        """
        for link in links:
            if link.state is State.READY:
                reason = fits(link.info, target.name, target.code)
                if reason:
                    raise WorkerUnavailable(f"worker {link.text}: {reason}")
        todo = [link for link in links if link.state in (State.NEW, State.LOST)]
        if not todo:
            return
        if len(todo) == 1:
            failures = [self._check_one(todo[0], target, spawn)]
        else:
            with ThreadPoolExecutor(max_workers=min(len(todo), _CONNECTORS)) as pool:
                failures = list(pool.map(lambda link: self._check_one(link, target, spawn), todo))
        missing = [(link, error) for link, (error, fatal) in zip(todo, failures) if error is not None]
        for error, fatal in failures:
            if error is not None and fatal:
                raise error
        if len(missing) == len(links):
            raise missing[0][1]
        for link, error in missing:
            link.on(LinkEvent.UNREACHABLE, str(error))
            logger.warning("%s; the call goes on without it, and it gets work if it answers", error)

    def _check_one(
        self, link: Link, target: Target, spawn: Optional[bool]
    ) -> tuple[Optional[Exception], bool]:
        """Check (or start) one worker: the error that leaves it out, if any, and
        whether that error must stop the call (a wrong key, a wrong worker, a bug)."""
        try:
            info = hello(link)
        except AuthenticationError as exc:
            return exc, True
        except WorkerUnavailable as exc:
            if not may_start(link, spawn):
                refused = can_start(link) and spawn is None and isinstance(exc, _pyro.NothingListens)
                return (not_started(link) if refused else exc), False
            try:
                info = self._started.start(link)
            except Exception as error:
                return error, True
        except Exception as exc:
            return exc, True
        reason = fits(info, target.name, target.code)
        refusal, warning = version_table(info, info.get("serves") == GENERIC)
        if reason or refusal:
            return WorkerUnavailable(f"worker {link.text}: {reason or refusal}"), True
        if warning:
            logger.warning("worker %s %s", link.text, warning)
        link.admit(info)
        return None, False


def _shipment(shipper: Shipper, fun: Any, options: Options) -> Shipment:
    """``fun`` (with the call's context, if any) ready for generic workers; a
    ``TypeError`` naming what cannot be sent."""
    try:
        return shipper.ship(bind(fun, options.context), options.ship_modules)
    except TypeError as exc:
        if options.context is None:
            raise
        try:
            dumps(options.context)
        except Exception as error:
            what = short_repr(options.context)
            raise TypeError(f"cannot send the context {what} to a worker: {error}") from error
        raise TypeError(f"cannot send {fun!r} to a worker: {exc.__cause__}") from exc.__cause__


def chunk_target(workers: int) -> float:
    """Seconds of work a chunk should hold when ``workers`` workers share one client.

    Few workers take chunks of ``TARGET_SECONDS``, as every mode does; many take
    longer ones, so that the client's cost per chunk does not grow into the time
    every worker waits for its next one. The sizer still never gives a chunk more
    than its share of what is left, so the end of a call is cut just as fine.
    """
    return max(TARGET_SECONDS, workers * CHUNK_SECONDS_PER_WORKER)
