"""The contract: behaviour every mode must have, run through the public API.

Each test takes ``mode_map``, a callable ``(fun, tasks, **options) -> Results``
bound to a ``Pool`` of one mode; through the ``mode`` fixture (``tests/modes.py``)
every test runs once per mode, and a mode added there joins this suite. The pool
is module-scoped (one per mode for this file). The functions given to the pool
come from ``tests._helpers`` or this module, both importable by worker processes,
plus lambdas and closures (which travel by value).
"""

from __future__ import annotations

import os
import random
import threading
import time
import traceback
from functools import partial
from typing import Any

import pytest

from ezpool import Pool, RemoteError, RemoteTraceback, Results, TaskOutcome
from tests import _helpers as h
from tests.modes import Mode


class ModeMap:
    """``pool.map`` of one mode's pool, with the mode attached."""

    def __init__(self, mode: Mode, pool: Pool) -> None:
        self.mode = mode.name
        self.remote = mode.remote
        self._pool = pool

    def __call__(self, fun: Any, tasks: Any, **options: Any) -> Results:
        return self._pool.map(fun, tasks, **options)

    def imap(self, fun: Any, tasks: Any, **options: Any) -> Any:
        return self._pool.imap(fun, tasks, **options)

    def __repr__(self) -> str:
        return f"ModeMap({self.mode!r})"


@pytest.fixture(scope="module")
def _contract_pool(mode: Mode):
    pool = mode.pool()
    try:
        yield mode, pool
    finally:
        pool.shutdown()


@pytest.fixture
def mode_map(_contract_pool) -> ModeMap:
    mode, pool = _contract_pool
    return ModeMap(mode, pool)


def cube(x: int) -> int:
    """A function defined in the test module itself."""
    return x**3


def test_returns_a_results_dict_from_task_to_value(mode_map):
    results = mode_map(h.square, [3, 1, 2])
    assert isinstance(results, Results) and isinstance(results, dict)
    assert results == {3: 9, 1: 1, 2: 4}
    assert results.errors == {}


def test_keys_follow_the_given_order_when_tasks_finish_out_of_order(mode_map):
    finished: list[float] = []
    tasks = [1.2, 0.03, 0.02, 0.01]  # the first sleeps longest: it finishes last in parallel
    results = mode_map(h.nap, tasks, progress=lambda outcome, done, total: finished.append(outcome.task))
    assert list(results) == tasks
    assert results == {t: t for t in tasks}
    assert sorted(finished) == sorted(tasks)
    if mode_map.remote:
        assert finished[0] != 1.2, "the tasks did not finish out of order; the test proves nothing"


def test_keys_follow_the_given_order_for_many_tasks(mode_map):
    tasks = list(range(500))
    random.Random(2).shuffle(tasks)
    results = mode_map(h.square, tasks, chunksize=7)
    assert list(results) == tasks
    assert all(results[t] == t * t for t in tasks)


def test_tuple_tasks_are_unpacked(mode_map):
    results = mode_map(h.add, [(1, 2), (10, 20), ("a", "b")])
    assert results == {(1, 2): 3, (10, 20): 30, ("a", "b"): "ab"}
    assert mode_map(h.arguments, [(), (1,)]) == {(): (), (1,): (1,)}


def test_strings_named_tuples_and_other_tasks_are_passed_whole(mode_map):
    point = h.Point(1, 2)
    tasks = ["abc", point, frozenset({1}), 5, None]
    results = mode_map(h.arguments, tasks)
    assert results == {task: (task,) for task in tasks}
    assert type(results[point][0]) is h.Point


def test_a_generator_of_tasks_works(mode_map):
    results = mode_map(h.square, (n for n in range(6)))
    assert results == {n: n * n for n in range(6)}


def test_a_duplicate_task_is_computed_once(mode_map, tmp_path):
    results = mode_map(partial(h.record_call, str(tmp_path)), [3, 1, 3, 2, 1, 3])
    assert list(results) == [3, 1, 2]
    assert h.calls(tmp_path) == {"3": 1, "1": 1, "2": 1}


def test_an_unhashable_task_is_a_type_error_naming_it_before_any_task_runs(mode_map, tmp_path):
    with pytest.raises(TypeError, match=r"\[2, 'x'\]"):
        mode_map(partial(h.record_call, str(tmp_path)), [1, [2, "x"], 3])
    assert h.calls(tmp_path) == {}


def test_a_failing_task_holds_its_exception_and_the_others_complete(mode_map):
    results = mode_map(h.fail_on_odd, range(10))
    assert list(results) == list(range(10))
    for n in range(0, 10, 2):
        assert results[n] == n
    for n in range(1, 10, 2):
        assert isinstance(results[n], ValueError) and str(results[n]) == f"odd task {n}"
    assert list(results.errors) == [1, 3, 5, 7, 9]
    assert all(results.errors[n] is results[n] for n in results.errors)


def test_errors_is_empty_when_nothing_failed(mode_map):
    assert mode_map(h.fail_on_odd, [0, 2, 4]).errors == {}


def test_elapsed_is_each_tasks_own_run_time(mode_map):
    results = mode_map(h.nap, [0.3, 0.0, 0.01])
    assert set(results.elapsed) == {0.3, 0.0, 0.01}
    assert all(seconds > 0 for seconds in results.elapsed.values())
    assert 0.25 <= results.elapsed[0.3] < 10
    assert results.elapsed[0.0] < 0.25  # its own time, not the call's


def test_progress_hook_gets_every_outcome_in_the_calling_process(mode_map):
    seen: list[tuple[TaskOutcome, int, int, int]] = []
    tasks = list(range(12))

    def hook(outcome, done, total):
        seen.append((outcome, done, total, os.getpid()))

    results = mode_map(h.fail_on_odd, tasks, progress=hook)
    assert [done for _, done, _, _ in seen] == list(range(1, 13))
    assert {total for _, _, total, _ in seen} == {12}
    assert {pid for _, _, _, pid in seen} == {os.getpid()}
    outcomes = {outcome.task: outcome for outcome, _, _, _ in seen}
    assert sorted(outcomes) == tasks
    for task, outcome in outcomes.items():
        assert isinstance(outcome, TaskOutcome)
        assert outcome.value is results[task]
        assert outcome.failed is (task in results.errors)
        assert outcome.elapsed == results.elapsed[task]
        assert outcome.worker == results.workers[task]
        here = f"pid {os.getpid()}"  # the serial mode's worker; the threads mode's: "thread 2 (pid N)"
        assert (outcome.worker != here) if mode_map.remote else (here in outcome.worker)


def test_an_exception_keeps_its_class_message_and_where_it_was_raised(mode_map):
    results = mode_map(h.raise_custom, ["boom 42"])
    error = results["boom 42"]
    assert type(error) is h.CustomError
    assert str(error) == "boom 42"
    printed = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert "_helpers.py" in printed and "raise_custom" in printed
    if mode_map.remote:
        assert isinstance(error.__cause__, RemoteTraceback)
        assert "_helpers.py" in error.__cause__.traceback_text
        assert 'raise CustomError(message)' in str(error.__cause__)


@pytest.mark.parametrize(
    ("fun", "type_name"),
    [(h.raise_unpicklable, "UnpicklableError"), (h.raise_unrebuildable, "UnrebuildableError")],
)
def test_an_exception_that_cannot_be_rebuilt_arrives_as_remote_error(mode_map, fun, type_name):
    results = mode_map(fun, ["no way back"])
    error = results["no way back"]
    assert list(results.errors) == ["no way back"]
    if not mode_map.remote:  # nothing crossed a process boundary: the original is kept
        assert type(error).__name__ == type_name
        return
    assert isinstance(error, RemoteError)
    assert error.type_name.endswith(type_name)
    assert error.message == "no way back"
    assert type_name in str(error) and "no way back" in str(error)
    assert "_helpers.py" in error.traceback_text and fun.__name__ in error.traceback_text


def test_lambdas_closures_and_functions_of_the_test_module_work(mode_map):
    offset = 100

    def closure(x):
        return x + offset

    assert mode_map(lambda x: x - 1, [1, 2]) == {1: 0, 2: 1}
    assert mode_map(closure, [1, 2]) == {1: 101, 2: 102}
    assert mode_map(cube, [2, 3]) == {2: 8, 3: 27}


def test_no_tasks_give_empty_results(mode_map):
    for empty in ([], (), iter([]), range(0)):
        results = mode_map(h.square, empty)
        assert isinstance(results, Results)
        assert results == {} and results.errors == {} and results.elapsed == {} and results.workers == {}


def test_the_pool_is_usable_after_a_call_with_failures(mode_map):
    mode_map(h.fail_on_odd, range(5))
    assert mode_map(h.square, [7]) == {7: 49}


@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_serial_mode_never_swallows_keyboard_interrupt_or_system_exit(exception, tmp_path):
    record = partial(h.record_call, str(tmp_path))

    def fun(task):
        if task == "stop":
            h.raise_base(exception.__name__)
        return record(task)

    with Pool("serial", progress=False) as pool, pytest.raises(exception):
        pool.map(fun, [1, "stop", 2])
    assert h.calls(tmp_path) == {"1": 1}  # the task after it never ran


def test_a_returned_exception_is_a_value_not_a_failure(mode_map):
    results = mode_map(h.make_error, ["given back"])
    assert type(results["given back"]) is ValueError and results["given back"].args == ("given back",)
    assert results.errors == {}


def test_many_small_tasks_all_arrive_in_order(mode_map):
    results = mode_map(h.square, range(20_000))
    assert len(results) == 20_000 and list(results)[:3] == [0, 1, 2]
    assert all(results[n] == n * n for n in range(0, 20_000, 997))
    assert results.errors == {} and len(results.elapsed) == 20_000


def test_an_exception_in_the_progress_hook_reaches_the_caller_and_the_pool_still_works(mode_map):
    def hook(outcome, done, total):
        if done == 2:
            raise LookupError("the hook failed")

    with pytest.raises(LookupError, match="the hook failed"):
        mode_map(h.nap, [0.05, 0.01, 0.02, 0.03], progress=hook)
    assert mode_map(h.square, [5, 6]) == {5: 25, 6: 36}


def test_an_exception_whose_str_fails_is_still_stored_in_its_slot(mode_map):
    results = mode_map(h.raise_bad_str, [1, 2])
    assert list(results.errors) == [1, 2]
    assert type(results[1]) is h.BadStrError and results[1].args == (1,)


def test_all_tasks_are_read_before_any_task_runs(mode_map, tmp_path):
    def tasks():
        yield 1
        yield 2
        raise OSError("the task source broke")

    with pytest.raises(OSError, match="the task source broke"):
        mode_map(partial(h.record_call, str(tmp_path)), tasks())
    assert h.calls(tmp_path) == {}


def test_progress_counts_distinct_tasks(mode_map):
    totals: set[int] = set()
    dones: list[int] = []

    def hook(outcome, done, total):
        totals.add(total)
        dones.append(done)

    mode_map(h.square, [2, 1, 2, 2, 1], progress=hook)
    assert totals == {2} and dones == [1, 2]


# --- imap: the same outcomes, streamed --------------------------------------------------


class Counted:
    """An iterable of tasks that counts how far it has been read."""

    def __init__(self, tasks: Any) -> None:
        self.tasks = list(tasks)
        self.pulled = 0

    def __iter__(self):
        for task in self.tasks:
            self.pulled += 1
            yield task


def test_imap_yields_every_outcome_once(mode_map):
    outcomes = list(mode_map.imap(h.fail_on_odd, (n for n in range(40)), chunksize=3))
    assert sorted(outcome.task for outcome in outcomes) == list(range(40))
    for outcome in outcomes:
        assert isinstance(outcome, TaskOutcome)
        assert outcome.failed == (outcome.task % 2 == 1)
        if outcome.failed:
            assert isinstance(outcome.value, ValueError)
        else:
            assert outcome.value == outcome.task
        assert outcome.elapsed >= 0 and outcome.worker


def test_imap_ordered_follows_the_tasks_even_when_they_finish_out_of_order(mode_map):
    tasks = [0.6, 0.01, 0.02, 0.0, 0.3, 0.01]
    finished: list[float] = []
    hook = lambda outcome, done, total: finished.append(outcome.task)  # noqa: E731
    outcomes = list(mode_map.imap(h.nap, iter(tasks), ordered=True, chunksize=1, progress=hook))
    assert [outcome.task for outcome in outcomes] == tasks
    assert [outcome.value for outcome in outcomes] == tasks
    if mode_map.remote:
        assert finished[0] != 0.6, "the tasks did not finish out of order; the test proves nothing"


def test_imap_reads_lazily_and_holds_at_most_buffersize(mode_map):
    source = Counted(range(300))
    received = 0
    for _ in mode_map.imap(h.square, source, buffersize=16):
        received += 1
        assert source.pulled - received < 16
    assert received == 300 and source.pulled == 300


#: Workers of each contract pool (``Mode.pool``), and most chunks each holds at once.
_WORKERS, _HELD = 2, 2


def test_imap_stops_the_work_when_the_loop_breaks(mode_map, tmp_path):
    """Half-second tasks on two workers; the loop breaks at the first outcome. What runs
    then may end, but no other task starts: had the work gone on, all eight tasks read
    would have started before the check."""
    seconds = 0.5
    source = Counted(range(10_000))
    fun = partial(h.record_then_nap, str(tmp_path), seconds=seconds)
    for outcome in mode_map.imap(fun, source, chunksize=1, buffersize=8):
        assert outcome.value == outcome.task
        break
    broke = time.monotonic()
    assert source.pulled <= 8
    assert mode_map(h.square, [1, 2, 3]) == {1: 1, 2: 4, 3: 9}  # the pool goes on
    # Nothing signals that a task did not start: watch for as long as the eight would
    # have taken to start on two workers (4 rounds), with a round to spare.
    time.sleep(max(0.0, broke + 4 * seconds - time.monotonic()))
    started = len(list(tmp_path.iterdir()))
    assert started <= _WORKERS * _HELD, f"{started} tasks started after the loop broke"


def test_imap_hands_on_what_finished_before_the_iterable_failed(mode_map):
    def tasks():
        yield from range(5)
        raise LookupError("the input file ends early")

    seen: list[int] = []
    with pytest.raises(LookupError, match="ends early"):
        for outcome in mode_map.imap(h.square, tasks(), buffersize=100):
            seen.append(outcome.task)
    assert set(seen) <= set(range(5))
    assert mode_map(h.square, [4]) == {4: 16}


def test_imap_runs_a_repeated_task_each_time(mode_map):
    outcomes = list(mode_map.imap(h.square, [3, 3, 2, 3], ordered=True))
    assert [(outcome.task, outcome.value) for outcome in outcomes] == [(3, 9), (3, 9), (2, 4), (3, 9)]


def test_imap_of_nothing_yields_nothing(mode_map):
    assert list(mode_map.imap(h.square, iter(()))) == []


def test_imap_progress_total_is_known_only_for_sized_tasks(mode_map):
    totals: set[Any] = set()
    hook = lambda outcome, done, total: totals.add(total)  # noqa: E731
    list(mode_map.imap(h.square, [1, 2, 3], progress=hook))
    list(mode_map.imap(h.square, (n for n in range(3)), progress=hook))
    assert totals == {3, None}


# --- context: one object every call gets first --------------------------------------


def test_the_context_is_the_first_argument_of_every_call(mode_map):
    results = mode_map(h.arguments, [(1, 2), 3, "ab"], context="ctx")
    assert results == {(1, 2): ("ctx", 1, 2), 3: ("ctx", 3), "ab": ("ctx", "ab")}


def test_imap_gives_the_context_too(mode_map):
    outcomes = list(mode_map.imap(h.add, [1, 2, 3], context=10, ordered=True))
    assert [outcome.value for outcome in outcomes] == [11, 12, 13]


def test_a_context_changed_between_calls_is_seen_by_the_next_call(mode_map):
    scale = {"by": 2}
    fun = lambda context, x: context["by"] * x  # noqa: E731
    assert mode_map(fun, [1, 2], context=scale) == {1: 2, 2: 4}
    scale["by"] = 3
    assert mode_map(fun, [1, 2], context=scale) == {1: 3, 2: 6}
    assert mode_map(h.square, [3]) == {3: 9}  # and a call without one has none


def test_a_context_that_cannot_be_sent_is_refused_by_name_before_any_task_runs(mode_map, tmp_path):
    lock = threading.Lock()
    fun = partial(h.record_call, str(tmp_path))
    if not mode_map.remote:  # the serial mode passes it as it is
        assert mode_map(lambda context, x: context is lock, [1], context=lock) == {1: True}
        return
    with pytest.raises(TypeError, match=r"context <unlocked _thread\.lock"):
        mode_map(lambda context, x: fun(x), [1, 2], context=lock)
    assert list(tmp_path.iterdir()) == []
