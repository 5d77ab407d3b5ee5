"""Tiny tasks at scale: the caller's peak memory, and ``dmap`` against Ray.

Two comparisons, registered in ``bench.suites.WORKLOADS`` as ``scale``:

``memory``
    The calling process's peak memory (``VmHWM`` of ``/proc/self/status``, so
    Linux only) while it gets the results of ``x*x`` over ``range(n)``: ``pmap``,
    ``dmap`` (two local workers) and ``multiprocessing.Pool.map``, against the
    least any tool can hold, a plain ``dict`` of the same results built in a
    loop. Each run is a fresh process, so one run's garbage never counts against
    another. The harness's "median time" is the peak in MiB here (a run returns
    ``Timed(peak_mib, ...)``), and the table says so.
``ray``
    ``dmap`` of tiny tasks over two local workers against Ray on two CPUs: its
    drop-in ``ray.util.multiprocessing.Pool.map`` with four chunks per worker
    (the usual advice), and remote tasks batched by hand (four batches per
    worker). Skipped when Ray is not installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Optional

from .harness import Comparison, Contender, Runner, Settings, Skip, Timed
from .peers import require
from .serving import child_environment, distributed_available, served_workers
from .workloads import SquareWorker, square

__all__ = ["scale", "memory", "ray", "MEMORY_CASE"]

#: Processes or workers each contender uses.
NCPU = 2

#: What one memory run does, in a fresh interpreter: ``KIND SIZE NCPU [URI ...]``; it
#: prints its peak resident memory in KiB, how many results it got, and the last.
MEMORY_CASE = """
import sys
kind, size, ncpu, uris = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
from bench.workloads import square, SquareWorker
if kind == "dict":
    results = {n: square(n) for n in range(size)}
elif kind == "mp":
    import multiprocessing
    with multiprocessing.Pool(ncpu) as pool:
        results = pool.map(square, range(size))
else:
    from ezpool import Pool
    with Pool(progress=False) as pool:
        if kind == "pmap":
            results = pool.pmap(square, range(size), ncpu=ncpu)
        else:
            results = pool.dmap(SquareWorker, range(size), workers=uris, spawn=False)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak, len(results), results[size - 1])
"""


class _Got(NamedTuple):
    """What a memory run reports besides its peak: enough to check its results."""

    count: int
    last: int


def _check_got(size: int, got: Any) -> None:
    if got.count != size or got.last != (size - 1) ** 2:
        raise AssertionError(f"wrong result for {size} squares: {got}")


def _check_squares(size: int, result: Any) -> None:
    if len(result) != size or result[size - 1] != (size - 1) ** 2:
        raise AssertionError(f"wrong result for {size} squares: {len(result)} values")


def _peak_of(kind: str, size: int, uris: tuple[str, ...] = ()) -> Timed:
    """Run one memory case in a fresh interpreter: its peak in MiB, and what it got."""
    if not Path("/proc/self/status").exists():
        raise Skip("peak memory is read from /proc (Linux only)")
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CASE, kind, str(size), str(NCPU), *uris],
        capture_output=True, text=True, env=child_environment(), check=False, timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} at {size} failed:\n{done.stderr[-2000:]}")
    peak_kib, count, last = done.stdout.split()
    return Timed(int(peak_kib) / 1024, _Got(int(count), int(last)))


def _memory_contender(kind: str) -> Any:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        if not Path("/proc/self/status").exists():
            raise Skip("peak memory is read from /proc (Linux only)")
        if kind != "dmap":
            yield lambda size: _peak_of(kind, size)
            return
        distributed_available()
        with served_workers("ezpool.serve", [f"bench.workloads:{SquareWorker.__name__}"], NCPU) as uris:
            yield lambda size: _peak_of(kind, size, tuple(uris))

    return prepare


def memory(settings: Settings, sizes: Optional[list[int]] = None) -> list[Comparison]:
    """The caller's peak memory for 10^7 tiny tasks (10^5 with ``--quick``)."""
    return [
        Comparison(
            name="memory",
            title="Caller peak memory (MiB, shown in the time column), x*x over range(n)",
            unit="tasks",
            sizes=sizes or ([10**5] if settings.quick else [10**7]),
            check=_check_got,
            contenders=[
                Contender("pmap", _memory_contender("pmap"), ezpool=True),
                Contender("dmap", _memory_contender("dmap"), ezpool=True),
                Contender("plain dict of the results", _memory_contender("dict")),
                Contender("multiprocessing.Pool.map", _memory_contender("mp")),
            ],
            params={"measures": "peak_mib"},
        )
    ]


# -- Ray ---------------------------------------------------------------------------


def _square_batch(tasks: range) -> list[int]:
    return [square(task) for task in tasks]


@contextlib.contextmanager
def _ray_session() -> Iterator[Any]:
    """Ray on ``NCPU`` CPUs; a contender entered while another holds it shares it."""
    ray_module = require("ray")
    if ray_module.is_initialized():
        yield ray_module
        return
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    ray_module.init(num_cpus=NCPU, include_dashboard=False, logging_level=logging.ERROR,
                    log_to_driver=False, configure_logging=False)
    try:
        yield ray_module
    finally:
        ray_module.shutdown()


@contextlib.contextmanager
def _ray_pool() -> Iterator[Runner]:
    """``ray.util.multiprocessing.Pool.map``, four chunks per worker."""
    with _ray_session():
        from ray.util.multiprocessing import Pool as RayPool

        with RayPool(NCPU) as pool:
            yield lambda size: pool.map(square, range(size), chunksize=max(1, size // (4 * NCPU)))


@contextlib.contextmanager
def _ray_batches() -> Iterator[Runner]:
    """Ray remote tasks, batched by hand: four batches per worker, results in a dict."""
    with _ray_session() as ray_module:
        remote = ray_module.remote(_square_batch)

        def run(size: int) -> dict[int, int]:
            step = max(1, size // (4 * NCPU))
            starts = range(0, size, step)
            parts = ray_module.get([remote.remote(range(a, min(size, a + step))) for a in starts])
            results: dict[int, int] = {}
            for a, part in zip(starts, parts):
                results.update(zip(range(a, a + len(part)), part))
            return results

        yield run


def _dmap() -> Any:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        from ezpool import Pool

        distributed_available()
        with served_workers("ezpool.serve", [f"bench.workloads:{SquareWorker.__name__}"], NCPU) as uris, \
                Pool() as pool:
            yield lambda size: pool.dmap(SquareWorker, range(size), workers=uris, progress=False, spawn=False)

    return prepare


def ray(settings: Settings, sizes: Optional[list[int]] = None) -> list[Comparison]:
    """``dmap`` against Ray, tiny tasks on two local workers / CPUs."""
    return [
        Comparison(
            name="ray",
            title=f"Tiny tasks (x*x), {NCPU} local workers: dmap against Ray",
            unit="tasks",
            sizes=sizes or ([10**4] if settings.quick else [10**5, 10**6]),
            check=_check_squares,
            contenders=[
                Contender("dmap", _dmap(), ezpool=True),
                Contender("Ray, tasks batched by hand", _ray_batches),
                Contender("ray.util.multiprocessing.Pool.map", _ray_pool),
            ],
        )
    ]


def scale(settings: Settings) -> list[Comparison]:
    """(7) Tiny tasks at scale: caller memory at 10^7, and dmap against Ray."""
    return [*memory(settings), *ray(settings)]
