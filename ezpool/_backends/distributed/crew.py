"""The threads that drive a pool's workers, kept from call to call.

A call needs one thread per worker while it runs (each waits on its worker's
answer). Rather than start and join that many threads on every call, the
backend keeps a crew: a job goes to an idle thread, and a new thread is started
only when none is idle, so the threads never outnumber the workers of the
busiest call, and a second call starts none.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from ..._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["Crew"]

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
