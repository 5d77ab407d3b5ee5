"""The object a distributed worker serves: it runs chunks of tasks for clients.

It is transport-free (``ezpool._pyro`` exposes it over the network). Its remote
methods carry only strings, numbers, bytes and small dicts; a status travels as
the text of a ``Status`` (``ezpool._core.records``):

``hello()``
    who this worker is: an ``identity`` drawn at random when the process starts
    (so it changes whenever the process does), what it ``serves``, and its
    environment. A client checks it once and then names the identity in every
    ``run_chunk``, so that a different process on the same address cannot
    answer for this one.
``ping()``
    ``(identity, busy)``: the client's heartbeat, answered even while a chunk runs.
    ``busy`` is ``False`` while no chunk runs, else ``(fid, first, mark)``: the
    chunk's ``fid`` and first position, and its *mark* (see ``group_mark``; -1
    between tasks), so that a client that loses the worker later knows which of
    the chunk's tasks had finished. (A pair, not three items, so that clients
    that unpack two still can.)
``load(fid, blob)``
    a generic worker (one started without ``MODULE:NAME``) keeps the function or
    ``BaseWorker`` class in the shipment ``blob`` (see ``ezpool._core.shipping``) under its
    content id ``fid``, for as long as it keeps ``FUNCTIONS_KEPT`` others (a
    ``functools.partial`` of either carries a call's ``context``: its ``run`` or the
    function gets it as first argument); ``(status, reply)`` is ``(OK, b"")``, or
    ``(ERROR, pickled ExceptionRecord)`` when it cannot be loaded here.
``stop(identity, first, position)``
    whether it stops the chunk from task ``first`` that runs here (unless the task at
    ``position``, -1: any, has finished), by restarting this process: a client asks
    it to stop tasks that run (``ezpool._backends.distributed.halting``); that chunk
    gets no answer.
``status()``
    what ``python -m ezpool.status`` shows: who it is, what it serves, whether a chunk
    runs and for which client, the tasks it ran, its uptime (see ``activity``).
``run_chunk(*ChunkCall)``
    ``(status, reply)``, for the chunk a ``ChunkCall`` describes (its ``level``, sent
    only when the client wants it, is the lowest log level to keep with what each
    task prints, see ``ezpool._core.relay``). ``status`` is ``OK`` (``reply`` is the
    pickled outcome, see ``ezpool._worker.running.pack_chunk``), ``WRONG_WORKER``
    (this is not the process the client checked: nothing ran), ``NEED_FUNCTION``
    (``fid`` is not loaded here: nothing ran), ``RESTARTING`` (a timed-out task is
    being stopped by restarting this process: nothing ran), or ``GONE``: there is
    no answer, and the connection is hung up (the client left before the chunk
    ran, or a test asked for the fault, see ``faults``), or ``LEAVING``: this worker
    leaves its pool (``leaving``), nothing ran, and the reply says why. A worker that
    serves one named target runs it whatever ``fid`` says (the client checked it at
    ``hello``).

One chunk runs at a time, whoever sends it. Without a ``timeout`` it runs in the
thread that received the request, which looks for the client's hang-up between
groups of tasks (at most every ``WATCH_EVERY`` seconds): nothing is handed to
another thread, and no thread wakes to watch it. With a ``timeout`` it runs in a
runner thread of its own, and the thread that received the request watches it:
a task that runs past ``timeout`` (measured here, from the moment the task
starts) gets ``TaskTimeout``, the chunk is answered with what ran, and the
process is restarted to stop that task. Either way, a client that hangs up makes
the chunk stop after the task it is running.

Limits (a call's ``ChunkCall.limits``, else ``limits``, from ``ezpool-serve``'s flags):
with ``max_tasks_per_worker`` a chunk runs only as many tasks as the process may still
run (the client sends the rest again), and the process restarts once it ran that
many; with ``max_memory`` the chunk runs in the runner thread under a memory watch
(``limits``), and a task that takes the process past it fails with
``WorkerOutOfMemory`` before the process restarts.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import sys
import threading
import time
from typing import Any, Callable, Optional

from .._core.logs import get_logger
from .._core.records import ChunkCall, ChunkOutcome, Status
from .._core.serialization import dumps, loads_tasks, record_exception
from .._core.shipping import fingerprint
from .._core.unsendable import not_loaded
from ..errors import TaskTimeout
from ..worker import BaseWorker
from .activity import Activity
from .faults import NO_FAULTS, Faults
from .jobs import WATCH_EVERY, ClientGone, Hangup, Job, cut, execute, or_leaving, stays
from .leaving import Leaving
from .library import Library
from .limits import MemoryGuard, blame, limits_of
from .running import failed_chunk, pack_chunk

logger = get_logger(__name__)

__all__ = ["Servant", "served_name", "serving_hint", "GENERIC"]

#: What a generic worker says it serves: whatever a client sends.
GENERIC = "*"

#: Seconds between two looks at a running chunk at first (``jobs.WATCH_EVERY``), and at
#: most, once it has run a while: the gap doubles from one look to the next, so a short
#: chunk is answered at once and a long one costs a few wakeups, not 20 a second (which
#: 128 workers on one machine would pay together). A timeout is looked at ten times over.
_WATCH_MOST = 0.5


def served_name(target: Any) -> str:
    """The name a worker answers to: the class's or function's qualified name."""
    return str(getattr(target, "__qualname__", getattr(target, "__name__", repr(target))))


def serving_hint(served: str) -> str:
    """What a client that sent other code to a worker serving only ``served`` can do."""
    return (f"give {served} itself as fun, or start a generic worker (python -m ezpool.serve with "
            "no MODULE:NAME), which runs any function sent to it")


def _process() -> dict[str, Any]:
    """What ``hello`` says of this process: its pid, host, platform and versions."""
    import cloudpickle

    from .._version import __version__

    return {
        "pid": os.getpid(), "host": platform.node(), "platform": sys.platform,
        "python": platform.python_version(), "cloudpickle": cloudpickle.__version__, "ezpool": __version__,
    }


class Servant:
    """Runs chunks of tasks with a ``BaseWorker`` instance or a plain function."""

    def __init__(
        self,
        target: Any = None,
        on_restart: Optional[Callable[[], None]] = None,
        faults: Faults = NO_FAULTS,
        leaving: Optional[Leaving] = None,
        limits: tuple[Optional[int], Optional[int]] = (None, None),
    ) -> None:
        """``target``: a ``BaseWorker`` instance or a function to serve; ``None``: run what clients send.
        ``leaving``: when it stops taking chunks (a worker that dials its pool). ``limits``:
        ``(max_tasks_per_worker, max_memory)`` for calls that set none (``ezpool-serve``'s
        flags); both need ``on_restart``."""
        self.identity = secrets.token_hex(16)
        self._limits = limits
        self._ran = 0  # tasks this process has run, for max_tasks_per_worker
        self.leaving = leaving or Leaving()
        self._pinned = target is not None
        if self._pinned:
            kind = type(target) if isinstance(target, BaseWorker) else target
            self._name, self._fingerprint = served_name(kind), fingerprint(kind)
            self._run: Optional[Callable[..., Any]] = target.run if isinstance(target, BaseWorker) else target
        else:
            self._name, self._fingerprint, self._run = GENERIC, "", None
        self._on_restart = on_restart
        self._faults = faults
        self.activity = Activity(target)  # what ``status`` says it did
        self._calls = 0
        lock = threading.RLock()
        self._lock = threading.Condition(lock)  # notified when a chunk ends, or the process restarts
        # Notified only when a chunk is handed to the runner: a chunk that runs in its
        # request's thread (most do) wakes no other thread when it ends.
        self._runnable = threading.Condition(lock)
        self._library = Library(self._lock)  # the code clients sent (a generic worker)
        self._job: Optional[Job] = None  # the chunk the runner holds, guarded by _lock
        self._restarting = False
        self._leaves = leaving is not None  # it may be told to leave (its chunks look out for it)
        # The runner writes a byte here when a chunk is done, so that the thread waiting
        # for the client to hang up (see ``_watch``) wakes at once.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._memory = MemoryGuard(self._wake_write)
        self._runner = threading.Thread(target=self._run_jobs, daemon=True, name="ezpool-runner")
        self._runner.start()

    def hello(self) -> dict[str, Any]:
        """Who this worker is and what it serves."""
        logger.debug("a client checks who this worker is")
        info = {"identity": self.identity, "serves": self._name, "fingerprint": self._fingerprint,
                "restarting": self._restarting, **_process()}
        return dict(self._faults.at("hello", info))

    def load(self, fid: str, blob: bytes) -> tuple[str, bytes]:
        """Keep the function in a shipment under ``fid``; ``(ERROR, record)`` if it cannot load."""
        if self._pinned:
            refused = TypeError(f"this worker serves only {self._name!r}: {serving_hint(self._name)}")
            return Status.ERROR.value, dumps(record_exception(refused))
        try:
            self._library.load(fid, blob)
        except BaseException as exc:
            return Status.ERROR.value, dumps(record_exception(exc))
        return Status.OK.value, b""

    def close(self) -> None:
        """Tear down every ``BaseWorker`` this process set up for clients."""
        self._library.close()

    def ping(self) -> tuple[str, Any]:
        """``(identity, busy)``: proof of life, answered even while a chunk runs; ``busy``
        says what runs (see the module's text)."""
        job = self._job
        if job is None:
            return self.identity, False
        return self.identity, (job.fid, job.first, int(job.mark[0]))

    def busy(self) -> bool:
        """Whether a chunk is running now."""
        return self._job is not None

    def status(self) -> dict[str, Any]:
        """What this worker is doing and has done (see ``activity``)."""
        return self.activity.status(self.hello(), self.ping()[1], self.leaving.asked)

    def run_chunk(
        self, *wire: Any, client_gone: Optional[ClientGone] = None, client: str = ""
    ) -> tuple[str, bytes]:
        """Run a chunk for the client that checked this process: ``wire`` is a
        ``ChunkCall`` as it travels; the answer is a ``Status`` (its text) and a reply
        (see the module docstring).

        ``client_gone(seconds, wake)`` says whether the client has hung up, waiting up
        to ``seconds`` for it to, or for the file ``wake`` to become readable (the
        runner writes to it when a chunk is done); without it, the client never goes.
        ``client``: its address, for ``status``.
        """
        status, reply = self._run_call(ChunkCall(*wire), client_gone or stays, client)
        return status.value, reply

    def _run_call(self, call: ChunkCall, client_gone: ClientGone, client: str = "") -> tuple[Status, bytes]:
        if call.identity != self.identity:
            return Status.WRONG_WORKER, self.identity.encode()
        first, count = call.first, call.size
        if call.level is not None and type(call.level) is not int:
            error = TypeError(f"capture_level must be a log level or None, got {call.level!r}")
            return Status.OK, pack_chunk(first, failed_chunk(count, record_exception(error)))
        run = self._run if self._pinned else self._library.get(call.fid)
        if run is None:
            return Status.NEED_FUNCTION, b""
        with self._lock:
            self._calls += 1
            number = self._calls
            # A client may have sent this chunk behind another and hung up since: it
            # would never read the answer, so nothing runs.
            while not client_gone(0.0, None):
                if self._job is None or self._restarting:
                    break
                self._lock.wait(WATCH_EVERY)
            else:
                return Status.GONE, b""
            if self._restarting:
                return Status.RESTARTING, b""
            why = self.leaving.refuses(count)
            if why:
                return Status.LEAVING, why.encode()
            if self._leaves:  # a chunk stops early, as when its client leaves, when this worker must go
                client_gone = or_leaving(self.leaving, client_gone)
            try:
                tasks = loads_tasks(call.payloads)
            except BaseException as exc:  # the caller runs them again one by one (ezpool._core.unsendable)
                return Status.OK, pack_chunk(first, failed_chunk(count, record_exception(not_loaded(exc))))
            most, memory = limits_of(call.limits, self._limits)
            recycle = most if self._on_restart is not None else None
            if recycle is not None:  # as many as it may run before it is replaced; the rest go back
                tasks = tasks[:max(1, recycle - self._ran)]
            exact = call.timeout is not None or memory is not None
            job = self._job = Job(run, tasks, str(call.fid), first, call.level, exact, memory, recycle)
            if memory is not None:
                job.halt = self._memory.arm(job)
            if job.exact:
                self._runnable.notify()
            self.activity.began(client)
        began = time.monotonic()
        if not job.exact:
            outcome: Optional[ChunkOutcome] = self._run_here(job, client_gone)
        else:
            try:
                outcome = self._watch(job, call.timeout, client_gone)
            finally:
                self._memory.disarm(job)
        if outcome is None or job.stopped:  # a client stopped it: the process restarts, no answer
            return Status.GONE, b""
        if job.recycle is not None and self._ran >= job.recycle and job.over is None:
            logger.info("this process ran %d tasks, its max_tasks_per_worker: restarting", self._ran)
            self._restart()
        ran = len(outcome.values)  # a timed-out chunk answers for fewer tasks than the runner holds
        self.leaving.ran(ran, time.monotonic() - began)
        self.activity.ended(ran, sum(1 for index in outcome.failures if index < ran))
        reply = pack_chunk(first, outcome, {k: v for k, v in list(job.outputs.items()) if k < ran})
        if self._faults.at("reply", reply, call=number) is None:
            logger.warning("fault injected: hanging up instead of answering call %d", number)
            return Status.GONE, b""
        return Status.OK, reply

    def _run_here(self, job: Job, client_gone: ClientGone) -> ChunkOutcome:
        """Run a chunk without a timeout in this, the request's thread.

        Handed to the runner, a chunk cost two thread wakeups more (the runner's, and
        this thread's when it was done), which 128 workers on one machine paid
        together at every chunk. The client's hang-up is looked for between groups.
        """
        try:
            execute(job, Hangup(client_gone, job.first))
        finally:
            with self._lock:
                job.done.set()
                self._tally(job)
                if self._job is job:
                    self._job = None
                self._lock.notify_all()
        return ChunkOutcome(job.values, job.times, job.failures)

    def _tally(self, job: Job) -> None:
        """Count what ``job`` ran (with the lock held): a process that ran its
        ``max_tasks_per_worker`` restarts, and takes no chunk from now on."""
        self._ran += len(job.values)
        if job.recycle is not None and self._ran >= job.recycle:
            self._restarting = True

    def _restart(self) -> None:
        with self._lock:
            self._restarting = True
            self._lock.notify_all()
        if self._on_restart is not None:
            self._on_restart()

    def stop(self, identity: str, first: int, position: int = -1) -> bool:
        """Stop the chunk from task ``first`` that runs here, unless the task at ``position``
        (-1: any) has finished, by restarting this process (the one way to stop a running
        task); the chunk gets no answer. Whether it stops."""
        if identity != self.identity or self._on_restart is None:
            return False
        with self._lock:
            job = self._job
            if job is None or job.first != first or job.done.is_set() or job.stopped:
                return job is not None and job.stopped and job.first == first
            if position >= 0 and position - first < len(job.values):
                return False
            job.stopped = job.cancel = True
        logger.info("a client stops the chunk from task %d, which runs here: restarting", first)
        self._restart()
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")
        return True

    def _watch(self, job: Job, timeout: Optional[float], client_gone: ClientGone) -> Optional[ChunkOutcome]:
        """Wait for the runner, stopping it when the client leaves, a task overruns, the
        process passes its memory limit, or a client stops it (``None``: no answer)."""
        seen, since = -1, time.monotonic()
        most = _WATCH_MOST if timeout is None else max(WATCH_EVERY, min(_WATCH_MOST, timeout / 10))
        every = WATCH_EVERY
        while not job.done.is_set():
            if job.stopped:
                return None
            if job.over is not None:
                return self._out_of_memory(job, *job.over)
            gone = False
            if job.cancel:  # the client left (a hang-up stays visible): wait for the running task
                job.done.wait(every)
            else:
                gone = client_gone(every, self._wake_read)
            self._drain()
            if job.done.is_set():
                break
            every = min(most, 2 * every)
            now = time.monotonic()
            position = job.mark[0]
            if position != seen:
                seen, since = position, now
            if gone:
                job.cancel = True
                logger.info("client gone: the chunk from task %d stops after the running task", job.first)
            if timeout is not None and position >= 0 and now - since > timeout:
                job.cancel = True
                error = TaskTimeout(
                    f"task {job.tasks[position - job.first]!r} ran longer than its timeout of {timeout} s "
                    f"on the worker (pid {os.getpid()}), which restarts to stop it"
                )
                logger.warning("restarting to stop a task that overran its timeout (task at position %d, "
                               "timeout %s s)", position, timeout)
                return self._cut(job, position, now - since, error)
        if job.stopped:
            return None
        if job.over is not None:  # it passed the limit as the chunk ended
            return self._out_of_memory(job, *job.over)
        return ChunkOutcome(job.values, job.times, job.failures)

    def _out_of_memory(self, job: Job, position: int, size: int) -> ChunkOutcome:
        """The task at ``position`` took the process past ``max_memory``: it fails, and the
        process restarts (``limits``)."""
        position, error = blame(job, position, size)
        return self._cut(job, position, 0.0, error)

    def _cut(self, job: Job, position: int, ran: float, error: BaseException) -> ChunkOutcome:
        """Answer with what ran; the task at ``position`` fails with ``error``; restart to stop it."""
        self._restart()
        return cut(job, position, ran, error)

    def _run_jobs(self) -> None:
        """The runner thread: run each job handed over (those with a timeout), one at a
        time, for the process's life."""
        while True:
            with self._lock:
                while self._job is None or self._job.done.is_set() or not self._job.exact:
                    self._runnable.wait()
                job = self._job
            execute(job, job.halt or job)
            with self._lock:
                job.done.set()
                self._tally(job)
                if not self._restarting:
                    self._job = None
                self._lock.notify_all()
            with contextlib.suppress(OSError):  # full: a wake is waiting already
                os.write(self._wake_write, b"\0")

    def _drain(self) -> None:
        """Read the wakes the runner wrote (the watching thread looks at its job after)."""
        with contextlib.suppress(OSError):
            while os.read(self._wake_read, 4096):
                pass
