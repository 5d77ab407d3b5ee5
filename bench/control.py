"""What the per-task controls cost: retries, worker limits and the stop channel, on tiny tasks.

``python bench/control.py [--against REV] [--tasks N] [--repeats R] [--rounds K]`` checks
``REV`` (default: fd50776, the last commit before them) out in a temporary worktree and
times, in fresh processes taking turns, warm calls of ``N`` tiny tasks under each:

- *unused*: ``smap``, ``pmap`` (2 processes) and ``dmap`` (2 workers the pool starts
  here) with none of the new options, this checkout against ``REV``;
- *used, nothing to do*: the same calls here with ``retries=2, retry_on=ConnectionError``
  (no task fails, so this is the price of the retrying feed alone) and with
  ``max_tasks_per_worker`` and ``max_memory`` set too high to matter, against the
  unused calls here.

Medians of ``R`` calls in each of ``K`` rounds; the ratios are what the closing note of
issue 28 gives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Run in a fresh interpreter with the checkout to time first on its path.
_TIMED = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import ezpool
assert ezpool.__file__.startswith(sys.argv[1]), ezpool.__file__
from ezpool import Pool
from tests.conftest import free_port

def square(x):
    return x * x

mode, count, repeats, extra = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
if "retry_on" in extra:
    extra["retry_on"] = tuple(getattr(__builtins__, name) for name in extra["retry_on"])
options = {"ncpu": 2} if mode == "parallel" else {} if mode == "serial" else {
    "workers": [f"PYRO:worker@127.0.0.1:{free_port()}" for _ in range(2)], "spawn": True}
times = []
with Pool(mode, progress=False, **options) as pool:
    pool.map(square, range(count), **extra)  # warm: processes, workers and code in place
    for _ in range(repeats):
        began = time.perf_counter()
        results = pool.map(square, range(count), **extra)
        times.append(time.perf_counter() - began)
        assert len(results) == count and not results.errors
print(json.dumps(times))
"""

#: The options of each variant timed here.
VARIANTS = {
    "unused": {},
    "retries": {"retries": 2, "retry_on": ["ConnectionError"]},
    "limits": {"max_tasks_per_worker": 10**9, "max_memory": "64GiB"},
}


def timed(checkout: Path, mode: str, count: int, repeats: int, extra: dict) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", _TIMED, str(checkout), mode, str(count), str(repeats), json.dumps(extra)],
        capture_output=True, text=True, env=env, cwd=checkout, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="fd50776", help="the revision without the controls")
    parser.add_argument("--tasks", type=int, default=10**5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="turns each checkout takes")
    parser.add_argument("--modes", nargs="+", default=["serial", "parallel", "distributed"])
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.tasks} tiny tasks; against {args.against}")
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder, "old")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.against],
                       check=True)
        try:
            for mode in args.modes:
                found: dict[str, list[float]] = {name: [] for name in [*VARIANTS, "before"]}
                for _ in range(args.rounds):
                    found["before"] += timed(old, mode, args.tasks, args.repeats, {})
                    for name, extra in VARIANTS.items():
                        if name == "limits" and mode == "serial":
                            continue  # the serial mode has no worker processes to limit
                        found[name] += timed(ROOT, mode, args.tasks, args.repeats, extra)
                median = {name: statistics.median(times) for name, times in found.items() if times}
                line = [f"{mode:>12}: before {median['before']:.4f} s",
                        f"unused {median['unused']:.4f} s ({median['unused'] / median['before']:.3f}x)"]
                line += [f"{name} {median[name]:.4f} s ({median[name] / median['unused']:.3f}x unused)"
                         for name in VARIANTS if name != "unused" and name in median]
                print("; ".join(line))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
