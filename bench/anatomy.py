"""Where ``pmap``'s time goes on tiny tasks: ``python -m bench.anatomy [TASKS]``.

Prints, for ``pmap`` and ``multiprocessing.Pool.map`` over the same tasks: wall
time and the CPU time of the calling process and of each worker process (read
from ``/proc``, so Linux only), then the calling process's cProfile top for pmap.
A pool whose workers and caller together burn more CPU than the cores can give
is bound by that CPU, whatever its scheduling.

``--dmap``: the same for ``dmap`` over two served workers, with the lean server
path and with Pyro4's own request handling (``bench.lean``), in alternation, and
the workers' CPU per chunk (``--chunksize 1`` shows each request's own cost).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

if not __package__:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workloads import square
from ezpool import Pool

__all__ = ["main"]


def _children_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each child process of this one."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def _split(label: str, call: Callable[[], Any], rounds: int) -> None:
    call()
    before, own, wall = _children_cpu(), time.process_time(), []
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        wall.append(time.perf_counter() - began)
    own = (time.process_time() - own) / rounds
    after = _children_cpu()
    workers = [
        (after[pid] - before[pid]) / rounds for pid in after if pid in before and after[pid] > before[pid]
    ]
    shown = ", ".join(f"{1e3 * seconds:.1f}" for seconds in workers)
    print(
        f"{label:26s} wall {1e3 * statistics.median(wall):7.1f} ms   caller CPU {1e3 * own:6.1f} ms   "
        f"worker CPU [{shown}] ms"
    )


def _dmap(size: int, rounds: int, chunksize: Optional[int]) -> int:
    """``--dmap``: rounds of lean and Pyro4-path workers in alternation (A/B/A/B)."""
    from bench.lean import chunks_ran, worker_cpu
    from bench.serving import served_workers
    from bench.workloads import SquareWorker

    spec, options = ["bench.workloads:SquareWorker"], {} if chunksize is None else {"chunksize": chunksize}
    print(f"dmap of {size:,} tasks of x*x over 2 served workers, {rounds} rounds each; per call")
    with served_workers("ezpool.serve", spec, 2) as lean, served_workers("bench.lean", spec, 2) as pyro, \
            Pool() as pool:
        paths = {"lean path": lean, "Pyro4's request path": pyro}
        # by path: the workers' CPU, the chunks they ran, the caller's CPU, summed over the rounds
        seen: dict[str, list[float]] = {label: [0.0, 0.0, 0.0] for label in paths}
        wall: dict[str, list[float]] = {label: [] for label in paths}
        for uris in paths.values():
            pool.dmap(SquareWorker, range(size), workers=uris, progress=False, spawn=False, **options)
        for _ in range(rounds):
            for label, uris in paths.items():
                pids, chunks = chunks_ran(uris)
                cpu, own, began = worker_cpu(pids), time.process_time(), time.perf_counter()
                pool.dmap(SquareWorker, range(size), workers=uris, progress=False, spawn=False, **options)
                wall[label].append(time.perf_counter() - began)
                spent = [worker_cpu(pids) - cpu, chunks_ran(uris)[1] - chunks, time.process_time() - own]
                seen[label] = [a + b for a, b in zip(seen[label], spent)]
        for label, (cpu, chunks, own) in seen.items():
            median = statistics.median(wall[label])
            print(f"{label:22s} wall {1e3 * median:7.1f} ms ({1e6 * median / size:.3f} us/task)"
                  f"   caller CPU {1e3 * own / rounds:6.1f} ms   worker CPU {1e3 * cpu / rounds:6.1f} ms,"
                  f" {1e6 * cpu / max(chunks, 1):7.1f} us/chunk"
                  f" ({chunks / rounds:.0f} chunks)")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anatomy", description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=int, nargs="?", default=200_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dmap", action="store_true", help="dmap over 2 served workers: both paths")
    parser.add_argument("--chunksize", type=int, default=None, help="with --dmap: tasks per chunk")
    args = parser.parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        print("needs Linux's /proc", file=sys.stderr)
        return 2
    if args.dmap:
        return _dmap(args.tasks, args.rounds, args.chunksize)
    tasks = range(args.tasks)
    print(f"{args.tasks:,} tasks of x*x, 2 processes, {args.rounds} rounds; CPU per call")
    with Pool() as pool:
        _split("pmap", lambda: pool.pmap(square, tasks, ncpu=2, progress=False), args.rounds)
    with multiprocessing.Pool(2) as stdlib:
        _split("multiprocessing.Pool.map", lambda: stdlib.map(square, tasks), args.rounds)
    with Pool() as pool:
        pool.pmap(square, tasks, ncpu=2, progress=False)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.rounds):
            pool.pmap(square, tasks, ncpu=2, progress=False)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print(f"\ncaller's profile of {args.rounds} pmap calls (waiting for workers shows as poll):")
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
