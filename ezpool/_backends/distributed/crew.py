"""What a pool keeps to run its calls: threads that drive its workers, and the
local workers it started itself.

A call needs one thread per worker while it runs (each waits on its worker's
answer). Rather than start and join that many threads on every call, the
backend keeps a crew: a job goes to an idle thread, and a new thread is started
only when none is idle, so the threads never outnumber the workers of the
busiest call, and a second call starts none.

The workers a pool starts (``Started``) hold a key of that pool's own. They die
with it: ``stop`` kills each one and waits for it to exit, so that no later pool
of this process meets one still holding the address (and refusing its key), and
none is started again once the pool has stopped, not even by a call still running.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from typing import Any, Callable

from ... import security
from ..._core.logs import get_logger
from ...errors import WorkerUnavailable
from .connect import start_worker
from .links import Link

logger = get_logger(__name__)

__all__ = ["Crew", "Started"]

#: Seconds a worker the pool started has to leave after SIGTERM, when the pool closes.
STOP_GRACE = 5.0

_QUIT = None  # a thread's last job


class Crew:
    """Runs jobs on threads that wait for the next one, until ``stop``."""

    def __init__(self, name: str = "ezpool-drive") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, guarded by _lock
        self._threads: list[threading.Thread] = []

    @property
    def size(self) -> int:
        """How many threads the crew has started and not yet stopped."""
        return len(self._threads)

    def run(self, job: Callable[..., Any], *args: Any) -> threading.Event:
        """Run ``job(*args)`` on an idle thread (a new one if none is); set when it has ended."""
        ended = threading.Event()
        with self._lock:
            jobs = self._jobs
            if self._idle:
                self._idle -= 1
            else:
                thread = threading.Thread(target=self._serve, args=(jobs,), daemon=True,
                                          name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        jobs.put((job, args, ended))
        return ended

    def stop(self) -> None:
        """Let every thread end once it has finished its job (without waiting for it).

        The crew may be used again: new jobs go to new threads."""
        with self._lock:
            threads, self._threads, self._idle = self._threads, [], 0
            jobs, self._jobs = self._jobs, queue.SimpleQueue()
        for _ in threads:
            jobs.put(_QUIT)

    def _serve(self, jobs: queue.SimpleQueue[Any]) -> None:
        while True:
            item = jobs.get()
            if item is _QUIT:
                return
            job, args, ended = item
            try:
                job(*args)
            except BaseException:  # a job settles its own failures; this is a bug
                logger.exception("a job of the crew failed")
            with self._lock:  # idle before anyone hears the job ended, so the next call reuses it
                if jobs is not self._jobs:  # the crew was stopped meanwhile
                    ended.set()
                    return
                self._idle += 1
            ended.set()


class Started:
    """The workers a pool started on this machine, by address; they die with the pool."""

    def __init__(self) -> None:
        self._lock = threading.Condition()  # drivers' threads start workers again
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._starting = 0  # workers being started now (stop waits for them)
        self._stopped = False

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The processes of the workers started and not stopped, by address (a copy)."""
        with self._lock:
            return dict(self._processes)

    def start(self, link: Link) -> dict[str, Any]:
        """Start a generic worker for ``link`` that only this pool can talk to (a key of
        its own); its hello. ``WorkerUnavailable`` once the pool has stopped."""
        with self._lock:
            if self._stopped:
                raise WorkerUnavailable(f"the pool was shut down: no worker is started for {link.text}")
            self._starting += 1
        try:
            link.key, link.tls = security.private_key(), None
            link.reconnect(link.heartbeat)
            process, info = start_worker(link)
            with self._lock:
                old = self._processes.get(link.text)
                stopped = self._stopped
                if not stopped:
                    self._processes[link.text] = process
            for gone in (old, process if stopped else None):
                if gone is not None:
                    _kill(gone)
        finally:
            with self._lock:
                self._starting -= 1
                self._lock.notify_all()
        if stopped:
            raise WorkerUnavailable(f"the pool was shut down while starting a worker for {link.text}")
        return info

    def restart(self, link: Link) -> bool:
        """Start again the worker started for ``link``, if its process has died; whether it did."""
        with self._lock:
            process = None if self._stopped else self._processes.get(link.text)
        if process is None or process.poll() is None:
            return False
        ended = link.process.ended() if link.process is not None else None  # out of memory, say
        logger.warning("the worker started for %s %s; starting it again", link.text,
                       ended or f"exited ({process.returncode})")
        try:
            info = self.start(link)
        except Exception as exc:
            logger.warning("could not start %s again: %s", link.text, exc)
            return False
        link.admit(info)
        return True

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every worker started (SIGTERM, or SIGKILL at once when ``grace`` is 0;
        SIGKILL after ``grace`` seconds) and wait for each to exit, and for those being
        started (which are then killed); none is started again."""
        with self._lock:
            self._stopped = True
            processes, self._processes = self._processes, {}
        for process in processes.values():
            if process.poll() is None and grace > 0:
                process.terminate()
            elif process.poll() is None:
                process.kill()
        deadline = time.monotonic() + grace
        for uri, process in processes.items():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(process)
            logger.debug("stopped the worker started for %s", uri)
        with self._lock:
            self._lock.wait_for(lambda: not self._starting)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` (if it still runs) and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait()
