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
groups of tasks (at most every ``_WATCH_EVERY`` seconds): nothing is handed to
another thread, and no thread wakes to watch it. With a ``timeout`` it runs in a
runner thread of its own, and the thread that received the request watches it:
a task that runs past ``timeout`` (measured here, from the moment the task
starts) gets ``TaskTimeout``, the chunk is answered with what ran, and the
process is restarted to stop that task. Either way, a client that hangs up makes
the chunk stop after the task it is running.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import platform
import secrets
import select
import sys
import threading
import time
from array import array
from collections.abc import Sequence
from typing import Any, Callable, Optional, cast

from .._core.logs import get_logger
from .._core.records import ChunkCall, ChunkOutcome, ExceptionRecord, GroupTimes, Status, TaskOutput
from .._core.serialization import dumps, loads_tasks, record_exception
from .._core.shipping import fingerprint, unpack
from ..errors import TaskTimeout
from ..worker import BaseWorker
from .activity import Activity
from .faults import NO_FAULTS, Faults
from .leaving import Leaving
from .running import failed_chunk, pack_chunk, run_chunk, run_chunk_captured

logger = get_logger(__name__)

__all__ = ["Servant", "served_name", "GENERIC"]

#: What a generic worker says it serves: whatever a client sends.
GENERIC = "*"

#: Functions a generic worker keeps loaded (the least recently used goes first).
FUNCTIONS_KEPT = 32

#: Seconds between two looks at a running chunk (its client, its timeout) at first
#: (at most, for a chunk without a timeout)...
_WATCH_EVERY = 0.05

#: ...and at most, once it has run a while: the gap doubles from one look to the next,
#: so a short chunk is answered at once and a long one costs a few wakeups, not 20 a
#: second (which 128 workers on one machine would pay together). A task's timeout
#: is looked at ten times over, at least.
_WATCH_MOST = 0.5


#: ``client_gone(seconds, wake)``: see ``Servant.run_chunk``.
ClientGone = Callable[[float, Optional[int]], bool]


def _stays(seconds: float = 0.0, wake: Optional[int] = None) -> bool:
    """A client that never goes: wait ``seconds``, or until ``wake`` becomes readable."""
    if seconds > 0:
        select.select([] if wake is None else [wake], [], [], seconds)
    return False


def served_name(target: Any) -> str:
    """The name a worker answers to: the class's or function's qualified name."""
    return str(getattr(target, "__qualname__", getattr(target, "__name__", repr(target))))


def _is_worker_class(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, BaseWorker)


class _Job:
    """One chunk, run by the request's thread or handed to the runner thread, and what
    it has done so far."""

    __slots__ = (
        "run", "tasks", "fid", "first", "level", "exact", "mark", "cancel", "done", "values", "times",
        "failures", "outputs",
    )

    def __init__(
        self, run: Callable[..., Any], tasks: Sequence[Any], fid: str, first: int, level: Optional[int],
        exact: bool,
    ) -> None:
        self.run = run
        self.tasks = tasks
        self.fid = fid  # what the client called the code it runs (see ``ping``)
        self.first = first
        self.level = level  # None, or the lowest log level to keep with what tasks print
        self.exact = exact  # whether the mark names every task: for a timeout, run by the runner
        self.mark = [-1]  # what runs now (see execution.group_mark), -1 between tasks
        self.cancel = False  # set by the watching thread: stop after the current task
        self.done = threading.Event()
        # Filled by the runner as tasks finish, so that a timeout can answer with them.
        # Times by group: a reply carries 16 bytes a group, not 8 a task.
        self.values: list[Any] = []
        self.times = GroupTimes()
        self.failures: dict[int, ExceptionRecord] = {}
        self.outputs: dict[int, TaskOutput] = {}


class Servant:
    """Runs chunks of tasks with a ``BaseWorker`` instance or a plain function."""

    def __init__(
        self,
        target: Any = None,
        on_restart: Optional[Callable[[], None]] = None,
        faults: Faults = NO_FAULTS,
        leaving: Optional[Leaving] = None,
    ) -> None:
        """``target``: a ``BaseWorker`` instance or a function to serve; ``None``: run what clients send.
        ``leaving``: when it stops taking chunks (a worker that dials its pool)."""
        self.identity = secrets.token_hex(16)
        self.leaving = leaving or Leaving()
        self._pinned = target is not None
        if self._pinned:
            kind = type(target) if isinstance(target, BaseWorker) else target
            self._name, self._fingerprint = served_name(kind), fingerprint(kind)
            self._run: Optional[Callable[..., Any]] = target.run if isinstance(target, BaseWorker) else target
        else:
            self._name, self._fingerprint, self._run = GENERIC, "", None
        self._functions: collections.OrderedDict[str, Callable[..., Any]] = collections.OrderedDict()
        self._instances: dict[str, BaseWorker] = {}  # BaseWorker instances this process set up
        self._on_restart = on_restart
        self._faults = faults
        self.activity = Activity(target)  # what ``status`` says it did
        self._calls = 0
        self._lock = threading.Condition()
        self._job: Optional[_Job] = None  # the chunk the runner holds, guarded by _lock
        self._restarting = False
        self._leaves = leaving is not None  # it may be told to leave (its chunks look out for it)
        # The runner writes a byte here when a chunk is done, so that the thread waiting
        # for the client to hang up (see ``_watch``) wakes at once.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._runner = threading.Thread(target=self._run_jobs, daemon=True, name="ezpool-runner")
        self._runner.start()

    def hello(self) -> dict[str, Any]:
        """Who this worker is and what it serves."""
        import cloudpickle

        logger.debug("a client checks who this worker is")

        from .._version import __version__

        versions = {
            "python": platform.python_version(),
            "cloudpickle": cloudpickle.__version__,
            "ezpool": __version__,
        }
        info = {
            "identity": self.identity,
            "serves": self._name,
            "fingerprint": self._fingerprint,
            "restarting": self._restarting,
            "pid": os.getpid(),
            "host": platform.node(),
            "platform": sys.platform,
            **versions,
        }
        return dict(self._faults.at("hello", info))

    def load(self, fid: str, blob: bytes) -> tuple[str, bytes]:
        """Keep the function in a shipment under ``fid``; ``(ERROR, record)`` if it cannot load."""
        if self._pinned:
            refused = TypeError(f"this worker serves only {self._name!r}")
            return Status.ERROR.value, dumps(record_exception(refused))
        with self._lock:
            if fid in self._functions:
                self._functions.move_to_end(fid)
                return Status.OK.value, b""
        try:
            target = unpack(blob)
            run = self._prepare(fid, target)
        except BaseException as exc:
            return Status.ERROR.value, dumps(record_exception(exc))
        with self._lock:
            self._functions[fid] = run
            while len(self._functions) > FUNCTIONS_KEPT:
                old, _ = self._functions.popitem(last=False)
                self._retire(old)
        return Status.OK.value, b""

    def close(self) -> None:
        """Tear down every ``BaseWorker`` this process set up for clients."""
        for fid in list(self._instances):
            self._retire(fid)

    def _prepare(self, fid: str, target: Any) -> Callable[..., Any]:
        if isinstance(target, functools.partial) and _is_worker_class(target.func):
            # A BaseWorker with a context (see ezpool._core.tasks.bind): run(context, *args).
            return functools.partial(self._prepare(fid, target.func), *target.args)
        if _is_worker_class(target):
            instance = target()
            instance.setup()
            self._instances[fid] = instance
            return instance.run
        if not callable(target):
            raise TypeError(f"{target!r} is neither a BaseWorker subclass nor a function")
        return cast(Callable[..., Any], target)

    def _retire(self, fid: str) -> None:
        instance = self._instances.pop(fid, None)
        if instance is not None:
            try:
                instance.teardown()
            except Exception:
                logger.exception("teardown of %s failed", type(instance).__name__)

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
        status, reply = self._run_call(ChunkCall(*wire), client_gone or _stays, client)
        return status.value, reply

    def _run_call(self, call: ChunkCall, client_gone: ClientGone, client: str = "") -> tuple[Status, bytes]:
        if call.identity != self.identity:
            return Status.WRONG_WORKER, self.identity.encode()
        first, count = call.first, call.size
        if call.level is not None and type(call.level) is not int:
            error = TypeError(f"capture_level must be a log level or None, got {call.level!r}")
            return Status.OK, pack_chunk(first, failed_chunk(count, record_exception(error)))
        run = self._run if self._pinned else self._functions.get(call.fid)
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
                self._lock.wait(_WATCH_EVERY)
            else:
                return Status.GONE, b""
            if self._restarting:
                return Status.RESTARTING, b""
            why = self.leaving.refuses(count)
            if why:
                return Status.LEAVING, why.encode()
            if self._leaves:  # a chunk stops early, as when its client leaves, when this worker must go
                client_gone = _or_leaving(self.leaving, client_gone)
            try:
                tasks = loads_tasks(call.payloads)
            except BaseException as exc:
                return Status.OK, pack_chunk(first, failed_chunk(count, record_exception(exc)))
            exact = call.timeout is not None
            job = self._job = _Job(run, tasks, str(call.fid), first, call.level, exact)
            if job.exact:
                self._lock.notify_all()  # for the runner
            self.activity.began(client)
        began = time.monotonic()
        if call.timeout is None:
            outcome = self._run_here(job, client_gone)
        else:
            outcome = self._watch(job, call.timeout, client_gone)
        ran = len(outcome.values)  # a timed-out chunk answers for fewer tasks than the runner holds
        self.leaving.ran(ran, time.monotonic() - began)
        self.activity.ended(ran, sum(1 for index in outcome.failures if index < ran))
        reply = pack_chunk(first, outcome, {k: v for k, v in list(job.outputs.items()) if k < ran})
        if self._faults.at("reply", reply, call=number) is None:
            logger.warning("fault injected: hanging up instead of answering call %d", number)
            return Status.GONE, b""
        return Status.OK, reply

    def _run_here(self, job: _Job, client_gone: ClientGone) -> ChunkOutcome:
        """Run a chunk without a timeout in this, the request's thread.

        Handed to the runner, a chunk cost two thread wakeups more (the runner's, and
        this thread's when it was done), which 128 workers on one machine paid
        together at every chunk. The client's hang-up is looked for between groups.
        """
        try:
            _execute(job, _Hangup(client_gone, job.first))
        finally:
            with self._lock:
                job.done.set()
                if self._job is job:
                    self._job = None
                self._lock.notify_all()
        return ChunkOutcome(job.values, job.times, job.failures)

    def _watch(self, job: _Job, timeout: float, client_gone: ClientGone) -> ChunkOutcome:
        """Wait for the runner, stopping it when the client leaves or a task overruns."""
        seen, since = -1, time.monotonic()
        most = max(_WATCH_EVERY, min(_WATCH_MOST, timeout / 10))
        every = _WATCH_EVERY
        while not job.done.is_set():
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
            if position >= 0 and now - since > timeout:
                job.cancel = True
                return self._timed_out(job, position, now - since, timeout)
        return ChunkOutcome(job.values, job.times, job.failures)

    def _timed_out(self, job: _Job, position: int, ran: float, timeout: float) -> ChunkOutcome:
        """Answer with what ran; the overrunning task gets ``TaskTimeout``; restart to stop it."""
        with self._lock:
            self._restarting = True
            self._lock.notify_all()
        offset = position - job.first
        values, times = job.values[:offset], array("d", job.times[:offset])
        # Times are added a group at a time (see execution.run_chunk): the tasks of the
        # unfinished group, all short ones, were not timed.
        times.extend(array("d", bytes(8 * (offset - len(times)))))
        error = TaskTimeout(
            f"task {job.tasks[offset]!r} ran longer than its timeout of {timeout} s "
            f"on the worker (pid {os.getpid()}), which restarts to stop it"
        )
        failures = {k: v for k, v in list(job.failures.items()) if k < offset}
        failures[offset] = record_exception(error)
        values.append(None)
        times.append(ran)
        logger.warning("task at position %d overran its timeout of %s s; restarting", position, timeout)
        if self._on_restart is not None:
            self._on_restart()
        return ChunkOutcome(values, times, failures)

    def _run_jobs(self) -> None:
        """The runner thread: run each job handed over (those with a timeout), one at a
        time, for the process's life."""
        while True:
            with self._lock:
                while self._job is None or self._job.done.is_set() or not self._job.exact:
                    self._lock.wait()
                job = self._job
            _execute(job, job)
            with self._lock:
                job.done.set()
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


def _or_leaving(leaving: Leaving, client_gone: ClientGone) -> ClientGone:
    def gone(seconds: float, wake: Optional[int]) -> bool:
        return leaving.cut() or client_gone(seconds, wake)

    return gone


def _execute(job: _Job, stop: Any) -> None:
    """Run ``job``'s tasks into it; ``stop.cancel`` ends it after the running task or group."""
    into = ChunkOutcome(job.values, job.times, job.failures)
    if job.level is None:
        run_chunk(job.run, job.tasks, job.first, job.mark, into, stop, job.exact)
    else:
        run_chunk_captured(job.run, job.tasks, job.first, job.mark, job.level, job.outputs, into, stop)


class _Hangup:
    """``stop`` for a chunk run in the request's thread: ``cancel`` is whether its client
    has hung up, looked at when a group of tasks ends, at most every ``_WATCH_EVERY``
    seconds (a chunk shorter than that never looks). Once gone, a client stays gone."""

    __slots__ = ("_client_gone", "_first", "_next", "_gone")

    def __init__(self, client_gone: ClientGone, first: int) -> None:
        self._client_gone = client_gone
        self._first = first
        self._next = time.monotonic() + _WATCH_EVERY
        self._gone = False

    @property
    def cancel(self) -> bool:
        if not self._gone:
            now = time.monotonic()
            if now >= self._next:
                self._next = now + _WATCH_EVERY
                self._gone = self._client_gone(0.0, None)
                if self._gone:
                    logger.info("client gone: the chunk from task %d stops after the running task",
                                self._first)
        return self._gone
