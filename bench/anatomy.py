"""Where ``pmap``'s time goes on tiny tasks: ``python -m bench.anatomy [TASKS]``.

Prints, for ``pmap`` and ``multiprocessing.Pool.map`` over the same tasks: wall
time and the CPU time of the calling process and of each worker process (read
from ``/proc``, so Linux only), then the calling process's cProfile top for pmap.
A pool whose workers and caller together burn more CPU than the cores can give
is bound by that CPU, whatever its scheduling.
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anatomy", description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=int, nargs="?", default=200_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        print("needs Linux's /proc", file=sys.stderr)
        return 2
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
