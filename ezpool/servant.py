"""The object a distributed worker serves: it runs chunks of tasks for clients.

It is transport-free (``ezpool._pyro`` exposes it over the network). Its three
remote methods carry only strings, numbers, bytes and small dicts:

``hello()``
    who this worker is: an ``identity`` drawn at random when the process starts
    (so it changes whenever the process does), what it ``serves``, and its
    environment. A client checks it once and then names the identity in every
    ``run_chunk``, so that a different process on the same address cannot
    answer for this one.
``ping()``
    ``(identity, busy)``: the client's heartbeat, answered even while a chunk runs.
``run_chunk(identity, first, count, payloads, timeout)``
    ``(status, reply)``. ``status`` is ``"ok"`` (``reply`` is the pickled outcome,
    see ``ezpool.execution.pack_chunk``), ``"wrong-worker"`` (this is not the
    process the client checked: nothing ran), or ``"restarting"`` (a timed-out
    task is being stopped by restarting this process: nothing ran).

One chunk runs at a time, whoever sends it, in a runner thread of its own. The
thread that received the request watches it: a task that runs past ``timeout``
(measured here, from the moment the task starts) gets ``TaskTimeout``, the chunk
is answered with what ran, and the process is restarted to stop that task; a
client that hangs up makes the runner stop after the task it is running.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import sys
import threading
import time
from array import array
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .errors import TaskTimeout
from .execution import ChunkOutcome, failed_chunk, pack_chunk, run_chunk
from .serialization import ExceptionRecord, capture, loads
from .worker import BaseWorker

logger = logging.getLogger(__name__)

__all__ = ["Servant", "served_name", "Faults"]

#: Seconds between two looks at a running chunk (its client, its timeout).
_WATCH_EVERY = 0.05


def served_name(target: Any) -> str:
    """The name a worker answers to: the class's or function's qualified name."""
    return str(getattr(target, "__qualname__", getattr(target, "__name__", repr(target))))


class Faults:
    """Failures a test can ask a worker to show, read by ``serve`` from its environment only.

    ``EZPOOL_TEST_FAULTS="drop_reply=3"`` makes the third ``run_chunk`` run its
    chunk and then hang up instead of answering. Clients cannot reach this.
    """

    def __init__(self, text: str = "") -> None:
        self.drop_reply: set[int] = set()
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name != "drop_reply" or not value.isdigit():
                raise ValueError(f"unknown fault {item!r} (known: drop_reply=N)")
            self.drop_reply.add(int(value))


class _Job:
    """One chunk handed to the runner thread, and what it has done so far."""

    __slots__ = ("tasks", "first", "mark", "cancel", "done", "values", "times", "failures")

    def __init__(self, tasks: Sequence[Any], first: int) -> None:
        self.tasks = tasks
        self.first = first
        self.mark = [-1]  # the position running now, -1 between tasks
        self.cancel = False  # set by the watching thread: stop after the current task
        self.done = threading.Event()
        # Filled by the runner as tasks finish, so that a timeout can answer with them.
        self.values: list[Any] = []
        self.times = array("d")
        self.failures: dict[int, ExceptionRecord] = {}


class Servant:
    """Runs chunks of tasks with a ``BaseWorker`` instance or a plain function."""

    def __init__(
        self,
        target: Any,
        on_restart: Optional[Callable[[], None]] = None,
        faults: Optional[Faults] = None,
    ) -> None:
        self.identity = secrets.token_hex(16)
        self._name = served_name(type(target) if isinstance(target, BaseWorker) else target)
        self._run: Callable[..., Any] = target.run if isinstance(target, BaseWorker) else target
        self._on_restart = on_restart
        self._faults = faults or Faults()
        self._calls = 0
        self._lock = threading.Condition()
        self._job: Optional[_Job] = None  # the chunk the runner holds, guarded by _lock
        self._restarting = False
        self._runner = threading.Thread(target=self._run_jobs, daemon=True, name="ezpool-runner")
        self._runner.start()

    def hello(self) -> dict[str, Any]:
        """Who this worker is and what it serves."""
        from . import __version__

        return {
            "identity": self.identity,
            "serves": self._name,
            "restarting": self._restarting,
            "pid": os.getpid(),
            "host": platform.node(),
            "python": platform.python_version(),
            "ezpool": __version__,
            "platform": sys.platform,
        }

    def ping(self) -> tuple[str, bool]:
        """``(identity, busy)``: proof of life, answered even while a chunk runs."""
        return self.identity, self.busy()

    def busy(self) -> bool:
        """Whether a chunk is running now."""
        return self._job is not None

    def run_chunk(
        self,
        identity: str,
        first: int,
        count: int,
        payloads: list[bytes],
        timeout: Optional[float],
        client_gone: Callable[[], bool] = lambda: False,
    ) -> tuple[str, bytes]:
        """Run a chunk for the client that checked this process; see the module docstring."""
        if identity != self.identity:
            return "wrong-worker", self.identity.encode()
        with self._lock:
            self._calls += 1
            call = self._calls
            while self._job is not None and not self._restarting:
                if client_gone():
                    return "gone", b""
                self._lock.wait(_WATCH_EVERY)
            if self._restarting:
                return "restarting", b""
            try:
                tasks = [task for payload in payloads for task in loads(payload)]
            except BaseException as exc:
                return "ok", pack_chunk(first, failed_chunk(count, capture(exc)))
            job = self._job = _Job(tasks, first)
            self._lock.notify_all()
        outcome = self._watch(job, timeout, client_gone)
        if call in self._faults.drop_reply:
            logger.warning("fault injected: hanging up instead of answering call %d", call)
            return "drop", b""
        return "ok", pack_chunk(first, outcome)

    def _watch(self, job: _Job, timeout: Optional[float], client_gone: Callable[[], bool]) -> ChunkOutcome:
        """Wait for the runner, stopping it when the client leaves or a task overruns."""
        seen, since = -1, time.monotonic()
        while not job.done.wait(_WATCH_EVERY):
            now = time.monotonic()
            position = job.mark[0]
            if position != seen:
                seen, since = position, now
            if not job.cancel and client_gone():
                job.cancel = True
                logger.info("client gone: the chunk from task %d stops after the running task", job.first)
            if timeout is not None and position >= 0 and now - since > timeout:
                job.cancel = True
                return self._timed_out(job, position, now - since, timeout)
        return job.values, job.times, job.failures

    def _timed_out(self, job: _Job, position: int, ran: float, timeout: float) -> ChunkOutcome:
        """Answer with what ran; the overrunning task gets ``TaskTimeout``; restart to stop it."""
        with self._lock:
            self._restarting = True
            self._lock.notify_all()
        offset = position - job.first
        values, times = job.values[:offset], array("d", job.times[:offset])
        error = TaskTimeout(
            f"task {job.tasks[offset]!r} ran longer than its timeout of {timeout} s "
            f"on the worker (pid {os.getpid()}), which restarts to stop it"
        )
        failures = {k: v for k, v in list(job.failures.items()) if k < offset}
        failures[offset] = capture(error)
        values.append(None)
        times.append(ran)
        logger.warning("task at position %d overran its timeout of %s s; restarting", position, timeout)
        if self._on_restart is not None:
            self._on_restart()
        return values, times, failures

    def _run_jobs(self) -> None:
        """The runner thread: run each job handed over, one at a time, for the process's life."""
        while True:
            with self._lock:
                while self._job is None or self._job.done.is_set():
                    self._lock.wait()
                job = self._job
            run_chunk(self._run, job.tasks, job.first, job.mark, (job.values, job.times, job.failures), job)
            with self._lock:
                job.done.set()
                if not self._restarting:
                    self._job = None
                self._lock.notify_all()
