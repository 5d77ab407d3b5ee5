"""Limits on each worker process of ``pmap``: ``max_tasks_per_worker`` and ``max_memory``.

The memory tests allocate for real (a few hundred MiB at most, one task at a time) in
real worker processes; the process that grows past the limit is gone afterwards. The
OOM killer's kill, in a real memory cgroup, is tested in ``tests/test_deaths.py``; here,
where the machine cannot make one, ``RLIMIT_AS`` stands in for it.
"""

from __future__ import annotations

import collections
import os
import resource
import time

import pytest

from ezpool import Pool
from ezpool.errors import EzPoolError, WorkerCrashed, WorkerOutOfMemory
from tests._helpers import process_gone

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20
LIMIT = 200 * MiB


@pytest.fixture(params=["fork", "spawn"])
def start_method(request):
    return request.param


@pytest.fixture
def pool(start_method):
    pool = Pool("parallel", start_method=start_method, progress=False)
    try:
        yield pool
    finally:
        pool.shutdown()


def _reached_mib(text: str) -> float:
    """The size an out-of-memory error says its worker reached, in MiB."""
    number, unit = text.split(" reached ")[1].split()[:2]
    return float(number) * {"MiB": 1, "GiB": 1024}[unit]


def pid_of(_task: object) -> int:
    return os.getpid()


def eat(task: int) -> int:
    """Task 3 takes 4 x LIMIT at once, in C code (only the check after the task sees it);
    the others a little, and give back their process id."""
    if task == 3:
        return len(bytearray(4 * LIMIT))
    time.sleep(0.01)
    return os.getpid()


def eat_slowly_then_hang(task: int) -> int:
    """Task 1 grows 20 MiB at a time to 3 x LIMIT, then sleeps for a minute: only the
    watchdog can stop it in time (the check after each task would wait for the end)."""
    if task == 1:
        kept = []
        while len(kept) * 20 * MiB < 3 * LIMIT:
            kept.append(bytearray(20 * MiB))
            time.sleep(0.005)
        time.sleep(60)
    time.sleep(0.05)
    return os.getpid()


@pytest.mark.parametrize("chunksize", [None, 5])
def test_a_worker_process_is_replaced_after_max_tasks_per_worker(pool, chunksize):
    results = pool.pmap(pid_of, range(24), ncpu=2, max_tasks_per_worker=3, chunksize=chunksize)
    ran = collections.Counter(results.values())
    assert all(count <= 3 for count in ran.values()), ran
    assert len(ran) >= 8, ran  # 24 tasks, 3 each: at least 8 processes
    assert not results.errors
    live = {proc.process.pid for proc in pool._backend("parallel")._processes}
    assert all(process_gone(pid) for pid in ran if pid not in live)  # those replaced are gone
    # The next call, without the limit, keeps its processes.
    again = pool.pmap(pid_of, range(24), ncpu=2)
    assert len(set(again.values())) <= 2


def test_max_tasks_per_worker_one_runs_each_task_in_a_fresh_process(pool):
    results = pool.pmap(pid_of, range(6), ncpu=2, max_tasks_per_worker=1)
    assert len(set(results.values())) == 6


def test_a_task_past_max_memory_fails_alone_and_the_others_finish(pool):
    results = pool.pmap(eat, range(10), ncpu=2, max_memory=f"{LIMIT // MiB}MiB")
    error = results[3]
    assert isinstance(error, WorkerOutOfMemory) and isinstance(error, MemoryError)
    assert isinstance(error, EzPoolError)
    text = str(error)
    assert text.startswith("task 3 ran out of memory: worker process pid "), text
    assert f"past its max_memory of {LIMIT / MiB:.1f} MiB" in text, text
    reached = _reached_mib(text)
    assert reached >= 4 * 200, text  # the size it reached, 800 MiB and more
    assert [task for task in results if task != 3 and not isinstance(results[task], int)] == []
    culprit = int(text.split("worker process pid ")[1].split()[0])
    assert process_gone(culprit)  # replaced
    assert set(results.errors) == {3}


def test_the_watchdog_stops_a_task_that_grows_and_never_ends(pool):
    began = time.monotonic()
    results = pool.pmap(eat_slowly_then_hang, range(6), ncpu=2, max_memory=LIMIT)
    assert time.monotonic() - began < 30
    error = results[1]
    assert isinstance(error, WorkerOutOfMemory), repr(error)
    assert not isinstance(error, WorkerCrashed)
    text = str(error)
    assert text.startswith("task 1 ran out of memory: worker process pid "), text
    assert f"{LIMIT / MiB:.1f} MiB" in text, text
    reached = _reached_mib(text)
    assert LIMIT / MiB < reached < LIMIT / MiB + 200, text  # caught within a few samples of passing it
    assert all(isinstance(results[task], int) for task in (0, 2, 3, 4, 5))


def test_max_memory_and_max_tasks_per_worker_together(pool):
    results = pool.pmap(eat, range(12), ncpu=2, max_memory=LIMIT, max_tasks_per_worker=2)
    assert isinstance(results[3], WorkerOutOfMemory)
    ran = collections.Counter(value for task, value in results.items() if task != 3)
    assert all(count <= 2 for count in ran.values()), ran


def test_max_memory_costs_nothing_to_a_call_that_stays_under_it(pool):
    results = pool.pmap(pid_of, range(2000), ncpu=2, max_memory="1GiB")
    assert not results.errors and len(set(results.values())) <= 2


def _limit_address_space(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, resource.getrlimit(resource.RLIMIT_AS)[1]))


def eat_under_rlimit(task: int) -> int:
    """Task 1 asks for more than the address space allowed to its process."""
    if task == 1:
        _limit_address_space(2 * 1024 * MiB)
        return len(bytearray(4 * 1024 * MiB))
    return task


def test_where_the_system_refuses_memory_the_task_fails_with_a_memory_error(pool):
    """RLIMIT_AS stands in for a memory LIMIT of the operating system where no cgroup can
    be made (tests/test_deaths.py makes one): the allocation fails, and the task's outcome
    is a MemoryError; the process lives on, the other tasks finish."""
    results = pool.pmap(eat_under_rlimit, range(4), ncpu=2, max_tasks_per_worker=1)
    assert isinstance(results[1], MemoryError), repr(results[1])
    assert [results[task] for task in (0, 2, 3)] == [0, 2, 3]


def test_the_memory_watch_calls_back_past_its_limit_while_a_task_runs():
    """ezpool._worker.memory, in this process, without the kill: what served workers reuse."""
    from ezpool._worker.memory import MemoryWatch, human_size, resident_bytes

    assert [human_size(size) for size in (512 * MiB, 1023, 3 * 1024 * MiB // 2)] == ["512.0 MiB", "1023 B",
                                                                                       "1.5 GiB"]
    now = resident_bytes()
    assert now is not None and now > 0
    seen: list[int] = []
    watch = MemoryWatch(now + 50 * MiB, seen.append, kill=False)
    try:
        kept = bytearray(20 * MiB)
        watch.begin()
        time.sleep(0.1)
        assert seen == []  # under the limit
        kept += bytearray(80 * MiB)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen and seen[0] > now + 50 * MiB
        # The peak says so too, unless this process had a higher one before (it counts only a rise).
        assert watch.cancel == (watch.over() is not None)
        watch.end()
        del kept
    finally:
        watch.close()


def test_a_forked_worker_is_not_charged_for_its_parent_s_memory():
    """A worker forked from a process holding 2 x LIMIT starts past LIMIT in resident size,
    all of it its parent's pages: the limit is on the memory it has of its own."""
    ballast = bytearray(2 * LIMIT)
    for page in range(0, len(ballast), 4096):
        ballast[page] = 1  # resident, not a promise of zero pages
    with Pool("parallel", start_method="fork", progress=False) as pool:
        results = pool.pmap(eat, [0, 1, 2, 4, 5, 3], ncpu=2, max_memory=LIMIT)
    assert set(results.errors) == {3}, {task: repr(error) for task, error in results.errors.items()}
    reached = _reached_mib(str(results[3]))
    assert 4 * 200 <= reached < 2 * 4 * 200, str(results[3])  # its own growth, not the parent's pages
    del ballast
