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

Two more comparisons of the same kind:

- ``captured bytes``: ``pmap`` of a lambda capturing a 200 MB ``bytes`` object
  (each task counts one byte value in its thousandth of it), against
  ``multiprocessing.Pool`` forked after the bytes were made, reading them as a global;
- ``captured dmap``: ``dmap`` over 2 served generic workers of a lambda capturing
  the 200 MB array (warm: the workers hold it already, and the client must only
  see that it did not change), against the same sums over an array each worker
  made itself: the difference is what capturing costs each call.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import random
from collections.abc import Iterator
from typing import Any, Callable

from ezpool import Pool

from .harness import Comparison, Contender, Runner, Settings, Skip
from .serving import distributed_available, served_workers, shared

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


def _array(size: int) -> Any:
    import numpy

    return numpy.random.default_rng(0).random(size)


def _strided_made(size: int, i: int) -> float:
    """``_strided`` over the array of ``size`` elements that this process made (once)."""
    big = _GLOBAL.get(("made", size))
    if big is None:
        big = _GLOBAL["made", size] = _array(size)
    return float(big[i::STRIDE].sum())


def _counted_global(i: int) -> int:
    big = _GLOBAL["bytes"]
    part = len(big) // STRIDE
    return int(big.count(7, i * part, (i + 1) * part))


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


class _Made:
    """Data made once, when first asked for (after EzPool's processes have started: by
    the first peer prepared, or EzPool's first run), and let go when the last contender
    using it stops, so that the processes of the next comparison do not inherit it
    (their peak memory would count it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._users = 0

    def make(self) -> Any:
        raise NotImplementedError

    def get(self) -> Any:
        if self.name not in _GLOBAL:
            _GLOBAL[self.name] = self.make()
        return _GLOBAL[self.name]

    @contextlib.contextmanager
    def used(self) -> Iterator[None]:
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                _GLOBAL.pop(self.name, None)


class _Data(_Made):
    """The array."""

    def __init__(self, megabytes: int) -> None:
        super().__init__("big")
        self.size = megabytes * (1 << 20) // 8

    def make(self) -> Any:
        return _array(self.size)


class _Bytes(_Made):
    """The bytes."""

    def __init__(self, megabytes: int) -> None:
        super().__init__("bytes")
        self.size = megabytes * (1 << 20)

    def make(self) -> Any:
        return random.Random(0).randbytes(self.size)


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
            with data.used(), Pool(ncpu=NCPU, progress=False) as pool:
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
        with data.used():
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
        with data.used(), mpire.WorkerPool(
            n_jobs=NCPU, shared_objects=data.get(), start_method="fork", keep_alive=True
        ) as pool:
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
        with data.used(), joblib.Parallel(n_jobs=NCPU) as parallel:
            strided = joblib.delayed(_strided)
            yield lambda size: parallel(strided(data.get(), i) for i in range(size))
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
        ),
        _captured_bytes(megabytes),
        _captured_dmap(megabytes, data, needs_numpy),
    ]


def _captured_bytes(megabytes: int) -> Comparison:
    """pmap of a lambda capturing big bytes, against a forked pool reading them as a global."""
    data = _Bytes(megabytes)
    peaks: dict[str, float] = {}

    @contextlib.contextmanager
    def ezpool() -> Iterator[Runner]:
        with data.used(), Pool(ncpu=NCPU, progress=False) as pool:
            pool.pmap(_pid, range(NCPU))  # the processes start before the data exists
            workers: set[int] = set()

            def run(size: int) -> Any:
                big = data.get()
                part = len(big) // STRIDE
                results = pool.pmap(lambda i: big.count(7, i * part, (i + 1) * part), range(size), ncpu=NCPU)
                workers.update(int(worker.split()[1]) for worker in results.workers.values())
                return results

            yield run
            peaks["pmap"] = peak_rss_mib(workers)

    @contextlib.contextmanager
    def mp_fork_global() -> Iterator[Runner]:
        with data.used():
            data.get()
            with multiprocessing.get_context("fork").Pool(NCPU) as pool:
                yield lambda size: pool.map(_counted_global, range(size))
                peaks["multiprocessing.Pool, fork global"] = peak_rss_mib(pool.map(_pid, range(4 * NCPU)))

    def check(size: int, result: Any) -> None:
        big = data.get()
        part = len(big) // STRIDE
        expected = big.count(7, (size - 1) * part, size * part)
        if len(result) != size or result[size - 1] != expected:
            raise AssertionError(f"wrong counts over {size} tasks")

    return Comparison(
        name="captured bytes",
        title=f"Captured bytes: {STRIDE} counts over {megabytes} MB of bytes, warm, {NCPU} processes",
        unit="tasks",
        sizes=[STRIDE],
        check=check,
        contenders=[
            Contender("pmap", ezpool, ezpool=True),
            Contender("multiprocessing.Pool, fork global", mp_fork_global),
        ],
        params={"megabytes": megabytes, "workers_peak_rss_mib": peaks},
    )


def _captured_dmap(megabytes: int, data: _Data, needs_numpy: Callable[[], None]) -> Comparison:
    """dmap of a lambda capturing a big array, warm, against the same work on data
    the workers made themselves: the difference is what capturing costs a call."""
    served = shared(lambda: served_workers("ezpool.serve", [], NCPU))

    def dmap(capturing: bool) -> Callable[[], Any]:
        @contextlib.contextmanager
        def prepare() -> Iterator[Runner]:
            needs_numpy()
            distributed_available()
            with data.used(), served() as uris, Pool(progress=False) as pool:

                def run(size: int) -> Any:
                    if capturing:
                        big = data.get()
                        fun: Callable[[int], float] = lambda i: float(big[i::STRIDE].sum())  # noqa: E731
                    else:
                        fun = functools.partial(_strided_made, data.size)
                    return pool.dmap(fun, range(size), workers=uris, spawn=False)

                yield run

        return prepare

    def check(size: int, result: Any) -> None:
        big = data.get()
        expected = float(big[size - 1 :: STRIDE].sum())
        if len(result) != size or abs(result[size - 1] - expected) > 1e-9 * abs(expected):
            raise AssertionError(f"wrong sums over {size} tasks")

    return Comparison(
        name="captured dmap",
        title=f"Captured data, dmap: {STRIDE} strided sums over a {megabytes} MB array, warm, "
        f"{NCPU} served workers",
        unit="tasks",
        sizes=[STRIDE],
        check=check,
        contenders=[
            Contender("dmap, lambda capturing the array", dmap(True), ezpool=True),
            Contender("dmap, the array made by each worker", dmap(False)),
        ],
        params={"megabytes": megabytes},
    )
