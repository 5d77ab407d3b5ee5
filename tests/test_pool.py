"""ezpool.pool: the facade's life cycle, mode dispatch, and what importing it costs."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

import ezpool
from ezpool import EzPool, Pool
from ezpool.errors import IgnoredOptionWarning
from tests import _helpers as h


def _workers_running() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "ezpool-worker"]


def _wait_until_gone(pids, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = [pid for pid in pids if h.pid_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if h.pid_alive(pid)]
    return alive


def test_ezpool_is_pool():
    assert EzPool is Pool


def test_every_public_name_is_exported():
    for name in ezpool.__all__:
        assert getattr(ezpool, name) is not None
    for name in ("Pool", "EzPool", "BaseWorker", "Results", "TaskOutcome", "EzPoolError", "RemoteError",
                 "WorkerCrashed", "WorkerUnavailable"):
        assert name in ezpool.__all__


def test_the_context_manager_gives_the_pool_and_shuts_it_down():
    with Pool() as pool:
        assert isinstance(pool, Pool)
        assert "open" in repr(pool) and "'serial'" in repr(pool)
        assert pool.smap(h.square, [2]) == {2: 4}
    assert "closed" in repr(pool)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.smap(h.square, [2])


@pytest.mark.parametrize("method", ["smap", "pmap", "map"])
def test_a_closed_pool_raises_runtime_error(method):
    pool = Pool("parallel")
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        getattr(pool, method)(h.square, [1, 2])
    assert not _workers_running()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_shutdown_is_idempotent_and_ends_every_worker_process(start_method):
    pool = Pool(start_method=start_method, progress=False)
    try:
        pids = set(pool.pmap(h.pid_after_nap, range(8), ncpu=2).values())
        assert len(pids) == 2 and os.getpid() not in pids
        assert all(h.pid_alive(pid) for pid in pids)
    finally:
        pool.shutdown()
    pool.shutdown()
    assert _wait_until_gone(pids) == []
    assert not _workers_running()


def test_leaving_the_block_on_an_exception_ends_the_workers_too():
    with pytest.raises(ZeroDivisionError), Pool(start_method="fork", progress=False) as pool:
        pids = set(pool.pmap(h.pid_after_nap, range(4), ncpu=2).values())
        1 / 0  # noqa: B018 - the exception is the point
    assert _wait_until_gone(pids) == []


@pytest.mark.parametrize("mode", ["nope", ["serial"], None, "Serial", ""])
def test_an_unknown_mode_is_a_value_error_naming_it(mode):
    with pytest.raises(ValueError, match="unknown mode") as info:
        Pool(mode)
    assert repr(mode) in str(info.value)


def test_map_in_serial_mode_ignores_ncpu_and_workers():
    with Pool("serial", progress=False) as pool:
        results = pool.map(h.pid_after_nap, range(3), ncpu=4, workers=["PYRO:worker@localhost:21000"])
        assert set(results.values()) == {os.getpid()}
        assert not _workers_running()


def test_map_in_parallel_mode_uses_ncpu_and_ignores_workers():
    with Pool("parallel", start_method="fork", progress=False) as pool:
        results = pool.map(h.pid_after_nap, range(6), ncpu=3, workers="PYRO:worker@localhost:21000")
        assert len(set(results.values())) == 3 and os.getpid() not in results.values()


def test_smap_runs_in_the_calling_process_whatever_the_mode():
    with Pool("parallel", progress=False) as pool:
        assert set(pool.smap(h.pid_after_nap, range(3)).values()) == {os.getpid()}
        assert not _workers_running()


def test_one_pool_runs_several_modes():
    with Pool(progress=False) as pool:
        assert pool.smap(h.square, [3]) == pool.pmap(h.square, [3], ncpu=1, start_method="fork") == {3: 9}


def test_a_non_callable_function_is_a_type_error_naming_it():
    with Pool() as pool:
        with pytest.raises(TypeError, match="'not callable'"):
            pool.smap("not callable", [1])
        with pytest.raises(TypeError, match="42"):
            pool.pmap(42, [1], ncpu=1)


def test_importing_ezpool_does_not_import_pyro4(core_python, core_child_env):
    script = (
        "import sys, ezpool\n"
        "from ezpool import Pool\n"
        "print(ezpool.__file__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('Pyro4', 'serpent')))\n"
    )
    done = subprocess.run(
        [core_python, "-W", "error", "-c", script],
        env=core_child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    path, modules = done.stdout.splitlines()
    assert path.startswith(str(Path(__file__).resolve().parents[1]))  # this checkout, not another
    assert modules == "[]"


def test_the_serial_mode_accepts_a_timeout_and_lets_the_task_finish():
    with Pool(progress=False) as pool, pytest.warns(IgnoredOptionWarning, match="ignores timeout=0.05"):
        assert pool.smap(h.nap, [0.2], timeout=0.05) == {0.2: 0.2}


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def test_the_tutorials_calls_work_as_written():
    with Pool() as p:
        results = p.pmap(fun=fib, tasks=range(20), ncpu=2)
    assert results == {n: fib(n) for n in range(20)}
    for mode in ("serial", "parallel"):
        with EzPool(mode=mode) as p:
            results = p.map(fun=fib, tasks=[1, 2, 3, 4, 5], ncpu=2, workers=None)
            assert results == {1: 1, 2: 1, 3: 2, 4: 3, 5: 5}
