"""A joblib backend named ``"ezpool"``: joblib's ``Parallel`` (and so scikit-learn's
``n_jobs``) on an EzPool pool, in the parallel or the distributed mode.

Importing this module registers the backend with joblib; that registration is the
whole point of the import, and the one side effect it has::

    import joblib
    import ezpool.joblib  # noqa: F401  (registers "ezpool")

    with joblib.parallel_config(backend="ezpool", mode="distributed",
                                workers=["PYRO:worker@host1:21000", "PYRO:worker@host2:21000"]):
        results = joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

How a ``Parallel`` call flows::

    joblib.Parallel (the caller's thread)            EzPoolBackend
    ─────────────────────────────────────            ─────────────
    configure(n_jobs)                          ──▶   the settings: mode, options, size
    batches of delayed calls (auto-sized)      ──▶   submit: the kept PoolExecutor of those
        BatchedCalls, each cloudpickled                  settings (made by the first call),
        as it is sent                                    executor.submit(_run, _Batch(calls))
    BatchCompletionCallBack ◀── future done ───      retrieve_result_callback: future.result()
    dispatch the next batch                            (the task's own exception is raised)
    ...
    terminate() at the end of the call         ──▶   the executor goes back to KeptPools,
                                                     idle, for the next call
    (a task raised) abort_everything()         ──▶   every batch's future cancelled (a running
                                                     one is stopped: its process is replaced);
                                                     executor.terminate_workers(): workers it
                                                     started are killed and waited for

The mode and pool options are the backend's keyword arguments
(``parallel_config(backend="ezpool", mode=..., **options)``); ``mode`` defaults to
``"parallel"``. See ``docs/interop.rst`` for what is and is not supported.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import threading
import warnings
from typing import Any, Callable, NamedTuple, Optional

import cloudpickle

try:
    import joblib
    from joblib.parallel import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"ezpool.joblib needs joblib ({exc}); install it with: pip install joblib"
    ) from exc

from . import _backends as backends
from ._core.logs import get_logger
from .executor import PoolExecutor
from .options import Options, planned_workers

logger = get_logger(__name__)

__all__ = ["EzPoolBackend", "KeptPools", "kept_pools", "register", "BACKEND_NAME"]

#: The name the backend is registered under.
BACKEND_NAME = "ezpool"

#: Keyword arguments joblib's ``Parallel`` hands every backend's ``configure``; they
#: are about loky's memory mapping and process start, which an EzPool pool does not do.
_JOBLIB_KWARGS = frozenset(
    {"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context", "prefer", "require"}
)


class _Call(NamedTuple):
    """What a ``Parallel`` call asked for: the mode, and the pool options as given and checked."""

    mode: str
    options: dict[str, Any]
    settings: Options


class _Kept:
    """A pool ``KeptPools`` holds: the settings it was made for, and the calls using it."""

    __slots__ = ("key", "executor", "users", "dropped")

    def __init__(self, key: Any, executor: PoolExecutor) -> None:
        self.key = key
        self.executor = executor
        self.users = 1
        self.dropped = False  # a call on it failed: no call takes it again


class KeptPools:
    """The pools (``PoolExecutor``) that the backend's ``Parallel`` calls share, as loky
    keeps its one executor: processes and auto-started workers outlive a call.

    A call takes the pool made for its settings (mode, options and, in the parallel
    mode, the number of processes), making one if there is none, and gives it back
    when it ends. One idle pool is kept; a call with other settings gets a new pool,
    and the idle one stops. A pool a failed call used is dropped: the workers it
    started are killed and waited for, before the failed call returns. ``shutdown``
    stops every pool; at interpreter exit each stops by itself, as every
    ``PoolExecutor`` does. In a forked child, the parent's pools are not its own.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pools: list[_Kept] = []  # in use, or the idle one

    def take(self, key: Any, make: Callable[[], PoolExecutor]) -> PoolExecutor:
        """The pool for ``key``: the one kept, or a new one from ``make()``."""
        self._forget_if_forked()
        with self._lock:
            for kept in self._pools:
                if kept.key == key and not kept.dropped:
                    kept.users += 1
                    return kept.executor
            idle = [kept for kept in self._pools if not kept.users]
            self._pools = [kept for kept in self._pools if kept.users]
        _stop(idle, kill=False)
        executor = make()
        with self._lock:
            self._pools.append(_Kept(key, executor))
        return executor

    def give_back(self, executor: PoolExecutor, failed: bool = False) -> None:
        """A call has done with ``executor``; ``failed``: drop it (stop it at once when no
        other call uses it)."""
        with self._lock:
            kept = next((kept for kept in self._pools if kept.executor is executor), None)
            if kept is None:  # shut down meanwhile
                return
            kept.users -= 1
            kept.dropped = kept.dropped or failed
            if kept.users:
                return
            ended = [old for old in self._pools if not old.users and (old.dropped or old is not kept)]
            self._pools = [old for old in self._pools if old not in ended]
        _stop([old for old in ended if old.dropped], kill=True, wait=False)  # the caller is raising
        _stop([old for old in ended if not old.dropped], kill=False)

    def shutdown(self) -> None:
        """Stop every pool kept, those in use included: their processes and the workers
        they started stop, and are waited for."""
        self._forget_if_forked()
        with self._lock:
            pools, self._pools = self._pools, []
        _stop(pools, kill=True)

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():  # (the lock may be held by a thread the child does not have)
            self._pid, self._lock, self._pools = os.getpid(), threading.Lock(), []


def _stop(pools: list[_Kept], kill: bool, wait: bool = True) -> None:
    """Stop ``pools``: with ``kill``, at once, killing (and waiting for) the workers they
    started, whose calls fail; with ``wait``, wait for the calls running elsewhere to
    end and the pools' processes to stop."""
    for kept in pools:
        if kill:
            kept.executor.terminate_workers()
        if wait:
            kept.executor.shutdown(wait=True)
        logger.debug("stopped a kept %s pool of joblib's", kept.executor.mode)


#: The pools every ``EzPoolBackend`` shares, unless it is given its own ``kept``.
kept_pools = KeptPools()


class EzPoolBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend interface over ``ezpool.PoolExecutor``.

    ``mode`` is ``"parallel"`` (processes on this machine) or ``"distributed"``
    (EzPool workers, named by the ``workers`` option, started here on
    ``localhost`` when none answers); ``"serial"`` makes every call run in the
    calling process, as joblib does with ``n_jobs=1``. Other keyword arguments are
    ``Pool`` options (``ezpool.Options``): ``workers``, ``ncpu``, ``start_method``,
    ``timeout``, ``max_attempts``, ``hmac_key``, ... Keyword arguments given to
    ``Parallel`` itself (``mode`` included) override them for that call.

    How many batches run at once (``effective_n_jobs``):

    * parallel: ``n_jobs`` processes; a negative ``n_jobs`` counts back from the
      CPUs (``ncpu`` if given, else those this process may use): ``-1`` is all of them.
    * distributed: the number of workers, whatever ``n_jobs`` says (as with joblib's
      dask backend), and at least 2, so that a single worker still gets the work
      instead of joblib running it in the calling process.
    * ``n_jobs=1`` in any mode, and no ``n_jobs`` (``None``, unless ``parallel_config``
      sets it), as with joblib's own backends: joblib runs the call in the calling process.

    The pools (processes, auto-started workers) are kept between calls in ``kept``
    (``kept_pools`` unless given): a call with the same mode, options and size reuses
    them. A call whose task raised drops its pool (killing the workers it started).
    """

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_sharedmem = False
    supports_inner_max_num_threads = False
    uses_threads = False

    def __init__(
        self,
        mode: str = "parallel",
        nesting_level: Optional[int] = None,
        inner_max_num_threads: Optional[int] = None,
        kept: Optional[KeptPools] = None,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.mode = backends.check_mode(mode)
        self.kept = kept_pools if kept is None else kept
        self._options = dict(options)
        # Checked now, so that a misspelt option fails at parallel_config(), not in a call.
        self._call = _Call(self.mode, self._options, Options().replace(**options))
        self._size = 1
        self._executor: Optional[PoolExecutor] = None  # taken from self.kept, for this call
        self._made_for: Optional[tuple[_Call, int]] = None  # the call and size of the executor
        self._lock = threading.Lock()  # joblib submits from its thread and from callbacks
        self._pending: set[concurrent.futures.Future[Any]] = set()  # batches sent and not done
        self.parallel: Any = None

    def __repr__(self) -> str:
        shown = "".join(f", {name}={value!r}" for name, value in self._options.items() if name != "hmac_key")
        return f"EzPoolBackend(mode={self.mode!r}{shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to another process, a backend takes its settings and leaves its pool behind.
        return (_rebuild, (self.mode, self.nesting_level, self._options))

    @property
    def default_n_jobs(self) -> int:
        """``n_jobs`` when none is given: 1, in every mode, as with joblib's own backends
        (the call runs in the calling process unless ``parallel_config`` sets ``n_jobs``)."""
        return 1

    # --- sizing -------------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        """How many batches run at once for ``n_jobs`` (see the class docstring)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        mode, settings = self._call.mode, self._call.settings
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if mode == "serial" or n_jobs == 1:
            if settings.trace is not None or settings.report is not None:
                logger.warning("joblib runs this call itself, one job at a time (mode %r, n_jobs=%s): "
                               "EzPool sees none of it and writes no trace or report", mode, n_jobs)
            return 1
        if mode == "distributed":
            return max(2, planned_workers(settings.workers))
        if mode != "threads" and multiprocessing.current_process().daemon:
            warnings.warn(
                "the 'ezpool' joblib backend cannot start processes in a daemonic process; "
                "setting n_jobs=1",
                stacklevel=3,
            )
            return 1
        if n_jobs < 0:
            from ._backends.parallel.backend import available_cpus

            cpus = settings.ncpu or available_cpus()
            return max(cpus + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: Optional[str] = None,
        require: Optional[str] = None,
        **backend_kwargs: Any,
    ) -> int:
        """Get ready for a ``Parallel`` call; the number of batches it runs at once.

        joblib's own keyword arguments (about loky's memory mapping) are ignored;
        any other is a pool option for this call.
        """
        extra = {name: value for name, value in backend_kwargs.items() if name not in _JOBLIB_KWARGS}
        mode = backends.check_mode(extra.pop("mode", self.mode))
        options = {**self._options, **extra}
        self._call = _Call(mode, options, Options().replace(**options))
        size = self.effective_n_jobs(n_jobs)
        if size == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._size = size
        self.parallel = parallel
        with self._lock:
            stale = self._made_for != (self._call, size)
        if stale:  # a pool of another mode, options or size: the next submit takes another
            self._give_back(failed=False)
        return size

    # --- running ------------------------------------------------------------------------

    def submit(self, func: Callable[[], Any], callback: Optional[Callable[[Any], None]] = None) -> Any:
        """Run one joblib batch (a ``BatchedCalls``); ``callback`` gets its future when done."""
        future = self._pool().submit(_run, _Batch(func))
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def apply_async(self, func: Callable[[], Any], callback: Optional[Callable[[Any], None]] = None) -> Any:
        """What joblib before 1.5 calls ``submit``."""
        return self.submit(func, callback)

    def retrieve_result_callback(self, out: concurrent.futures.Future[Any]) -> Any:
        """The batch's list of results, or the exception a task raised (with the worker's
        traceback as its ``__cause__``); ``WorkerCrashed`` if the process running it died."""
        return out.result()

    def retrieve_result(self, out: concurrent.futures.Future[Any], timeout: Optional[float] = None) -> Any:
        """The same, waited for: what joblib calls when it does not use callbacks."""
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop this call's batches, running ones included, and drop the pool.

        Each batch's future is cancelled: one not sent yet never runs, and in the
        parallel and distributed modes a running one is stopped (its process or served
        worker is killed and replaced) rather than left to run in the background. The
        workers the pool started are then killed, and waited for, unless another call
        uses the pool. The next submit, if any (``ensure_ready``), takes a new pool.
        """
        with self._lock:
            pending, self._pending = self._pending, set()
        for future in pending:
            future.cancel()
        logger.debug("joblib aborts: %d batches cancelled", len(pending))
        self._give_back(failed=True)

    def terminate(self) -> None:
        """The call has ended: its pool goes back to ``kept``, for the next call."""
        self._give_back(failed=False)
        self.reset_batch_stats()

    # --- internals ----------------------------------------------------------------------

    def _pool(self) -> PoolExecutor:
        with self._lock:
            if self._executor is None:
                call, size = self._call, self._size
                sized = {"parallel": "ncpu", "threads": "nthreads"}.get(call.mode)
                options = {**call.options, sized: size} if sized else call.options

                def make() -> PoolExecutor:
                    logger.debug("starting a %s executor for joblib (%d jobs)", call.mode, size)
                    return PoolExecutor(call.mode, **options)

                # The number of jobs sizes a parallel (or threads) pool; workers are what they are.
                self._executor = self.kept.take((call.mode, call.settings, size if sized else None), make)
                self._made_for = (call, size)
            return self._executor

    def _give_back(self, failed: bool) -> None:
        with self._lock:
            executor, self._executor, self._made_for = self._executor, None, None
        if executor is not None:
            self._write_outputs(executor)
            self.kept.give_back(executor, failed)

    def _write_outputs(self, executor: PoolExecutor) -> None:
        """At the end of a ``Parallel`` call, the trace and report its options ask for (of
        everything the pool it used has run: pools are kept across calls)."""
        settings = self._call.settings
        for path, save in ((settings.trace, executor.save_trace), (settings.report, executor.save_report)):
            if path is not None:
                try:
                    save(path)
                except Exception as exc:
                    logger.warning("could not write %s: %s", path, exc)


class _Batch:
    """A joblib batch as it travels: cloudpickled when sent, so that functions from
    ``__main__``, lambdas and closures reach any process or worker by value.

    Unpickling it imports this module, which registers the backend there too, so a
    task can start a ``Parallel(backend="ezpool")`` of its own.
    """

    __slots__ = ("calls",)

    def __init__(self, calls: Callable[[], Any]) -> None:
        self.calls = calls

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_batch, (cloudpickle.dumps(self.calls, pickle.HIGHEST_PROTOCOL),))

    def __repr__(self) -> str:
        items = getattr(self.calls, "items", None)
        if not items:
            return f"<joblib batch {self.calls!r}>"
        names = sorted({getattr(func, "__qualname__", repr(func)) for func, _, _ in items})
        return f"<joblib batch of {len(items)} call(s) to {', '.join(names)}>"


def _load_batch(blob: bytes) -> _Batch:
    return _Batch(pickle.loads(blob))


def _run(batch: _Batch) -> Any:
    """Run one joblib batch where the pool runs tasks: the list of its results."""
    return batch.calls()


def _rebuild(mode: str, nesting_level: Optional[int], options: dict[str, Any]) -> EzPoolBackend:
    return EzPoolBackend(mode, nesting_level=nesting_level, **options)


def register(make_default: bool = False) -> None:
    """Register the ``"ezpool"`` backend with joblib (importing this module does it);
    ``make_default=True`` makes ``Parallel`` use it when no backend is chosen."""
    joblib.register_parallel_backend(BACKEND_NAME, EzPoolBackend, make_default=make_default)


register()
