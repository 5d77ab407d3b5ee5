"""Other libraries' names for what EzPool calls otherwise, and the error for an unknown option.

A user coming from ``multiprocessing``, ``concurrent.futures``, joblib, mpire or dask
writes ``processes=4``, ``n_jobs=4``, ``max_workers=4``, ``func=``, ``iterable=`` or
``chunk_size=``. ``unknown`` looks such a name up here before ``difflib`` (which
would offer ``progress`` for ``processes``) and says what EzPool calls it, in the
words of the call that was made (``nthreads`` for ``tmap``, ``ncpu`` for ``pmap``).

Nothing here imports ``ezpool.options``, which calls ``unknown`` for its own errors:
the names known are the caller's to give.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Callable, Optional, TypeVar

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["unknown", "METHODS", "known_by_other_names"]

#: The method that runs each mode on its own.
METHODS = {"serial": "smap", "threads": "tmap", "parallel": "pmap", "distributed": "dmap"}

#: Where nothing was given to show in an example (``Options(processes=...)`` is refused by name).
_ABSENT: Any = object()

#: Names of the number of workers, and of threads in particular.
_COUNTS = frozenset({
    "processes", "n_jobs", "njobs", "max_workers", "num_workers", "n_workers", "nworkers", "nprocs",
    "n_procs", "num_procs", "num_processes", "n_processes", "cpus", "n_cpus", "num_cpus", "cpu_count",
    "cores", "n_cores", "ncores", "pool_size", "concurrency", "parallelism",
})
_THREAD_COUNTS = frozenset({"threads", "n_threads", "num_threads", "max_threads", "threads_per_worker"})

#: Names of ``fun`` and ``tasks``, the first two parameters of every method.
_FUNCTIONS = frozenset({"func", "function", "fn", "callable", "target", "task_function", "worker_function"})
_TASKS = frozenset({"iterable", "iterables", "iterable_of_args", "items", "inputs"})

#: Names of the mode, and the mode their usual values mean (joblib's backends, dask's schedulers).
_MODE_NAMES = frozenset({"mode", "backend", "scheduler", "prefer"})
_MODE_VALUES = {
    "serial": "serial", "sequential": "serial", "synchronous": "serial", "single-threaded": "serial",
    "threads": "threads", "threading": "threads",
    "parallel": "parallel", "processes": "parallel", "loky": "parallel", "multiprocessing": "parallel",
    "distributed": "distributed", "dask": "distributed",
}

#: What ``multiprocessing``'s ``initializer`` and mpire's ``worker_init`` do, EzPool does otherwise.
_SETUPS = frozenset({"initializer", "initargs", "worker_init", "init", "setup"})

#: Other libraries' names of EzPool's options, where the meaning is the same.
_RENAMED = {
    "chunk_size": "chunksize", "batch_size": "chunksize",
    "task_timeout": "timeout", "time_limit": "timeout", "timeout_s": "timeout",
    "maxtasksperchild": "max_tasks_per_worker", "max_tasks_per_child": "max_tasks_per_worker",
    "worker_lifespan": "max_tasks_per_worker",
    "progress_bar": "progress", "show_progress": "progress", "verbose": "progress",
    "memory_limit": "max_memory", "max_retries": "retries",
    "mp_context": "start_method",
}


def unknown(
    name: str, known: Iterable[str], value: Any = _ABSENT, method: Optional[str] = None,
    mode: Optional[str] = None, listed: Optional[Iterable[str]] = None,
) -> TypeError:
    """The ``TypeError`` for a keyword ``name`` that is no option of ``known``: what EzPool calls
    it, else the closest option, else the options (``listed``, or all of ``known``).

    ``value`` is what was given, ``method`` the method called (``None``: ``Pool(...)``
    or ``Options``) and ``mode`` the mode it runs, to word the advice in their terms.
    """
    known = sorted(known)
    advice = _advice(name, value, method, mode)
    if advice is None:
        import difflib  # only to suggest a name for a mistyped one

        close = difflib.get_close_matches(name, known, n=1)
        if close:
            advice = f"; did you mean {close[0]!r}?"
    if advice is None:
        where = f" of {method}" if method else ""
        return TypeError(f"unknown option {name!r} (options{where}: {', '.join(sorted(listed or known))})")
    return TypeError(f"unknown option {name!r}{advice}")


def _advice(name: str, value: Any, method: Optional[str], mode: Optional[str]) -> Optional[str]:
    """What EzPool calls ``name``, as the end of the message, or None if it is no other library's."""
    call = method or "map"
    if name in _RENAMED:
        meant = _RENAMED[name]
        if meant == "start_method":
            return ("; did you mean 'start_method'? (EzPool's context is something else: an object "
                    "every task gets as the first argument of fun)")
        return f"; did you mean {meant!r}?"
    if name in _COUNTS or name in _THREAD_COUNTS:
        count = value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "N"
        if mode == "threads" or name in _THREAD_COUNTS:
            return (f": EzPool calls the number of threads nthreads "
                    f"(pool.tmap(fun, tasks, nthreads={count}), or Pool(mode='threads', nthreads={count}))")
        if mode == "distributed":
            return (": the distributed mode runs on the workers named by workers= (their URIs, or a cluster "
                    "such as ezpool.cluster.SSH); python -m ezpool.serve --procs N serves N worker processes")
        return (f": EzPool calls the number of worker processes ncpu (pool.pmap(fun, tasks, ncpu={count}), "
                f"or Pool(mode='parallel', ncpu={count}))")
    if name in _FUNCTIONS or name in _TASKS:
        return f": {call}'s parameters are fun and tasks: pool.{call}(fun, tasks)"
    if name in _MODE_NAMES:
        chosen = _MODE_VALUES.get(value) if isinstance(value, str) else None
        what = "the mode is" if name == "mode" else "EzPool calls it the mode, which is"
        if method is None:
            return f": {what} given to Pool(mode=...) or PoolExecutor(mode)"
        if chosen is None:
            modes = ", ".join(repr(mode) for mode in METHODS)
            return f": {what} the pool's, not a call's: Pool(mode=...).{call}(...), the mode one of {modes}"
        alone = f", or pool.{METHODS[chosen]}(...)" if call in ("map", *METHODS.values()) else ""
        return f": {what} the pool's, not a call's: Pool(mode={chosen!r}).{call}(...){alone}"
    if name in _SETUPS:
        return (": EzPool has no initializer; pass what every task needs as context= (it travels to each "
                "worker once and is the first argument of fun), or serve a BaseWorker subclass, whose "
                "setup() runs once in each worker process (dmap)")
    if name == "ordered":
        return ": only imap and aimap take it; map's Results are in the order of the tasks"
    return None


_Method = TypeVar("_Method", bound=Callable[..., Any])

#: ``co_flags`` of an ``async def`` function (``inspect.CO_COROUTINE``, without importing inspect).
_COROUTINE = 0x80


def known_by_other_names(method: _Method) -> _Method:
    """``method`` (a ``Pool`` method whose parameters start ``fun, tasks``), refusing ``fun`` and
    ``tasks`` given under other libraries' names (``pool.map(func=f, iterable=xs)``) with
    EzPool's names, where Python would say only that ``fun`` and ``tasks`` are missing. A
    call that gives both positionally pays one comparison."""
    name = method.__name__

    def refuse(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        theirs = [key for key in kwargs if key in _FUNCTIONS or key in _TASKS]
        if theirs and not {"fun", "tasks"} <= {*kwargs, *("fun", "tasks")[: len(args)]}:
            given = ", ".join(f"{key}=..." for key in theirs)
            raise TypeError(f"{name}() takes fun and tasks, not {given}: pool.{name}(fun, tasks), "
                            f"or pool.{name}(fun=..., tasks=...)")

    if method.__code__.co_flags & _COROUTINE:
        @functools.wraps(method)
        async def checked_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            if len(args) < 2 and kwargs:
                refuse(args, kwargs)
            return await method(self, *args, **kwargs)

        return checked_async  # type: ignore[return-value]  # the same signature, wrapped

    @functools.wraps(method)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) < 2 and kwargs:
            refuse(args, kwargs)
        return method(self, *args, **kwargs)

    return checked  # type: ignore[return-value]  # the same signature, wrapped
