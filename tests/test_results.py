"""ezpool.results: Results is a plain dict with timings attached, and it travels."""

from __future__ import annotations

import copy as copy_module
import pickle
from array import array

import pytest

from ezpool import EzPoolError, Pool, Results, TaskOutcome
from ezpool._core.records import Batch, GroupTimes
from ezpool.results import ResultsBuilder
from tests import _helpers as h


@pytest.fixture
def mixed_results() -> Results:
    with Pool(progress=False) as pool:
        return pool.smap(h.fail_on_odd, [4, 1, 2, 3])


def test_results_is_a_dict(mixed_results):
    assert isinstance(mixed_results, dict)
    assert list(mixed_results) == [4, 1, 2, 3]
    assert mixed_results[4] == 4 and mixed_results.get(2) == 2
    assert isinstance(mixed_results[1], ValueError)
    assert dict(mixed_results)[3] is mixed_results[3]


def test_errors_elapsed_workers_and_wall_time(mixed_results):
    assert list(mixed_results.errors) == [1, 3]
    assert list(mixed_results.elapsed) == [4, 1, 2, 3]
    assert all(seconds >= 0 for seconds in mixed_results.elapsed.values())
    assert set(mixed_results.workers.values()) == {f"pid {__import__('os').getpid()}"}
    assert mixed_results.wall_time >= sum(mixed_results.elapsed.values()) > 0


def test_summary_counts_tasks_and_failures(mixed_results):
    summary = mixed_results.summary()
    assert summary.startswith("4 tasks, 2 failed, wall ")
    assert "task time" in summary


@pytest.mark.parametrize("touch_first", [False, True])
def test_results_pickle_with_their_attributes(mixed_results, touch_first):
    if touch_first:  # the lazily built views must survive pickling too
        assert mixed_results.elapsed and mixed_results.workers
    copy = pickle.loads(pickle.dumps(mixed_results))
    assert type(copy) is Results
    assert list(copy) == list(mixed_results)
    assert copy[4] == 4 and copy[2] == 2
    assert type(copy[1]) is ValueError and copy[1].args == mixed_results[1].args
    assert list(copy.errors) == [1, 3] and copy.errors[3].args == ("odd task 3",)
    assert copy.elapsed == mixed_results.elapsed
    assert copy.workers == mixed_results.workers
    assert copy.wall_time == mixed_results.wall_time
    assert copy.summary() == mixed_results.summary()
    deep = copy_module.deepcopy(mixed_results)
    assert type(deep) is Results and deep.elapsed == mixed_results.elapsed
    assert list(deep.errors) == [1, 3]


def test_parallel_results_pickle_too():
    with Pool(progress=False) as pool:
        results = pool.pmap(h.fail_on_odd, range(6), ncpu=2, start_method="fork")
    copy = pickle.loads(pickle.dumps(results))
    assert list(copy) == list(range(6)) and list(copy.errors) == [1, 3, 5]
    assert copy.elapsed == results.elapsed and copy.workers == results.workers


def test_an_empty_results_has_empty_views():
    results = Results()
    assert results == {} and results.errors == {} and results.elapsed == {} and results.workers == {}
    assert results.summary().startswith("0 tasks, 0 failed")
    assert pickle.loads(pickle.dumps(results)).elapsed == {}


def test_task_outcome_holds_what_hooks_need():
    outcome = TaskOutcome(("a", 1), ValueError("x"), 0.25, "pid 1", True)
    assert (outcome.task, outcome.elapsed, outcome.worker, outcome.failed) == (("a", 1), 0.25, "pid 1", True)
    assert "failed" in repr(outcome) and "('a', 1)" in repr(outcome)
    assert "ok" in repr(TaskOutcome(1, 2, 0.0, "pid 1", False))


def test_the_builder_puts_batches_that_arrive_in_any_order_in_task_order():
    keys = ["a", "b", "c", "d", "e"]
    builder = ResultsBuilder(keys)
    error = KeyError("c")
    builder.add(Batch(3, [3, 4], [0.3, 0.4], set(), "w2"))
    builder.add(Batch(0, [0], [0.0], set(), "w1"))
    builder.add(Batch(1, [1, error], [0.1, 0.2], {1}, "w1"))
    results = builder.finish(1.5)
    assert list(results.items()) == [("a", 0), ("b", 1), ("c", error), ("d", 3), ("e", 4)]
    assert results.errors == {"c": error}
    assert results.elapsed == {"a": 0.0, "b": 0.1, "c": 0.2, "d": 0.3, "e": 0.4}
    assert results.workers == {"a": "w1", "b": "w1", "c": "w1", "d": "w2", "e": "w2"}
    assert results.wall_time == 1.5


def test_the_builder_refuses_missing_or_repeated_tasks():
    builder = ResultsBuilder([1, 2, 3])
    builder.add(Batch(0, [1], [0.0], set(), "w"))
    with pytest.raises(EzPoolError):
        builder.finish(0.0)
    builder = ResultsBuilder([1, 2])
    with pytest.raises(EzPoolError):
        builder.add(Batch(0, [1, 2], [0.0, 0.0], set(), "w"))
        builder.add(Batch(0, [1, 2], [0.0, 0.0], set(), "w"))
        builder.finish(0.0)


def test_run_times_are_put_in_task_order_only_when_read():
    keys = ["a", "b", "c", "d", "e"]
    grouped = GroupTimes()
    grouped.add(1, 0.5)
    grouped.add(2, 0.25)
    builder = ResultsBuilder(keys)
    builder.add(Batch(2, [2, 3, 4], grouped, set(), "w2"))
    builder.add(Batch(0, [0, 1], array("d", [0.1, 0.2]), set(), "w1"))
    results = builder.finish(1.0)
    assert results._flat_times is None  # nothing assembled yet
    assert results.elapsed == {"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.25, "e": 0.25}
    assert "5 tasks" in results.summary() and "task time 1.300 s" in results.summary()
    again = pickle.loads(pickle.dumps(results))
    assert again.elapsed == results.elapsed and again.workers["e"] == "w2"


def test_partial_results_keep_the_run_times_of_what_was_reported():
    builder = ResultsBuilder([0, 1, 2, 3])
    builder.add(Batch(2, [4, 9], [0.2, 0.3], set(), "w"))
    partial = builder.partial(0.5)
    assert dict(partial) == {2: 4, 3: 9} and partial.elapsed == {2: 0.2, 3: 0.3}


def test_the_dict_fills_as_batches_come_in_order_and_partial_adds_the_early_ones():
    builder = ResultsBuilder(range(6))
    builder.add(Batch(0, [0, 1], [0.0, 0.0], set(), "w1"))
    assert dict(builder._results) == {0: 0, 1: 1}  # in the dict before the call ends
    builder.add(Batch(4, [16, 25], [0.0, 0.0], set(), "w2"))  # early: waits for 2..3
    assert len(builder._results) == 2
    partial = builder.partial(0.1)
    assert list(partial.items()) == [(0, 0), (1, 1), (4, 16), (5, 25)]
    builder.add(Batch(2, [4, ValueError("3")], [0.0, 0.0], {1}, "w1"))
    results = builder.finish(0.2)
    assert list(results) == list(range(6)) and results[5] == 25 and list(results.errors) == [3]


@pytest.mark.parametrize("keys", [range(5), range(3, 8), range(10, 0, -2)])
def test_results_of_a_range_pair_each_task_with_its_own_value(keys):
    builder = ResultsBuilder(keys)
    values = [key * key for key in keys]
    builder.add(Batch(2, values[2:], [0.0] * 3, set(), "w"))
    builder.add(Batch(0, values[:2], [0.0] * 2, set(), "w"))
    results = builder.finish(0.1)
    assert list(results.items()) == [(key, key * key) for key in keys]
