"""Every mode the behaviour suites run in, written once: a new mode joins them all by one line.

``tests/conftest.py`` turns ``MODES`` into the ``mode`` fixture, which the contract
suite, the executor's, the joblib backend's and CPython's ``concurrent.futures``
suite (``tests/cpython_futures.py``) all take. A ``Mode`` makes the pool, executor
or joblib configuration that runs it, on workers of its own (free local ports for
distributed workers, which the pool starts itself).
"""

from __future__ import annotations

from typing import Any, Optional

from ezpool import Pool, PoolExecutor


class Mode:
    """One way of running tasks: EzPool's mode, and the start method of its processes."""

    def __init__(self, name: str, kind: str, start_method: Optional[str] = None) -> None:
        self.name = name
        self.kind = kind  # EzPool's mode
        self.start_method = start_method
        #: Whether tasks run in another process (their exceptions arrive rebuilt).
        self.remote = kind != "serial"

    def options(self, workers: int = 2) -> dict[str, Any]:
        """The options that select this mode with ``workers`` workers (``ncpu`` aside: the
        parallel mode's count is the caller's to give, as joblib's ``n_jobs``)."""
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
        ncpu = {"ncpu": workers} if self.kind == "parallel" else {}
        return {**self.options(workers), **ncpu}

    def __repr__(self) -> str:
        return f"Mode({self.name!r})"


#: Every mode, by name: the serial loop, processes under each start method, and
#: distributed workers.
MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("serial", "serial"),
        Mode("fork", "parallel", "fork"),
        Mode("spawn", "parallel", "spawn"),
        Mode("forkserver", "parallel", "forkserver"),
        Mode("distributed", "distributed"),
    )
}
