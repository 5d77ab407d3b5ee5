"""The threads mode (``ezpool._backends.threads``): what the contract suite, which runs it
too (``tests/modes.py``), cannot show: tasks overlap on ``nthreads`` threads, a thread
cannot be killed (``timeout`` abandons it, ``stops`` cancel what has not started, in
the serial mode too), and on a free-threaded CPython pure-Python work runs on threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import subprocess
import textwrap
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import pytest

from ezpool import Pool, PoolExecutor, TaskTimeout
from ezpool._backends import create
from ezpool._backends.threads import thread_count
from ezpool._core.stopping import Stops
from ezpool._core.stream import stream
from ezpool.options import Options
from tests import _helpers as h
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(60)


def _ours() -> list[threading.Thread]:
    """The threads of the threads mode alive now."""
    return [thread for thread in threading.enumerate() if thread.name.startswith("ezpool thread ")]


def _left(seconds: float = 5.0) -> list[threading.Thread]:
    """The threads of the threads mode still alive after ``seconds`` (a call that ended early
    lets its threads go without waiting: they leave once their running task returns)."""
    deadline = time.monotonic() + seconds
    while _ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _ours()


@pytest.fixture
def pool():
    with Pool("threads", progress=False) as opened:
        yield opened
    assert not _left(), "threads of the threads mode outlived their calls"


# --- threads ----------------------------------------------------------------------------


def test_tasks_run_at_once_on_their_threads(pool):
    began = time.monotonic()
    results = pool.tmap(time.sleep, [0.5 + n * 1e-6 for n in range(8)], nthreads=8)
    took = time.monotonic() - began
    assert len(results) == 8 and results.errors == {}
    assert took < 2.5, f"8 tasks of 0.5 s on 8 threads took {took:.1f} s: they did not overlap"
    here = f"(pid {os.getpid()})"
    assert all(worker.startswith("thread ") and worker.endswith(here) for worker in results.workers.values())
    assert 4 <= len(set(results.workers.values())) <= 8
    assert not _ours(), "the call's threads outlived it"


def test_at_most_nthreads_tasks_run_at_once(pool):
    lock = threading.Lock()
    now, most = [0], [0]

    def busy(task: int) -> int:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return task

    assert pool.tmap(busy, range(24), nthreads=3) == {n: n for n in range(24)}
    assert most[0] == 3


def test_the_default_is_as_many_threads_as_thread_pool_executor_starts():
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()
    assert thread_count(None) == min(32, (cpus or 1) + 4)
    assert thread_count(3) == 3


def test_many_tiny_tasks_and_a_generator_of_them(pool):
    results = pool.tmap(h.square, range(100_000), nthreads=4)
    assert len(results) == 100_000 and results[999] == 999 * 999 and results.errors == {}
    outcomes = list(pool.imap(h.square, (n for n in range(50_000)), ordered=True, buffersize=1000))
    assert [outcome.value for outcome in outcomes[:3]] == [0, 1, 4] and len(outcomes) == 50_000


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [(0, ValueError, "nthreads must be a positive integer, got 0"),
     (-2, ValueError, "got -2"), (2.5, TypeError, "got 2.5"), ("4", TypeError, "got '4'"),
     (True, TypeError, "got True")],
)
def test_a_bad_nthreads_is_refused_naming_it(value, error, message):
    with pytest.raises(error, match=message):
        Pool("threads", nthreads=value)
    with Pool("threads", progress=False) as pool, pytest.raises(error, match=message):
        pool.tmap(h.square, [1], nthreads=value)


def test_a_keyboard_interrupt_or_system_exit_in_a_task_reaches_the_caller(pool):
    for name, exception in (("KeyboardInterrupt", KeyboardInterrupt), ("SystemExit", SystemExit)):
        with pytest.raises(exception):
            pool.tmap(lambda task, name=name: h.raise_base(name) if task == 3 else task, range(8), nthreads=2)
    assert pool.tmap(h.square, [4]) == {4: 16}


def test_the_executor_runs_calls_on_max_workers_threads():
    with Pool("threads") as pool, pool.executor(max_workers=3) as executor:
        assert executor.mode == "threads"
        futures = [executor.submit(lambda n: (n, threading.current_thread().name), n) for n in range(30)]
        names = {future.result(timeout=30)[1] for future in futures}
        assert list(executor.map(h.square, range(5))) == [0, 1, 4, 9, 16]
    assert names and all(name.startswith("ezpool thread ") for name in names) and len(names) <= 3
    with PoolExecutor("threads", max_workers=2) as executor:
        gate = threading.Event()
        blocked = [executor.submit(gate.wait, 30) for _ in range(2)]
        waiting = executor.submit(h.square, 5)
        time.sleep(0.2)
        assert not waiting.running() and waiting.cancel(), "a call waiting for a thread was taken already"
        gate.set()
        assert [future.result(timeout=30) for future in blocked] == [True, True]


# --- what a thread cannot do: be killed ----------------------------------------------------


def test_a_task_past_its_timeout_ends_as_task_timeout_and_its_thread_runs_on(pool):
    ended = threading.Event()

    def slow(seconds: float) -> float:
        time.sleep(seconds)
        if seconds > 1:
            ended.set()
        return seconds

    began = time.monotonic()
    results = pool.tmap(slow, [2.5, 0.05, 0.1, 0.15], nthreads=1, timeout=0.5)
    took = time.monotonic() - began
    error = results[2.5]
    assert isinstance(error, TaskTimeout) and isinstance(error, TimeoutError)
    assert "2.5" in str(error) and "timeout of 0.5 s" in str(error) and "runs on" in str(error)
    assert 0.5 <= results.elapsed[2.5] < 2.0
    assert {task: results[task] for task in (0.05, 0.1, 0.15)} == {0.05: 0.05, 0.1: 0.1, 0.15: 0.15}
    assert took < 2.0, f"the call waited {took:.1f} s for a task it gave up at 0.5 s"
    assert not ended.is_set()  # it runs on...
    assert ended.wait(10), "the abandoned thread never finished its task"  # ...to its end
    assert results.workers[2.5] != results.workers[0.05]  # a fresh thread ran the others


def _stream(mode: str, fun: Any, tasks: list[Any], stops: Stops, nthreads: int = 1) -> Any:
    options = Options(progress=False, nthreads=nthreads)
    return stream(create(mode), fun, tasks, options, stops=stops, eager=True)


def _gated(tmp_path: Path, gate: threading.Event) -> Any:
    def fun(task: Any) -> Any:
        if task == "gate":
            assert gate.wait(30)
        return h.record_call(str(tmp_path), task)

    return fun


@pytest.mark.parametrize("mode", ["threads", "serial"])
def test_stopped_tasks_that_have_not_started_are_cancelled_and_never_run(mode, tmp_path):
    gate, stops = threading.Event(), Stops()
    tasks = ["gate", 1, 2, 3, 4]
    outcomes: dict[Any, Any] = {}

    def read() -> None:
        for batch in _stream(mode, _gated(tmp_path, gate), tasks, stops):
            for offset, value in enumerate(batch.values):
                outcomes[tasks[batch.start + offset]] = value

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # "gate" runs; the one thread has not started the others
    stops.stop([0, 2, 4])  # the running one runs on: it cannot be stopped
    gate.set()
    reader.join(30)
    assert not reader.is_alive()
    assert outcomes["gate"] == "gate" and outcomes[1] == 1 and outcomes[3] == 3
    for task in (2, 4):
        assert isinstance(outcomes[task], cf.CancelledError) and repr(task) in str(outcomes[task])
    assert h.calls(tmp_path) == {"'gate'": 1, "1": 1, "3": 1}


@pytest.mark.parametrize("mode", ["threads", "serial"])
def test_stop_all_ends_the_stream_and_no_other_task_starts(mode, tmp_path):
    gate, stops = threading.Event(), Stops()
    ended = threading.Event()
    seen: list[int] = []

    def read() -> None:
        for batch in _stream(mode, _gated(tmp_path, gate), ["gate", "gate", *range(20)], stops, nthreads=2):
            seen.append(len(batch.values))
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)
    stops.stop_all()
    if mode == "threads":  # it does not wait for the running tasks (their threads are abandoned)
        assert ended.wait(2), "stop_all did not end the stream within 2 s"
        assert not seen
        gate.set()
    else:  # the serial loop is the caller's thread: it ends once the running task returns
        assert not ended.wait(0.3)
        gate.set()
        assert ended.wait(5)
    time.sleep(0.3)
    assert set(h.calls(tmp_path)) <= {"'gate'"}, "tasks started after stop_all"
    assert not _left()


def test_imap_left_early_starts_no_more_tasks_and_lets_its_threads_go(pool, tmp_path):
    """Each task leaves its file when it ends, 0.2 s after it starts: what ran by 0.5 s
    after the break started before it (at most two rounds on four threads)."""
    for _ in pool.imap(lambda task: h.nap_then_record(str(tmp_path), task, 0.2), range(1000), nthreads=4):
        break
    time.sleep(0.5)
    ran = len(list(tmp_path.iterdir()))
    time.sleep(0.5)
    assert len(list(tmp_path.iterdir())) == ran <= 2 * 4, "tasks went on starting after the loop broke"
    assert not _left()


# --- free-threaded CPython: pure-Python work on threads -------------------------------------


def _free_threaded_python() -> Optional[str]:
    """An installed free-threaded CPython (3.13t, 3.14t: ``sys._is_gil_enabled()`` is false)."""
    candidates = [shutil.which(name) for name in ("python3.14t", "python3.13t")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30).stdout.strip()
        candidates += [str(path) for path in sorted(Path(root, "versions").glob("*t/bin/python"))]
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import sys; print(sys._is_gil_enabled())"],
                               capture_output=True, text=True, timeout=30)
        if probe.stdout.strip() == "False":
            return python
    return None


@pytest.mark.timeout(180)
def test_on_a_free_threaded_python_pure_python_work_runs_on_threads(core_child_env):
    python = _free_threaded_python()
    if python is None:
        pytest.skip("no free-threaded CPython is installed (python3.13t, python3.14t, or a pyenv "
                    "version ending in t)")
    script = textwrap.dedent(
        """
        import sys, time
        from ezpool import Pool

        def spin(n):
            total = 0
            for k in range(n):
                total += k * k % 7
            return total

        tasks = [2_000_000 + n for n in range(4)]
        with Pool("threads", progress=False) as pool:
            began, cpu = time.perf_counter(), time.process_time()
            results = pool.tmap(spin, tasks, nthreads=4)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        assert results == {n: spin(n) for n in tasks}, results
        print(sys._is_gil_enabled(), len(set(results.workers.values())), round(cpu / wall, 2))
        """
    )
    done = subprocess.run([python, "-c", script], env=core_child_env, capture_output=True, text=True,
                          timeout=150, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    gil, threads, _ = done.stdout.split()
    assert gil == "False", "importing or running ezpool turned the GIL back on"
    assert int(threads) >= 2


def test_a_store_keeps_each_outcome_and_the_next_call_runs_only_the_rest(pool, tmp_path):
    store, folder = str(tmp_path / "results.sqlite"), tmp_path / "calls"
    folder.mkdir()
    fun = partial(h.record_call, str(folder))
    even = pool.tmap(fun, range(0, 40, 2), nthreads=3, store=store, store_key="f")
    assert even == {n: n for n in range(0, 40, 2)}
    outcomes = list(pool.imap(fun, iter(range(40)), nthreads=3, store=store, store_key="f", ordered=True))
    assert [outcome.value for outcome in outcomes] == list(range(40))
    assert h.calls(folder) == {str(n): 1 for n in range(40)}  # the even ones ran once, in the first call
