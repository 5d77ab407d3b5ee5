"""Clusters: the time from making the pool to the first result, EzPool against Dask.

Registered in ``bench.suites.WORKLOADS`` as ``clusters``; two comparisons, each run
on real services started here for the suite (as root), the same for every contender:

``slurm``
    The one-node SLURM of ``tests/slurm.py`` (munged, slurmctld and slurmd of the
    distribution's packages, a cluster of its own on free ports): EzPool's
    ``Pool(mode="distributed", workers=Slurm(jobs=1))`` against dask-jobqueue's
    ``SLURMCluster(...)``, ``scale(jobs=1)`` and ``Client``, each timed from
    making the pool (the cluster) to the first result in hand: one job submitted,
    started by SLURM, its worker joined, one task run.
``ssh``
    The network-namespace hosts of ``tests/hosts.py``, each running a real
    ``sshd`` (``tests/sshd.py``): EzPool's ``SSH(["h0"])`` (and, for reference,
    ``SSH(["h0", "h1"])``) against Dask's ``SSHCluster`` with its scheduler and one
    worker on the same host (Dask runs its scheduler over ssh too, and the hosts
    reach nothing but their own link and the pool's address).

Every run makes a new cluster; stopping it is not timed, and whatever a run left
(jobs, processes in the hosts) is removed before the next. A run is cut off after
``RUN_TIMEOUT`` seconds. Where a service cannot run (not root, SLURM, OpenSSH or a
peer not installed), its contenders are reported ``skipped (why)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any, Callable

from .harness import Comparison, Contender, Runner, Settings, Skip, Timed
from .peers import require
from .serving import child_environment, distributed_available, shared

__all__ = ["clusters", "RUN_TIMEOUT"]

#: Seconds one run (making the cluster, the first result, stopping it) may take.
RUN_TIMEOUT = 120.0
#: The one task every run computes: a builtin, so that no host needs this checkout.
TASK, ARGUMENT, EXPECTED = abs, -3, 3


def _check(size: int, result: Any) -> None:
    if result != EXPECTED:
        raise AssertionError(f"the first result is {result!r}, not {EXPECTED}")


@contextlib.contextmanager
def _bounded(seconds: float, what: str) -> Iterator[None]:
    """Raise ``TimeoutError`` in this (the main) thread if the block takes longer than ``seconds``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what} took more than {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set (jobs submitted inherit it), restored on leaving."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _test_helpers(module: str) -> Any:
    """``tests.<module>`` of this checkout (the services the tests run), or ``Skip``."""
    import importlib

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.append(root)
    try:
        return importlib.import_module(f"tests.{module}")
    except ImportError as exc:
        raise Skip(f"tests/{module}.py is not in this checkout: {exc}") from exc


def _timed_first(start: Callable[[], Any], first: Callable[[Any], Any], stop: Callable[[Any], None],
                 what: str) -> Timed:
    """``start()`` a cluster, time it to ``first(it)``, then ``stop(it)`` (not timed); bounded."""
    with _bounded(RUN_TIMEOUT, what):
        began = perf_counter()
        made = None
        try:
            made = start()
            result = first(made)
            took = perf_counter() - began
        finally:
            if made is not None:
                stop(made)
    return Timed(took, result)


def _quiet_dask() -> Any:
    require("dask")
    distributed = require("distributed")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    return distributed


# -- SLURM ----------------------------------------------------------------------------


@contextlib.contextmanager
def _local_slurm() -> Iterator[Any]:
    """The test SLURM, and this process's environment pointing at it; removed on leaving."""
    local = _test_helpers("slurm")
    reason = local.unavailable()
    if reason:
        raise Skip(reason)
    local.sweep()
    with local.LocalSlurm() as slurm, _environ(SLURM_CONF=str(slurm.conf), PATH=slurm.env["PATH"],
                                               PYTHONPATH=child_environment()["PYTHONPATH"]):
        yield slurm


def _slurm_contenders() -> list[Contender]:
    slurm_cluster = shared(_local_slurm)

    @contextlib.contextmanager
    def ezpool_slurm() -> Iterator[Runner]:
        distributed_available()
        from ezpool import Pool
        from ezpool.cluster import Slurm

        with slurm_cluster() as slurm, tempfile.TemporaryDirectory(prefix="ezpool-bench-") as scratch:

            def start() -> Any:
                cluster = Slurm(jobs=1, time="00:05:00", log_dir=Path(scratch, "logs"))
                return Pool(mode="distributed", workers=cluster, listen="127.0.0.1:0")

            def stop(pool: Any) -> None:
                pool.shutdown()
                slurm.cancel_all()

            yield lambda size: _timed_first(start, lambda pool: pool.map(TASK, [ARGUMENT])[ARGUMENT], stop,
                                            "Slurm(jobs=1) to the first result")

    @contextlib.contextmanager
    def dask_slurm() -> Iterator[Runner]:
        distributed = _quiet_dask()
        jobqueue = require("dask_jobqueue")
        with slurm_cluster() as slurm, tempfile.TemporaryDirectory(prefix="ezpool-bench-") as scratch:

            def start() -> Any:
                cluster = jobqueue.SLURMCluster(
                    cores=1, memory="1GB", processes=1, walltime="00:05:00",
                    python=sys.executable, log_directory=scratch,
                    scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
                )
                try:
                    cluster.scale(jobs=1)
                    return cluster, distributed.Client(cluster)
                except BaseException:
                    cluster.close()
                    raise

            def stop(made: Any) -> None:
                cluster, client = made
                with contextlib.suppress(Exception):
                    client.close()
                cluster.close()
                slurm.cancel_all()

            yield lambda size: _timed_first(start, lambda made: made[1].submit(TASK, ARGUMENT).result(),
                                            stop, "SLURMCluster to the first result")

    return [
        Contender("Slurm(jobs=1)", ezpool_slurm, ezpool=True),
        Contender("dask-jobqueue SLURMCluster", dask_slurm),
    ]


# -- SSH ------------------------------------------------------------------------------


@contextlib.contextmanager
def _ssh_hosts() -> Iterator[tuple[Any, Any]]:
    """Two network-namespace hosts with an sshd each; removed on leaving."""
    hosts, sshd = _test_helpers("hosts"), _test_helpers("sshd")
    reason = hosts.unavailable() or sshd.unavailable()
    if reason:
        raise Skip(reason)
    hosts.sweep()
    with hosts.Network(2) as network, tempfile.TemporaryDirectory(prefix="ezpool-bench-") as scratch:
        env = {"PYTHONPATH": child_environment()["PYTHONPATH"]}
        servers = sshd.Servers(network, Path(scratch, "ssh"), env=env)
        try:
            yield network, servers
        finally:
            servers.close()


def _clear_hosts(network: Any) -> None:
    """Kill whatever a run left in the hosts (every process but the ssh servers)."""
    for host in network.hosts:
        for pid in host.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() != "sshd":
                    os.kill(pid, signal.SIGKILL)


def _ssh_contenders() -> list[Contender]:
    ssh_hosts = shared(_ssh_hosts)

    def ezpool_ssh(names: list[str]) -> Callable[[], Any]:
        @contextlib.contextmanager
        def prepare() -> Iterator[Runner]:
            distributed_available()
            from ezpool import Pool
            from ezpool.cluster import SSH

            with ssh_hosts() as (network, servers):

                def start() -> Any:
                    cluster = SSH(names, ssh_options=servers.ssh_options)
                    return Pool(mode="distributed", workers=cluster, listen=f"{network.service_address}:0")

                def stop(pool: Any) -> None:
                    pool.shutdown()
                    _clear_hosts(network)

                yield lambda size: _timed_first(start, lambda pool: pool.map(TASK, [ARGUMENT])[ARGUMENT],
                                                stop, f"SSH({names}) to the first result")

        return prepare

    @contextlib.contextmanager
    def dask_ssh() -> Iterator[Runner]:
        distributed = _quiet_dask()
        with warnings.catch_warnings():  # asyncssh warns about DSA keys as it is imported
            warnings.simplefilter("ignore")
            require("asyncssh")
            from distributed.deploy.ssh import SSHCluster
        logging.getLogger("asyncssh").setLevel(logging.WARNING)

        with ssh_hosts() as (network, servers):
            server = servers["h0"]
            options = {"port": server.port, "username": "root", "client_keys": [str(servers.identity)],
                       "known_hosts": str(servers.known_hosts)}

            def start() -> Any:
                cluster = SSHCluster(
                    [server.host.address] * 2, connect_options=options, remote_python=sys.executable,
                    worker_options={"nthreads": 1},
                    scheduler_options={"host": server.host.address, "port": 0, "dashboard_address": None},
                )
                try:
                    return cluster, distributed.Client(cluster)
                except BaseException:
                    cluster.close()
                    raise

            def stop(made: Any) -> None:
                cluster, client = made
                with contextlib.suppress(Exception):
                    client.close()
                cluster.close()
                _clear_hosts(network)

            yield lambda size: _timed_first(start, lambda made: made[1].submit(TASK, ARGUMENT).result(),
                                            stop, "SSHCluster to the first result")

    return [
        Contender("SSH([h0])", ezpool_ssh(["h0"]), ezpool=True),
        Contender("Dask SSHCluster (scheduler and worker on h0)", dask_ssh),
        Contender("SSH([h0, h1])", ezpool_ssh(["h0", "h1"]), ezpool=True),
    ]


def clusters(settings: Settings) -> list[Comparison]:
    """Time from making the pool to the first result, on a real SLURM and real ssh hosts."""
    return [
        Comparison(
            name="clusters-slurm",
            title="SLURM (one node, here): from making the pool to the first result",
            unit="tasks",
            sizes=[1],
            check=_check,
            contenders=_slurm_contenders(),
        ),
        Comparison(
            name="clusters-ssh",
            title="SSH hosts (network namespaces, real sshd): from making the pool to the first result",
            unit="tasks",
            sizes=[1],
            check=_check,
            contenders=_ssh_contenders(),
            pairs=[("SSH([h0])", "Dask SSHCluster (scheduler and worker on h0)"),
                   ("SSH([h0, h1])", "Dask SSHCluster (scheduler and worker on h0)")],
        ),
    ]
