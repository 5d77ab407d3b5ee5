"""The tutorial's program: Fibonacci numbers in any of EzPool's three modes.

Run it from the root of a checkout::

    python examples/fib.py --tasks 1 2 3 4 5
    python examples/fib.py --mode parallel --tasks 1 2 3 4 5 --ncpu 2
    python examples/fib.py --mode distributed --tasks 1 2 3 4 5

The distributed run starts a worker on ``localhost:21000`` by itself when none
answers there (at other addresses only with ``--spawn``). To use workers you
started yourself, run in two other terminals::

    python -m ezpool.serve examples/fib.py:FibWorker --port 21000
    python -m ezpool.serve examples/fib.py:FibWorker --port 21001

and then::

    python examples/fib.py --mode distributed --tasks 1 2 3 4 5 \\
        --workers PYRO:worker@localhost:21000 PYRO:worker@localhost:21001

Inside a SLURM allocation (``sbatch`` or ``salloc``), ``--workers slurm`` starts one
worker per task slot of the allocation with ``srun``; they dial in to this program,
and stop when it ends::

    salloc --ntasks=4 python examples/fib.py --mode distributed --workers slurm
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ezpool import BaseWorker, Pool


def fib(n: int) -> int:
    """The n-th Fibonacci number, computed the slow way on purpose."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class FibWorker(BaseWorker):
    """The same computation, packaged for the distributed mode."""

    def run(self, n: int) -> int:
        return fib(n)


def get_args_parser() -> argparse.ArgumentParser:
    """The command line: which tasks, which mode, and the resources of each mode."""
    parser = argparse.ArgumentParser(description="Compute Fibonacci numbers with EzPool.")
    parser.add_argument(
        "--tasks", "-t", nargs="+", type=int, default=list(range(25)),
        help="the n of each fib(n) to compute (default: 0 to 24)",
    )
    parser.add_argument(
        "--mode", "-m", choices=("serial", "parallel", "distributed"), default="serial",
        help="where the tasks run (default: serial)",
    )
    parser.add_argument(
        "--ncpu", "-n", type=int, default=None,
        help="processes in parallel mode (default: every CPU)",
    )
    parser.add_argument(
        "--workers", "-w", nargs="+", default=["PYRO:worker@localhost:21000"],
        help="worker URIs in distributed mode, or 'slurm' for workers started on this SLURM "
        "allocation (default: PYRO:worker@localhost:21000)",
    )
    parser.add_argument(
        "--spawn", action="store_true",
        help="start a worker at any named localhost address where none answers "
        "(default: only at PYRO:worker@localhost:21000)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)

    # The distributed mode runs a worker class; the other two take the function.
    fun = FibWorker if args.mode == "distributed" else fib

    with Pool(mode=args.mode) as pool:
        results = pool.map(
            fun=fun, tasks=args.tasks, ncpu=args.ncpu,
            workers=args.workers, spawn=args.spawn or None,
        )

    for n, value in results.items():
        took = f"{results.elapsed[n]:.6f} s on {results.workers[n]}"
        if n in results.errors:
            print(f"fib({n}) failed: {type(value).__name__}: {value}  ({took})")
        else:
            print(f"fib({n}) = {value}  ({took})")
    print(results.summary())
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
