"""Every mode the behaviour suites run in, written once: a new mode joins them all by one line.

``tests/conftest.py`` turns ``MODES`` into the ``mode`` fixture, which the contract
suite, the executor's, the joblib backend's and CPython's ``concurrent.futures``
suite (``tests/cpython_futures.py``) all take. A ``Mode`` makes the pool, executor
or joblib configuration that runs it, on workers of its own (free local ports for
distributed workers, which the pool starts itself).
"""

from __future__ import annotations

import subprocess
from typing import Any, Optional

from ezpool import ClusterError, Pool, PoolExecutor
from ezpool.cluster import Cluster, Joining, worker_command


class Mode:
    """One way of running tasks: EzPool's mode, and the start method of its processes."""

    def __init__(
        self, name: str, kind: str, start_method: Optional[str] = None, dial_in: bool = False
    ) -> None:
        self.name = name
        self.kind = kind  # EzPool's mode
        self.start_method = start_method
        self.dial_in = dial_in  # distributed workers that dial in to the pool
        #: Whether tasks run in another process (their exceptions arrive rebuilt).
        self.remote = kind not in ("serial", "threads")

    def options(self, workers: int = 2) -> dict[str, Any]:
        """The options that select this mode with ``workers`` workers (``ncpu`` aside: the
        parallel mode's count is the caller's to give, as joblib's ``n_jobs``)."""
        if self.dial_in:
            return {"workers": LocalDialers(workers), "listen": "127.0.0.1:0"}
        if self.kind == "distributed":
            from tests.conftest import free_port

            uris = [f"PYRO:worker@127.0.0.1:{free_port()}" for _ in range(workers)]
            return {"workers": uris, "spawn": True}
        return {"start_method": self.start_method} if self.start_method else {}

    def pool(self, workers: int = 2, **options: Any) -> Pool:
        """A pool of this mode (no progress bar), on ``workers`` workers."""
        return Pool(self.kind, **self._counted(workers), **{"progress": False, **options})

    def executor(self, workers: int = 2, **options: Any) -> PoolExecutor:
        """A ``PoolExecutor`` of this mode, on ``workers`` workers."""
        return PoolExecutor(self.kind, **self._counted(workers), **options)

    def _counted(self, workers: int) -> dict[str, Any]:
        count = {"parallel": {"ncpu": workers}, "threads": {"nthreads": workers}}.get(self.kind, {})
        return {**self.options(workers), **count}

    def __repr__(self) -> str:
        return f"Mode({self.name!r})"


class LocalDialers(Cluster):
    """Workers on this machine that dial in to the pool, the key on their standard input
    (as ``SSH`` starts them on other hosts): the distributed mode's other kind of worker."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def expected(self) -> int:
        return self.count

    def start(self, joining: Joining) -> None:
        import os
        import sys

        from ezpool._worker.launch import worker_env

        command = worker_command(joining, key_on_stdin=joining.key is not None)
        env = worker_env(os.environ, sys.path)  # they import what the tests import, as the pool's own do
        for _ in range(self.count):
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, env=env)
            assert process.stdin is not None
            if joining.key is not None:
                process.stdin.write(joining.key + b"\n")
                process.stdin.flush()
            self.processes.append(process)

    def check(self) -> None:
        if self.processes and all(process.poll() is not None for process in self.processes):
            codes = [process.returncode for process in self.processes]
            raise ClusterError(f"every local worker that dials in has exited (status {codes})")

    def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()  # they leave when their input ends
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


#: Every mode, by name: the serial loop, threads of this process, processes under each start method, and
#: distributed workers (dialled by the pool, and dialling in to it).
MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("serial", "serial"),
        Mode("threads", "threads"),
        Mode("fork", "parallel", "fork"),
        Mode("spawn", "parallel", "spawn"),
        Mode("forkserver", "parallel", "forkserver"),
        Mode("distributed", "distributed"),
        Mode("dial-in", "distributed", dial_in=True),
    )
}
