"""``PoolExecutor``: a ``concurrent.futures.Executor`` that runs on an EzPool pool of any mode.

Everything submitted goes through one stream (``Pool.imap`` over a live source of
tasks, run by one dispatcher thread), so submissions are batched into chunks the
way ``map`` batches tasks: a ``submit`` costs a few microseconds here, not a round
trip to a worker. Each task is ``(fn, args, kwargs)``, run by ``_apply`` where the
mode runs tasks; its outcome settles its ``Future`` (or its slot of a ``map``).
A task whose worker dies gets ``WorkerCrashed`` as its exception; the executor
goes on. A failure of the stream itself (no worker can be reached) fails the tasks
it had taken, and the next ``submit`` starts a new stream.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from .code import ship, unpack
from .feed import Live
from .results import TaskOutcome

if TYPE_CHECKING:
    from .pool import Pool

logger = logging.getLogger(__name__)

__all__ = ["PoolExecutor"]


def _apply(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one submitted call where the pool runs tasks."""
    return fn(*args, **kwargs)


class _Code:
    """A function sent by value (cloudpickle) for workers that cannot import it, e.g. one
    from ``__main__``. The same instance in many tasks is pickled once per chunk, and
    loaded once per worker process (``_load`` caches it by content id)."""

    __slots__ = ("fid", "blob")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fid, self.blob = ship(fn)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load, (self.fid, self.blob))


@functools.lru_cache(maxsize=64)
def _load(fid: str, blob: bytes) -> Callable[..., Any]:
    return cast(Callable[..., Any], unpack(blob))


class _MapRun:
    """The slots of one ``PoolExecutor.map`` call, filled as outcomes arrive in any order."""

    def __init__(self) -> None:
        self.outcomes: dict[int, TaskOutcome] = {}
        self.cond = threading.Condition()
        self.cancelled = False

    def put(self, index: int, outcome: TaskOutcome) -> None:
        with self.cond:
            self.outcomes[index] = outcome
            self.cond.notify_all()

    def get(self, index: int, deadline: Optional[float]) -> Any:
        with self.cond:
            while index not in self.outcomes:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise concurrent.futures.TimeoutError()
                self.cond.wait(left)
            outcome = self.outcomes.pop(index)
        if outcome.failed:
            raise outcome.value
        return outcome.value


Receiver = Union[concurrent.futures.Future, tuple[_MapRun, int]]


class PoolExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run in an EzPool pool.

    ``mode`` is ``'parallel'`` (processes on this machine, ``max_workers`` of them;
    ``None``: one per CPU), ``'distributed'`` (generic workers named by ``workers``,
    or started on this machine) or ``'serial'`` (one thread here). Other keyword
    options are the ``Pool``'s (``timeout``, ``max_attempts``, ``hmac_key``, ...);
    a progress bar is off unless asked for. ``Pool.executor()`` makes one with a
    pool's mode and options. The executor has a pool of its own, stopped by
    ``shutdown``; use it as a context manager.
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
        self._pool: Pool = Pool(mode, **options)
        self._max_workers = max_workers
        self._receivers: dict[int, Receiver] = {}  # id(task) -> where its outcome goes
        self._lock = threading.Lock()
        self._live = Live(accept=self._accept)
        self._thread: Optional[threading.Thread] = None
        self._shutdown = False
        self._closer = weakref.finalize(self, self._live.close)
        # Where workers cannot import what this process can, functions travel by value.
        self._by_value = mode == "distributed"
        self._shipped: weakref.WeakKeyDictionary[Any, _Code] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, pool: Pool, **overrides: Any) -> PoolExecutor:
        """An executor with ``pool``'s mode and options (its own processes and connections)."""
        settings = pool.options
        options = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
        options.update(overrides)
        return cls(pool.mode, **options)

    # --- the Executor protocol ---------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        task = (self._sendable(fn), args, kwargs)
        with self._lock:
            self._check_open()
            self._receivers[id(task)] = future
            self._live.put((task,))
            self._start()
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
        buffersize: Optional[int] = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: results in order; tasks are batched whatever ``chunksize`` says.

        With ``buffersize`` (as in Python 3.14), at most that many calls are submitted
        ahead of the results consumed, so the iterables are read lazily.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError(f"buffersize must be an integer or None, got {buffersize!r}")
            if buffersize < 1:
                raise ValueError(f"buffersize must be None or > 0, got {buffersize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        run = _MapRun()
        calls: Iterator[tuple[Any, ...]] = zip(*iterables)
        if buffersize is None:
            calls = iter(list(calls))  # read now, as Executor.map does
        submitted = self._submit_calls(fn, run, calls, 0, buffersize)
        return self._results(fn, run, calls, submitted, buffersize, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for task in self._live.drain():
                    receiver = self._receivers.pop(id(task), None)
                    if isinstance(receiver, concurrent.futures.Future):
                        receiver.cancel()
                    elif receiver is not None:
                        receiver[0].cancelled = True
            self._live.close()
            thread = self._thread
        if thread is None:
            self._pool.shutdown()
        elif wait:
            thread.join()

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "open"
        return f"PoolExecutor(mode={self._pool.mode!r}, {state})"

    # --- submitting ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _submit_calls(
        self, fn: Callable[..., Any], run: _MapRun, calls: Iterator[tuple[Any, ...]], first: int,
        count: Optional[int],
    ) -> int:
        """Submit up to ``count`` (``None``: all) calls of a map; how many were submitted."""
        sent = self._sendable(fn)
        chosen = calls if count is None else _take(calls, count)
        tasks: list[tuple[Any, ...]] = [(sent, args, {}) for args in chosen]
        with self._lock:
            self._check_open()
            for index, task in enumerate(tasks, first):
                self._receivers[id(task)] = (run, index)
            self._live.put(tasks)
            self._start()
        return first + len(tasks)

    def _results(
        self, fn: Callable[..., Any], run: _MapRun, calls: Iterator[tuple[Any, ...]], submitted: int,
        buffersize: Optional[int], deadline: Optional[float],
    ) -> Iterator[Any]:
        index = 0
        try:
            while index < submitted:
                value = run.get(index, deadline)
                index += 1
                if buffersize is not None and not self._shutdown:
                    submitted = self._submit_calls(fn, run, calls, submitted, 1)
                yield value
        finally:
            run.cancelled = index < submitted  # what was not consumed is not run, if not started

    def _sendable(self, fn: Callable[..., Any]) -> Any:
        """``fn`` as it goes into a task: itself, or (for distributed workers) a ``_Code``."""
        if not self._by_value:
            return fn
        try:
            code = self._shipped.get(fn)
        except TypeError:  # not weakly referable (a builtin, a partial, ...)
            return _Code(fn)
        if code is None:
            code = self._shipped[fn] = _Code(fn)
        return code

    def _accept(self, task: Any) -> bool:
        """Whether a task taken by the stream still runs (called with the source's lock held)."""
        receiver = self._receivers.get(id(task))
        if receiver is None:
            return False
        if isinstance(receiver, concurrent.futures.Future):
            running = receiver.set_running_or_notify_cancel()
        else:
            running = not receiver[0].cancelled
        if not running:
            self._receivers.pop(id(task), None)
        return running

    # --- the dispatcher thread -----------------------------------------------------------

    def _start(self) -> None:
        """Start the dispatcher thread unless one runs (called with the lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch, name="ezpool-executor", daemon=True)
            self._thread.start()

    def _dispatch(self) -> None:
        """Run the stream; after a failure, run a new one for the calls still waiting."""
        while True:
            try:
                for outcome in self._pool.imap(_apply, cast(Iterable[Any], self._live)):
                    self._deliver(outcome)
            except BaseException as exc:  # the stream itself failed: fail what it had taken
                logger.warning("the executor's stream of tasks failed: %r", exc)
                self._fail_taken(exc)
            with self._lock:
                if self._live.done or not self._live.peek():
                    self._thread = None  # a later submit starts another
                    finished = self._shutdown
                    break
        if finished:
            self._pool.shutdown()

    def _deliver(self, outcome: TaskOutcome) -> None:
        with self._lock:
            receiver = self._receivers.pop(id(outcome.task), None)
        if receiver is None:
            logger.debug("an outcome nobody waits for: %r", outcome)
        elif isinstance(receiver, concurrent.futures.Future):
            if outcome.failed:
                receiver.set_exception(outcome.value)
            else:
                receiver.set_result(outcome.value)
        else:
            receiver[0].put(receiver[1], outcome)

    def _fail_taken(self, exc: BaseException) -> None:
        """Fail every call the broken stream had taken; those still waiting go to the next one."""
        waiting = {id(task) for task in self._live.peek()}
        with self._lock:
            taken = [key for key in self._receivers if key not in waiting]
            receivers = [self._receivers.pop(key) for key in taken]
        for receiver in receivers:
            if isinstance(receiver, concurrent.futures.Future):
                if not receiver.done():
                    receiver.set_exception(exc)
            else:
                receiver[0].put(receiver[1], TaskOutcome(None, exc, 0.0, "", True))


def _take(calls: Iterator[tuple[Any, ...]], count: int) -> list[tuple[Any, ...]]:
    taken: list[tuple[Any, ...]] = []
    for args in calls:
        taken.append(args)
        if len(taken) >= count:
            break
    return taken
