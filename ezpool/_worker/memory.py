"""``max_memory`` seen from inside a worker process: its resident memory, watched two ways.

A worker process that runs tasks under a memory limit makes one ``MemoryWatch`` and
tells it when tasks run. The watch catches a process grown past the limit in two
ways, because neither is enough alone:

- **after each task**, ``watch.over()`` (or ``watch.cancel``, the same test in the
  shape ``run_chunk``'s ``stop`` argument reads) compares the process's *peak*
  resident size (``getrusage``'s ``ru_maxrss``) with the limit. It sees a task that
  grew and shrank again, and one that allocated all at once in C code holding the
  GIL (``bytearray(n)``, ``numpy.ones(n)``), which no thread could watch. The task
  that just ran is the one to blame (``blame_last`` makes that its outcome), and the
  process must then retire: a peak never comes down;
- **while a task runs**, a watchdog thread samples the *current* resident size
  (``/proc/self/statm``) every ``INTERVAL`` seconds between ``begin()`` and ``end()``.
  Over the limit, it calls ``on_over(size)`` (which records, where the caller of
  the worker can read it after the process is gone, that the process died for
  memory and how big it was) and then kills its own process with ``SIGKILL``: a
  task that grows without end never gets to swap or to the OOM killer. The
  caller blames the task the worker's mark names (``WorkerOutOfMemory``, made by
  ``out_of_memory``), and replaces the process.

Use, in a worker's loop (the parallel mode's ``ezpool._backends.parallel.child``)::

    watch = MemoryWatch(limit, on_over=record_size)   # record_size(size: int) -> None
    watch.begin()                    # a chunk starts: the watchdog samples
    outcome = run_chunk(fun, tasks, first, mark, exact=True, stop=watch)  # ends short when over
    watch.end()                      # between chunks: no sampling, no cost
    size = watch.over()              # not None: the last task ran past the limit
    if size is not None:
        blame_last(outcome, tasks, limit, size, where)   # its outcome: WorkerOutOfMemory
        ... answer, then leave: a fresh process takes over
    watch.close()                    # the thread ends (it is a daemon thread anyway)

The limit is on the memory a worker has of its own. A forked process starts with its
parent's pages, which it shares until one of them writes to a page: a worker forked
from a notebook holding 2 GiB would otherwise be past a 1 GiB limit before its first
task. The watch reads, when it is made, how much of the process's resident memory is
shared (``shared_bytes``: the parent's pages after a fork, and the pages of shared
libraries) and leaves that out of both readings. A forked process also inherits its
parent's peak (``ru_maxrss`` counts from before the fork): ``over()`` counts only a
peak that rose past both that and the limit. An exec keeps the peak too: a served
worker that restarts in place after a task past the limit starts with that task's
peak, which would hide every later one below it. Where the peak inherited is past
the limit, the watch reads instead the peak of the present memory image (``VmHWM``,
a file read per task, only then). A process started big, and staying under the
peak it inherited, is caught by the watchdog alone. Sizes are bytes;
Linux gives both readings, other systems the peak alone (``resident_bytes`` is
``None`` there and the watchdog never fires).
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .._core.logs import get_logger
from .._core.records import ChunkOutcome
from .._core.serialization import record_exception, short_repr
from ..errors import WorkerOutOfMemory

logger = get_logger(__name__)

__all__ = ["INTERVAL", "MemoryWatch", "blame_last", "human_size", "out_of_memory", "peak_bytes",
           "high_water_bytes", "resident_bytes", "shared_bytes"]

#: Seconds between two samples of the watchdog while a task runs.
INTERVAL = 0.02

#: ``ru_maxrss`` is in KiB on Linux and the BSDs, in bytes on macOS.
_PEAK_UNIT = 1 if sys.platform == "darwin" else 1024

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> Optional[int]:
    """This process's resident size now, in bytes (``None`` where ``/proc`` cannot tell)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def shared_bytes() -> int:
    """How much of this process's resident memory it shares with other processes now, in
    bytes (``Shared_Clean`` and ``Shared_Dirty`` of ``/proc/self/smaps_rollup``, Linux 4.14
    and later; 0 where that cannot tell). Reading it walks the process's page tables: it
    is read once per watch, never per sample."""
    shared = 0
    try:
        with open("/proc/self/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith((b"Shared_Clean:", b"Shared_Dirty:")):
                    shared += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return shared


def high_water_bytes() -> Optional[int]:
    """The largest resident size of this process's present memory image, in bytes (``VmHWM``
    of ``/proc/self/status``; ``None`` where that cannot tell). Unlike ``ru_maxrss`` it
    starts afresh when the process execs; it costs a file read, so ``MemoryWatch`` reads
    it only where ``ru_maxrss`` is blind (see ``MemoryWatch.over``)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_bytes() -> int:
    """The largest resident size this process has had, in bytes (``ru_maxrss``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _PEAK_UNIT


def human_size(size: float) -> str:
    """``size`` bytes for people, in powers of 1024: ``"512.0 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def out_of_memory(task: Any, limit: Optional[int], size: Optional[int], where: str) -> WorkerOutOfMemory:
    """The error of ``task``, whose worker (``where``: "worker process pid 7") grew to ``size``
    bytes past ``limit`` (either ``None`` where unknown)."""
    reached = f" reached {human_size(size)} of resident memory" if size is not None else ""
    bound = f", past its max_memory of {human_size(limit)}" if limit is not None else ""
    return WorkerOutOfMemory(
        f"task {short_repr(task)} ran out of memory: {where}{reached}{bound}; the process was replaced"
    )


def blame_last(outcome: ChunkOutcome, tasks: Sequence[Any], limit: int, size: int, where: str) -> None:
    """Make the last task that ran in ``outcome`` (of ``tasks``) fail with ``WorkerOutOfMemory``."""
    values, _, failures = outcome
    if not values:
        return
    last = len(values) - 1
    values[last] = None
    failures[last] = record_exception(out_of_memory(tasks[last], limit, size, where))


class MemoryWatch:
    """Watches this process's resident memory against ``limit`` bytes (see the module's text).

    ``on_over(size)`` is called from the watchdog thread when the current size passes
    the limit while a task runs (between ``begin`` and ``end``); the process then
    kills itself with ``SIGKILL`` unless ``kill`` is false (then the watchdog stops
    sampling until the next ``begin``). ``on_over`` must be quick and must not take
    locks the task's thread may hold. The thread starts at the first ``begin``.
    """

    def __init__(
        self, limit: int, on_over: Callable[[int], object], every: float = INTERVAL, kill: bool = True
    ) -> None:
        if limit < 1:
            raise ValueError(f"a memory limit must be a positive number of bytes, got {limit!r}")
        self.limit = limit
        self.every = every
        self._on_over = on_over
        self._kill = kill
        self._inherited = peak_bytes()  # what a forked process's peak starts at
        self._shared = shared_bytes()  # not the worker's own: the parent's pages after a fork
        # A peak inherited from the image before an exec (a served worker restarted in place
        # after a task past the limit) hides any new one below it: then read VmHWM instead.
        self._blind = self._inherited - self._shared > limit
        self._armed = threading.Event()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def begin(self) -> None:
        """Tasks run from now on: sample the resident size until ``end``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="ezpool-memory-watch", daemon=True)
            self._thread.start()
        self._armed.set()

    def end(self) -> None:
        """No task runs now: stop sampling."""
        self._armed.clear()

    def over(self) -> Optional[int]:
        """The peak resident size of the worker's own, if it has passed the limit (and what a
        fork inherited)."""
        if self._blind:
            water = high_water_bytes()
            own = water - self._shared if water is not None else 0
            return own if own > self.limit else None
        peak = peak_bytes()
        own = peak - self._shared
        return own if own > self.limit and peak > self._inherited else None

    @property
    def cancel(self) -> bool:
        """Whether the peak passed the limit: ``run_chunk`` reads this as its ``stop.cancel``
        after each task, and ends the chunk there."""
        return self.over() is not None

    def close(self) -> None:
        """Stop watching for good; the thread ends at its next sample."""
        self._closed = True
        self._armed.set()

    def _watch(self) -> None:
        armed = self._armed
        while True:
            armed.wait()
            if self._closed:
                return
            time.sleep(self.every)
            if self._closed:
                return
            if not armed.is_set():
                continue
            size = resident_bytes()
            if size is None or size - self._shared <= self.limit:
                continue
            size -= self._shared
            try:
                self._on_over(size)
            except Exception:  # the kill matters more than the record of it
                logger.exception("recording a worker's memory (%s) failed", human_size(size))
            if self._kill:
                os.kill(os.getpid(), signal.SIGKILL)
            armed.clear()
