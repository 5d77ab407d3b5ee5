"""The worker processes of the parallel mode: start one, kill one, stop them all.

Worker processes are not daemonic, so that a task may start processes of its
own (a nested ``Pool().pmap``, a ``multiprocessing.Pool``); daemonic processes
may not have children. None of them outlives the pool that started it:

- ``Pool.shutdown()`` (``ParallelBackend.close``) stops them with ``stop_all``;
- a pool that is never shut down stops them when it is garbage-collected, or when
  its process exits (``stop_with``). multiprocessing joins non-daemonic children
  when a process exits; this runs first, so a script that forgot ``shutdown()``
  still exits at once. It also runs when a worker process leaves, so the nested
  pools of a worker are stopped before the worker waits for them;
- a worker whose caller dies, even by SIGKILL, exits within half a second on its
  own (``child._exit_with_parent``; under ``forkserver`` its parent is the server,
  so it watches the caller's pid); the processes of its own EzPool pools run the
  same loop, so they follow it within another half second.

Each process has a ``mark``: two 64-bit integers in memory shared with the caller.
The first is the position of the task it is running, or of the group of tiny tasks
(-1: none; see ``execution.group_mark``), so that a crash or a timeout is blamed
on that task, or narrowed down to it. The second is 0, or the resident size the
process reached past its ``max_memory`` (``ezpool._worker.memory``): written before
it answers and retires, or before its watchdog kills it. It is an anonymous shared
page, which a forked process inherits; a ``spawn`` or ``forkserver`` process gets it as a memory file
descriptor (``memfd``), sent with its start-up arguments (each side then holds
the mapping's own descriptor while the process lives). Neither needs ``ctypes``,
the ``multiprocessing`` heap, or a file.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing.process
import os
import sys
from multiprocessing.connection import Connection
from multiprocessing.reduction import DupFd
from multiprocessing.util import Finalize
from time import monotonic, perf_counter
from types import FrameType
from typing import Any, Optional

from ..._core.deaths import MemoryWitness
from ..._core.logs import get_logger
from ..._core.records import read_mark
from ..._core.serialization import dumps
from ...errors import MainNotGuarded
from . import child, pipes

logger = get_logger(__name__)

__all__ = ["STOP_GRACE", "WorkerProcess", "preload", "stop_all", "stop_if_unguarded", "stop_with"]

#: Seconds to wait for processes to leave after being asked, before killing them.
STOP_GRACE = 2.0

#: multiprocessing runs exit finalizers of priority 0 or more before it joins the
#: children of an exiting process; ``multiprocessing.Pool`` uses 15 for the same reason.
_EXIT_PRIORITY = 10

#: Bytes of a mark: two signed 64-bit integers (what runs; the size past ``max_memory``).
_MARK_BYTES = 16

#: The exit status of a worker process (or fork server) that, while it started, ran the
#: main module again and met a pool's call there: a script whose work is not under
#: ``if __name__ == "__main__":`` (see ``leave_if_starting``).
UNGUARDED_EXIT = 87


def leave_if_starting() -> None:
    """End this process at once, quietly, with ``UNGUARDED_EXIT``, if it is a worker process
    (or a fork server) still starting: ``spawn`` and ``forkserver`` run the main module again
    there (``multiprocessing`` marks that phase ``_inheriting``), and a pool's call met on the
    way must not start processes of its own. It prints nothing (what the script wrote to
    ``sys.stdout`` on the way is never flushed): the caller sees the status, and says why
    (``not_guarded``). ``os._exit``, as a fork server's child would turn ``SystemExit`` into 1."""
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        os._exit(UNGUARDED_EXIT)


def stop_if_unguarded(proc: WorkerProcess, start_method: str) -> None:
    """Raise ``MainNotGuarded`` if ``proc``, which died before running anything, left with
    ``UNGUARDED_EXIT``: the fix in one line, and that process's fate in another, at the line
    of the main script where this process is (the worker met the same)."""
    if proc.process.exitcode != UNGUARDED_EXIT:
        return
    import linecache

    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None) or "the main script"
    where = ""
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is getattr(main, "__dict__", None) and frame.f_code.co_name == "<module>":
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            where = f", line {frame.f_lineno}: {line}"
            break
        frame = frame.f_back
    raise MainNotGuarded(
        f"worker processes cannot start: the {start_method!r} start method runs the main script again "
        f"in each, and its work starts a pool there. Put that work under if __name__ == \"__main__\":\n"
        f"  the first worker process, pid {proc.process.pid}, left before running any task at {script}{where}"
    )


class WorkerProcess:
    """One worker process, seen from the calling process."""

    __slots__ = ("process", "conn", "inbox", "mark", "name", "holds", "seen", "served", "witness", "born",
                 "ran", "limit")

    def __init__(self, context: Any) -> None:
        leave_if_starting()  # a spawned process running an unguarded main script: never start more
        self.born = perf_counter()  # when it was started (``time.perf_counter``), for the timeline
        parent_end, child_end = context.Pipe(duplex=True)
        buffer, sent = _shared_mark(context)
        try:
            self.mark = memoryview(buffer).cast("B").cast("q")
            self.mark[0] = -1
            self.mark[1] = 0
            self.process = context.Process(
                target=child.main, args=(child_end, sent, os.getpid()), daemon=False, name="ezpool-worker"
            )
            self.process.start()
        finally:
            child_end.close()
            if isinstance(sent, _MarkFile):
                os.close(sent.fd)  # the started process has its own copy
        self.conn: Connection = parent_end
        self.inbox = pipes.Inbox()  # its replies are read into this (see ezpool._backends.parallel.pipes)
        self.name = f"pid {self.process.pid}"
        self.holds: set[str] = set()  # the functions (fids) it keeps, see ezpool._core.parcels
        self.seen = (-1, 0.0)  # (mark, when the caller first saw it), for timeouts
        self.served = False  # whether it ever sent a reply
        self.witness = MemoryWitness.of(self.process.pid)  # to tell an OOM kill from another SIGKILL
        self.ran = 0  # tasks it answered for (for ``max_tasks_per_worker``)
        self.limit: Optional[int] = None  # the ``max_memory`` it was told (``child.Limits``)

    @property
    def outgrown(self) -> int:
        """The resident size it reached past its ``max_memory`` (0: it did not)."""
        return int(self.mark[1])

    def running(self, now: float) -> tuple[int, int, float]:
        """What runs now: the position of its first task (-1: none), how many tasks
        run with it as one group (see ``execution.read_mark``), and since when, roughly."""
        mark = int(self.mark[0])
        if mark != self.seen[0]:
            self.seen = (mark, now)
        position, count = read_mark(mark)
        return position, count, self.seen[1]

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(STOP_GRACE)
        self.conn.close()


class _MarkFile:
    """A mark's memory file, sent to a ``spawn`` or ``forkserver`` process as a descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        # DupFd works only while a process is being started: it hands the descriptor over.
        return _map_mark, (DupFd(self.fd),)


def _map_mark(handle: Any) -> mmap.mmap:
    """In the started process: map the mark's memory file, then close the descriptor."""
    fd = handle.detach()
    try:
        return mmap.mmap(fd, _MARK_BYTES)
    finally:
        os.close(fd)


def _shared_mark(context: Any) -> tuple[Any, Any]:
    """A mark for a process of ``context``: (the caller's buffer, what the process gets)."""
    method = context.get_start_method()
    if method == "fork":
        page = mmap.mmap(-1, _MARK_BYTES)  # MAP_SHARED and anonymous: the child inherits it
        return page, page
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or method not in ("spawn", "forkserver"):  # pragma: no cover - not Linux
        raw = context.RawArray("q", _MARK_BYTES // 8)
        return raw, raw
    fd = memfd_create("ezpool-mark", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, _MARK_BYTES)
        page = mmap.mmap(fd, _MARK_BYTES)
    except BaseException:
        os.close(fd)
        raise
    return page, _MarkFile(fd)


def preload(context: Any) -> None:
    """Have the fork server of a ``forkserver`` context import the worker's modules
    before it forks anything (if it has not started yet), so that each process it
    forks starts with them, now and for every later pool; and cloudpickle with them,
    where this process uses it. It keeps the modules it was asked to load (by default
    ``__main__``)."""
    if context.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:  # started: too late
        return
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    wanted = [child.__name__] + (["cloudpickle"] if "cloudpickle" in sys.modules else [])
    if any(name not in modules for name in wanted):
        context.set_forkserver_preload(modules + [name for name in wanted if name not in modules])


def stop_all(processes: list[WorkerProcess]) -> None:
    """Ask every process to leave, wait ``STOP_GRACE`` seconds in all, kill the rest.

    Empties ``processes``.
    """
    for proc in processes:
        with contextlib.suppress(OSError):
            pipes.send(proc.conn, [dumps(None)])
    deadline = monotonic() + STOP_GRACE
    for proc in processes:
        proc.process.join(max(0.0, deadline - monotonic()))
        proc.kill()
    logger.debug("stopped %d worker processes", len(processes))
    processes.clear()


def stop_with(owner: object, processes: list[WorkerProcess]) -> Finalize[None]:
    """Have ``stop_all(processes)`` run once: when ``owner`` is garbage-collected, or
    when this process exits, before multiprocessing waits for its children.

    Calling the returned finalizer runs it now; ``processes`` is the list itself,
    which the owner must change in place, never replace.
    """
    return Finalize(owner, stop_all, args=(processes,), exitpriority=_EXIT_PRIORITY)
