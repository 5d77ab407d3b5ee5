"""What recording every run costs: a million tiny tasks, this checkout against one without it.

``python bench/recording.py [--against REV] [--tasks N] [--repeats R]`` checks ``REV``
(default: the commit before recording came, 3cbd409) out in a temporary worktree and
times, in fresh processes taking turns, a warm ``pmap`` (2 processes) and a warm ``dmap``
(2 workers the pool starts on this machine) of ``N`` tiny tasks under each; then, for
this checkout only, how long building the timeline and writing the trace and the
report take for 10^3, 10^5 and 10^6 tasks, and how big the files are. Medians of R.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Run in a fresh interpreter with the checkout to time first on its path: times of warm calls.
_TIMED = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import ezpool
assert ezpool.__file__.startswith(sys.argv[1]), ezpool.__file__
from ezpool import Pool
from tests.conftest import free_port

def square(x):
    return x * x

mode, count, repeats = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = {"ncpu": 2} if mode == "parallel" else {
    "workers": [f"PYRO:worker@127.0.0.1:{free_port()}" for _ in range(2)], "spawn": True}
times = []
with Pool(mode, progress=False, **options) as pool:
    pool.map(square, range(count))  # warm: processes, workers and code in place
    for _ in range(repeats):
        began = time.perf_counter()
        results = pool.map(square, range(count))
        times.append(time.perf_counter() - began)
        assert len(results) == count
print(json.dumps(times))
"""


def timed(checkout: Path, mode: str, count: int, repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", _TIMED, str(checkout), mode, str(count), str(repeats)],
                          capture_output=True, text=True, env=env, cwd=checkout, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout)


def outputs(counts: list[int]) -> None:
    """Build, trace and report a real serial run of each size here (the timeline of a run is
    the same whatever its mode; serial keeps the run itself short)."""
    from ezpool import Pool

    for count in counts:
        with Pool("serial", progress=False) as pool:
            results = pool.map(_fail_some, range(count))
        began = time.perf_counter()
        timeline = results.timeline
        built = time.perf_counter() - began
        with tempfile.TemporaryDirectory() as folder:
            trace, report = Path(folder, "run.json"), Path(folder, "run.html")
            began = time.perf_counter()
            results.save_trace(trace)
            traced = time.perf_counter() - began
            began = time.perf_counter()
            results.save_report(report)
            reported = time.perf_counter() - began
            print(f"{count:>9} tasks: timeline {built:.3f} s; trace {traced:.3f} s, "
                  f"{trace.stat().st_size / 1e6:.2f} MB; report {reported:.3f} s, "
                  f"{report.stat().st_size / 1e6:.2f} MB ({len(timeline.errors)} failed)")


def _fail_some(x: int) -> int:
    if x % 997 == 0:
        raise ValueError(x)
    return x * x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="3cbd409", help="the revision without recording")
    parser.add_argument("--tasks", type=int, default=10**6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="turns each checkout takes")
    parser.add_argument("--modes", nargs="+", default=["parallel", "distributed"])
    parser.add_argument("--no-outputs", action="store_true", help="time the calls only")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.tasks} tiny tasks; against {args.against}")
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder, "old")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.against],
                       check=True)
        try:
            for mode in args.modes:
                now: list[float] = []
                before: list[float] = []
                for _ in range(args.rounds):
                    now += timed(ROOT, mode, args.tasks, args.repeats)
                    before += timed(old, mode, args.tasks, args.repeats)
                ratio = statistics.median(now) / statistics.median(before)
                print(f"{mode:>12}: recording {statistics.median(now):.4f} s, without "
                      f"{statistics.median(before):.4f} s: {ratio:.3f}x")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    if not args.no_outputs:
        outputs([10**3, 10**5, 10**6])
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
