"""A sweep that survives being stopped: results stream into a store, a rerun resumes.

Each task is one point of a parameter grid, ``(samples, seed)``: a Monte-Carlo
estimate of pi from ``samples`` random points. Outcomes are printed as they
finish (``imap``) and written to an SQLite store as they arrive. Stop the program
any way you like (Ctrl-C, ``kill -9``, a reboot) and run the same command again:
what finished comes back from the store at once and only the rest is computed::

    python examples/resumable_sweep.py --store sweep.sqlite
    python examples/resumable_sweep.py --store sweep.sqlite --mode parallel --ncpu 2
    python -m ezpool.store sweep.sqlite        # where does the sweep stand?

``--nap`` makes every task take that many more seconds, to have time to stop it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ezpool import Pool, open_store


def estimate_pi(samples: int, seed: int, nap: float = 0.0) -> float:
    """Estimate pi from ``samples`` random points thrown at the unit square."""
    if samples <= 0:
        raise ValueError(f"samples must be positive, got {samples}")
    time.sleep(nap)
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A resumable Monte-Carlo sweep with EzPool.")
    parser.add_argument("--store", default="sweep.sqlite", help="the SQLite file (default: sweep.sqlite)")
    parser.add_argument("--samples", type=int, nargs="+", default=[1_000, 10_000, 0],
                        help="sample counts (<= 0 fails on purpose; default: 1000 10000 0)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per sample count (default: 20)")
    parser.add_argument("--nap", type=float, default=0.0, help="extra seconds per task (default: 0)")
    parser.add_argument("--retry-failed", action="store_true", help="run the stored failures again")
    parser.add_argument("--mode", "-m", choices=("serial", "parallel", "distributed"), default="serial")
    parser.add_argument("--ncpu", "-n", type=int, default=None, help="processes in parallel mode")
    parser.add_argument("--workers", "-w", nargs="+", default=None, help="worker URIs in distributed mode")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    if Path(args.store).exists():  # look inside without running anything
        before = open_store(args.store)
        print(f"resuming: {len(before)} outcomes stored ({len(before.errors)} failed)", flush=True)
    grid = ((samples, seed, args.nap) for samples in args.samples for seed in range(args.seeds))
    done = failed = 0
    with Pool(mode=args.mode, ncpu=args.ncpu, workers=args.workers, progress=False) as pool:
        for outcome in pool.imap(estimate_pi, grid, store=args.store, retry_failed=args.retry_failed):
            samples, seed, _ = outcome.task
            done += 1
            failed += outcome.failed
            shown = f"failed: {outcome.value}" if outcome.failed else f"{outcome.value:.5f}"
            print(f"samples={samples:<7} seed={seed:<3} {shown}  ({outcome.elapsed:.3f} s)", flush=True)
    print(f"{done} outcomes ({failed} failed); the store: python -m ezpool.store {args.store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
