"""``PoolExecutor``: a ``concurrent.futures.Executor`` that runs on an EzPool pool of any mode.

How calls flow (one stream per executor, run by one dispatcher thread)::

    caller threads                     dispatcher thread                 where the mode runs tasks
    ──────────────                     ─────────────────                 ─────────────────────────
    submit(fn, *args) ─ (future, task) ─▶ Live ─ take ─▶ Pool stream of
    map(fn, *its) ───── _Calls(run) ───▶      (admit: skip cancelled     ─ chunks of tasks ─▶ _run(fn,
                                               futures; cut a map into                calls, kwargs)
                                               slices sized by run times)          for each call
    future.result() ◀─ set_result ◀──── settle a whole batch            ◀─ (values, errors) per task
    next(map) ◀──────── _MapRun.ready ◀─  at once; split a slice that
                                          failed as a whole, retry alone

A task is ``(fn, calls, how)`` (see ``_run``): a ``submit`` is one call, a ``map`` is cut into
slices of consecutive calls (one at first, more once their run times are known), so
that ten thousand tiny calls cost about what ``pmap`` pays for them. A call's
exception travels in its slice's value, with the worker's traceback as ``__cause__``.
A task whose worker dies gets ``WorkerCrashed`` (a slice of several calls is first
split and its calls retried alone); the executor goes on. A failure of the stream
itself (no worker can be reached) fails the calls taken and waiting; the next
``submit`` starts a new stream.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from .backends.base import Batch
from .feed import Live

if TYPE_CHECKING:
    from .pool import Pool

logger = logging.getLogger(__name__)

__all__ = ["PoolExecutor"]

#: About how long one slice of a ``map`` should run, judged from the calls measured so far.
_SLICE_SECONDS = 0.001

#: Most calls of a ``map`` in one slice.
_SLICE_MOST = 64

#: Calls of a ``map`` measured before slices hold more than one: a first call's
#: time alone says little, and a quick call is not held back by a slow one next to it.
_SLICE_PROBES = 4

#: Longest wait of the constructor for the pool's processes or workers to start.
_READY = 30.0

#: Tasks the stream holds at once (read and not yet settled), unless ``buffersize`` says.
_HELD = 4096

#: The calls of a map: tuples of arguments or, over one iterable, the arguments themselves.
Calls = Sequence[Any]
Errors = Optional[dict[int, BaseException]]


def _run(fn: Callable[..., Any], calls: Any, how: Union[bool, dict[str, Any], None]) -> Any:
    """Run one task where the pool runs tasks.

    A ``submit`` is one call, ``fn(*calls, **how)`` (``how`` is ``False`` when there
    are no keyword arguments): its value and ``None``, or ``None`` and its exception.
    A slice of a ``map`` is ``calls``, each a tuple of arguments (``how`` is ``None``)
    or the one argument (``how`` is ``True``, a map over one iterable): the values
    (``None`` where a call raised) and ``None`` or, by offset, each call's exception.
    Exceptions are wrapped so that they travel with their traceback.
    """
    if how is False or isinstance(how, dict):
        try:
            return (fn(*calls, **how) if how else fn(*calls)), None
        except BaseException as exc:  # a call cannot end the worker, nor the stream
            return None, _Raised(exc)
    values: list[Any] = []
    errors: Optional[dict[int, _Raised]] = None
    alone = how is True
    for call in calls:
        try:
            values.append(fn(call) if alone else fn(*call))
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[len(values)] = _Raised(exc)
            values.append(None)
    return values, errors


class _Raised:
    """An exception a call raised: itself here, rebuilt with its remote traceback elsewhere."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        from .serialization import capture, rebuild

        return (rebuild, (capture(self.exc),))


def _unwrap(error: Any) -> BaseException:
    return cast(BaseException, error.exc if type(error) is _Raised else error)


class _Code:
    """A function sent by value (cloudpickle) for workers that cannot import it, e.g. one
    from ``__main__``. The same instance in many tasks is pickled once per chunk, and
    loaded once per worker process (``_load`` caches it by content id)."""

    __slots__ = ("fid", "blob")

    def __init__(self, fn: Callable[..., Any]) -> None:
        from .code import ship  # (cloudpickle: imported when first needed)

        self.fid, self.blob = ship(fn)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load, (self.fid, self.blob))


@functools.lru_cache(maxsize=64)
def _load(fid: str, blob: bytes) -> Callable[..., Any]:
    from .code import unpack

    return cast(Callable[..., Any], unpack(blob))


class _MapRun:
    """The results of one ``map`` call: slices filled in any order, read in order."""

    __slots__ = ("cond", "ready", "cancelled", "_calls", "_seconds")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: dict[int, tuple[list[Any], Errors]] = {}  # first position -> values, errors
        self.cancelled = False  # nobody reads the results any more: run nothing more
        self._calls = 0  # measured by the dispatcher thread, for the size of the next slices
        self._seconds = 0.0

    def measure(self, calls: int, seconds: float) -> None:
        self._calls += calls
        self._seconds += seconds

    def slice_size(self) -> int:
        """Calls in the next slice: one until a few have run, then about ``_SLICE_SECONDS``."""
        if self._calls < _SLICE_PROBES:
            return 1
        mean = self._seconds / self._calls
        return _SLICE_MOST if mean * _SLICE_MOST <= _SLICE_SECONDS else max(1, int(_SLICE_SECONDS / mean))

    def deliver(self, slices: dict[int, tuple[list[Any], Errors]]) -> None:
        with self.cond:
            self.ready.update(slices)
            self.cond.notify_all()

    def fail(self, first: int, count: int, error: BaseException) -> None:
        """Calls ``first .. first + count - 1`` will not run; reading the first raises ``error``."""
        self.deliver({first: ([None] * count, {0: error})})

    def next(self, index: int, deadline: Optional[float]) -> tuple[list[Any], Errors]:
        """The slice that starts at position ``index``, once it is there."""
        with self.cond:
            while index not in self.ready:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise concurrent.futures.TimeoutError()
                self.cond.wait(left)
            return self.ready.pop(index)


class _Calls:
    """Consecutive calls of one ``map`` that wait in the source: cut into slices when taken."""

    __slots__ = ("run", "fn", "first", "calls", "how", "offset", "single")

    def __init__(
        self, run: _MapRun, fn: Any, first: int, calls: Calls, how: Optional[bool], single: bool = False
    ) -> None:
        self.run = run
        self.fn = fn
        self.first = first
        self.calls = calls
        self.how = how  # True: each call is one argument (see _run)
        self.offset = 0  # calls before it were taken
        self.single = single  # one call a slice: retries of a slice that failed as a whole


class _Again:
    """A task taken once and not run (its stream broke off): it goes again as it is."""

    __slots__ = ("task", "target", "first")

    def __init__(self, task: Any, target: Target, first: int) -> None:
        self.task = task
        self.target = target
        self.first = first


#: Where a task's outcome goes: a submitted call's future, or a map (with the position
#: of the slice's first call).
Target = Union["concurrent.futures.Future[Any]", _MapRun]


class _Dispatcher:
    """The stream of one executor and the thread that runs it.

    The executor object itself is not referenced from here, so that an executor
    nobody holds is collected (and its stream closed) like a ``ThreadPoolExecutor``.
    ``taken`` is touched only by the thread that runs the stream.
    """

    def __init__(self, pool: Pool, overrides: dict[str, Any]) -> None:
        self.pool = pool
        self.overrides = overrides
        self.live = Live(admit=self.admit)
        self.lock = threading.Lock()  # guards thread, and put against close
        self.thread: Optional[threading.Thread] = None
        self.taken: dict[int, tuple[Any, Target, int]] = {}  # id(task) -> task, target, first
        self.remote = pool.mode != "serial"

    def put(self, entries: Sequence[Any]) -> None:
        with self.lock:
            if self.live.closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.live.put(entries)
            self._start()

    def start(self) -> None:
        """Start the stream now (its processes, its workers), before anything is submitted."""
        with self.lock:
            self._start()

    def _start(self) -> None:
        if self.thread is None and not self.live.closed:
            self.thread = threading.Thread(target=self.loop, name="ezpool-executor", daemon=True)
            self.thread.start()

    def close(self, wait: bool, cancel: bool = False) -> None:
        with self.lock:
            self.live.close()
            if cancel:
                self.cancel(self.live.drain())
            thread = self.thread
        if thread is None:
            self.pool.shutdown()
        elif wait and thread is not threading.current_thread():
            thread.join()

    def cancel(self, entries: list[Any]) -> None:
        """Cancel entries that were waiting: futures, and the map calls not cut yet."""
        again = [entry for entry in entries if type(entry) is _Again]
        if again:
            self.live.requeue(again)  # running already: they cannot be cancelled
        for entry in entries:
            if type(entry) is tuple:
                entry[0].cancel()
            elif type(entry) is _Calls:
                left = len(entry.calls) - entry.offset
                entry.run.fail(entry.first + entry.offset, left, concurrent.futures.CancelledError())

    # --- the thread that runs the stream ---------------------------------------------------

    def admit(self, entry: Any) -> tuple[Any, bool]:
        """The next task from an entry (called by the stream, with the source's lock held)."""
        kind = type(entry)
        if kind is tuple:  # (future, task) from submit
            future, task = entry
            if not future.set_running_or_notify_cancel():
                return None, True
            self.taken[id(task)] = (task, future, 0)
            return task, True
        if kind is _Again:
            self.taken[id(entry.task)] = (entry.task, entry.target, entry.first)
            return entry.task, True
        run = entry.run
        if run.cancelled:
            return None, True
        size = 1 if entry.single else run.slice_size()
        start, calls = entry.offset, entry.calls
        piece = calls if start == 0 and size >= len(calls) else calls[start : start + size]
        entry.offset = start + len(piece)
        task = (entry.fn, piece, entry.how)
        self.taken[id(task)] = (task, run, entry.first + start)
        return task, entry.offset >= len(calls)

    def loop(self) -> None:
        """Run the stream; after a failure, run a new one for the calls still waiting."""
        while True:
            try:
                source = cast(Iterable[Any], self.live)
                feed, batches = self.pool._open_stream(_run, source, self.overrides, eager=True)
                try:
                    for tasks, batch in batches:
                        self.settle(tasks, batch)
                        feed.release(batch.start, batch.start + len(tasks))
                        del tasks, batch  # hold no call's arguments or values while waiting
                finally:
                    batches.close()
            except BaseException as exc:  # the stream itself failed
                logger.warning("the executor's stream of tasks failed: %r", exc)
                self.fail_taken(exc)
                self.live.reading.set()  # (the constructor waits no more)
            with self.lock:
                if not self.live.waiting:
                    self.thread = None  # a later submit starts another
                    finished = self.live.closed
                    break
        if finished:
            self.pool.shutdown()
            logger.debug("executor's pool shut down: %r", self.pool)

    def settle(self, tasks: Sequence[Any], batch: Batch) -> None:
        """Hand a batch's outcomes on: futures one by one, each map's slices at once."""
        taken, values, failed, elapsed = self.taken, batch.values, batch.failed, batch.elapsed
        slices: dict[_MapRun, dict[int, tuple[list[Any], Errors]]] = {}
        for offset, task in enumerate(tasks):
            _, target, first = taken.pop(id(task))
            if failed and offset in failed:  # the task as a whole: its worker died, it timed out...
                self.failed(task, target, first, values[offset])
                continue
            results, errors = values[offset]
            if isinstance(target, _MapRun):
                target.measure(len(results), elapsed[offset])
                ready = slices.get(target)
                if ready is None:
                    ready = slices[target] = {}
                ready[first] = (results, errors)
            elif errors is not None:
                target.set_exception(_unwrap(errors))
            else:
                target.set_result(results)
        for run, ready in slices.items():
            run.deliver(ready)

    def failed(self, task: Any, target: Target, first: int, error: BaseException) -> None:
        """A task failed as a whole: a slice of several calls is retried call by call."""
        fn, calls, how = task
        if not isinstance(target, _MapRun):
            target.set_exception(error)
        elif len(calls) > 1:
            logger.debug("a slice of %d calls failed as a whole (%r); retrying them alone", len(calls), error)
            self.live.requeue([_Calls(target, fn, first, calls, how, single=True)])
        else:
            target.fail(first, 1, error)

    def fail_taken(self, exc: BaseException) -> None:
        """The stream broke off: fail what it had taken, and what waits, with ``exc``.

        If it broke because some tasks cannot be pickled, only those fail (a slice of
        several calls is split first to find the call); the others go again.
        """
        taken = list(self.taken.values())
        self.taken.clear()
        stuck = [] if not self.remote else [item for item in taken if not _picklable(item[0])]
        if stuck:
            self.live.requeue([_Again(*item) for item in taken if not any(item is bad for bad in stuck)])
            for task, target, first in stuck:
                self.failed(task, target, first, _unpicklable(task))
            return
        for task, target, first in taken:
            _fail(target, first, len(task[1]), exc)  # (a future ignores the count)
        for entry in self.live.drain():
            if type(entry) is tuple:
                if entry[0].set_running_or_notify_cancel():
                    entry[0].set_exception(exc)
            elif type(entry) is _Again:
                _fail(entry.target, entry.first, len(entry.task[1]), exc)
            else:
                entry.run.fail(entry.first + entry.offset, len(entry.calls) - entry.offset, exc)


def _fail(target: Target, first: int, count: int, error: BaseException) -> None:
    if isinstance(target, _MapRun):
        target.fail(first, count, error)
    else:
        target.set_exception(error)


def _picklable(task: Any) -> bool:
    from .serialization import dumps

    try:
        dumps(task)
    except Exception:
        return False
    return True


def _unpicklable(task: Any) -> TypeError:
    from .serialization import dumps

    fn, calls, how = task
    try:
        dumps(task)
    except Exception as exc:
        args = calls if how is False or isinstance(how, dict) else calls[0] if how is None else (calls[0],)
        what = f"{fn!r} with arguments {args!r}" + (f" and {how!r}" if isinstance(how, dict) else "")
        error = TypeError(f"cannot send the call of {what} to another process: {exc}")
        error.__cause__ = exc
        return error
    return TypeError(f"cannot send {fn!r} to another process")


class PoolExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run in an EzPool pool.

    ``mode`` is ``'parallel'`` (processes on this machine, ``max_workers`` of them;
    ``None``: one per CPU), ``'distributed'`` (generic workers named by ``workers``,
    or started on this machine) or ``'serial'`` (one thread here); ``max_workers``
    is checked in every mode and used by the parallel one. Other keyword options
    are the ``Pool``'s (``timeout``, ``max_attempts``, ``hmac_key``, ...); a
    progress bar is off unless asked for. ``Pool.executor()`` makes one with a
    pool's mode and options. The executor has a pool of its own, started by the
    constructor (which returns once its processes or workers are up) and stopped by
    ``shutdown`` (or at interpreter exit, once the calls submitted have run); use
    it as a context manager.
    """

    def __init__(self, mode: str = "parallel", max_workers: Optional[int] = None, **options: Any) -> None:
        from .pool import Pool

        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be a positive integer or None, got {max_workers!r}")
            if max_workers <= 0:
                raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
            if mode == "parallel":
                options.setdefault("ncpu", max_workers)
        options.setdefault("progress", False)
        pool = Pool(mode, **options)
        overrides = {} if pool.options.buffersize else {"buffersize": _HELD}
        self._dispatcher = _Dispatcher(pool, overrides)
        self._max_workers = max_workers
        # Where workers cannot import what this process can, functions travel by value.
        self._by_value = pool.mode == "distributed"
        self._shipped: dict[int, tuple[weakref.ref[Any], _Code]] = {}  # id(fn) -> fn, its _Code
        # Collected unused: let the stream end, which stops the pool. At exit: finish first.
        weakref.finalize(self, self._dispatcher.close, False).atexit = False  # _finish does that
        _at_exit(functools.partial(_finish, weakref.ref(self._dispatcher), os.getpid()))
        # Start the pool's processes or workers now; the first calls then start at once.
        self._dispatcher.start()
        self._dispatcher.live.reading.wait(_READY)

    @classmethod
    def of(cls, pool: Pool, **overrides: Any) -> PoolExecutor:
        """An executor with ``pool``'s mode and options (its own processes and connections)."""
        settings = pool.options
        options = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
        options.update(overrides)
        return cls(pool.mode, **options)

    @property
    def mode(self) -> str:
        return self._dispatcher.pool.mode

    # --- the Executor protocol ---------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; a ``Future`` of its value. In the distributed
        mode ``fn`` may be a lambda or a function from ``__main__`` (it travels by value)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._dispatcher.put(((future, (self._sendable(fn), args, kwargs or False)),))
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
        run = _MapRun()
        sent = self._sendable(fn)
        if first:
            self._dispatcher.put((_Calls(run, sent, 0, first, how),))
        more = calls if buffersize is not None else None
        return self._results(run, sent, how, len(first), more, buffersize, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; those submitted still run (unless ``cancel_futures`` cancels
        the ones not started), then the pool stops. ``wait`` waits for all that."""
        self._dispatcher.close(wait, cancel_futures)

    def __repr__(self) -> str:
        state = "shut down" if self._dispatcher.live.closed else "open"
        return f"PoolExecutor(mode={self.mode!r}, {state})"

    # --- helpers -------------------------------------------------------------------------

    def _results(
        self, run: _MapRun, sent: Any, how: Optional[bool], submitted: int, more: Optional[Iterator[Any]],
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
                        if submitted - consumed <= buffersize // 2 and not self._dispatcher.live.closed:
                            extra = _take(more, consumed + buffersize - submitted)
                            if extra:
                                self._dispatcher.put((_Calls(run, sent, submitted, extra, how),))
                                submitted += len(extra)
                    if errors is not None and offset in errors:
                        values.clear()
                        raise _unwrap(errors[offset])
                    yield values.pop()
        finally:
            if values or index < submitted:
                run.cancelled = True  # what was not taken yet will not run

    def _sendable(self, fn: Callable[..., Any]) -> Any:
        """``fn`` as it goes into a task: itself, or (for distributed workers) a ``_Code``."""
        if not self._by_value:
            return fn
        found = self._shipped.get(id(fn))
        if found is not None and found[0]() is fn:
            return found[1]
        code = _Code(fn)
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


def _finish(ref: weakref.ref[_Dispatcher], pid: int) -> None:
    """At exit: let the executor finish its calls and stop its pool. Not in a process
    forked from the one that made it (a worker), which has a copy and no thread."""
    dispatcher = ref()
    if dispatcher is not None and os.getpid() == pid:
        dispatcher.close(wait=True)
