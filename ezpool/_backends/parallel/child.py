"""The loop a parallel worker process runs: receive a chunk, run it, send it back."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, Optional, Union

from ..._core.logs import get_logger
from ..._core.parcels import Loader
from ..._core.records import ChunkRequest, TaskOutput
from ..._core.serialization import loads, loads_tasks, record_exception
from ..._core.unsendable import not_loaded
from ..._worker.memory import MemoryWatch, blame_last
from ..._worker.running import failed_chunk, pack_chunk, run_chunk, run_chunk_captured
from . import pipes

logger = get_logger(__name__)

__all__ = ["Limits", "main"]


class Limits(NamedTuple):
    """What a worker process is told before the chunks of a call that sets limits differently
    from the last: its ``max_memory`` in bytes (``None``: none)."""

    max_memory: Optional[int]

#: Seconds between checks that the parent process is still alive.
_PARENT_CHECK_EVERY = 0.5


def main(conn: Connection, mark_buffer: Any, parent_pid: int) -> None:
    """Serve chunks from ``conn`` until told to stop or the parent goes away.

    A request is a ``ChunkRequest`` (``ezpool._core.records``): the function to run
    is the one cached under its ``fid``, loaded from its ``parcel`` when one comes
    (see ``ezpool._core.parcels``); a piece that is ``None`` follows the request as
    a message of its own. The reply is what ``ezpool._worker.running.pack_chunk``
    makes. ``None`` asks the loop to stop; ``Limits`` sets the memory limit of the
    chunks that follow (``ezpool._worker.memory``): past it, the process answers for
    the tasks run so far, the last one failed with ``WorkerOutOfMemory``, writes its
    size in ``mark[1]``, and leaves (its watchdog, for a task still running, writes
    it and kills the process). Every message is read and written as
    ``ezpool._backends.parallel.pipes`` says.
    """
    # Ctrl-C is the parent's to handle: children stop when the parent says so.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    mark = memoryview(mark_buffer).cast("B").cast("q")
    # A reader thread drains the pipe as requests arrive, so the parent can queue
    # the next chunk while this one runs and never blocks on a full pipe.
    requests: queue.SimpleQueue[Union[ChunkRequest, Limits, None]] = queue.SimpleQueue()
    threading.Thread(target=_read_requests, args=(conn, requests), daemon=True).start()
    functions = Loader()
    watch: Optional[MemoryWatch] = None
    while True:
        request = requests.get()
        if request is None:
            return
        if isinstance(request, Limits):
            if watch is not None:
                watch.close()
            limit = request.max_memory
            watch = None if limit is None else MemoryWatch(limit, partial(mark.__setitem__, 1))
            continue
        fid, parcel, first, stop, exact, pieces, level = request
        del request  # a parcel may be big (where big buffers cannot be mapped)
        if parcel is not None:
            functions.receive(parcel)
            parcel = None
        outputs: dict[int, TaskOutput] = {}
        fun = None
        try:
            fun = functions.get(fid)
            tasks = loads_tasks(pieces)
            pieces = []  # their pickles go while the tasks run: one copy of a big argument
        except Exception as exc:  # the tasks: the caller runs them again one by one
            outcome = failed_chunk(stop - first, record_exception(exc if fun is None else not_loaded(exc)))
        else:
            if watch is not None:
                watch.begin()
            if level is None:
                outcome = run_chunk(fun, tasks, first, mark, stop=watch, exact=exact)
            else:
                outcome = run_chunk_captured(fun, tasks, first, mark, level, outputs, stop=watch)
        outgrown = watch.over() if watch is not None else None
        if watch is not None:
            watch.end()
            if outgrown is not None:
                blame_last(outcome, tasks, watch.limit, outgrown, f"worker process pid {os.getpid()}")
                mark[1] = outgrown  # before the answer: the caller reads it with the answer
        try:
            pipes.send(conn, [pack_chunk(first, outcome, outputs)])
        except OSError:  # the parent is gone
            return
        if outgrown is not None:
            return  # a peak never comes down: a fresh process takes over
        # Hold no task's arguments or values while waiting for the next chunk.
        del pieces, outcome, outputs
        tasks = ()


def _read_requests(conn: Connection, requests: queue.SimpleQueue[Union[ChunkRequest, Limits, None]]) -> None:
    """Move requests from the pipe into ``requests``, unpickled, with the pieces that
    follow them; ``None`` once told to stop, or the pipe closes."""
    try:
        while True:
            sent = loads(pipes.receive(conn))
            if sent is None:
                break
            if isinstance(sent, Limits):
                requests.put(sent)
                continue
            request = ChunkRequest(*sent)
            pieces = request.pieces
            for index, piece in enumerate(pieces):
                if piece is None:
                    pieces[index] = pipes.receive(conn)
            requests.put(request)
    except (EOFError, OSError):
        pass
    except Exception:  # not a request of this library's: stop, and the caller redoes the chunk
        logger.exception("worker process %d could not read a request", os.getpid())
    requests.put(None)


def _exit_with_parent(parent_pid: int) -> None:
    """Leave as soon as the calling process dies, even in the middle of a long task.

    A process that was forked or spawned is the caller's child: it sees its parent
    change. One started by a fork server is the server's child, and asks after the
    caller by its pid instead.
    """
    if os.getppid() == parent_pid:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_CHECK_EVERY)
    else:
        while _exists(parent_pid):
            time.sleep(_PARENT_CHECK_EVERY)
    os._exit(1)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a process of another user has the pid
        return True
    return True
