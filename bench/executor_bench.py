"""``PoolExecutor`` against ``pmap`` and the stdlib: ``python -m bench.executor_bench``.

Prints, from one run on this machine:

- ``executor.map`` of ``--tasks`` (10^5) tiny calls against ``pmap`` of the same
  tasks, both on ``--workers`` processes, timed alternately; the ratio of medians;
- ``submit`` of ``--submits`` (10^4) tiny calls, then waiting for them all, in µs a
  call: ``PoolExecutor`` in the parallel and the distributed mode (generic workers
  started on free local ports), and ``ProcessPoolExecutor`` for reference.

Each executor and pool is started before anything is timed, and warmed up once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Optional

if not __package__:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serving import free_port
from bench.workloads import square
from ezpool import Pool, PoolExecutor

__all__ = ["main"]


def _median_times(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs alternated (the order rotating) ``repeats`` times."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up, not timed
        runs[name]()
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            began = perf_counter()
            runs[name]()
            times[name].append(perf_counter() - began)
    return {name: statistics.median(samples) for name, samples in times.items()}


def _map_all(executor: concurrent.futures.Executor, tasks: int) -> None:
    total = sum(executor.map(square, range(tasks)))
    assert total == sum(x * x for x in range(tasks)), "executor.map returned wrong results"


def _pmap_all(pool: Pool, tasks: int) -> None:
    results = pool.pmap(square, range(tasks))
    assert len(results) == tasks and results[tasks - 1] == (tasks - 1) ** 2, "pmap returned wrong results"


def _submit_all(executor: concurrent.futures.Executor, count: int) -> None:
    futures = [executor.submit(square, i) for i in range(count)]
    done, pending = concurrent.futures.wait(futures, timeout=600)
    assert not pending and sum(f.result() for f in done) == sum(i * i for i in range(count))


@contextlib.contextmanager
def _distributed(workers: int) -> Iterator[PoolExecutor]:
    uris = [f"PYRO:worker@127.0.0.1:{free_port()}" for _ in range(workers)]
    with PoolExecutor("distributed", workers=uris, spawn=True) as executor:  # the pool starts them
        yield executor


def main(argv: Optional[Sequence[str]] = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.executor_bench", description=summary)
    parser.add_argument("--tasks", type=int, default=10**5, help="calls of the map comparison")
    parser.add_argument("--submits", type=int, default=10**4, help="calls of the submit comparison")
    parser.add_argument("--workers", type=int, default=2, help="processes or distributed workers")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (median)")
    args = parser.parse_args(argv)
    tasks, submits, workers, repeats = args.tasks, args.submits, args.workers, args.repeats

    with Pool("parallel", ncpu=workers, progress=False) as pool, PoolExecutor(
        "parallel", max_workers=workers
    ) as executor:
        mapped = _median_times(
            {"executor.map": lambda: _map_all(executor, tasks), "pmap": lambda: _pmap_all(pool, tasks)},
            repeats,
        )
        submitted = _median_times({"parallel": lambda: _submit_all(executor, submits)}, repeats)
    with _distributed(workers) as remote:
        submitted.update(_median_times({"distributed": lambda: _submit_all(remote, submits)}, repeats))
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as stdlib:
        runs = {"ProcessPoolExecutor": lambda: _submit_all(stdlib, submits)}
        submitted.update(_median_times(runs, repeats))

    print(f"{tasks} tiny calls on {workers} processes, median of {repeats}:")
    print(f"  executor.map  {mapped['executor.map']:8.3f} s")
    print(f"  pmap          {mapped['pmap']:8.3f} s")
    print(f"  ratio executor.map / pmap: {mapped['executor.map'] / mapped['pmap']:.2f}")
    print(f"submit of {submits} tiny calls, then wait for all, {workers} workers, median of {repeats}:")
    for name in ("parallel", "distributed", "ProcessPoolExecutor"):
        label = name if name == "ProcessPoolExecutor" else f"PoolExecutor ({name})"
        print(f"  {label:32s} {1e6 * submitted[name] / submits:7.1f} µs a call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
