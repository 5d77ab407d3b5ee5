"""The workloads: which contenders, over which sizes, checked how.

Each workload is a function ``(settings) -> [Comparison, ...]``; ``WORKLOADS``
maps the names ``--only`` accepts to them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
from collections.abc import Iterator
from time import perf_counter
from typing import Any, Callable, Optional

from ezpool import BaseWorker, Pool

from . import peers, stragglers
from .bigdata import big_arguments, big_results
from .captured import captured
from .clusters import clusters
from .coldstart import cold_start
from .dialin import client_before, client_figures, dialin, dialin_512, joining
from .harness import Comparison, Contender, Runner, Settings, Timed, simple
from .lean import lean
from .naive_pyro import naive_client
from .naps import LONG_NAP_SECONDS, LongNapWorker
from .scale import scale
from .serving import distributed_available, free_port, served_workers, shared
from .storing import storing
from .streaming import streaming
from .workloads import (
    CPU_N,
    NAP_SECONDS,
    Fib27Worker,
    NapWorker,
    SquareWorker,
    fib,
    fib27,
    nap,
    spin,
    square,
)

__all__ = ["WORKLOADS", "NCPU"]

#: Processes (or local workers) every one-machine comparison uses.
NCPU = 2


def _tasks(size: int) -> range:
    return range(size)


def _check_squares(size: int, result: Any) -> None:
    if len(result) != size or result[size - 1] != (size - 1) ** 2:
        raise AssertionError(f"wrong result for {size} squares: {len(result)} values")


def _check_identity(size: int, result: Any) -> None:
    if len(result) != size or result[size - 1] != size - 1:
        raise AssertionError(f"wrong result for {size} tasks: {len(result)} values")


def _check_fib27(size: int, result: Any) -> None:
    expected = fib(CPU_N)
    if len(result) != size or any(result[i] != expected for i in range(size)):
        raise AssertionError(f"wrong result for {size} x fib({CPU_N})")


def _check_fib(size: int, result: Any) -> None:
    if isinstance(result, int):  # the longest task alone
        if result != fib(size - 1):
            raise AssertionError(f"fib({size - 1}) gave {result}")
    elif len(result) != size or result[size - 1] != fib(size - 1):
        raise AssertionError(f"wrong result for fib over range({size})")


# -- EzPool's contenders ---------------------------------------------------------


def _pmap(fun: Callable[..., Any], ncpu: int = NCPU) -> Callable[[], Any]:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        with Pool() as pool:
            yield lambda size: pool.pmap(fun, _tasks(size), ncpu=ncpu, progress=False)

    return prepare


def _smap(fun: Callable[..., Any]) -> Callable[[], Any]:
    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        with Pool() as pool:
            yield lambda size: pool.smap(fun, _tasks(size), progress=False)

    return prepare


def _dmap(worker: type[BaseWorker], count: int) -> Callable[[], Any]:
    """dmap over ``count`` workers served by ``python -m ezpool.serve`` on this machine."""

    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        distributed_available()
        served = served_workers("ezpool.serve", [f"bench.workloads:{worker.__name__}"], count)
        with served as uris, Pool() as pool:
            yield lambda size: pool.dmap(worker, _tasks(size), workers=uris, progress=False, spawn=False)

    return prepare


def _dask(fun: Callable[..., Any], workers: int) -> Callable[[], Any]:
    return lambda: peers.dask_cluster(fun, _tasks, workers)


def _peer(factory: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: factory(*args)


# -- the workloads ---------------------------------------------------------------


def tiny(settings: Settings) -> list[Comparison]:
    """(1) Tiny tasks on one machine: what each task costs in the pool itself."""
    sizes = [10**3, 10**4, 10**5] if settings.quick else [10**3, 10**4, 10**5, 2 * 10**5, 10**6]
    one_machine = Comparison(
        name="tiny",
        title=f"Tiny tasks (x*x), {NCPU} processes",
        unit="tasks",
        sizes=sizes,
        check=_check_squares,
        contenders=[
            Contender("pmap", _pmap(square), ezpool=True),
            Contender("multiprocessing.Pool.map", _peer(peers.mp_pool_map, square, _tasks, NCPU)),
            Contender("ProcessPoolExecutor.map", _peer(peers.executor_map, square, _tasks, NCPU, False)),
            Contender("ProcessPoolExecutor.map tuned", _peer(peers.executor_map, square, _tasks, NCPU, True)),
            Contender("loky tuned", _peer(peers.loky_map, square, _tasks, NCPU)),
            Contender("joblib", _peer(peers.joblib_parallel, square, _tasks, NCPU)),
            Contender("mpire", _peer(peers.mpire_map, square, _tasks, NCPU)),
            Contender("original EzPool (apply_async)", _peer(peers.original_ezpool, square, _tasks, NCPU)),
        ],
    )

    def bare_loop(size: int) -> dict[int, int]:
        return {task: spin(task) for task in _tasks(size)}

    serial = Comparison(
        name="loop",
        title="Serial loop, 10 µs tasks",
        unit="tasks",
        sizes=[5_000] if settings.quick else [20_000],
        check=_check_identity,
        contenders=[
            Contender("smap", _smap(spin), ezpool=True),
            Contender("dict comprehension", lambda: simple(bare_loop)),
        ],
    )
    return [one_machine, serial]


def cpu(settings: Settings) -> list[Comparison]:
    """(2) CPU-bound: speedup of pmap and dmap over smap (the limit is the cores)."""
    return [
        Comparison(
            name="cpu",
            title=f"CPU-bound: fib({CPU_N}) per task, {NCPU} processes / workers",
            unit="tasks",
            sizes=[16] if settings.quick else [48],
            check=_check_fib27,
            contenders=[
                Contender("smap", _smap(fib27), ezpool=True),
                Contender("pmap", _pmap(fib27), ezpool=True),
                Contender("dmap", _dmap(Fib27Worker, NCPU), ezpool=True),
            ],
            pairs=[("pmap", "smap"), ("dmap", "smap")],
        )
    ]


def skewed(settings: Settings) -> list[Comparison]:
    """(3) Skewed: the tutorial's fib over range(n), against its longest task alone."""

    def longest(size: int) -> int:
        return fib(size - 1)

    return [
        Comparison(
            name="skewed",
            title=f"Skewed: fib over range(n), {NCPU} processes",
            unit="tasks",
            sizes=[28] if settings.quick else [32],
            check=_check_fib,
            contenders=[
                Contender("pmap", _pmap(fib), ezpool=True),
                Contender("longest task alone", lambda: simple(longest)),
                Contender("smap", _smap(fib), ezpool=True),
                Contender("multiprocessing.Pool.map", _peer(peers.mp_pool_map, fib, _tasks, NCPU)),
            ],
            pairs=[("pmap", "longest task alone"), ("pmap", "smap"), ("pmap", "multiprocessing.Pool.map")],
        )
    ]


def distributed(settings: Settings) -> list[Comparison]:
    """(4) Tiny tasks over two local distributed workers."""

    @contextlib.contextmanager
    def naive() -> Iterator[Runner]:
        with served_workers("bench.naive_pyro", [], NCPU) as uris, naive_client(uris) as run:
            yield lambda size: run(_tasks(size))

    return [
        Comparison(
            name="distributed",
            title=f"Tiny tasks (x*x), {NCPU} local distributed workers",
            unit="tasks",
            sizes=[1_000] if settings.quick else [20_000],
            check=_check_squares,
            contenders=[
                Contender("dmap", _dmap(SquareWorker, NCPU), ezpool=True),
                Contender("Dask LocalCluster", _dask(square, NCPU)),
                Contender("naive Pyro4 (one call per task)", naive),
            ],
        )
    ]


def _dmap_many(
    workers: int, with_dask: bool, worker: type[BaseWorker] = NapWorker, per_worker: int = 20,
    task_seconds: float = NAP_SECONDS, name: Optional[str] = None,
) -> Comparison:
    """``dmap`` over ``workers`` local workers, warm (one pool for every run) and cold
    (a new pool for each run: checking and connecting to every worker is timed).

    Also reported: the calling process's resident memory and threads, and their growth
    per worker, warm (around the warm pool's first call) and cold (from before the first
    cold run to the end of a cold run's call, its pool still open)."""
    spec = f"{worker.__module__}:{worker.__name__}"
    served = shared(lambda: served_workers("ezpool.serve", [spec], workers))
    figures: dict[str, Any] = {}

    @contextlib.contextmanager
    def warm() -> Iterator[Runner]:
        distributed_available()
        with served() as uris:
            before = client_before()
            with Pool() as pool:
                pool.dmap(worker, _tasks(workers), workers=uris, progress=False, spawn=False)
                figures.setdefault("client", {})["dmap"] = client_figures(before, workers)
                yield lambda size: pool.dmap(worker, _tasks(size), workers=uris, progress=False, spawn=False)

    @contextlib.contextmanager
    def cold() -> Iterator[Runner]:
        distributed_available()
        with served() as uris:
            before = client_before()  # once: the threads of a pool just closed may not have ended

            def run(size: int) -> Timed:
                began = perf_counter()
                with Pool() as pool:
                    results = pool.dmap(worker, _tasks(size), workers=uris, progress=False, spawn=False)
                    took = perf_counter() - began
                    figures.setdefault("client", {})["dmap cold"] = client_figures(before, workers)
                    return Timed(took, results)

            yield run

    contenders = [Contender("dmap", warm, ezpool=True), Contender("dmap cold", cold, ezpool=True)]
    if with_dask:
        contenders.append(Contender("Dask LocalCluster", _dask(nap, workers)))
    return Comparison(
        name=name or ("many" if with_dask else f"many-{workers}"),
        title=f"Many workers: {workers} local workers, sleep({task_seconds}) tasks",
        unit="tasks",
        sizes=[per_worker * workers],
        check=_check_identity,
        contenders=contenders,
        pairs=[("dmap", "Dask LocalCluster")] if with_dask else [("dmap cold", "dmap")],
        params={"workers": workers, "task_seconds": task_seconds, "figures": figures},
    )


def many(settings: Settings) -> list[Comparison]:
    """(5) Many workers: 20 tasks of 50 ms sleep per worker, over 32 local workers
    (against Dask) and 128 (``dmap`` alone, warm and cold); ``--quick``: 8 workers."""
    if settings.quick:
        return [_dmap_many(8, with_dask=True)]
    return [_dmap_many(32, with_dask=True), _dmap_many(128, with_dask=False)]


def many_512(settings: Settings, workers: int = 512) -> list[Comparison]:
    """(5b) The scale goal: ``workers`` local workers (512), 10 tasks of 0.5 s sleep each (so
    that two cores carry the client), warm and cold. Half a minute to start the workers and
    ~13 GB of memory: only in a full run (``--quick`` runs none; ``--only many-512``)."""
    if settings.quick:
        return []
    return [_dmap_many(workers, with_dask=False, worker=LongNapWorker, per_worker=10,
                       task_seconds=LONG_NAP_SECONDS, name=f"many-{workers}")]


def startup(settings: Settings) -> list[Comparison]:
    """(6) Start-up: time to the first result, cold (pool created, clock running) and warm;
    then cold in a fresh interpreter, per start method (``bench/coldstart.py``).

    The clock starts before the pool is created, since some pools start their
    processes in the constructor and others on the first call; it stops when the
    result is in hand, before the pool is shut down.
    """

    @contextlib.contextmanager
    def pmap_cold() -> Iterator[Runner]:
        def run(size: int) -> Timed:
            began = perf_counter()
            with Pool() as pool:
                results = pool.pmap(square, _tasks(size), ncpu=NCPU, progress=False)
                return Timed(perf_counter() - began, results)

        yield run

    @contextlib.contextmanager
    def dmap_spawned() -> Iterator[Runner]:
        distributed_available()

        def run(size: int) -> Timed:
            workers = [f"PYRO:worker@127.0.0.1:{free_port()}"]
            began = perf_counter()
            with Pool() as pool:
                results = pool.dmap(SquareWorker, _tasks(size), workers=workers, progress=False, spawn=True)
                return Timed(perf_counter() - began, results)

        yield run

    @contextlib.contextmanager
    def mp_cold() -> Iterator[Runner]:
        def run(size: int) -> Timed:
            began = perf_counter()
            with multiprocessing.Pool(NCPU) as pool:
                results = pool.map(square, _tasks(size))
                return Timed(perf_counter() - began, results)

        yield run

    @contextlib.contextmanager
    def executor_cold() -> Iterator[Runner]:
        def run(size: int) -> Timed:
            began = perf_counter()
            with concurrent.futures.ProcessPoolExecutor(NCPU) as executor:
                results = list(executor.map(square, _tasks(size)))
                return Timed(perf_counter() - began, results)

        yield run

    return [
        Comparison(
            name="startup",
            title="Start-up: time to the first result (one task)",
            unit="tasks",
            sizes=[1],
            check=_check_squares,
            contenders=[
                Contender("pmap cold", pmap_cold, ezpool=True),
                Contender("pmap warm", _pmap(square), ezpool=True),
                Contender("dmap auto-spawned worker", dmap_spawned, ezpool=True),
                Contender("multiprocessing.Pool cold", mp_cold),
                Contender("multiprocessing.Pool warm", _peer(peers.mp_pool_map, square, _tasks, NCPU)),
                Contender("ProcessPoolExecutor cold", executor_cold),
            ],
            pairs=[
                ("pmap cold", "multiprocessing.Pool cold"),
                ("pmap cold", "ProcessPoolExecutor cold"),
                ("pmap warm", "multiprocessing.Pool warm"),
            ],
        ),
        *cold_start(settings, NCPU),
    ]


WORKLOADS: dict[str, Callable[[Settings], list[Comparison]]] = {
    "tiny": tiny,
    "cpu": cpu,
    "skewed": skewed,
    "distributed": distributed,
    "many": many,
    "many-512": many_512,
    "startup": startup,
    "captured": captured,
    "results": lambda settings: big_results(settings, NCPU),
    "arguments": lambda settings: big_arguments(settings, NCPU),
    "scale": scale,
    "stragglers": stragglers.workload,
    "dialin": dialin,
    "dialin-512": dialin_512,
    "joining": joining,
    "clusters": clusters,
    "imap": streaming,
    "store": storing,
    "lean": lean,
}
