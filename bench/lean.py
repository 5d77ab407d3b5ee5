"""The lean server path against Pyro4's own request handling, in the same run.

Two served workers (``python -m ezpool.serve``) run ``dmap`` of tiny tasks (x*x),
once as EzPool serves them (a connection that proved the key has its calls read
and answered by ``ezpool._pyro.lean``) and once with every request handled by
Pyro4's own daemon, as before the lean path (``python -m bench.lean``: the same
worker, its lean path turned off). Two comparisons:

- ``lean``: 10^5 and 10^6 tasks in the chunks ``dmap`` chooses (a few large ones);
- ``lean-chunks``: 2,000 tasks in chunks of one task, where each request's own
  cost shows.

Each run also measures the workers' CPU (from ``/proc``) and how many chunks they
ran (their ``status``): ``params.worker_cpu_us_per_chunk`` gives the workers' CPU
per chunk, in µs, for each contender and size (over every run, warm-up included:
``/proc`` counts in ticks of 10 ms).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, Optional

from .harness import Comparison, Contender, Runner, Settings, Timed
from .serving import distributed_available, served_workers
from .workloads import SquareWorker

__all__ = ["lean", "worker_cpu", "chunks_ran", "main"]

#: Workers every comparison uses.
WORKERS = 2

_SPEC = f"bench.workloads:{SquareWorker.__name__}"
_LEAN, _PYRO = "dmap", "dmap, Pyro4's request path"


def worker_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used (0 without ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def chunks_ran(uris: Sequence[str]) -> tuple[list[int], int]:
    """The workers' pids and how many chunks they have run, asked over a keyed connection."""
    from ezpool import _pyro
    from ezpool.security import resolve_key

    pids, chunks = [], 0
    for uri in uris:
        connection = _pyro.Connection(_pyro.parse_uri(uri), resolve_key(None), 10.0)
        try:
            row = connection.call("status")
        finally:
            connection.close()
        pids.append(int(row["pid"]))
        chunks += int(row["chunks"])
    return pids, chunks


def _contender(name: str, module: str, chunksize: Optional[int], figures: dict[str, Any]) -> Contender:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        from ezpool import Pool

        distributed_available()
        options = {} if chunksize is None else {"chunksize": chunksize}
        with served_workers(module, [_SPEC], WORKERS) as uris, Pool() as pool:
            pids, _ = chunks_ran(uris)
            spent: dict[int, list[float]] = {}  # by size: the workers' CPU seconds and chunks, summed

            def run(size: int) -> Timed:
                _, before = chunks_ran(uris)
                cpu = worker_cpu(pids)
                began = perf_counter()
                results = pool.dmap(SquareWorker, range(size), workers=uris, progress=False, spawn=False,
                                    **options)
                elapsed = perf_counter() - began
                cpu = worker_cpu(pids) - cpu
                _, after = chunks_ran(uris)
                total = spent.setdefault(size, [0.0, 0.0])
                total[0] += cpu
                total[1] += after - before
                figures.setdefault(name, {})[str(size)] = round(1e6 * total[0] / max(1.0, total[1]), 1)
                return Timed(elapsed, results)

            yield run

    return Contender(name, prepare, ezpool=True)


def _check(size: int, result: Any) -> None:
    if len(result) != size or result[size - 1] != (size - 1) ** 2:
        raise AssertionError(f"wrong result for {size} squares: {len(result)} values")


def lean(settings: Settings) -> list[Comparison]:
    """dmap over two served workers, with the lean server path and with Pyro4's own."""
    comparisons = []
    for name, sizes, chunksize in (
        ("lean", [10_000, 100_000] if settings.quick else [100_000, 1_000_000], None),
        ("lean-chunks", [200] if settings.quick else [2_000], 1),
    ):
        figures: dict[str, Any] = {}
        what = "tiny tasks (x*x)" if chunksize is None else "tiny tasks (x*x), one per chunk"
        comparisons.append(Comparison(
            name=name,
            title=f"The lean server path against Pyro4's request handling: {what}, {WORKERS} served workers",
            unit="tasks",
            sizes=sizes,
            check=_check,
            contenders=[_contender(_LEAN, "ezpool.serve", chunksize, figures),
                        _contender(_PYRO, "bench.lean", chunksize, figures)],
            pairs=[(_LEAN, _PYRO)],
            params={"workers": WORKERS, "chunksize": chunksize, "worker_cpu_us_per_chunk": figures},
        ))
    return comparisons


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m bench.lean ARGS``: ``python -m ezpool.serve ARGS`` with Pyro4 handling every
    request (the lean path off), for the contender above."""
    import Pyro4.core

    from ezpool import serve
    from ezpool._pyro import server

    server._Daemon.handleRequest = Pyro4.core.Daemon.handleRequest  # type: ignore[method-assign]
    return serve.main(argv)


if __name__ == "__main__":
    sys.exit(main())
