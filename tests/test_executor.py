"""``PoolExecutor``: the ``concurrent.futures`` protocol, in every mode, with real processes.

Most tests take ``executor``, one open executor per mode for this module (the
distributed one starts two generic workers on free local ports itself). Tests that
shut an executor down, or need one worker, make their own with ``make``.
CPython's own executor tests are run against these executors by ``tests/cpython_futures.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable, Union

import pytest

from ezpool import Pool, PoolExecutor, RemoteTraceback, TaskTimeout, WorkerCrashed
from tests import _helpers as h
from tests.conftest import REPO_ROOT, eventually
from tests.modes import MODES, Mode


@pytest.fixture(scope="module")
def executor(mode: Mode):
    with mode.executor() as opened:
        yield opened


@pytest.fixture
def make():
    """``make(mode, workers=2, **options)``: a new executor of a ``Mode`` (or of EzPool's
    mode of that name, with its platform's start method), shut down at teardown."""
    made: list[PoolExecutor] = []

    def build(mode: Union[Mode, str], workers: int = 2, **options: Any) -> PoolExecutor:
        chosen = mode if isinstance(mode, Mode) else Mode(mode, mode)
        made.append(chosen.executor(workers, **options))
        return made[-1]

    yield build
    for opened in made:
        opened.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def gate(tmp_path) -> tuple[str, Callable[[], None]]:
    """A file path tasks can wait for (``h.wait_for``), and the function that opens it."""
    path = str(tmp_path / "open")
    return path, lambda: open(path, "w").close()


# --- submit and results ---------------------------------------------------------------


def test_submit_returns_a_future_with_the_result(executor):
    future = executor.submit(h.add, 2, b=40)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=60) == 42


def test_an_exception_is_raised_by_result_with_the_remote_traceback_as_cause(executor):
    future = executor.submit(h.raise_custom, "boom")
    with pytest.raises(h.CustomError, match="boom") as caught:
        future.result(timeout=60)
    assert isinstance(future.exception(), h.CustomError)
    if executor.mode in ("serial", "threads"):  # run in this process
        assert caught.value.__cause__ is None
    else:
        cause = caught.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_custom" in str(cause) and "_helpers.py" in str(cause)


def test_as_completed_and_wait_see_every_future(executor):
    futures = [executor.submit(h.square, n) for n in range(200)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == [n * n for n in range(200)]
    late = [executor.submit(h.nap, 0.3), executor.submit(h.square, 3)]
    done, pending = cf.wait(late, timeout=60, return_when=cf.FIRST_COMPLETED)
    assert late[1] in done or executor.mode == "serial"  # the serial mode runs them in turn
    done, pending = cf.wait(late, timeout=60)
    assert done == set(late) and not pending


def test_many_small_submits_all_arrive(executor):
    futures = [executor.submit(h.square, n) for n in range(5000)]
    assert [f.result(timeout=120) for f in futures] == [n * n for n in range(5000)]


def test_an_unpicklable_argument_fails_its_own_future_only(executor):
    futures = [executor.submit(h.square, 3), executor.submit(h.arguments, threading.Lock()),
               executor.submit(h.square, 4)]
    if executor.mode in ("serial", "threads"):  # run in this process
        assert isinstance(futures[1].result(timeout=60)[0], type(threading.Lock()))
    else:
        with pytest.raises(TypeError, match="cannot send"):
            futures[1].result(timeout=60)
    assert futures[0].result(timeout=60) == 9 and futures[2].result(timeout=60) == 16


# --- map ---------------------------------------------------------------------------------


def test_map_gives_results_in_order_over_one_or_several_iterables(executor):
    assert list(executor.map(h.square, range(1000))) == [n * n for n in range(1000)]
    assert list(executor.map(h.add, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]
    assert list(executor.map(h.arguments, [(1, 2), "ab"])) == [((1, 2),), ("ab",)]  # items are not unpacked
    assert list(executor.map(h.square, [])) == []


def test_map_raises_where_the_failing_call_is(executor):
    results = executor.map(h.fail_on_odd, [0, 2, 4, 5, 6])
    assert [next(results), next(results), next(results)] == [0, 2, 4]
    with pytest.raises(ValueError):
        next(results)


def test_map_with_a_timeout_raises_timeout_error(executor):
    began = time.monotonic()
    results = executor.map(h.nap, [0.0, 0.0, 2.0], timeout=0.8)
    assert [next(results), next(results)] == [0.0, 0.0]
    with pytest.raises(cf.TimeoutError):
        next(results)
    assert time.monotonic() - began < 1.9


def test_map_with_a_buffersize_reads_the_iterables_lazily(executor):
    read = itertools.count()

    def counted():
        for n in range(100):
            next(read)
            yield n

    results = executor.map(h.square, counted(), buffersize=4)
    assert next(results) == 0
    assert next(read) <= 1 + 4 + 1, "more calls were read than buffersize allows"
    assert list(results) == [n * n for n in range(1, 100)]


def test_map_checks_its_arguments(executor):
    with pytest.raises(TypeError, match="fn must be callable, got 5"):
        executor.map(5, [1])
    with pytest.raises(ValueError, match="buffersize must be None or > 0, got 0"):
        executor.map(h.square, [1], buffersize=0)
    with pytest.raises(ValueError, match="chunksize must be >= 1, got -1"):
        executor.map(h.square, [1], chunksize=-1)


def test_map_of_slow_calls_spreads_them_over_the_workers(make):
    executor = make("parallel")
    pids = list(executor.map(h.pid_after_nap, range(8), [0.2] * 8))
    assert len(set(pids)) == 2


# --- cancelling and shutting down --------------------------------------------------------


def test_a_pending_future_can_be_cancelled(make, gate, mode):
    path, open_gate = gate
    executor = make(mode, workers=1)
    blocker = executor.submit(h.wait_for, path, "first")
    eventually(blocker.running, "a running first call")
    queued = [executor.submit(h.square, n) for n in range(20)]  # the first few are read ahead
    last = queued[-1]
    assert last.cancel() and last.cancelled()
    open_gate()
    assert blocker.result(timeout=60) == "first"
    assert [f.result(timeout=60) for f in queued[:-1]] == [n * n for n in range(19)]
    with pytest.raises(cf.CancelledError):
        last.result()


def test_shutdown_with_cancel_futures_cancels_what_waits_and_finishes_the_rest(make, gate, mode):
    """What waits is cancelled; the running call finishes where it cannot be stopped."""
    path, open_gate = gate
    executor = make(mode, workers=1)
    blocker = executor.submit(h.wait_for, path, "first")
    eventually(blocker.running, "a running first call")
    queued = [executor.submit(h.square, n) for n in range(30)]
    results = executor.map(h.square, range(10))
    threading.Timer(0.5, open_gate).start()
    executor.shutdown(wait=True, cancel_futures=True)
    if mode.kind in ("parallel", "distributed"):  # a running call is stopped too (test_executor_cancel.py)
        assert blocker.cancelled()
    else:
        assert blocker.result(timeout=0) == "first"
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) >= 10 and all(f.done() for f in queued)
    assert all(f.result() == n * n for n, f in enumerate(queued) if not f.cancelled())
    with pytest.raises(cf.CancelledError):
        list(results)


def test_callbacks_of_futures_cancelled_by_shutdown_may_call_the_executor(make, gate):
    path, open_gate = gate
    executor = make("serial")
    blocker = executor.submit(h.wait_for, path, "first")
    eventually(blocker.running, "a running first call")
    heard: list[str] = []

    def submit_again(future: cf.Future) -> None:
        try:
            executor.submit(h.square, 2)
        except RuntimeError as exc:
            heard.append(str(exc))

    queued = executor.submit(h.square, 3)
    queued.add_done_callback(submit_again)
    threading.Timer(0.3, open_gate).start()
    executor.shutdown(wait=True, cancel_futures=True)
    assert queued.cancelled() and heard == ["cannot schedule new futures after shutdown"]


def test_after_shutdown_without_waiting_the_results_still_arrive(make, mode):
    executor = make(mode)
    futures = [executor.submit(h.nap, 0.05) for _ in range(6)]
    results = executor.map(h.square, range(50))
    executor.shutdown(wait=False)
    assert [f.result(timeout=60) for f in futures] == [0.05] * 6
    assert list(results) == [n * n for n in range(50)]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(h.square, 1)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(h.square, [1])


def test_the_executor_is_a_context_manager_that_waits(make):
    with make("parallel") as executor:
        future = executor.submit(h.nap, 0.2)
    assert future.done() and future.result() == 0.2


def test_calls_submitted_and_not_waited_for_run_before_the_interpreter_exits(core_child_env):
    script = textwrap.dedent(
        """
        import sys, time
        from ezpool import PoolExecutor
        def late(text):
            time.sleep(0.5)
            print(text, flush=True)
        executor = PoolExecutor("serial")
        executor.submit(late, "apple")
        parallel = PoolExecutor("parallel", max_workers=1)
        parallel.submit(print, "pear", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=core_child_env, capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["apple", "pear"]
    assert done.stderr == ""


# --- crashes, asyncio, code sent by value ------------------------------------------------


@pytest.mark.parametrize("mode", ["parallel", "distributed"])
@pytest.mark.parametrize("killer", [h.exit_on, h.sigkill_on])
def test_a_call_that_kills_its_process_fails_its_future_and_the_executor_goes_on(make, mode, killer):
    executor = make(mode, max_attempts=1)
    doomed = executor.submit(killer, 1, 1)
    with pytest.raises(WorkerCrashed):
        doomed.result(timeout=120)
    assert executor.submit(h.square, 7).result(timeout=120) == 49
    assert list(executor.map(killer, [5] * 3, [1, 2, 3])) == [10, 20, 30]


def test_a_map_call_that_kills_its_process_raises_there(make):
    executor = make("parallel", max_attempts=1)
    results = executor.map(h.exit_on, [3] * 6, range(6))
    assert [next(results) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(WorkerCrashed):
        next(results)


def test_a_value_that_cannot_come_back_fails_its_own_call(make):
    from ezpool import ResultNotSerializable

    executor = make("parallel")
    results = executor.map(h.lock_on, [150] * 300, range(300))  # 150 is in a slice of many calls
    assert [next(results) for _ in range(150)] == [10 * n for n in range(150)]
    with pytest.raises(ResultNotSerializable):
        next(results)
    assert executor.submit(h.lock_on, 1, 2).result(timeout=60) == 20


def test_a_timeout_option_fails_the_slow_call_alone(make):
    executor = make("parallel", timeout=0.5)
    slow, quick = executor.submit(h.nap, 5.0), executor.submit(h.nap, 0.01)
    with pytest.raises(TaskTimeout):
        slow.result(timeout=60)
    assert quick.result(timeout=60) == 0.01


def test_asyncio_run_in_executor(executor):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(executor, h.square, n) for n in range(10)))

    assert asyncio.run(main()) == [n * n for n in range(10)]


def test_lambdas_closures_and_main_module_functions_run(executor):
    offset = 100
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def seven_times(x):\n    return 7 * x\n", namespace)
    main_function = namespace["seven_times"]
    assert main_function.__module__ == "__main__"
    assert executor.submit(lambda x: x + 1, 1).result(timeout=60) == 2
    assert executor.submit(lambda: offset + 1).result(timeout=60) == 101
    assert executor.submit(main_function, 6).result(timeout=60) == 42
    assert list(executor.map(lambda x: x + offset, range(3))) == [100, 101, 102]


# --- construction ------------------------------------------------------------------------


def test_pool_executor_inherits_the_pools_mode_and_options(make):
    with Pool("parallel", ncpu=1, timeout=0.5, progress=False) as pool, pool.executor() as executor:
        assert executor.mode == "parallel"
        assert len({f.result(timeout=60) for f in [executor.submit(h.pid) for _ in range(10)]}) == 1
        with pytest.raises(TaskTimeout):
            executor.submit(h.nap, 5.0).result(timeout=60)
    with Pool("serial") as pool, pool.executor(timeout=3) as executor:
        assert executor.mode == "serial" and executor.submit(h.square, 3).result(timeout=60) == 9


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [(0, ValueError, "max_workers must be greater than 0, got 0"),
     (-2, ValueError, "max_workers must be greater than 0, got -2"),
     ("x", TypeError, "max_workers must be a positive integer or None, got 'x'"),
     (2.5, TypeError, "got 2.5"), (True, TypeError, "got True")],
)
def test_a_bad_max_workers_is_refused_naming_it(value, error, message):
    for kind in {mode.kind for mode in MODES.values()}:
        with pytest.raises(error, match=message):
            PoolExecutor(kind, max_workers=value)


def test_a_bad_function_or_mode_is_refused_naming_it(executor):
    with pytest.raises(TypeError, match="fn must be callable, got 'square'"):
        executor.submit("square", 3)
    with pytest.raises(ValueError, match="nowhere"):
        PoolExecutor("nowhere")


def test_repr_says_the_mode_and_state(make):
    executor = make("serial")
    assert repr(executor) == "PoolExecutor(mode='serial', open)"
    executor.shutdown()
    assert repr(executor) == "PoolExecutor(mode='serial', shut down)"


def test_an_executor_nobody_holds_stops_its_processes():
    import gc
    import multiprocessing

    executor = PoolExecutor("parallel", max_workers=1)
    assert executor.submit(h.square, 2).result(timeout=60) == 4
    assert any(p.name == "ezpool-worker" for p in multiprocessing.active_children())
    del executor
    gc.collect()
    deadline = time.monotonic() + 30
    while any(p.name == "ezpool-worker" for p in multiprocessing.active_children()):
        assert time.monotonic() < deadline, "the worker process outlived its executor"
        time.sleep(0.05)
    assert os.getpid()  # (nothing left running: the module fixture checks it too)


def test_a_context_is_the_first_argument_of_every_call(make, mode):
    executor = make(mode, context=100)
    assert executor.submit(h.add, 1).result(timeout=60) == 101
    assert list(executor.map(h.add, [2, 3], timeout=60)) == [102, 103]
    assert executor.submit(h.arguments, 1, 2).result(timeout=60) == (100, 1, 2)
