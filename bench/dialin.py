"""Workers that dial in (``ezpool-serve --connect``) against workers the pool dials (``PYRO:``).

Two workloads, registered in ``bench.suites.WORKLOADS``:

``dialin``
    The many-workers workload of ``bench.suites`` (20 tasks of ``sleep(0.05)`` per
    worker, efficiency = ideal time / measured, the ideal being tasks x 0.05 s /
    workers), over 32 and 128 workers (``--quick``: 8) of each kind, in one
    comparison per count. Warm: one pool for every run. Cold: a new pool for every
    run, timed from its first call: ``PYRO:`` workers are checked and connected in
    that call; dial-in workers (``--stay``: they join each new pool) have joined
    before it, and how long they took (from ``Pool(...)`` until all had joined) is
    reported too. Also reported: the calling process's resident memory and its
    threads, per worker, measured around the warm pool's first call.
``joining``
    A worker that joins halfway through a map: the workers already there have
    joined before the call; the joiners, started beforehand and waiting on their
    standard input (``--connect - --key-stdin``), are told the key and the address
    when half of the tasks are done. Reported: the share of the tasks left at that
    moment that the joiners ran (fair: joiners / all workers), 1 there + 1 joining
    and 4 there + 4 joining.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, Optional

from .harness import Comparison, Contender, Runner, Settings, Skip, Timed
from .naps import LONG_NAP_SECONDS, LongNapWorker
from .serving import child_environment, distributed_available, served_workers, shared
from .workloads import NAP_SECONDS, NapWorker

__all__ = [
    "dialin", "dialin_512", "dialin_comparison", "joining", "dialing_workers", "client_before",
    "client_figures",
]

#: The worker every process serves.
WORKER = f"bench.workloads:{NapWorker.__name__}"
#: Worker processes one ``ezpool-serve --procs`` starts, at most.
PER_SERVE = 32
#: Seconds the workers of a pool may take to join it (128 start at once on 2 cores).
JOIN_TIMEOUT = 180.0


def _check_identity(size: int, result: Any) -> None:
    if len(result) != size or result[size - 1] != size - 1:
        raise AssertionError(f"wrong result for {size} tasks: {len(result)} values")


def _status(field: str) -> int:
    """A number of ``/proc/self/status`` (``VmRSS`` in KiB, ``Threads``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise Skip(f"/proc/self/status has no {field} (Linux only)")


def client_figures(before: tuple[int, int], workers: int) -> dict[str, float]:
    """The calling process's memory and threads now, and per worker since ``before``."""
    rss, threads = _status("VmRSS"), _status("Threads")
    return {
        "client_rss_mib": rss / 1024,
        "client_rss_kib_per_worker": (rss - before[0]) / workers,
        "client_threads": threads,
        "client_threads_per_worker": (threads - before[1]) / workers,
    }


def client_before() -> tuple[int, int]:
    """The calling process's resident memory (KiB) and threads now, for ``client_figures``."""
    return _status("VmRSS"), _status("Threads")


@contextlib.contextmanager
def dialing_workers(
    address: str, count: int, *flags: str, worker: str = WORKER
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` worker processes serving ``worker`` dialing ``address`` (a listen file or
    HOST:PORT), in groups of ``ezpool-serve --procs``; every one of them killed on leaving."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for first in range(0, count, PER_SERVE):
            procs = min(PER_SERVE, count - first)
            command = [sys.executable, "-m", "ezpool.serve", worker, "--connect", address, *flags]
            command += ["--procs", str(procs)] if procs > 1 else []
            processes.append(subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=child_environment(), start_new_session=True,
            ))
        yield processes
    finally:
        for process in processes:
            _kill(process)


def _kill(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _listener(pool: Any) -> Any:
    return pool._backends["distributed"]._dial.listener


def _wait_joined(pool: Any, count: int, processes: list[subprocess.Popen[Any]]) -> float:
    """Wait until ``count`` workers have joined ``pool``; the seconds it took."""
    began = perf_counter()
    listener = _listener(pool)
    while len(listener.links) < count:
        if perf_counter() - began > JOIN_TIMEOUT:
            raise RuntimeError(f"{len(listener.links)} of {count} workers joined in {JOIN_TIMEOUT:.0f} s")
        dead = [p.returncode for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker process exited ({dead[0]}) before joining")
        time.sleep(0.02)
    return perf_counter() - began


# -- dialin ---------------------------------------------------------------------------


def dialin_comparison(
    workers: int, kinds: Sequence[str] = ("dial-in warm", "PYRO: warm", "dial-in cold", "PYRO: cold"),
    worker: type[Any] = NapWorker, per_worker: int = 20, task_seconds: float = NAP_SECONDS,
    name: str = "",
) -> Comparison:
    """Dial-in against ``PYRO:`` workers, ``workers`` of each, warm and cold (the contenders
    named in ``kinds``): ``per_worker`` tasks of ``worker``, each ``task_seconds`` long."""
    from ezpool import Pool

    figures: dict[str, Any] = {}
    spec = f"{worker.__module__}:{worker.__name__}"
    served = shared(lambda: served_workers("ezpool.serve", [spec], workers))

    def call(pool: Any, size: int, **where: Any) -> Any:
        return pool.dmap(worker, range(size), progress=False, **where)

    @contextlib.contextmanager
    def pyro_warm() -> Iterator[Runner]:
        distributed_available()
        with served() as uris:
            before = client_before()
            with Pool() as pool:
                call(pool, workers, workers=uris, spawn=False)  # connects to every worker
                figures.setdefault("client", {})["PYRO: warm"] = client_figures(before, workers)
                yield lambda size: call(pool, size, workers=uris, spawn=False)

    @contextlib.contextmanager
    def pyro_cold() -> Iterator[Runner]:
        distributed_available()
        with served() as uris:

            def run(size: int) -> Timed:
                began = perf_counter()
                with Pool() as pool:
                    results = call(pool, size, workers=uris, spawn=False)
                    return Timed(perf_counter() - began, results)

            yield run

    @contextlib.contextmanager
    def dial_warm() -> Iterator[Runner]:
        distributed_available()
        with tempfile.TemporaryDirectory(prefix="ezpool-bench-") as scratch:
            listen_file = str(Path(scratch, "pool.json"))
            with dialing_workers(listen_file, workers, worker=spec) as processes:
                before = client_before()
                with Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
                    _wait_joined(pool, workers, processes)
                    call(pool, workers)
                    figures.setdefault("client", {})["dial-in warm"] = client_figures(before, workers)
                    yield lambda size: call(pool, size)

    @contextlib.contextmanager
    def dial_cold() -> Iterator[Runner]:
        distributed_available()
        joins: list[float] = []
        with tempfile.TemporaryDirectory(prefix="ezpool-bench-") as scratch:
            listen_file = str(Path(scratch, "pool.json"))
            with dialing_workers(listen_file, workers, "--stay", worker=spec) as processes:
                before = client_before()  # once: the threads of a pool just closed may not have ended

                def run(size: int) -> Timed:
                    with Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
                        joins.append(_wait_joined(pool, workers, processes))
                        figures["dial-in joined (s, median)"] = statistics.median(joins)
                        began = perf_counter()
                        results = call(pool, size)
                        took = perf_counter() - began
                        figures.setdefault("client", {})["dial-in cold"] = client_figures(before, workers)
                        return Timed(took, results)

                yield run

    makers = {"dial-in warm": dial_warm, "PYRO: warm": pyro_warm, "dial-in cold": dial_cold,
              "PYRO: cold": pyro_cold}
    pairs = [("dial-in warm", "PYRO: warm"), ("dial-in cold", "PYRO: cold")]
    return Comparison(
        name=name or f"dialin-{workers}",
        title=f"Dial-in against PYRO: workers, {workers} local workers, sleep({task_seconds}) tasks",
        unit="tasks",
        sizes=[per_worker * workers],
        check=_check_identity,
        contenders=[Contender(kind, makers[kind], ezpool=True) for kind in kinds],
        pairs=[pair for pair in pairs if set(pair) <= set(kinds)],
        params={"workers": workers, "task_seconds": task_seconds, "figures": figures},
    )


def dialin(settings: Settings) -> list[Comparison]:
    """Dial-in workers against ``PYRO:`` workers, 32 and 128 of each (``--quick``: 8)."""
    return [dialin_comparison(count) for count in ([8] if settings.quick else [32, 128])]


def dialin_512(settings: Settings, workers: int = 512) -> list[Comparison]:
    """The scale goal for dial-in workers: ``workers`` (512) of them, 10 tasks of 0.5 s each,
    warm and cold, one comparison each, so that only ``workers`` processes live at once
    (~13 GB here); their ``PYRO:`` counterpart is ``many-512``. Only in a full run
    (``--quick`` runs none; ``--only dialin-512``)."""
    if settings.quick:
        return []
    return [
        dialin_comparison(workers, [kind], LongNapWorker, 10, LONG_NAP_SECONDS,
                          name=f"dialin-{workers}" + ("-cold" if "cold" in kind else ""))
        for kind in ("dial-in warm", "dial-in cold")
    ]


# -- joining --------------------------------------------------------------------------


@contextlib.contextmanager
def _waiting_workers(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` workers started now that dial once told the key and the address on their
    standard input (``tell``); killed on leaving."""
    processes: list[subprocess.Popen[bytes]] = []
    command = [sys.executable, "-m", "ezpool.serve", WORKER, "--connect", "-", "--key-stdin"]
    try:
        for _ in range(count):
            processes.append(subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=child_environment(), start_new_session=True,
            ))
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(OSError, ValueError):
                process.stdin.close()  # type: ignore[union-attr]
            _kill(process)


def _tell(process: subprocess.Popen[bytes], key: str, address: str) -> None:
    assert process.stdin is not None
    process.stdin.write(f"{key}\n{address}\n".encode())
    process.stdin.flush()


def _joining_contender(there: int, joining: int, figures: dict[str, Any]) -> Any:
    from ezpool import Pool

    shares: list[float] = []
    makespans: list[float] = []
    fair = joining / (there + joining)

    @contextlib.contextmanager
    def prepare() -> Iterator[Runner]:
        distributed_available()

        def run(size: int) -> Timed:
            key = secrets.token_hex(16)
            moment: dict[str, int] = {}
            with _waiting_workers(there + joining) as processes, \
                    Pool(mode="distributed", listen="127.0.0.1:0", hmac_key=key) as pool:
                address = _listener(pool).address
                for process in processes[:there]:
                    _tell(process, key, address)
                _wait_joined(pool, there, processes[:there])

                def progress(outcome: Any, done: int, total: Optional[int]) -> None:
                    if done >= size // 2 and not moment:
                        moment["left"] = (size if total is None else total) - done
                        for process in processes[there:]:
                            _tell(process, key, address)

                began = perf_counter()
                results = pool.dmap(NapWorker, range(size), progress=progress)
                took = perf_counter() - began
                late = {f":{process.pid}" for process in processes[there:]}
            ran = sum(1 for worker in results.workers.values() if worker[worker.rfind(":"):] in late)
            shares.append(ran / moment["left"])
            share = statistics.median(shares)
            # The least it can take: half the tasks on the workers there, the rest on all.
            ideal = size / 2 * NAP_SECONDS / there + size / 2 * NAP_SECONDS / (there + joining)
            makespans.append(took / ideal)
            figures.update({"joiners' share of the rest (median)": share, "fair share": fair,
                            "share / fair": share / fair, "shares": [round(s, 3) for s in shares],
                            "makespan / ideal (median)": statistics.median(makespans)})
            return Timed(took, results)

        yield run

    return prepare


def joining(settings: Settings, cases: Sequence[tuple[int, int]] = ((1, 1), (4, 4))) -> list[Comparison]:
    """Workers that join halfway through a map, ``cases`` of (there, joining): the share of
    the tasks left at that moment that the joiners ran (fair: joining / all)."""
    per_worker = 40 if settings.quick else 100  # tasks of 0.05 s per worker there at first
    comparisons = []
    for there, joining_ in cases:
        figures: dict[str, Any] = {}
        name = f"{there} there + {joining_} joining"
        comparisons.append(Comparison(
            name=f"joining-{there}+{joining_}",
            title=f"sleep({NAP_SECONDS}) tasks, {there} dial-in worker(s) there, {joining_} joining "
            "when half are done",
            unit="tasks",
            sizes=[per_worker * there],
            check=_check_identity,
            contenders=[Contender(name, _joining_contender(there, joining_, figures), ezpool=True)],
            params={"there": there, "joining": joining_, "task_seconds": NAP_SECONDS, "figures": figures},
        ))
    return comparisons
