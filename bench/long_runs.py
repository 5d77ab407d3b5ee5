"""Long runs: what streaming and the store cost, measured against ``map`` in the same run.

    python -m bench.long_runs            # about two minutes on 2 cores
    python -m bench.long_runs --quick    # smaller sizes, about 30 s

Each figure is the median of ``--repeats`` alternating runs; ratios are the
streaming or storing contender over plain ``map`` (above 1: slower). Peak memory
is measured in a fresh process per case (``VmHWM`` of ``/proc/self/status``, so
Linux only), so one case's garbage does not count against another. Results go to ``bench/long_runs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ezpool import Pool

HERE = Path(__file__).resolve().parent


def square(x: int) -> int:
    return x * x


def nap(x: float) -> float:
    time.sleep(x)
    return x


def _median_ratio(
    contenders: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for run in contenders.values():  # warm-up
        run()
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            began = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(samples) for name, samples in times.items()}


def streaming(size: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for mode, options in (("parallel", {"ncpu": 2}), ("distributed", {})):
        with Pool(mode, progress=False, **options) as pool:
            medians = _median_ratio(
                {
                    "map": lambda: pool.map(square, range(size)),
                    "imap": lambda: sum(1 for _ in pool.imap(square, range(size))),
                    "imap ordered": lambda: sum(1 for _ in pool.imap(square, range(size), ordered=True)),
                },
                repeats,
            )
        for name in ("imap", "imap ordered"):
            rows.append({"case": f"{mode}: {name} / map, {size:,} tiny tasks", "seconds": medians[name],
                         "peer_seconds": medians["map"], "ratio": medians[name] / medians["map"]})
    return rows


def store_overhead(size: int, slow: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    with Pool("parallel", ncpu=2, progress=False) as pool, tempfile.TemporaryDirectory() as folder:
        counter = iter(range(10**9))

        def fresh() -> str:
            return os.path.join(folder, f"s{next(counter)}.sqlite")

        medians = _median_ratio(
            {
                "map": lambda: pool.map(square, range(size)),
                "map + store": lambda: pool.map(square, range(size), store=fresh()),
            },
            repeats,
        )
        rows.append({"case": f"parallel: map(store=new file) / map, {size:,} tiny tasks",
                     "seconds": medians["map + store"], "peer_seconds": medians["map"],
                     "ratio": medians["map + store"] / medians["map"]})
        full = fresh()
        tasks = [0.001 + n * 1e-9 for n in range(slow)]  # distinct tasks of about 1 ms
        pool.map(nap, tasks, store=full)
        medians = _median_ratio(
            {
                "compute": lambda: pool.map(nap, tasks),
                "from the store": lambda: pool.map(nap, tasks, store=full),
            },
            repeats,
        )
        rows.append({"case": f"parallel: re-run from a full store / computing, {slow:,} tasks of 1 ms",
                     "seconds": medians["from the store"], "peer_seconds": medians["compute"],
                     "ratio": medians["from the store"] / medians["compute"]})
        full_tiny = fresh()
        pool.map(square, range(size), store=full_tiny)
        medians = _median_ratio(
            {
                "compute": lambda: pool.map(square, range(size)),
                "from the store": lambda: pool.map(square, range(size), store=full_tiny),
            },
            repeats,
        )
        rows.append({"case": f"parallel: re-run from a full store / computing, {size:,} tiny tasks",
                     "seconds": medians["from the store"], "peer_seconds": medians["compute"],
                     "ratio": medians["from the store"] / medians["compute"]})
    return rows


_MEMORY_CASE = """
import sys, time
from ezpool import Pool
from bench.long_runs import square
kind, size = sys.argv[1], int(sys.argv[2])
with Pool("parallel", ncpu=2, progress=False) as pool:
    began = time.perf_counter()
    if kind == "imap":
        first = None
        for outcome in pool.imap(square, (n for n in range(size))):
            if first is None:
                first = time.perf_counter() - began
    else:
        pool.map(square, (n for n in range(size)))
        first = time.perf_counter() - began
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak, first, time.perf_counter() - began)
"""


def memory(stream_size: int, map_size: int) -> list[dict[str, Any]]:
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    for kind, size in (("imap", stream_size), ("map", map_size)):
        done = subprocess.run([sys.executable, "-c", _MEMORY_CASE, kind, str(size)], capture_output=True,
                              text=True, env=env, check=True, timeout=1800)
        peak_kib, first, total = done.stdout.split()
        rows.append({"case": f"caller peak memory, {kind} of a generator of {size:,} tasks",
                     "peak_mib": int(peak_kib) / 1024, "first_result_s": float(first),
                     "seconds": float(total)})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=str(HERE / "long_runs.json"))
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    rows += streaming(10**5 if args.quick else 10**6, repeats)
    rows += store_overhead(10**4 if args.quick else 10**5, 300 if args.quick else 2000, repeats)
    rows += memory(10**6 if args.quick else 10**7, 10**5 if args.quick else 10**6)
    for row in rows:
        if "ratio" in row:
            print(f"{row['case']:<72} {row['seconds']:8.3f} s vs {row['peer_seconds']:8.3f} s  "
                  f"ratio {row['ratio']:.2f}")
        else:
            print(f"{row['case']:<72} peak {row['peak_mib']:7.1f} MiB, first result after "
                  f"{row['first_result_s']:.3f} s, all in {row['seconds']:.1f} s")
    machine = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "load": os.getloadavg(),
               "date": time.strftime("%Y-%m-%d %H:%M"), "peak_rss_of_bench_mib":
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(args.out).write_text(json.dumps({"machine": machine, "repeats": repeats, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
