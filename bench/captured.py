"""Captured data: a function over a big numpy array, called again and again.

``pmap(lambda i: big[i::1000].sum(), range(1000))`` with ``big`` a 200 MB array
(40 MB with ``--quick``), timed warm: every contender has run it once before.
Each contender gets the data its own way:

- EzPool ``pmap`` with the lambda capturing ``big`` (a new lambda each call, as
  code written inline makes), and with ``context=big``;
- ``multiprocessing.Pool`` whose workers were forked after ``big`` was made, and
  read it as a global (the data never travels: the fastest possible);
- mpire ``WorkerPool(shared_objects=big)`` (fork, copy-on-write);
- joblib ``Parallel`` passing ``big`` as an argument (memory-mapped by joblib).

After the runs each contender's worker processes report their peak memory
(``VmHWM``); it goes to ``params.workers_peak_rss_mib`` of the record. Pages
that forked workers share with the parent (copy-on-write) count there in full.
EzPool's processes start before ``big`` exists, so they inherit none of it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any, Callable

from ezpool import Pool

from .harness import Comparison, Contender, Runner, Settings, Skip

__all__ = ["captured"]

#: Processes every contender uses.
NCPU = 2

#: Tasks per call; each sums every ``STRIDE``-th element of the array from its own start.
STRIDE = 1000

#: The array a ``multiprocessing.Pool`` forked afterwards reads as a global.
_GLOBAL: dict[str, Any] = {}


def _strided_global(i: int) -> float:
    return float(_GLOBAL["big"][i::STRIDE].sum())


def _strided(big: Any, i: int) -> float:
    return float(big[i::STRIDE].sum())


def _pid(*_: Any) -> int:
    return os.getpid()


def peak_rss_mib(pids: Any) -> float:
    """The largest ``VmHWM`` of the processes ``pids``, in MiB (0 when unknown)."""
    peak = 0
    for pid in set(pids):
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


class _Data:
    """The array, made once, after EzPool's processes have started (by the first peer
    prepared, or EzPool's first run)."""

    def __init__(self, megabytes: int) -> None:
        self.size = megabytes * (1 << 20) // 8
        self.array: Any = None

    def get(self) -> Any:
        if self.array is None:
            import numpy

            self.array = numpy.random.default_rng(0).random(self.size)
            _GLOBAL["big"] = self.array
        return self.array


def captured(settings: Settings) -> list[Comparison]:
    """(7) Captured data: warm calls over a 200 MB array (40 MB quick)."""
    try:
        import numpy
    except ImportError:
        numpy = None  # every contender skips
    megabytes = 40 if settings.quick else 200
    data = _Data(megabytes)
    peaks: dict[str, float] = {}

    def needs_numpy() -> None:
        if numpy is None:
            raise Skip("numpy is not installed")

    def ezpool(with_context: bool) -> Callable[[], Any]:
        @contextlib.contextmanager
        def prepare() -> Iterator[Runner]:
            needs_numpy()
            with Pool(ncpu=NCPU, progress=False) as pool:
                pool.pmap(_pid, range(NCPU))  # the processes start before the data exists
                workers: set[int] = set()

                def run(size: int) -> Any:
                    big = data.get()
                    if with_context:
                        results = pool.pmap(_strided, range(size), ncpu=NCPU, context=big)
                    else:
                        results = pool.pmap(lambda i: float(big[i::STRIDE].sum()), range(size), ncpu=NCPU)
                    workers.update(int(worker.split()[1]) for worker in results.workers.values())
                    return results

                yield run
                peaks["pmap, context" if with_context else "pmap"] = peak_rss_mib(workers)

        return prepare

    @contextlib.contextmanager
    def mp_fork_global() -> Iterator[Runner]:
        needs_numpy()
        data.get()
        with multiprocessing.get_context("fork").Pool(NCPU) as pool:
            yield lambda size: pool.map(_strided_global, range(size))
            peaks["multiprocessing.Pool, fork global"] = peak_rss_mib(pool.map(_pid, range(4 * NCPU)))

    @contextlib.contextmanager
    def mpire_shared() -> Iterator[Runner]:
        needs_numpy()
        try:
            import mpire
        except ImportError:
            raise Skip("mpire is not installed") from None
        big = data.get()
        with mpire.WorkerPool(n_jobs=NCPU, shared_objects=big, start_method="fork", keep_alive=True) as pool:
            yield lambda size: pool.map(_strided, range(size), progress_bar=False)
            pids = pool.map(_pid, range(4 * NCPU), progress_bar=False)
            peaks["mpire shared_objects"] = peak_rss_mib(pids)

    @contextlib.contextmanager
    def joblib_memmap() -> Iterator[Runner]:
        needs_numpy()
        try:
            import joblib
        except ImportError:
            raise Skip("joblib is not installed") from None
        big = data.get()
        with joblib.Parallel(n_jobs=NCPU) as parallel:
            strided = joblib.delayed(_strided)
            yield lambda size: parallel(strided(big, i) for i in range(size))
            pid = joblib.delayed(_pid)
            peaks["joblib (memmap)"] = peak_rss_mib(parallel(pid(i) for i in range(4 * NCPU)))

    def check(size: int, result: Any) -> None:
        big = data.get()
        expected = float(big[size - 1 :: STRIDE].sum())
        if len(result) != size or abs(result[size - 1] - expected) > 1e-9 * abs(expected):
            raise AssertionError(f"wrong sums over {size} tasks")

    peer = "multiprocessing.Pool, fork global"
    return [
        Comparison(
            name="captured",
            title=f"Captured data: {STRIDE} strided sums over a {megabytes} MB array, warm, {NCPU} processes",
            unit="tasks",
            sizes=[STRIDE],
            check=check,
            contenders=[  # EzPool's first: its processes start before the data exists
                Contender("pmap", ezpool(False), ezpool=True),
                Contender("pmap, context", ezpool(True), ezpool=True),
                Contender(peer, mp_fork_global),
                Contender("mpire shared_objects", mpire_shared),
                Contender("joblib (memmap)", joblib_memmap),
            ],
            # A dict filled as the contenders stop: the record holds the same dict.
            params={"megabytes": megabytes, "workers_peak_rss_mib": peaks},
        )
    ]
