"""The functions and workers the benchmarks run.

They live in an importable module, not in ``__main__``, so that processes started
with ``spawn``, Dask workers and ``python -m ezpool.serve`` can all import them.
Keep this module light: it is imported by every worker process.
"""

from __future__ import annotations

import os
import time
from time import perf_counter
from typing import Any, Callable

from ezpool import BaseWorker

__all__ = [
    "square",
    "fib",
    "fib27",
    "spin",
    "nap",
    "straggling_nap",
    "timed_call",
    "SquareWorker",
    "Fib27Worker",
    "NapWorker",
    "SPIN_SECONDS",
    "NAP_SECONDS",
    "SLOWDOWN_VARIABLE",
    "CPU_N",
]

#: How long a "10 µs task" busy-waits.
SPIN_SECONDS = 10e-6

#: How long a task of the many-workers workload sleeps.
NAP_SECONDS = 0.05

#: Environment variable of a worker whose ``straggling_nap`` tasks sleep that many times longer.
SLOWDOWN_VARIABLE = "EZPOOL_BENCH_SLOWDOWN"

#: The Fibonacci number the CPU-bound workload computes in every task.
CPU_N = 27


def square(x: int) -> int:
    """The trivial task: all cost is the pool's."""
    return x * x


def fib(n: int) -> int:
    """The tutorial's Fibonacci: exponential, so ``range(32)`` is badly skewed."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fib27(index: int) -> int:
    """A CPU-bound task of fixed size; ``index`` only makes the tasks distinct."""
    return fib(CPU_N)


def spin(x: int) -> int:
    """Busy-wait about 10 µs (a sleep would be far too coarse), then return ``x``."""
    end = perf_counter() + SPIN_SECONDS
    while perf_counter() < end:
        pass
    return x


def nap(x: int) -> int:
    """Sleep 50 ms: a task that costs a worker time but no CPU."""
    time.sleep(NAP_SECONDS)
    return x


def straggling_nap(seconds: float) -> float:
    """Sleep ``seconds``, times ``$EZPOOL_BENCH_SLOWDOWN`` on a worker that has it."""
    time.sleep(seconds * float(os.environ.get(SLOWDOWN_VARIABLE, "1")))
    return seconds


def timed_call(fun: Callable[[Any], Any], task: Any) -> tuple[Any, float]:
    """What the original EzPool sent per task: the value and its run time."""
    began = perf_counter()
    value = fun(task)
    return value, perf_counter() - began


class SquareWorker(BaseWorker):
    """``square`` as a distributed worker."""

    def run(self, x: int) -> int:
        return x * x


class Fib27Worker(BaseWorker):
    """``fib27`` as a distributed worker."""

    def run(self, index: int) -> int:
        return fib(CPU_N)


class NapWorker(BaseWorker):
    """``nap`` as a distributed worker."""

    def run(self, x: int) -> int:
        time.sleep(NAP_SECONDS)
        return x
