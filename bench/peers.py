"""The tools users would pick instead of EzPool, each set up once and reused.

Every factory returns a context manager yielding ``run(size)``. A peer that is not
installed raises ``Skip`` on entering, so it is reported as skipped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import logging
import multiprocessing
from collections.abc import Iterator
from typing import Any, Callable, Optional

from .harness import Runner, Skip
from .workloads import timed_call

logger = logging.getLogger(__name__)

Tasks = Callable[[int], Any]  # size -> the tasks


def require(module: str) -> Any:
    """Import ``module`` or skip the contender that needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{module} not installed: pip install -e .[bench]") from exc


def tuned_chunksize(size: int, ncpu: int) -> int:
    """The usual advice: four chunks per worker."""
    return max(1, size // (4 * ncpu))


@contextlib.contextmanager
def mp_pool_map(fun: Callable[[Any], Any], tasks: Tasks, ncpu: int) -> Iterator[Runner]:
    """``multiprocessing.Pool.map`` with its default chunk size."""
    with multiprocessing.Pool(ncpu) as pool:
        yield lambda size: pool.map(fun, tasks(size))


@contextlib.contextmanager
def executor_map(fun: Callable[[Any], Any], tasks: Tasks, ncpu: int, tuned: bool) -> Iterator[Runner]:
    """``ProcessPoolExecutor.map``: chunksize 1 (its default) or ``size / (4 * ncpu)``."""
    with concurrent.futures.ProcessPoolExecutor(ncpu) as executor:

        def run(size: int) -> list[Any]:
            chunksize = tuned_chunksize(size, ncpu) if tuned else 1
            return list(executor.map(fun, tasks(size), chunksize=chunksize))

        yield run


@contextlib.contextmanager
def loky_map(fun: Callable[[Any], Any], tasks: Tasks, ncpu: int) -> Iterator[Runner]:
    """loky's reusable executor, with the tuned chunk size (its default is 1)."""
    loky = require("loky")
    executor = loky.get_reusable_executor(max_workers=ncpu)

    def run(size: int) -> list[Any]:
        return list(executor.map(fun, tasks(size), chunksize=tuned_chunksize(size, ncpu)))

    try:
        yield run
    finally:
        executor.shutdown(wait=True)


@contextlib.contextmanager
def joblib_parallel(fun: Callable[[Any], Any], tasks: Tasks, ncpu: int) -> Iterator[Runner]:
    """joblib ``Parallel`` (loky backend, automatic batching), workers kept between calls."""
    joblib = require("joblib")
    with joblib.Parallel(n_jobs=ncpu) as parallel:
        delayed = joblib.delayed(fun)
        yield lambda size: parallel(delayed(task) for task in tasks(size))


@contextlib.contextmanager
def mpire_map(fun: Callable[[Any], Any], tasks: Tasks, ncpu: int) -> Iterator[Runner]:
    """mpire ``WorkerPool.map`` (automatic chunk size), workers kept alive."""
    mpire = require("mpire")
    with mpire.WorkerPool(n_jobs=ncpu, keep_alive=True) as pool:
        yield lambda size: pool.map(fun, tasks(size), progress_bar=False)


@contextlib.contextmanager
def original_ezpool(fun: Callable[[Any], Any], tasks: Tasks, ncpu: int) -> Iterator[Runner]:
    """The original EzPool design: one ``apply_async`` per task, timed, into a dict."""
    with multiprocessing.Pool(ncpu) as pool:

        def run(size: int) -> dict[Any, Any]:
            handles = {task: pool.apply_async(timed_call, (fun, task)) for task in tasks(size)}
            results: dict[Any, Any] = {}
            elapsed: dict[Any, float] = {}
            for task, handle in handles.items():
                results[task], elapsed[task] = handle.get()
            return results

        yield run


@contextlib.contextmanager
def dask_cluster(
    fun: Callable[[Any], Any], tasks: Tasks, workers: int, silence: Optional[int] = None
) -> Iterator[Runner]:
    """Dask distributed: a ``LocalCluster`` of ``workers`` processes, one thread each."""
    require("dask")
    distributed = require("distributed")
    # Importing distributed sets its loggers to INFO; its chatter is not ours to print.
    logging.getLogger("distributed").setLevel(silence if silence is not None else logging.ERROR)
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=silence if silence is not None else logging.ERROR,
    )
    try:
        client = distributed.Client(cluster)
        try:
            client.wait_for_workers(workers, timeout=120)

            def run(size: int) -> list[Any]:
                # pure=False: every call is new work, never a result Dask kept.
                futures = client.map(fun, list(tasks(size)), pure=False)
                return client.gather(futures)

            yield run
        finally:
            client.close()
    finally:
        cluster.close()
