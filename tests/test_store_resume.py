"""Resuming from a store: a range of tasks stored as ranges and found by arithmetic (``ezpool.store.spans``),
outcomes read back a row at a time, mixed with rows of other tasks, and stores of the format before."""

from __future__ import annotations

import contextlib
import sqlite3
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ezpool.store.index as index_module
import ezpool.store.sweep as sweep_module
from ezpool import open_store
from ezpool.store import Store
from ezpool.store.database import SCHEMA_VERSION
from tests import _helpers as h


def _sql(path, statement):
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(statement).fetchall()


def _no_keys(monkeypatch):
    """Make computing a task key fail the test."""
    def refused(*args):
        raise AssertionError("a task key was computed")

    for module in (index_module, sweep_module):
        for name in ("task_key", "task_keys"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refused)


@pytest.mark.timeout(60)
def test_a_range_is_stored_as_a_range_and_resumed_without_a_task_key(local_pool, tmp_path, monkeypatch):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    fun = partial(h.record_call, str(calls))
    first = local_pool.map(fun, range(3000), store=store)
    # A row's tasks are the pickle of a range: a few bytes, whatever the number of tasks.
    assert _sql(store, "SELECT max(length(tasks)) FROM batches")[0][0] < 64
    with monkeypatch.context() as patch:
        _no_keys(patch)
        again = local_pool.map(fun, range(3000), store=store)
        assert again == first and list(again) == list(range(3000))
        assert again.elapsed == first.elapsed and again.workers == first.workers
        more = local_pool.map(fun, range(1000, 5000), store=store)  # the first 2000 stored: only the rest run
    assert more == {n: n for n in range(1000, 5000)} and list(more) == list(range(1000, 5000))
    assert sum(h.calls(calls).values()) == 5000 and set(h.calls(calls).values()) == {1}


@pytest.mark.timeout(60)
def test_a_resume_over_ranges_lists_and_strings_gives_exactly_the_computed_results(local_pool, tmp_path):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    fun = partial(h.record_call, str(calls))
    local_pool.map(fun, range(0, 40), store=store)
    local_pool.map(fun, range(100, 60, -2), store=store)
    # 39.0 and True are stored as 39 and 1
    local_pool.map(fun, [45, "a", 39.0, frozenset({1, 2}), 50, True], store=store)
    local_pool.map(fun, range(200, 300, 7), store=store)
    tasks = [*range(0, 120), "a", "b", frozenset({2, 1}), *range(200, 300, 7)]
    results = local_pool.map(fun, tasks, store=store)
    assert results == {task: task for task in tasks} and list(results) == tasks
    assert {repr(t) for t in results} <= set(h.calls(calls))
    assert set(h.calls(calls).values()) == {1}  # each task ran once, over the five calls
    resumed = local_pool.map(fun, range(0, 120), store=store)
    assert resumed == {n: n for n in range(120)} and list(resumed) == list(range(120))
    assert set(h.calls(calls).values()) == {1}
    assert open_store(store) == {task: task for task in [*tasks, 45, 39.0, 50, True]}


@pytest.mark.timeout(60)
def test_a_store_of_the_format_before_resumes_and_is_marked_as_of_this_format(
    local_pool, tmp_path, monkeypatch
):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    fun = partial(h.record_call, str(calls))
    with Store(store) as opened:  # the rows format 3 held: tasks as a list, a run time a task
        sweep = opened.sweep(fun)
        for start in range(0, 500, 100):
            sweep.record(list(range(500)), start, list(range(start, start + 100)), [0.25] * 100, (), "pid 7")
    _sql(store, "PRAGMA user_version = 3")
    with monkeypatch.context() as patch:
        _no_keys(patch)  # lists of tasks equal to a range are matched as that range
        results = local_pool.map(fun, range(600), store=store)
    assert results == {n: n for n in range(600)} and list(results) == list(range(600))
    assert h.calls(calls) == {repr(n): 1 for n in range(500, 600)}
    assert results.elapsed[3] == 0.25 and results.workers[3] == "pid 7"
    assert _sql(store, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(4,)]
    again = open_store(store)
    assert again == results and list(again)[:500] == list(range(500))  # in the order first recorded


# --- the arithmetic of ranges against a reference ---

bounds = st.integers(-20, 20)
stored_ranges = st.lists(
    st.tuples(bounds, bounds, st.sampled_from([1, 1, 1, 2, 3, -1, -2]), st.booleans()), min_size=1, max_size=6
)


@settings(deadline=None, max_examples=150)
@given(stored_ranges, st.tuples(st.integers(-25, 25), st.integers(-25, 25), st.sampled_from([1, 2, -1, 3])),
       st.booleans(), st.booleans())
def test_ranges_over_each_other_are_found_as_a_dict_of_the_latest_would(rows, wanted, then_a_list, as_list):
    """Rows of ranges, or of lists equal to ranges (``as_list``: some as floats), looked up by a range
    or a list, over each other and with a row of other tasks, find what a dict of the latest would."""
    import tempfile
    from pathlib import Path

    expected: dict[int, tuple[object, str, bool]] = {}  # task -> its latest (value, worker, failed)
    with tempfile.TemporaryDirectory() as directory, Store(Path(directory, "s.db")) as store:
        sweep = store.sweep(h.square)
        for number, (start, stop, step, listed) in enumerate(rows):
            tasks = range(start, stop, step)
            values: list[object] = [(number, task) for task in tasks]
            if len(values) > 1:  # the second task of each row failed
                values[1] = ValueError(f"row {number} task {tasks[1]}")
            given = [float(task) if task % 2 else task for task in tasks] if listed else tasks
            sweep.record(given, 0, values, [0.5] * len(values), {1}, f"row {number}")
            for offset, task in enumerate(tasks):
                failed = offset == 1
                value = ("error", str(values[1])) if failed else values[offset]
                expected[task] = (value, f"row {number}", failed)
        if then_a_list:  # a row of other tasks: every row is keyed from then on
            sweep.record([0.0, "x"], 0, [("list", 0), ("list", 1)], [0.5, 0.5], (), "list")
            expected[0] = (("list", 0), "list", False)
        query = range(*wanted)
        found = sweep.found(list(query) if as_list else query)
        looked_up = sweep.lookup(list(query) if as_list else query)

    def seen(value: object, failed: bool) -> object:
        return ("error", str(value)) if failed and isinstance(value, ValueError) else value

    positions = {}
    for batch in found:
        assert batch.stored and len(batch.elapsed) == len(batch.values)
        for offset, value in enumerate(batch.values):
            failed = offset in batch.failed
            positions[batch.start + offset] = (seen(value, failed), batch.worker, failed)
    assert [batch.start for batch in found] == sorted(batch.start for batch in found)
    want = {position: expected[task] for position, task in enumerate(query) if task in expected}
    assert positions == want
    assert {p: (seen(o.value, o.failed), o.worker, o.failed) for p, o in looked_up.items()} == want


@pytest.mark.timeout(60)
def test_imap_resumes_a_range_from_the_store_and_runs_only_the_rest(local_pool, tmp_path, monkeypatch):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    fun = partial(h.record_call, str(calls))
    local_pool.map(fun, range(0, 2000), store=store)
    local_pool.map(fun, range(3000, 3500), store=store)
    with monkeypatch.context() as patch:
        _no_keys(patch)
        outcomes = list(local_pool.imap(fun, range(4000), store=store, ordered=True, buffersize=700))
    assert [(outcome.task, outcome.value) for outcome in outcomes] == [(n, n) for n in range(4000)]
    assert h.calls(calls) == {repr(n): 1 for n in range(4000)}
    local_pool.map(fun, range(5000, 6000, 2), store=store)  # another step: matched by keys
    outcomes = list(local_pool.imap(fun, range(3500, 6000), store=store))
    assert sorted((o.task, o.value) for o in outcomes) == [(n, n) for n in range(3500, 6000)]
    assert h.calls(calls) == {repr(n): 1 for n in range(6000)}


def test_found_cuts_its_batches_at_rows_whether_matched_by_ranges_or_by_keys(tmp_path):
    with Store(tmp_path / "s.db") as store:
        sweep = store.sweep(h.square)
        sweep.record(range(5), 0, [0, 1, 4, 9, 16], [0.5] * 5, (), "pid 1")
        sweep.record([5, 6, 7], 0, [25, 36, 49], [0.25] * 3, (), "pid 2")  # a list equal to a range
        by_ranges = [(b.start, b.values, b.worker, list(b.elapsed)) for b in sweep.found(range(8))]
        sweep.record(["x"], 0, ["y"], [1.0], (), "pid 3")  # a row of other tasks: keyed from now on
        by_keys = [(b.start, b.values, b.worker, list(b.elapsed)) for b in sweep.found([*range(8), "x"])]
    assert by_ranges == [(0, [0, 1, 4, 9, 16], "pid 1", [0.5] * 5), (5, [25, 36, 49], "pid 2", [0.25] * 3)]
    assert by_keys == [*by_ranges, (8, ["y"], "pid 3", [1.0])]


steps = st.sampled_from([1, 1, 2, -1, 3])
recorded = st.tuples(st.just("record"), bounds, bounds, steps)
operations = st.lists(st.one_of(recorded, st.just(("forget",))), min_size=1, max_size=8)


@settings(deadline=None, max_examples=120)
@given(operations, st.tuples(st.integers(-25, 25), st.integers(-25, 25), steps))
def test_failures_forgotten_among_ranges_are_forgotten_as_a_dict_would(operations, wanted):
    """retry_failed over ranges: the failures forgotten (and recorded again) are what a dict of the
    latest outcomes would hold, found by ranges, read again from the file, and keyed for results."""
    import tempfile
    from pathlib import Path

    def seen(value: object) -> object:
        return ("error", str(value)) if isinstance(value, ValueError) else value

    def positions(found) -> dict:
        return {batch.start + offset: (seen(value), batch.worker, offset in batch.failed)
                for batch in found for offset, value in enumerate(batch.values)}

    model: dict[int, tuple[object, str, bool]] = {}  # task -> latest (value, worker, failed), in first order
    query = range(*wanted)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "s.db")
        with Store(path) as store:
            sweep = store.sweep(h.square)
            for number, operation in enumerate(operations):
                if operation[0] == "forget":
                    gone = [task for task, (_, _, failed) in model.items() if failed]
                    assert sweep.forget_failed() == len(gone)
                    for task in gone:
                        del model[task]
                    continue
                tasks = range(*operation[1:])
                values = [ValueError(f"{number} {t}") if t % 3 == 0 else (number, t) for t in tasks]
                failed = {offset for offset, task in enumerate(tasks) if task % 3 == 0}
                sweep.record(tasks, 0, values, [0.5] * len(values), failed, f"row {number}")
                for task, value in zip(tasks, values):
                    model[task] = (seen(value), f"row {number}", task % 3 == 0)
            live = positions(sweep.found(query))
        with Store(path) as store:  # read again from the file: the forgotten rows replayed
            sweep = store.sweep(h.square)
            again = positions(sweep.found(query))
            results = sweep.results()
            keyed = positions(sweep.found(query))
    want = {position: model[task] for position, task in enumerate(query) if task in model}
    assert live == again == keyed == want
    assert list(results) == list(model)
    assert {task: seen(value) for task, value in results.items()} == {t: v for t, (v, _, _) in model.items()}
