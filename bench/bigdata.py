"""Big data through the pipes: tasks returning 1 MB each, and tasks taking 5 MB each.

Both compare ``pmap`` with ``multiprocessing.Pool.map``, ``ProcessPoolExecutor.map``
(its default chunk size, 1), loky (tuned chunk size) and mpire, 2 processes, and
report MB/s (1 MB = 2**20 bytes) besides the times and ratios.

The 5 MB arguments are made anew before every run, outside its clock: Python keeps
the hash of a ``bytes`` object once computed, and a pool that hashes its tasks must
not profit from an earlier run's work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from time import perf_counter
from typing import Any, Callable, ContextManager, Optional

from ezpool import Pool

from . import peers
from .harness import Comparison, Contender, Runner, Settings, Timed
from .payloads import ARGUMENT_BYTES, MEGABYTE, RESULT_BYTES, argument, length, megabyte

__all__ = ["big_results", "big_arguments"]

Tasks = Callable[[int], Any]  # size -> the tasks


def _values(result: Any) -> list[Any]:
    return list(result.values()) if isinstance(result, dict) else list(result)


def _check_results(size: int, result: Any) -> None:
    values = _values(result)
    if len(values) != size or any(
        len(value) != RESULT_BYTES or int.from_bytes(value[:8], "little") != index
        for index, value in enumerate(values)
    ):
        raise AssertionError(f"wrong result for {size} tasks of 1 MB results")


def _check_arguments(size: int, result: Any) -> None:
    if _values(result) != [ARGUMENT_BYTES] * size:
        raise AssertionError(f"wrong result for {size} tasks of 5 MB arguments")


class _Fresh:
    """Tasks made for the next run before its clock starts, handed over when asked."""

    def __init__(self, make: Callable[[int], Any]) -> None:
        self._make = make
        self._ready: Optional[list[Any]] = None

    def make(self, size: int) -> None:
        self._ready = [self._make(index) for index in range(size)]

    def __call__(self, size: int) -> list[Any]:
        tasks, self._ready = self._ready, None
        if tasks is None or len(tasks) != size:
            raise RuntimeError("tasks asked for twice, or never made")
        return tasks


def _pmap(fun: Callable[[Any], Any], tasks: Tasks, ncpu: int) -> ContextManager[Runner]:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        with Pool() as pool:
            yield lambda size: pool.pmap(fun, tasks(size), ncpu=ncpu, progress=False)

    return prepare()


def _contenders(
    fun: Callable[[Any], Any], ncpu: int, fresh: Optional[Callable[[int], Any]]
) -> list[Contender]:
    """The same five contenders; with ``fresh``, each run gets new tasks made by it."""
    factories: list[tuple[str, bool, Callable[[Tasks], ContextManager[Runner]]]] = [
        ("pmap", True, lambda tasks: _pmap(fun, tasks, ncpu)),
        ("multiprocessing.Pool.map", False, lambda tasks: peers.mp_pool_map(fun, tasks, ncpu)),
        ("ProcessPoolExecutor.map", False, lambda tasks: peers.executor_map(fun, tasks, ncpu, False)),
        ("loky tuned", False, lambda tasks: peers.loky_map(fun, tasks, ncpu)),
        ("mpire", False, lambda tasks: peers.mpire_map(fun, tasks, ncpu)),
    ]
    return [Contender(name, _prepare(factory, fresh), ezpool=ours) for name, ours, factory in factories]


def _prepare(
    factory: Callable[[Tasks], ContextManager[Runner]], fresh: Optional[Callable[[int], Any]]
) -> Callable[[], ContextManager[Runner]]:
    if fresh is None:
        return lambda: factory(range)

    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        tasks = _Fresh(fresh)
        with factory(tasks) as run:

            def timed(size: int) -> Timed:
                tasks.make(size)
                began = perf_counter()
                value = run(size)
                return Timed(perf_counter() - began, value)

            yield timed

    return prepare


def big_results(settings: Settings, ncpu: int) -> list[Comparison]:
    """Tasks returning 1 MB each."""
    return [
        Comparison(
            name="results_1mb",
            title=f"1 MB results: tasks returning 1 MB of bytes, {ncpu} processes",
            unit="tasks",
            sizes=[32] if settings.quick else [64, 256],
            check=_check_results,
            contenders=_contenders(megabyte, ncpu, None),
            params={"megabytes_per_task": RESULT_BYTES / MEGABYTE},
        )
    ]


def big_arguments(settings: Settings, ncpu: int) -> list[Comparison]:
    """Tasks taking 5 MB each and returning its length."""
    return [
        Comparison(
            name="arguments_5mb",
            title=f"5 MB arguments: tasks taking 5 MB of bytes, returning its length, {ncpu} processes",
            unit="tasks",
            sizes=[16] if settings.quick else [32, 96],
            check=_check_arguments,
            contenders=_contenders(length, ncpu, argument),
            params={"megabytes_per_task": ARGUMENT_BYTES / MEGABYTE},
        )
    ]
