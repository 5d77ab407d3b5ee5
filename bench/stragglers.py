"""Stragglers: the makespan of ``dmap`` when one of its two workers is much slower.

    python -m bench.stragglers            # 5x, 25x and 100x slower: about 5 minutes
    python -m bench.stragglers --quick    # one run each: about 2 minutes

Two local workers (``python -m ezpool.serve``) run ``--tasks`` tasks that sleep
``--seconds`` each; on one of them every task sleeps ``k`` times longer (it has
``EZPOOL_BENCH_SLOWDOWN=k`` in its environment). Tasks sleep, so that the two
workers do not compete for the cores and the slowdown is exact.

The ideal makespan shares the work in proportion to speed: ``tasks x seconds x
k / (k + 1)``. Each case reports the median makespan over ``--repeats`` runs
(contenders alternating) divided by that ideal, and by the *measured* ideal: the
makespan of the same call on two equal workers times ``2k / (k + 1)``, which
charges the pool's own cost per task to the ideal rather than to the straggler.
Contenders: ``dmap`` as it comes (backup copies on), ``backup=False``, and
``backup=False, chunksize=1``. After each run the bench waits until the slow
worker must have finished the task it was running (a chunk broken off stops
after its running task), so that every run starts with both workers idle.
Results go to ``bench/stragglers.json``.

``python -m bench`` runs the 100x case as its ``stragglers`` workload (``workload``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

from ezpool import Pool

from .harness import Comparison, Contender, Runner, Settings, Timed
from .serving import distributed_available, served_workers, shared
from .workloads import SLOWDOWN_VARIABLE, straggling_nap

HERE = Path(__file__).resolve().parent

#: The contenders: their names and the options of their ``map`` calls.
CONTENDERS: dict[str, dict[str, Any]] = {
    "dmap": {},
    "backup=False": {"backup": False},
    "backup=False, chunksize=1": {"backup": False, "chunksize": 1},
}


def _tasks(count: int, seconds: float) -> list[float]:
    """``count`` distinct tasks of about ``seconds`` each."""
    return [seconds * (1 + n * 1e-9) for n in range(count)]


def _time(pool: Pool, tasks: list[float], options: dict[str, Any], slow: str) -> tuple[float, int]:
    """Seconds one call takes, and how many of its tasks ran on the slow worker."""
    began = time.perf_counter()
    results = pool.map(straggling_nap, tasks, **options)
    took = time.perf_counter() - began
    assert results.errors == {} and len(results) == len(tasks), results.errors
    return took, sum(1 for worker in results.workers.values() if worker == slow)


def one_slowdown(slowdown: float, count: int, seconds: float, repeats: int) -> list[dict[str, Any]]:
    """Every contender over two workers, one ``slowdown`` times slower, then two equal ones."""
    tasks = _tasks(count, seconds)
    ideal = count * seconds * slowdown / (slowdown + 1)
    settle = seconds * slowdown + 0.5  # the longest a broken-off chunk keeps the slow worker busy
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    on_slow: dict[str, list[int]] = {name: [] for name in CONTENDERS}
    with served_workers("ezpool.serve", [], 1) as fast, served_workers(
        "ezpool.serve", [], 1, {SLOWDOWN_VARIABLE: str(slowdown)}
    ) as slow, Pool("distributed", workers=[*fast, *slow], spawn=False, progress=False) as pool:
        pool.map(straggling_nap, [0.001, 0.0011])  # both workers load the function
        names = list(CONTENDERS)
        for round_ in range(repeats):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                took, ran = _time(pool, tasks, CONTENDERS[name], slow[0])
                times[name].append(took)
                on_slow[name].append(ran)
                time.sleep(settle)
    with served_workers("ezpool.serve", [], 2) as equal, Pool(
        "distributed", workers=equal, spawn=False, progress=False
    ) as pool:
        pool.map(straggling_nap, [0.001, 0.0011])
        level = statistics.median(_time(pool, tasks, {}, "")[0] for _ in range(repeats))
    measured_ideal = level * 2 * slowdown / (slowdown + 1)
    rows = []
    for name in CONTENDERS:
        median = statistics.median(times[name])
        rows.append({
            "slowdown": slowdown, "contender": name, "tasks": count, "task_seconds": seconds,
            "seconds": median, "samples": times[name], "tasks_on_slow_worker": on_slow[name],
            "ideal": ideal, "ratio": median / ideal,
            "equal_workers_seconds": level, "measured_ideal": measured_ideal,
            "ratio_to_measured": median / measured_ideal,
        })
    return rows


# -- the same case as a workload of ``python -m bench`` -------------------------------

#: The case ``python -m bench`` reports: one worker of two this many times slower.
WORKLOAD_SLOWDOWN = 100.0


def workload(settings: Settings) -> list[Comparison]:
    """``python -m bench``'s stragglers workload: the 100x case, as ``dmap`` comes and
    (full run) with ``backup=False``, and two equal workers for the measured ideal.
    Derived: each makespan over the ideal and over the measured ideal."""
    count, seconds = (16, 0.02) if settings.quick else (64, 0.1)
    slowdown = WORKLOAD_SLOWDOWN
    settle = seconds * slowdown + 0.5
    served = shared(lambda: _fast_and_slow({SLOWDOWN_VARIABLE: str(slowdown)}))

    def straggling(options: dict[str, Any]) -> Callable[[], ContextManager[Runner]]:
        @contextlib.contextmanager
        def prepare() -> Iterator[Runner]:
            distributed_available()
            with served() as uris, Pool("distributed", workers=uris, spawn=False, progress=False) as pool:

                def run(size: int) -> Timed:
                    began = time.perf_counter()
                    results = pool.map(straggling_nap, _tasks(size, seconds), **options)
                    took = time.perf_counter() - began
                    time.sleep(settle)  # untimed: the slow worker finishes a chunk broken off
                    return Timed(took, results)

                yield run

        return prepare

    @contextlib.contextmanager
    def equal() -> Iterator[Runner]:
        distributed_available()
        with served_workers("ezpool.serve", [], 2) as uris, Pool(
            "distributed", workers=uris, spawn=False, progress=False
        ) as pool:
            yield lambda size: pool.map(straggling_nap, _tasks(size, seconds))

    contenders = [Contender("dmap", straggling({}), ezpool=True)]
    if not settings.quick:
        contenders.append(Contender("backup=False", straggling({"backup": False}), ezpool=True))
    contenders.append(Contender("two equal workers", equal, ezpool=True))

    def check(size: int, result: Any) -> None:
        if len(result) != size or result.errors:
            raise AssertionError(f"stragglers: {len(result)} of {size} tasks, errors {result.errors}")

    return [
        Comparison(
            name="stragglers",
            title=f"Stragglers: {count} tasks of {seconds} s over 2 workers, one {slowdown:g}x slower",
            unit="tasks",
            sizes=[count],
            check=check,
            contenders=contenders,
            pairs=[],
            params={"slowdown": slowdown, "task_seconds": seconds, "equal": "two equal workers"},
        )
    ]


@contextlib.contextmanager
def _fast_and_slow(slow_env: dict[str, str]) -> Iterator[list[str]]:
    """One worker as it comes and one with ``slow_env``: their URIs."""
    fast = served_workers("ezpool.serve", [], 1)
    with fast as one, served_workers("ezpool.serve", [], 1, slow_env) as other:
        yield [*one, *other]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stragglers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per contender")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per contender (default 3)")
    parser.add_argument("--tasks", type=int, default=64, help="tasks per call (default 64)")
    parser.add_argument("--seconds", type=float, default=0.1, help="seconds a task sleeps (default 0.1)")
    parser.add_argument("--slowdowns", type=float, nargs="+", default=[5, 25, 100],
                        help="how many times slower the slow worker is (default 5 25 100)")
    parser.add_argument("--out", type=Path, default=HERE / "stragglers.json")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    rows: list[dict[str, Any]] = []
    print(f"{args.tasks} tasks of {args.seconds} s over 2 workers, one k times slower; "
          f"median of {repeats} run(s)")
    print(f"{'k':>5}  {'contender':<26} {'seconds':>8} {'/ ideal':>8} {'/ measured':>11} {'on slow':>8}")
    for slowdown in args.slowdowns:
        for row in one_slowdown(slowdown, args.tasks, args.seconds, repeats):
            rows.append(row)
            print(f"{slowdown:>5g}  {row['contender']:<26} {row['seconds']:>8.2f} {row['ratio']:>8.2f} "
                  f"{row['ratio_to_measured']:>11.2f} {statistics.median(row['tasks_on_slow_worker']):>8g}",
                  flush=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}, indent=1))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
