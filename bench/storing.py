"""Storing: ``map(store=...)`` into a new file and resumed from a full one, against
``map`` computing the same tasks (issue 29).

Registered in ``bench.suites.WORKLOADS`` as ``store``. Every contender is warm
``pmap`` of ``x*x`` over ``range(size)`` on one pool of two processes:

- ``map``: no store;
- ``map, new store``: into a file that does not exist yet (its path is chosen outside
  the timing, and the file removed after it: what is timed makes, fills and closes it);
- ``map, full store``: a re-run over a store holding every outcome already (filled once
  per size, outside the timing): nothing runs, everything is read back.

Ratios: each store contender / ``map``. ``params.store_bytes`` gives the size of the full
store (the file and its write-ahead log) at each size.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from ezpool import Pool

from .harness import Comparison, Contender, Runner, Settings, Timed
from .workloads import square

__all__ = ["storing"]

#: Processes every contender uses.
NCPU = 2

#: The names ``map`` of the contenders.
MAP, NEW, FULL = "map", "map, new store", "map, full store"


def _removed(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


def _size_of(path: str) -> int:
    return sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))


def storing(settings: Settings) -> list[Comparison]:
    """(issue 29) ``map`` with a store, new and full, against ``map`` without."""
    sizes = [10**4, 10**5] if settings.quick else [10**5, 10**6]
    store_bytes: dict[int, int] = {}

    def contender(kind: str) -> Any:
        @contextlib.contextmanager
        def prepare() -> Iterator[Runner]:
            with tempfile.TemporaryDirectory(prefix="ezpool-bench-store-") as directory, Pool() as pool:
                pool.pmap(square, range(1000), ncpu=NCPU, progress=False)  # the processes start here
                names = itertools.count()
                full: dict[int, str] = {}

                def run(size: int) -> Any:
                    tasks = range(size)
                    if kind == MAP:
                        return pool.pmap(square, tasks, ncpu=NCPU, progress=False)
                    if kind == FULL:
                        path = full.get(size)
                        if path is None:  # filled once, outside the timing
                            path = full[size] = os.path.join(directory, f"full-{size}.sqlite")
                            pool.pmap(square, tasks, ncpu=NCPU, progress=False, store=path)
                            store_bytes[size] = _size_of(path)
                        began = perf_counter()
                        results = pool.pmap(square, tasks, ncpu=NCPU, progress=False, store=path)
                        return Timed(perf_counter() - began, results)
                    path = os.path.join(directory, f"new-{next(names)}.sqlite")
                    try:
                        began = perf_counter()
                        results = pool.pmap(square, tasks, ncpu=NCPU, progress=False, store=path)
                        return Timed(perf_counter() - began, results)
                    finally:
                        _removed(path)

                yield run

        return prepare

    def check(size: int, result: Any) -> None:
        if len(result) != size or result[size - 1] != (size - 1) ** 2 or result.errors:
            raise AssertionError(f"wrong result for {size} squares: {len(result)} values")

    return [
        Comparison(
            name="store",
            title=f"map(store=...) of tiny tasks (x*x), new and full store, warm, {NCPU} processes",
            unit="tasks",
            sizes=sizes,
            check=check,
            contenders=[
                Contender(MAP, contender(MAP), ezpool=True),
                Contender(NEW, contender(NEW), ezpool=True),
                Contender(FULL, contender(FULL), ezpool=True),
            ],
            pairs=[(NEW, MAP), (FULL, MAP)],
            params={"ncpu": NCPU, "store_bytes": store_bytes},
        )
    ]
