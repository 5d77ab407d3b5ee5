"""ezpool._worker.running: the per-task loop of a worker, its grouped run times, and its marks."""

from __future__ import annotations

import pickle
import time
from functools import partial

import pytest

from ezpool import Pool, WorkerCrashed
from ezpool._core.records import ChunkReply, GroupTimes, group_mark, read_mark
from ezpool._worker.running import GROUP_SECONDS, group_size, pack_chunk, run_chunk
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
def test_with_exact_every_task_is_marked_before_it_runs_even_in_groups():
    marks = _Marks()
    run_chunk(h.square, range(5000), 100, marks, exact=True)
    assert marks.seen == [*range(100, 5100), -1]


@pytest.mark.timeout(30)
def test_without_exact_each_group_is_marked_as_it_starts_and_the_marks_cover_every_task():
    marks = _Marks()
    values, times, _ = run_chunk(h.square, list(range(5000)), 100, marks)
    assert values == [n * n for n in range(5000)]
    assert marks.seen[-1] == -1
    groups = [read_mark(mark) for mark in marks.seen[:-1]]
    assert groups[0] == (100, 1)  # the first task of a chunk runs alone
    assert len(groups) < 5000 and max(count for _, count in groups) > 1
    covered = [position for start, count in groups for position in range(start, start + count)]
    assert covered == list(range(100, 5100))
    assert list(times.counts) == [count for _, count in groups]  # one time per group


def test_a_mark_reads_back_as_its_position_and_group():
    assert read_mark(-1) == (-1, 0)
    assert read_mark(group_mark(7, 1)) == (7, 1) and group_mark(7, 1) == 7
    assert read_mark(group_mark(123_456_789_012, 4096)) == (123_456_789_012, 4096)
    assert group_mark(2**47, 4096) < 2**63  # fits the shared 64-bit slot


def _add(a: int, b: int) -> int:
    if a == 2500:
        raise KeyboardInterrupt("a task's own")
    return a + b


@pytest.mark.timeout(30)
@pytest.mark.parametrize("exact", [False, True])
def test_tuple_tasks_are_spread_and_others_passed_whole_in_groups(exact):
    pairs = [(n, 1) for n in range(5000)]
    values, _, failures = run_chunk(_add, pairs, 0, [-1], exact=exact)
    assert list(failures) == [2500] and failures[2500].type_name.endswith("KeyboardInterrupt")
    assert values[:2500] == list(range(1, 2501)) and values[2501:] == list(range(2502, 5001))
    # Mixed: a tuple is spread, a string (or a named tuple) is one argument.
    mixed = [(n, 1) if n % 2 else str(n) for n in range(3000)]
    values, _, failures = run_chunk(lambda *args: args, mixed, 0, [-1], exact=exact)
    assert failures == {} and values == [(n, 1) if n % 2 else (str(n),) for n in range(3000)]


def _fail_on_3000(n: int) -> int:
    if n == 3000:
        raise ValueError("3000")
    return n


@pytest.mark.timeout(30)
@pytest.mark.parametrize("exact", [False, True])
def test_a_failure_in_a_group_is_charged_to_its_own_task(exact):
    values, times, failures = run_chunk(_fail_on_3000, range(5000), 10, [-1], exact=exact)
    assert list(failures) == [3000] and values[3000] is None and values[2999] == 2999
    assert values[3001:] == list(range(3001, 5000))
    assert len(values) == len(times) == 5000


class _Stop:
    cancel = False


@pytest.mark.timeout(30)
def test_a_stop_request_ends_the_chunk_after_the_running_task_with_its_times():
    stop = _Stop()

    def task(n: int) -> int:
        if n == 1234:
            stop.cancel = True
        return n

    values, times, _ = run_chunk(task, range(5000), 0, [-1], stop=stop, exact=True)
    assert values == list(range(1235)) and len(times) == 1235


@pytest.mark.timeout(30)
def test_without_exact_a_stop_request_ends_the_chunk_after_the_running_group():
    stop = _Stop()

    def task(n: int) -> int:
        if n == 1234:
            stop.cancel = True
        return n

    values, times, _ = run_chunk(task, range(5000), 0, [-1], stop=stop)
    assert 1235 <= len(values) < 5000 and values == list(range(len(values)))
    assert len(times) == len(values)


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
    first, values, unpacked, failures, _ = ChunkReply.decode(reply)
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
