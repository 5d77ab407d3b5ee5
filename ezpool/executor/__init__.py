"""``PoolExecutor``: a ``concurrent.futures.Executor`` that runs on an EzPool pool of any mode.

How calls flow (one stream per executor, run by one thread of its own)::

    caller threads                   the stream's thread               where the mode runs tasks
    ──────────────                   ─────────────────                 ─────────────────────────
    submit(fn, *a) ─ (future, task) ─▶ Live ─ take ─▶ the stream
    map(fn, *its) ── MapCalls ───────▶ (admit: skip cancelled futures; ── chunks ──▶ run_task:
                                        cut a map into slices)                    each call
    future.result() ◀─ set_result ◀── settle a whole batch at once;   ◀── (values, errors) a task
    next(map) ◀─────── MapRun.ready ◀─ split a slice that failed as
                                        a whole and retry its calls

A task is ``(fn, calls, how)`` (``calls.run_task``): a ``submit`` is one call; a
``map`` is cut into slices of consecutive calls (one at first, more once their run
times are known), so that ten thousand tiny calls cost about what ``pmap`` pays for
them. A call's exception travels in its task's value, with the worker's traceback
as ``__cause__``. A task whose worker dies gets ``WorkerCrashed`` (a slice of several
calls is first split and its calls retried alone); the executor goes on. A failure
of the stream itself (no worker can be reached) fails the calls taken and waiting;
the next ``submit`` starts a new stream. What waits, what was taken and where each
outcome goes is ``_submitted``; what runs on the workers is ``_calls``; the stream
is the one every call of a pool goes through (``ezpool._core.stream``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from .. import _backends as backends
from .._core.logs import get_logger
from ..options import Options
from ..timeline import Timeline
from ._calls import Code, unwrap
from ._future import CallFuture
from ._submitted import Calls, MapCalls, MapRun, Submitted

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import PoolOptions
    from ..results import PathText


class _HasOptions(Protocol):
    """What ``PoolExecutor.of`` reads of a pool: its mode and its options."""

    mode: str
    options: Options

logger = get_logger(__name__)

__all__ = ["PoolExecutor"]

#: Longest wait of the constructor for the pool's processes or workers to start.
_READY = 30.0

#: Tasks the stream holds at once (read and not yet settled), unless ``buffersize`` says.
_HELD = 4096


class PoolExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run in an EzPool pool.

    ``mode`` is ``'parallel'`` (processes on this machine, ``max_workers`` of them;
    ``None``: one per CPU), ``'distributed'`` (generic workers named by ``workers``,
    or started on this machine), ``'threads'`` (``max_workers`` threads here; ``None``: as
    ``ThreadPoolExecutor``) or ``'serial'`` (one thread here); ``max_workers``
    is checked in every mode and used by the parallel and threads ones. Other keyword options
    are the ``Pool``'s (``timeout``, ``max_attempts``, ``hmac_key``, ...); a
    progress bar is off unless asked for. ``Pool.executor()`` makes one with a
    pool's mode and options. In the parallel and distributed modes ``cancel()`` stops a
    running call too: its worker is killed and replaced, and the future ends cancelled
    (in the serial mode a running call cannot be stopped, and ``cancel()`` refuses it,
    as the standard executors do). Leaving a ``map``'s results unread (closing the
    iterator) stops its running calls as well. The executor has processes or workers of its own,
    started by the constructor (which returns once they are up) and stopped by
    ``shutdown`` (or at interpreter exit, once the calls submitted have run); use
    it as a context manager.
    """

    def __init__(
        self, mode: str = "parallel", max_workers: Optional[int] = None, **options: Unpack[PoolOptions]
    ) -> None:
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be a positive integer or None, got {max_workers!r}")
            if max_workers <= 0:
                raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
            if mode == "parallel" and options.get("ncpu") is None:  # (a pool's options hold None)
                options["ncpu"] = max_workers
            elif mode == "threads" and options.get("nthreads") is None:
                options["nthreads"] = max_workers
        options.setdefault("progress", False)
        settings = Options(**options)
        if settings.buffersize is None:
            settings = settings.replace(buffersize=_HELD)
        self._submitted = Submitted(backends.check_mode(mode), settings)
        self._max_workers = max_workers
        # Where workers cannot import what this process can, functions travel by value.
        self._by_value = mode == "distributed"
        self._shipped: dict[int, tuple[weakref.ref[Any], Code]] = {}  # id(fn) -> fn, its Code
        # Collected unused: let the stream end, which stops the pool. At exit: finish first.
        weakref.finalize(self, self._submitted.close, False).atexit = False  # _finish does that
        _at_exit(functools.partial(_finish, weakref.ref(self._submitted), os.getpid()))
        # Start the pool's processes or workers now; the first calls then start at once.
        self._submitted.start()
        self._submitted.live.reading.wait(_READY)

    @classmethod
    def of(cls, pool: _HasOptions, **overrides: Unpack[PoolOptions]) -> PoolExecutor:
        """An executor with ``pool``'s mode and options (its own processes and connections)."""
        return cls(pool.mode, **{**pool.options.values(), **overrides})

    @property
    def mode(self) -> str:
        return self._submitted.mode

    # --- the Executor protocol ---------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; a ``Future`` of its value. In the distributed
        mode ``fn`` may be a lambda or a function from ``__main__`` (it travels by value)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        future = CallFuture()
        self._submitted.put(((future, (self._sendable(fn), args, kwargs or False)),))
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
        buffersize: Optional[int] = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: results in order, an exception raised where its call is.

        Calls travel in slices sized from their measured run times, whatever
        ``chunksize`` says (it is checked, as ``ProcessPoolExecutor`` does). With
        ``buffersize`` (as in Python 3.14), at most that many calls are read from
        the iterables ahead of the results consumed; without it they are all read now.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be a positive integer, got {chunksize!r}")
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize!r}")
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError(f"buffersize must be an integer or None, got {buffersize!r}")
            if buffersize < 1:
                raise ValueError(f"buffersize must be None or > 0, got {buffersize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        # Over one iterable each call is its item (a range stays a range: its slices travel
        # as three numbers); over several, a tuple of arguments.
        how = True if len(iterables) == 1 else None
        calls: Iterator[Any] = iter(iterables[0]) if how else zip(*iterables)
        if buffersize is None:
            first: Calls = iterables[0] if how and type(iterables[0]) is range else list(calls)
        else:
            first = _take(calls, buffersize)
        run = MapRun()
        sent = self._sendable(fn)
        if first:
            self._submitted.put((MapCalls(run, sent, 0, first, how),))
        more = calls if buffersize is not None else None
        results = self._results(run, sent, how, len(first), more, buffersize, deadline)
        if self._submitted.stoppable:  # left unread, even before the first: its running calls stop
            weakref.finalize(results, run.abandon)
        return results

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; those submitted still run, then the pool stops. ``wait`` waits
        for all that. ``cancel_futures`` cancels the calls not started and, in the parallel
        and distributed modes, stops the running ones too (their workers are killed): their
        futures end cancelled, and a ``map``'s calls raise ``CancelledError`` where read."""
        self._submitted.close(wait, cancel_futures)

    def terminate_workers(self) -> None:
        """Shut down now, as ``ProcessPoolExecutor.terminate_workers`` (Python 3.14) does:
        the calls not started are cancelled; in the distributed mode, the workers the pool
        started itself are killed and waited for, and the calls they ran fail. Calls
        running elsewhere end in the background, then the pool stops."""
        self._submitted.close(False, True)
        self._submitted.backend.terminate()

    @property
    def timeline(self) -> Timeline:
        """The timeline of every call this executor has run (``ezpool.timeline.Timeline``),
        kept only when it was made with ``trace=`` or ``report=`` (an executor may run
        for ever); those files are written when it shuts down."""
        record = self._submitted.record
        if not record.keep:
            raise ValueError("this executor keeps no timeline: make it with trace=PATH or report=PATH")
        return record.timeline()

    def save_trace(self, path: PathText) -> None:
        """Write ``timeline`` as a Chrome trace (see ``Results.save_trace``)."""
        from ..trace import write_trace

        write_trace(self.timeline, path)

    def save_report(self, path: PathText) -> None:
        """Write ``timeline`` as an HTML report (see ``Results.save_report``)."""
        from ..report import write_report

        write_report(self.timeline, path)

    def __repr__(self) -> str:
        state = "shut down" if self._submitted.live.closed else "open"
        return f"PoolExecutor(mode={self.mode!r}, {state})"

    # --- helpers -------------------------------------------------------------------------

    def _results(
        self, run: MapRun, sent: Any, how: Optional[bool], submitted: int, more: Optional[Iterator[Any]],
        buffersize: Optional[int], deadline: Optional[float],
    ) -> Iterator[Any]:
        """Yield a map's results in order; with ``more``, read calls as results are consumed."""
        index = 0  # the first position not taken from run.ready
        values: list[Any] = []
        try:
            while index < submitted:
                values, errors = run.next(index, deadline)
                values.reverse()  # popped from the end: nothing keeps a value once it is yielded
                index += len(values)
                if errors is None and more is None:
                    while values:
                        yield values.pop()
                    continue
                for offset in range(len(values)):
                    if more is not None and buffersize is not None:
                        consumed = index - len(values)
                        if submitted - consumed <= buffersize // 2 and not self._submitted.live.closed:
                            extra = _take(more, consumed + buffersize - submitted)
                            if extra:
                                self._submitted.put((MapCalls(run, sent, submitted, extra, how),))
                                submitted += len(extra)
                    if errors is not None and offset in errors:
                        values.clear()
                        raise unwrap(errors[offset])
                    yield values.pop()
        finally:
            if values or index < submitted:
                run.abandon()  # what was not taken yet will not run; its running slices stop

    def _sendable(self, fn: Callable[..., Any]) -> Any:
        """``fn`` as it goes into a task: itself, or (for distributed workers) a ``Code``."""
        if not self._by_value:
            return fn
        found = self._shipped.get(id(fn))
        if found is not None and found[0]() is fn:
            return found[1]
        code = Code(fn)
        try:  # kept while fn lives: shipped once, however often it is submitted
            ref = weakref.ref(fn, functools.partial(_forget, self._shipped, id(fn)))
        except TypeError:  # not weakly referable (a builtin, a partial, ...)
            return code
        self._shipped[id(fn)] = (ref, code)
        return code


def _forget(shipped: dict[int, Any], key: int, ref: weakref.ref[Any]) -> None:
    found = shipped.get(key)
    if found is not None and found[0] is ref:
        del shipped[key]


def _take(calls: Iterator[Any], count: int) -> list[Any]:
    taken: list[Any] = []
    for args in calls:
        taken.append(args)
        if len(taken) >= count:
            break
    return taken


def _at_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the interpreter exits, before it joins threads (as the stdlib
    executors do), so that calls submitted and not waited for still run."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(hook)
    else:  # pragma: no cover - not CPython
        import atexit

        atexit.register(hook)


def _finish(ref: weakref.ref[Submitted], pid: int) -> None:
    """At exit: let the executor finish its calls and stop its pool. Not in a process
    forked from the one that made it (a worker), which has a copy and no thread."""
    dispatcher = ref()
    if dispatcher is not None and os.getpid() == pid:
        dispatcher.close(wait=True)
