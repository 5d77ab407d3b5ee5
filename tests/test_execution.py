"""ezpool.execution: the per-task loop of a worker, its grouped run times, and its marks."""

from __future__ import annotations

import pickle
import time
from functools import partial

import pytest

from ezpool import Pool, WorkerCrashed
from ezpool.execution import GROUP_SECONDS, GroupTimes, group_size, pack_chunk, run_chunk, unpack_chunk
from tests import _helpers as h


class _Marks(list):
    """A ``mark`` that remembers every position it was set to."""

    def __init__(self) -> None:
        super().__init__([-1])
        self.seen: list[int] = []

    def __setitem__(self, index, value) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(value)
        super().__setitem__(index, value)


@pytest.mark.timeout(30)
def test_tiny_tasks_get_a_run_time_each_and_the_times_add_up_to_the_chunk():
    tasks = list(range(20_000))
    began = time.perf_counter()
    values, times, failures = run_chunk(h.square, tasks, 0, [-1])
    took = time.perf_counter() - began
    assert values == [n * n for n in tasks] and failures == {}
    assert len(times) == len(tasks)
    assert all(seconds >= 0 for seconds in times)
    # Groups share their own measured time: together they are the loop's time, no more.
    assert 0 < sum(times) <= took


@pytest.mark.timeout(30)
def test_the_first_task_of_a_chunk_is_timed_alone():
    values, times, _ = run_chunk(h.nap, [0.2, 0.0, 0.0, 0.0], 0, [-1])
    assert values == [0.2, 0.0, 0.0, 0.0]
    assert times[0] >= 0.2
    assert sum(times[1:]) < times[0]  # the nap's time is not shared with the others


@pytest.mark.timeout(30)
def test_every_task_is_marked_before_it_runs_even_in_groups():
    marks = _Marks()
    run_chunk(h.square, range(5000), 100, marks)
    assert marks.seen == [*range(100, 5100), -1]


def _fail_on_3000(n: int) -> int:
    if n == 3000:
        raise ValueError("3000")
    return n


@pytest.mark.timeout(30)
def test_a_failure_in_a_group_is_charged_to_its_own_task():
    values, times, failures = run_chunk(_fail_on_3000, range(5000), 10, [-1])
    assert list(failures) == [3000] and values[3000] is None and values[2999] == 2999
    assert len(values) == len(times) == 5000


@pytest.mark.timeout(30)
def test_a_stop_request_ends_the_chunk_after_the_running_task_with_its_times():
    class Stop:
        cancel = False

    stop = Stop()

    def task(n: int) -> int:
        if n == 1234:
            stop.cancel = True
        return n

    values, times, _ = run_chunk(task, range(5000), 0, [-1], stop=stop)
    assert values == list(range(1235)) and len(times) == 1235


@pytest.mark.timeout(10)
def test_groups_grow_for_tiny_tasks_and_fall_to_one_after_a_long_group():
    assert group_size(1e-6, 1, 1) == 16  # grows, but at most 16 times the last group
    assert group_size(1e-6, 16, 16) == 256
    big = group_size(1e-9, 256, 256)
    assert 256 < big <= 4096  # never more than the most in a group
    assert group_size(0.0, 4096, 4096) == 4096
    assert group_size(1.0, 300, 300) == 1  # a slow stretch: tasks are timed alone again
    assert group_size(3 * GROUP_SECONDS, 1, 1) == 1
    assert group_size(GROUP_SECONDS / 2, 1, 1) == 2  # tasks of half the group time go in twos


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_crash_among_thousands_of_tiny_tasks_costs_only_its_own_task(start_method):
    with Pool("parallel", ncpu=2, start_method=start_method, progress=False) as pool:
        results = pool.pmap(partial(h.exit_on, 4321), range(20_000))
    assert list(results.errors) == [4321]
    assert isinstance(results[4321], WorkerCrashed) and "task 4321" in str(results[4321])
    assert all(results[n] == n * 10 for n in range(20_000) if n != 4321)
    assert all(seconds >= 0 for seconds in results.elapsed.values())


@pytest.mark.timeout(30)
def test_a_reply_carries_one_time_per_group_and_reads_as_one_per_task():
    outcome = run_chunk(h.square, range(20_000), 7, [-1])
    times = outcome[1]
    assert isinstance(times, GroupTimes) and len(times.counts) < len(times) == 20_000
    per_task = times.expand()
    assert len(per_task) == 20_000 and sum(per_task) == pytest.approx(sum(times))
    # Each group's tasks share its time; the first task is timed alone.
    assert times.counts[0] == 1 and per_task[0] == times.seconds[0]
    reply = pack_chunk(7, outcome)
    assert len(reply) < 8 * 20_000  # far less than a double a task
    first, values, unpacked, failures, _ = unpack_chunk(reply)
    assert first == 7 and values == [n * n for n in range(20_000)] and failures == {}
    assert isinstance(unpacked, GroupTimes) and list(unpacked.counts) == list(times.counts)
    assert unpacked == per_task and unpacked.total() == pytest.approx(sum(per_task))
    assert times[1:3] == per_task[1:3] and times == per_task


def test_group_times_read_like_one_time_per_task():
    times = GroupTimes()
    times.add(1, 0.5)
    times.add(3, 0.25)
    assert len(times) == 4 and list(times) == [0.5, 0.25, 0.25, 0.25] and times[-1] == 0.25
    times.add(2, 0.125)
    assert list(times) == [0.5, 0.25, 0.25, 0.25, 0.125, 0.125]  # adding after reading
    again = pickle.loads(pickle.dumps(times))
    assert again == times and list(again.counts) == [1, 3, 2]
