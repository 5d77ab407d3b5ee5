"""Streaming: ``imap`` consumed fully against ``map`` of the same tasks, and ``retries`` set
but idle against none (issue 29).

Every contender is EzPool's, timed warm over tiny tasks (``x*x``): the ratios are
against ``map`` of the same tasks in the same pool, taking turns with it.

- ``imap``: ``sum(1 for _ in pool.imap(square, range(n)))`` (unordered, and
  ``ordered=True``) against ``pool.map(square, range(n))``, over 2 processes
  (``pmap``) and 2 workers served on this machine (``dmap``);
- ``retries idle``: ``map(..., retries=2, retry_on=ConnectionError)`` where nothing
  fails, against ``map``, for ``pmap`` and ``dmap``.

Registered in ``bench.suites.WORKLOADS`` as ``imap``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

from ezpool import Pool

from .harness import Comparison, Contender, Runner, Settings
from .serving import distributed_available, served_workers, shared
from .workloads import SquareWorker, square

__all__ = ["streaming"]

#: Processes, or served workers, of every contender.
WORKERS = 2

#: What every call of ``retries idle`` adds (no task raises it).
RETRIES = {"retries": 2, "retry_on": ConnectionError}


def _check(size: int, result: Any) -> None:
    """``map`` gives every square; ``imap`` (consumed by counting) one outcome a task."""
    if isinstance(result, int):
        if result != size:
            raise AssertionError(f"imap gave {result} outcomes for {size} tasks")
    elif len(result) != size or result[size - 1] != (size - 1) ** 2:
        raise AssertionError(f"wrong result for {size} squares: {len(result)} values")


def _runner(pool: Pool, fun: Any, how: str, options: dict[str, Any]) -> Runner:
    """``run(size)`` of one way of calling: ``map``, ``imap``, ``imap, ordered`` or ``retries``."""
    if how == "map":
        return lambda size: pool.map(fun, range(size), **options)
    if how == "retries":
        return lambda size: pool.map(fun, range(size), **options, **RETRIES)
    ordered = how == "imap, ordered"
    return lambda size: sum(1 for _ in pool.imap(fun, range(size), ordered=ordered, **options))


def _parallel(how: str) -> Callable[[], Any]:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        with Pool("parallel", ncpu=WORKERS, progress=False) as pool:
            yield _runner(pool, square, how, {})

    return prepare


def _distributed(how: str, served: Callable[[], Any]) -> Callable[[], Any]:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        distributed_available()
        with served() as uris, Pool("distributed", workers=uris, spawn=False, progress=False) as pool:
            yield _runner(pool, SquareWorker, how, {})

    return prepare


def _workers() -> Callable[[], Any]:
    """Two served workers, started once for every contender of a comparison."""
    return shared(lambda: served_workers("ezpool.serve", ["bench.workloads:SquareWorker"], WORKERS))


def streaming(settings: Settings) -> list[Comparison]:
    """(issue 29) ``imap`` consumed fully / ``map``, and ``retries`` idle / none."""
    pmap_sizes = [10**4, 10**5] if settings.quick else [10**5, 10**6]
    dmap_sizes = [10**4] if settings.quick else [10**5]
    ways = ("imap", "imap, ordered")
    served = _workers()
    retried = _workers()
    return [
        Comparison(
            name="imap",
            title=f"imap consumed fully against map: tiny tasks (x*x), warm, {WORKERS} processes",
            unit="tasks",
            sizes=pmap_sizes,
            check=_check,
            contenders=[*(Contender(way, _parallel(way), ezpool=True) for way in ways),
                        Contender("map", _parallel("map"))],
            pairs=[(way, "map") for way in ways],
        ),
        Comparison(
            name="imap-distributed",
            title=f"imap consumed fully against map: tiny tasks (x*x), warm, {WORKERS} served workers",
            unit="tasks",
            sizes=dmap_sizes,
            check=_check,
            contenders=[*(Contender(way, _distributed(way, served), ezpool=True) for way in ways),
                        Contender("map", _distributed("map", served))],
            pairs=[(way, "map") for way in ways],
        ),
        Comparison(
            name="retries-idle",
            title=f"map with retries set and nothing failing, against map: tiny tasks (x*x), warm, "
                  f"{WORKERS} processes or served workers",
            unit="tasks",
            sizes=dmap_sizes,
            check=_check,
            contenders=[
                Contender("pmap, retries idle", _parallel("retries"), ezpool=True),
                Contender("pmap", _parallel("map")),
                Contender("dmap, retries idle", _distributed("retries", retried), ezpool=True),
                Contender("dmap", _distributed("map", retried)),
            ],
            pairs=[("pmap, retries idle", "pmap"), ("dmap, retries idle", "dmap")],
            params={"retries": RETRIES["retries"], "retry_on": "ConnectionError"},
        ),
    ]
