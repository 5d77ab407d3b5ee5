"""The distributed mode: a Pyro4 client that feeds chunks to remote workers.

How data flows (one thread and one proxy per worker; the caller's thread only
decodes replies and yields them)::

    caller thread (_Dispatch.batches)      worker threads (_Dispatch._drive)      ezpool.serve
    ─────────────────────────────────      ─────────────────────────────────      ────────────
    check fun, URIs, tasks; pickle pieces
    connect: describe() == fun's name? ──▶  (a local worker that does not answer is started)
                                            take a chunk (shared queue, sized  ─▶ Servant.run_chunk
                                            by the run times seen so far)          (first, count, pickles)
    outbox.get() ◀── reply bytes ────────── ◀──────────────────────────────────── values, times, failures
      decode, yield Batch                   a lost worker: its chunk goes back,
                                            task by task; a task that loses
                                            ``max_attempts`` workers gets WorkerCrashed

Dynamic load balancing comes from the shared queue: a worker asks for its next
chunk when it has sent back the last, so fast and slow machines both stay busy.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from .. import _pyro
from ..chunking import Chunk, ChunkQueue
from ..errors import AuthenticationError, ResultNotSerializable, TaskTimeout, WorkerCrashed, WorkerUnavailable
from ..options import DEFAULT_WORKER, HMAC_KEY_ENV, Options, resolve_hmac_key
from ..serialization import loads, rebuild
from ..servant import served_name
from ..worker import BaseWorker
from .base import Backend, Batch

logger = logging.getLogger(__name__)

__all__ = ["DistributedBackend"]

#: Seconds to wait for a worker to answer when connecting.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for an auto-started worker to answer.
SPAWN_TIMEOUT = 30.0
#: Workers checked at once when a call starts.
_CONNECTORS = 32


class DistributedBackend(Backend):
    """Sends tasks to ``ezpool.serve`` workers; starts local ones that do not answer."""

    def __init__(self) -> None:
        self._spawned: dict[str, subprocess.Popen[bytes]] = {}

    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool
    ) -> Generator[Batch, None, None]:
        name = _name_of(fun)
        texts = options.workers or (DEFAULT_WORKER,)
        uris = [(text, _pyro.parse_uri(text)) for text in texts]
        key = resolve_hmac_key(options.hmac_key)
        chunksize = 1 if options.timeout is not None else options.chunksize
        pending = ChunkQueue(tasks, len(uris), chunksize)
        self._connect_all(uris, fun, name, key, options.spawn)
        if not pending:
            return
        dispatch = _Dispatch(tasks, pending, uris, key, options)
        yield from dispatch.batches()

    def close(self) -> None:
        for process in self._spawned.values():
            if process.poll() is None:
                process.terminate()
        for uri, process in self._spawned.items():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            logger.debug("stopped the worker started for %s", uri)
        self._spawned = {}

    def _connect_all(
        self, uris: list[tuple[str, Any]], fun: Any, name: str, key: Optional[bytes], spawn: bool
    ) -> None:
        """Check (and start) every worker at once: 32 workers cost one round trip, not 32."""
        if len(uris) == 1:
            self._connect(*uris[0], fun, name, key, spawn)
            return
        with ThreadPoolExecutor(max_workers=min(len(uris), _CONNECTORS)) as pool:
            checks = [pool.submit(self._connect, text, uri, fun, name, key, spawn) for text, uri in uris]
        for check in checks:  # the first failure, in the order the workers were given
            check.result()

    def _connect(self, text: str, uri: Any, fun: Any, name: str, key: Optional[bytes], spawn: bool) -> None:
        """Check that the worker answers and serves ``fun``, starting it if allowed."""
        try:
            served = _describe(uri, key)
        except _pyro.CommunicationError as exc:
            error = _pyro.translate(exc, text)
            local = uri.protocol == "PYRO" and _pyro.is_loopback(uri.host)
            if isinstance(error, AuthenticationError) or not (spawn and local):
                raise error from None
            served = self._spawn(text, uri, fun, key)
        if served != name:
            raise WorkerUnavailable(f"worker {text} serves {served!r}, not {name!r}")

    def _spawn(self, text: str, uri: Any, fun: Any, key: Optional[bytes]) -> str:
        spec = _spec_of(fun)
        logger.warning("no worker answers at %s: starting one that serves %s", text, spec)
        command = [sys.executable, "-m", "ezpool.serve", spec, "--host", str(uri.host)]
        command += ["--port", str(uri.port), "--name", str(uri.object), "--parent-pid", str(os.getpid())]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path or os.getcwd() for path in sys.path))
        if key is not None:
            env[HMAC_KEY_ENV] = key.decode()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        self._spawned[text] = process
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while True:
            if process.poll() is not None:
                raise WorkerUnavailable(
                    f"the worker started for {text} exited with code {process.returncode} "
                    "(its error is above)"
                )
            try:
                return _describe(uri, key)
            except _pyro.CommunicationError as exc:
                if time.monotonic() > deadline:
                    raise WorkerUnavailable(f"the worker started for {text} did not answer: {exc}") from None
                time.sleep(0.05)


class _Dispatch:
    """One ``dmap`` call: the shared queue of chunks and the threads that feed workers."""

    def __init__(
        self,
        tasks: Sequence[Any],
        pending: ChunkQueue,
        uris: list[tuple[str, Any]],
        key: Optional[bytes],
        options: Options,
    ) -> None:
        self.tasks = tasks
        self.uris = uris
        self.key = key
        self.timeout = options.timeout
        self.max_attempts = options.max_attempts
        self.heartbeat = options.heartbeat
        self.pending = pending  # guarded by self.ready, like in_flight and serving
        self.in_flight = 0
        self.serving = len(uris)  # threads whose worker is answering
        self.attempts: dict[int, int] = {}
        self.ready = threading.Condition()
        self.stop = threading.Event()
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def batches(self) -> Generator[Batch, None, None]:
        threads = [
            threading.Thread(target=self._drive, args=(text, uri), daemon=True, name=f"ezpool-{text}")
            for text, uri in self.uris
        ]
        for thread in threads:
            thread.start()
        alive = len(threads)
        try:
            while alive:
                try:
                    item = self.outbox.get(timeout=0.5)
                except queue.Empty:
                    yield from self._abandoned()
                    continue
                if isinstance(item, Batch):
                    yield item
                    continue
                alive -= 1  # a thread has finished: its worker is done or lost
            yield from self._orphans()
        finally:
            self.stop.set()
            with self.ready:
                self.ready.notify_all()

    def _abandoned(self) -> Generator[Batch, None, None]:
        """If no worker answers any more, end the call now rather than wait for one."""
        with self.ready:
            if self.serving or not self.pending or self.stop.is_set():
                return
            self.stop.set()
            self.ready.notify_all()
        yield from self._orphans()

    def _orphans(self) -> Generator[Batch, None, None]:
        """Tasks left when every worker was lost."""
        with self.ready:
            left = list(self.pending.drain())
        for piece in left:
            count = piece.stop - piece.start
            lost = ", ".join(text for text, _ in self.uris)
            error = WorkerCrashed(f"every worker was lost ({lost}) before this task ran")
            yield Batch(piece.start, [error] * count, [0.0] * count, set(range(count)), "")

    def _take(self, before_waiting: Callable[[], None]) -> Optional[Chunk]:
        """The next chunk, waiting while other workers may still give some back."""
        with self.ready:
            if not self.pending and self.in_flight:
                before_waiting()
            while not self.pending and self.in_flight and not self.stop.is_set():
                self.ready.wait(0.5)
            if not self.pending or self.stop.is_set():
                return None
            self.in_flight += 1
            return self.pending.take()

    def _done(self, again: Sequence[int] = ()) -> None:
        """A chunk is back (or lost); ``again``: positions to send once more, each alone."""
        with self.ready:
            self.in_flight -= 1
            for position in reversed(again):
                self.pending.put_back(position, position + 1, alone=True)
            self.ready.notify_all()

    def _drive(self, text: str, uri: Any) -> None:
        """Feed one worker until the work runs out or the worker is lost."""
        proxy = _pyro.make_proxy(uri, self.key, self.timeout)
        watch = _Heartbeat(uri, self.key, self.heartbeat, text)
        watch.start()
        try:
            while not self.stop.is_set():
                # A worker drops connections that stay silent (serve's idle limit):
                # hang up while waiting for work, and connect again when some comes.
                piece = self._take(proxy._pyroRelease)
                if piece is None:
                    return
                count = piece.stop - piece.start
                try:
                    watch.calling(proxy)
                    reply = proxy.run_chunk(piece.start, count, list(piece.payloads))
                except _pyro.CommunicationError as exc:
                    watch.calling(None)
                    if isinstance(exc, _pyro.PyroTimeout) and not watch.silent:
                        self._timed_out(piece, text)
                        proxy = self._wait_until_free(proxy, uri)
                        if proxy is None:
                            return
                        continue
                    reason = f"it left a check unanswered for {self.heartbeat} s" if watch.silent else exc
                    self._lost(piece, text, reason)
                    proxy._pyroRelease()
                    if not self._rejoin(uri, text):
                        return
                    watch.finish()
                    watch = _Heartbeat(uri, self.key, self.heartbeat, text)
                    watch.start()
                    proxy = _pyro.make_proxy(uri, self.key, self.timeout)
                    continue
                watch.calling(None)
                batch = self._decode(reply, piece, text)
                self._done()
                self.outbox.put(batch)
        finally:
            watch.finish()
            proxy._pyroRelease()
            self.outbox.put(text)

    def _rejoin(self, uri: Any, text: str) -> bool:
        """Wait for a lost worker to answer again, while there is work it could do."""
        with self.ready:
            self.serving -= 1
        pause = min(1.0, self.heartbeat / 2)
        while not self.stop.wait(pause):
            with self.ready:
                if not self.pending and not self.in_flight:
                    return False
            try:
                checker = _pyro.make_proxy(uri, self.key, pause)
                try:
                    free = not checker.busy()
                finally:
                    checker._pyroRelease()
            except _pyro.CommunicationError:
                continue
            if free:
                with self.ready:
                    if self.stop.is_set():
                        return False
                    self.serving += 1
                logger.warning("worker %s answers again; it gets work again", text)
                return True
        return False

    def _decode(self, reply: bytes, piece: Chunk, worker: str) -> Batch:
        try:
            first, values, times, failures = loads(reply)
        except Exception as exc:
            count = piece.stop - piece.start
            error = ResultNotSerializable(f"the results from {worker} could not be unpickled here: {exc!r}")
            return Batch(piece.start, [error] * count, [0.0] * count, set(range(count)), worker)
        for offset, record in failures.items():
            values[offset] = rebuild(record)
        with self.ready:
            self.pending.sizer.record(times)
        return Batch(first, values, times, set(failures), worker)

    def _timed_out(self, piece: Chunk, worker: str) -> None:
        task = self.tasks[piece.start]
        error = TaskTimeout(f"task {task!r} ran longer than its timeout of {self.timeout} s on {worker}")
        self._done()
        self.outbox.put(Batch(piece.start, [error], [float(self.timeout or 0.0)], {0}, worker))

    def _wait_until_free(self, proxy: Any, uri: Any) -> Any:
        """After a timeout the worker still runs that task: give it nothing until it is done."""
        proxy._pyroRelease()
        proxy = _pyro.make_proxy(uri, self.key, CONNECT_TIMEOUT)
        while not self.stop.is_set():
            try:
                if not proxy.busy():
                    proxy._pyroTimeout = self.timeout
                    return proxy
            except _pyro.CommunicationError:
                return None
            time.sleep(0.1)
        return None

    def _lost(self, piece: Chunk, worker: str, exc: object) -> None:
        logger.warning("lost worker %s (%s); its tasks go to the others", worker, exc)
        requeue, crashed = [], []
        with self.ready:
            for position in range(piece.start, piece.stop):
                tries = self.attempts.get(position, 0) + 1
                self.attempts[position] = tries
                if tries < self.max_attempts:
                    requeue.append(position)
                else:
                    crashed.append((position, tries))
        for position, tries in crashed:
            error = WorkerCrashed(
                f"worker {worker} was lost while holding task {self.tasks[position]!r} "
                f"(attempt {tries} of {self.max_attempts}): {exc}"
            )
            self.outbox.put(Batch(position, [error], [0.0], {0}, worker))
        self._done(requeue)


class _Heartbeat(threading.Thread):
    """Checks a busy worker over a second connection; breaks off the call if it is silent.

    A stopped process or a cut network leaves a call waiting forever without any
    error; a check that goes unanswered for ``limit`` seconds ends that wait.
    """

    def __init__(self, uri: Any, key: Optional[bytes], limit: float, name: str) -> None:
        super().__init__(daemon=True, name=f"ezpool-heartbeat-{name}")
        self._uri, self._key, self._limit = uri, key, limit
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._proxy: Any = None
        self._since = 0.0
        self.silent = False

    def calling(self, proxy: Any) -> None:
        """A call on ``proxy`` starts now (``None``: it has ended)."""
        with self._lock:
            self._proxy, self._since = proxy, time.monotonic()

    def finish(self) -> None:
        self._done.set()

    def run(self) -> None:
        interval = self._limit / 2
        while not self._done.wait(interval):
            with self._lock:
                proxy, since = self._proxy, self._since
            if proxy is None or time.monotonic() - since < interval:
                continue
            try:
                _describe(self._uri, self._key, timeout=self._limit)
            except _pyro.CommunicationError:
                with self._lock:
                    if self._proxy is not proxy:
                        continue  # the call ended meanwhile
                    self.silent = True
                _pyro.abort(proxy)
                return


def _describe(uri: Any, key: Optional[bytes], timeout: float = CONNECT_TIMEOUT) -> str:
    proxy = _pyro.make_proxy(uri, key, timeout)
    try:
        return str(proxy.describe())
    finally:
        proxy._pyroRelease()


def _name_of(fun: Any) -> str:
    is_worker = isinstance(fun, type) and issubclass(fun, BaseWorker)
    if not is_worker and (isinstance(fun, type) or not callable(fun)):
        raise TypeError(f"fun must be a BaseWorker subclass or a function to serve, got {fun!r}")
    return served_name(fun)


def _spec_of(fun: Any) -> str:
    """``MODULE:NAME`` for ``python -m ezpool.serve``, also for a class in the user's script."""
    qualname = served_name(fun)
    if "<" in qualname:
        raise WorkerUnavailable(
            f"cannot start a worker for {fun!r}: lambdas and nested definitions cannot be "
            "served; define it at the top level of a module"
        )
    module = getattr(fun, "__module__", None)
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise WorkerUnavailable(
                f"cannot start a worker for {qualname!r} defined interactively; "
                "start one with python -m ezpool.serve"
            )
        return f"{os.path.abspath(path)}:{qualname}"
    return f"{module}:{qualname}"
