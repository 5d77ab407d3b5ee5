"""A parameter sweep: Monte-Carlo estimates of pi, with progress, timing and failures.

Each task is ``(samples, seed)``: throw ``samples`` random points at the unit
square and count those inside the quarter circle. The sweep deliberately contains
bad parameters (``samples <= 0``), which fail every time, and the "instrument"
glitches now and then (``--glitch``, a probability), which fails once and works
when tried again. The program shows how to follow a run, time it, and retry only
the failures worth retrying::

    python examples/montecarlo_pi.py
    python examples/montecarlo_pi.py --mode parallel --ncpu 2 --bar
    python examples/montecarlo_pi.py --mode distributed

In distributed mode a worker is started on ``localhost:21000`` when none answers
there (at other ``--workers`` addresses only with ``--spawn``); or serve one yourself with
``python -m ezpool.serve examples/montecarlo_pi.py:PiWorker --port 21000``.
"""

from __future__ import annotations

import argparse
import random
import sys
from math import pi
from typing import Any, Optional, Sequence

from ezpool import BaseWorker, Pool, TaskOutcome


def estimate_pi(samples: int, seed: int, glitch: float = 0.0) -> float:
    """Estimate pi from ``samples`` random points; ``glitch`` is a failure probability."""
    if samples <= 0:
        raise ValueError(f"samples must be positive, got {samples}")
    if glitch and random.SystemRandom().random() < glitch:
        raise RuntimeError(f"simulated glitch at samples={samples}, seed={seed}")
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


class PiWorker(BaseWorker):
    """``estimate_pi`` for the distributed mode (tasks carry the glitch rate too)."""

    def run(self, samples: int, seed: int, glitch: float = 0.0) -> float:
        return estimate_pi(samples, seed, glitch)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A Monte-Carlo pi sweep with EzPool.")
    parser.add_argument(
        "--samples", "-s", nargs="+", type=int, default=[1_000, 10_000, 100_000, 0, -5],
        help="sample counts to sweep (<= 0 fails on purpose; default: 1000 10000 100000 0 -5)",
    )
    parser.add_argument("--seeds", type=int, default=4, help="seeds per sample count (default: 4)")
    parser.add_argument(
        "--glitch", type=float, default=0.2,
        help="probability that a task fails once by chance (default: 0.2)",
    )
    parser.add_argument("--retries", type=int, default=5, help="rounds of retrying glitches (default: 5)")
    parser.add_argument("--mode", "-m", choices=("serial", "parallel", "distributed"), default="serial")
    parser.add_argument("--ncpu", "-n", type=int, default=None, help="processes in parallel mode")
    parser.add_argument("--workers", "-w", nargs="+", default=["PYRO:worker@localhost:21000"])
    parser.add_argument("--spawn", action="store_true", help="start workers at other localhost addresses too")
    parser.add_argument("--bar", action="store_true", help="show a progress bar instead of one line per task")
    return parser


def report_progress(outcome: TaskOutcome, done: int, total: int) -> None:
    """A progress hook: called here, in the calling process, once per finished task."""
    state = f"failed ({type(outcome.value).__name__})" if outcome.failed else f"{outcome.value:.5f}"
    print(f"  [{done:>3}/{total}] {outcome.task}: {state} in {outcome.elapsed:.4f} s", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    fun: Any = PiWorker if args.mode == "distributed" else estimate_pi
    tasks = [(samples, seed, args.glitch) for samples in args.samples for seed in range(args.seeds)]
    progress: Any = True if args.bar else report_progress

    spawn = args.spawn or None
    with Pool(mode=args.mode, ncpu=args.ncpu, workers=args.workers, progress=progress, spawn=spawn) as pool:
        results = pool.map(fun, tasks, msg="Sweep")
        print(f"first round: {results.summary()}")

        # Retry the glitches only: a bad parameter fails however often it is tried.
        for attempt in range(1, args.retries + 1):
            glitched = [task for task, error in results.errors.items() if isinstance(error, RuntimeError)]
            if not glitched:
                break
            retried = pool.map(fun, glitched, msg=f"Retry {attempt}")
            print(f"retry {attempt}: {retried.summary()}")
            for task in glitched:
                results[task] = retried[task]
                results.elapsed[task] = retried.elapsed[task]
                if task in retried.errors:
                    results.errors[task] = retried.errors[task]
                else:
                    del results.errors[task]

    print(f"{'samples':>8} {'seed':>4}  {'estimate':>9} {'error':>9} {'seconds':>8}")
    for task, value in results.items():
        samples, seed, _ = task
        if task in results.errors:
            print(f"{samples:>8} {seed:>4}  failed: {type(value).__name__}: {value}")
        else:
            print(f"{samples:>8} {seed:>4}  {value:9.5f} {value - pi:+9.5f} {results.elapsed[task]:8.4f}")
    glitches = sum(isinstance(error, RuntimeError) for error in results.errors.values())
    print(f"{len(results) - len(results.errors)} estimates, {len(results.errors)} failed "
          f"({glitches} glitches left after retrying)")
    return 0 if glitches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
