"""``max_memory`` in a served worker (``servant``): the memory watch around its chunks.

A served worker cannot be killed from outside for memory as a ``pmap`` worker is
(its client is far away), so it answers for the task itself::

    runner thread (runs the chunk)        watchdog (``memory.MemoryWatch``, kill=False)
    ──────────────────────────────        ─────────────────────────────────────────────
    task ... task ... (growing)           every 20 ms: resident size > max_memory?
                                            └─ job.over = (marked task, size); wake the
                                               request's thread, which answers: that task
                                               fails with WorkerOutOfMemory, the ones
                                               before it are reported, and the process
                                               restarts (``Servant._out_of_memory``)
    after each task: the peak (ru_maxrss)
      past max_memory? ─▶ the chunk ends there; that task is blamed the same way

The watchdog does not kill its process (the answer would be lost with it): the
restart replaces the process a moment later, and a process still there ``_KILL_AFTER``
seconds later kills itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any, Optional

from .._core.logs import get_logger
from .jobs import Job
from .memory import MemoryWatch, human_size, out_of_memory

logger = get_logger(__name__)

__all__ = ["MemoryGuard", "blame", "limits_of"]

#: Seconds after passing its limit that a worker which has not restarted yet kills itself.
_KILL_AFTER = 5.0


def limits_of(
    sent: Optional[Sequence[Any]], own: tuple[Optional[int], Optional[int]]
) -> tuple[Optional[int], Optional[int]]:
    """``(max_tasks_per_worker, max_memory)`` for a call that ``sent`` its limits
    (``ChunkCall.limits``, or ``None``): its own, else this worker's (``own``)."""
    most, memory = own
    if sent is not None:
        tasks, size = sent
        most, memory = (tasks or most), (size or memory)
    return (int(most) if most else None), (int(memory) if memory else None)


def blame(job: Job, position: int, size: int) -> tuple[int, BaseException]:
    """The task of ``job`` that took the process to ``size`` bytes, past its ``max_memory``
    (``position``, or the next to run if it is -1), and its ``WorkerOutOfMemory``."""
    offset = min(max(0, position - job.first), len(job.tasks) - 1)
    error = out_of_memory(job.tasks[offset], job.memory, size, f"served worker pid {os.getpid()}")
    logger.warning("task at position %d took this worker past max_memory (%s); restarting",
                   job.first + offset, human_size(size))
    return job.first + offset, error


class _PeakStop:
    """``stop`` for a chunk under ``max_memory``: it ends after a task that took the
    peak past the limit (or when the job is cancelled), blaming that task."""

    __slots__ = ("_job", "_watch")

    def __init__(self, job: Job, watch: MemoryWatch) -> None:
        self._job = job
        self._watch = watch

    @property
    def cancel(self) -> bool:
        job = self._job
        if job.cancel:
            return True
        size = self._watch.over()
        if size is None:
            return False
        if job.over is None:
            job.over = (job.first + max(0, len(job.values) - 1), size)
        return True


class MemoryGuard:
    """The memory watches of one served worker (one per limit asked), and the job each watches.

    ``wake``: a file descriptor to write a byte to when a job passes its limit (the
    request's thread waits on it).
    """

    def __init__(self, wake: int) -> None:
        self._wake = wake
        self._watches: dict[int, MemoryWatch] = {}
        self._job: Optional[Job] = None

    def arm(self, job: Job) -> Any:
        """Watch ``job`` (which has a ``memory`` limit) from now on; the ``stop`` its runner
        reads between tasks."""
        assert job.memory is not None
        watch = self._watches.get(job.memory)
        if watch is None:
            watch = self._watches[job.memory] = MemoryWatch(job.memory, self._over, kill=False)
        self._job = job
        watch.begin()
        return _PeakStop(job, watch)

    def disarm(self, job: Job) -> None:
        """``job`` ended: no sampling until the next."""
        if job.memory is not None and job.memory in self._watches:
            self._watches[job.memory].end()
        if self._job is job:
            self._job = None

    def _over(self, size: int) -> None:
        """From the watchdog: the resident size passed the limit of the job it watches."""
        job = self._job
        if job is None:
            return
        if job.over is None:
            position = job.mark[0]
            job.over = (position if position >= 0 else job.first + len(job.values), size)
        job.cancel = True
        with contextlib.suppress(OSError):
            os.write(self._wake, b"\0")
        timer = threading.Timer(_KILL_AFTER, _kill, args=(size,))
        timer.daemon = True
        timer.start()


def _kill(size: int) -> None:
    """The restart did not come: kill this process (its client finds it lost)."""
    logger.error("this worker passed its memory limit (%s) and has not restarted: killing it",
                 human_size(size))
    os.kill(os.getpid(), signal.SIGKILL)
