"""ezpool.store: task keys, sweeps and their identity, outcomes kept across processes, the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import math
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ezpool.store.batches as batches_module
import ezpool.store.index as index_module
import ezpool.store.sweep as sweep_module
from ezpool import BaseWorker, RemoteError, RemoteTraceback, ResultNotSerializable, Results, open_store
from ezpool.errors import StoreError, StoreMismatch
from ezpool.store import Store, StoredOutcome
from ezpool.store.identity import identity, sweep_name
from ezpool.store.keys import task_key
from tests import _helpers as h
from tests.conftest import read_lines

# --- functions whose outcomes the tests store ---


def _version_one(x):
    return x + 1


def _version_two(x):
    return x + 2


_version_two.__qualname__ = _version_two.__name__ = "_version_one"  # the same name, other code


def _adder(offset):
    def add(x):
        return x + offset

    return add


def _member_of(names):
    def member(x):
        return x in names

    return member


def _limited(limit):
    class Limited(BaseWorker):
        LIMIT = limit

        def run(self, x):
            return min(x, self.LIMIT)

    return Limited


class _Scaler:
    factor = 3

    def scale(self, x):
        return x * self.factor

    def __call__(self, x):
        return x * self.factor


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass(frozen=True)
class Frozen:
    name: str
    size: int


# --- helpers ---


def _raised(fun, *args) -> BaseException:
    try:
        fun(*args)
    except Exception as exc:
        return exc
    raise AssertionError("it did not raise")


def _sql(path, statement):
    """Run one statement on the file with a connection of its own; its rows."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(statement).fetchall()


def _tamper(path, batch_id, column, value, sign=True):
    """Set one column of a batch row, and sign the row again with the user's key unless not ``sign``."""
    from ezpool.security import resolve_key
    from ezpool.store.signing import Signer

    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"UPDATE batches SET {column} = ? WHERE id = ?", (value, batch_id))
        if sign:
            (salt,) = db.execute("SELECT salt FROM signing").fetchone()
            columns = "sweep, tasks, outcome, layout, elapsed, failed, worker, recorded"
            row = db.execute(f"SELECT {columns} FROM batches WHERE id = ?", (batch_id,)).fetchone()
            mac = Signer(resolve_key(), salt).batch(*row)
            db.execute("UPDATE batches SET mac = ? WHERE id = ?", (mac, batch_id))


def _record(sweep_, tasks, values, failed=(), elapsed=None, worker="pid 1", start=0):
    elapsed = [0.01] * len(values) if elapsed is None else elapsed
    sweep_.record(tasks, start, values, elapsed, frozenset(failed), worker)


def _variant(task):
    """An object equal to ``task`` as a dict key, built differently: 1 -> True, 2 -> 2.0, ..."""
    if isinstance(task, bool):
        return float(task)
    if isinstance(task, int):
        if task in (0, 1):
            return bool(task)
        return float(task) if abs(task) < 2**53 else Decimal(task)
    if isinstance(task, float):
        if math.isinf(task):
            return task
        return int(task) if task.is_integer() else Fraction(task)
    if isinstance(task, tuple):
        return tuple(_variant(item) for item in task)
    if isinstance(task, frozenset):
        return frozenset(_variant(item) for item in reversed(list(task)))
    if isinstance(task, bytes):
        return bytes(bytearray(task))
    if isinstance(task, str):
        return "".join(list(task))
    return task


def _shape(task):
    """What tells apart equal tasks of other types (1 and 1.0, 0.0 and -0.0), nested."""
    if isinstance(task, tuple):
        return ("tuple", [_shape(item) for item in task])
    if isinstance(task, frozenset):
        return ("frozenset", sorted((_shape(item) for item in task), key=repr))
    if isinstance(task, float):
        return ("float", task.hex())
    return (type(task).__name__, repr(task))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.floats(allow_nan=False, min_value=-3, max_value=3),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.text(min_size=30, max_size=40),
    st.binary(max_size=3),
)
hashables = st.recursive(
    scalars,
    lambda inner: st.one_of(st.tuples(inner, inner), st.tuples(), st.frozensets(inner, max_size=3)),
    max_leaves=8,
)


# --- task keys ---


@settings(deadline=None, max_examples=300)
@given(st.lists(hashables, max_size=12))
def test_two_tasks_share_a_key_exactly_when_they_are_equal_dict_keys(tasks):
    keys = [task_key(task) for task in tasks]
    for task, (key, findable) in zip(tasks, keys):
        assert findable
        same = _variant(task)
        assert same == task and hash(same) == hash(task)
        assert task_key(same) == (key, True), (task, same)
        for other, (other_key, _) in zip(tasks, keys):
            assert (key == other_key) == (task == other), (task, other)


@settings(deadline=None, max_examples=60)
@given(st.lists(hashables, max_size=15), st.lists(hashables, max_size=8))
def test_recorded_tasks_are_found_by_equal_tasks_only_and_come_back_as_given(given_tasks, others):
    tasks = list(dict.fromkeys(given_tasks))
    values = [("value", position) for position in range(len(tasks))]
    with tempfile.TemporaryDirectory() as directory, Store(Path(directory, "s.db")) as store:
        sweep_ = store.sweep(h.square)
        _record(sweep_, tasks, values)
        found = sweep_.lookup(tasks)
        assert {position: outcome.value for position, outcome in found.items()} == dict(enumerate(values))
        again = sweep_.lookup([_variant(task) for task in tasks])
        assert {position: outcome.value for position, outcome in again.items()} == dict(enumerate(values))
        missing = [other for other in others if other not in set(tasks)]
        assert sweep_.lookup(missing) == {}
        results = sweep_.results()
    assert results == dict(zip(tasks, values))
    assert [_shape(task) for task in results] == [_shape(task) for task in tasks]


def test_keys_of_numbers_are_their_exact_values():
    assert len({task_key(n)[0] for n in (1, 1.0, True, Fraction(1), Decimal(1), 1 + 0j, Level.LOW)}) == 1
    assert task_key(-0.0) == task_key(0)
    assert task_key(0.1) != task_key(Decimal("0.1"))  # unequal: the float is not exactly 1/10
    assert task_key(0.1) == task_key(Fraction(0.1))
    assert task_key(2**80) != task_key(float(2**80) + 2**30)
    assert task_key(float("inf")) == task_key(Decimal("Infinity")) != task_key(float("-inf"))
    assert task_key(1 + 2j) != task_key(2 + 1j)
    assert task_key("a") != task_key(b"a")
    assert task_key(()) != task_key(frozenset()) != task_key(None)
    assert task_key((1, 2)) != task_key((12,)) != task_key(((1,), 2))
    assert task_key(h.Point(1, 2)) == task_key((1, 2))  # a named tuple equals the plain tuple


def test_a_task_holding_a_nan_is_stored_but_never_found(tmp_path):
    nan = float("nan")
    assert task_key(nan)[1] is False and task_key((1, (nan,)))[1] is False
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.square)
        _record(sweep_, [nan, (1, nan), 2], ["a", "b", "c"])
        assert sweep_.lookup([nan, (1, nan), 2]) == {2: StoredOutcome("c", 0.01, "pid 1", False)}
        _record(sweep_, [nan], ["again"])  # replaced, not added
        assert store.sweeps()[0].done == 3


def test_other_hashable_tasks_are_matched_by_their_pickle(tmp_path):
    tasks = [Colour.RED, Frozen("a", 1), h.Point(3, "x"), range(3)]
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.square)
        _record(sweep_, tasks, [1, 2, 3, 4])
        found = sweep_.lookup([range(3), Frozen("a", 1), (3, "x"), Colour.RED, Frozen("a", 2)])
        assert {position: outcome.value for position, outcome in found.items()} == {0: 4, 1: 2, 2: 3, 3: 1}
        assert list(sweep_.results()) == tasks


def test_a_task_that_cannot_be_pickled_is_refused_by_name(tmp_path):
    class Local:  # pickle cannot find a class defined in a function
        pass

    task = (1, Local())
    with pytest.raises(TypeError, match=r"task \(1, <tests\.test_store.*its Local cannot be pickled"):
        task_key(task)
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.square)
        with pytest.raises(TypeError, match="Local"):
            sweep_.lookup([1, task])
        with pytest.raises(TypeError, match="Local"):
            _record(sweep_, [task], [1])


# --- outcomes ---


def test_an_exception_comes_back_with_its_type_message_and_traceback(tmp_path):
    error = _raised(h.raise_custom, "boom")
    lost = _raised(h.raise_unpicklable, "lost")
    with Store(tmp_path / "s.db") as store:
        _record(store.sweep(h.raise_custom), ["boom", "lost", "fine"], [error, lost, None], failed={0, 1})
    results = open_store(tmp_path / "s.db")
    assert set(results.errors) == {"boom", "lost"} and results["fine"] is None
    rebuilt = results["boom"]
    assert type(rebuilt) is h.CustomError and rebuilt.args == ("boom",)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    text = rebuilt.__cause__.traceback_text
    assert "raise_custom" in text and "_helpers.py" in text
    assert isinstance(results["lost"], RemoteError) and results["lost"].type_name.endswith("UnpicklableError")
    assert "raise_unpicklable" in results["lost"].traceback_text


def test_a_value_that_cannot_be_pickled_is_stored_as_result_not_serializable(tmp_path):
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.lock_on)
        _record(sweep_, ["locked", "plain", "lambda"], [threading.Lock(), 2, lambda: 3])
        found = sweep_.lookup(["locked", "plain", "lambda"])
    assert found[0].failed and isinstance(found[0].value, ResultNotSerializable)
    assert "'locked'" in str(found[0].value) and "lock" in str(found[0].value)
    assert found[1] == StoredOutcome(2, 0.01, "pid 1", False)
    assert not found[2].failed and found[2].value() == 3  # cloudpickle takes what pickle refuses


def test_a_value_too_large_to_store_is_stored_as_result_not_serializable(tmp_path, monkeypatch):
    monkeypatch.setattr(batches_module, "LARGEST_VALUE", 1000)
    path = tmp_path / "s.db"
    with Store(path) as store:
        sweep_ = store.sweep(h.square)
        _record(sweep_, ["big", "small"], [b"x" * 2000, b"x" * 10])
        found = sweep_.lookup(["big", "small"])
        assert found[0].failed and isinstance(found[0].value, ResultNotSerializable)
        assert "too large" in str(found[0].value) and found[1].value == b"x" * 10
        # values that each fit but not together are split over rows, none over the limit
        _record(sweep_, ["a", "b", "c"], [b"a" * 600, b"b" * 600, b"c" * 10], failed={2})
        assert _sql(path, "SELECT max(length(outcome)) FROM batches")[0][0] <= 1000
        found = sweep_.lookup(["a", "b", "c"])
    assert [found[n].value for n in (0, 1, 2)] == [b"a" * 600, b"b" * 600, b"c" * 10]
    assert not any(found[n].failed for n in (0, 1, 2))  # "failed" counts exceptions only


def test_results_keep_the_first_recorded_order_and_every_attribute(tmp_path):
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.fail_on_odd)
        _record(sweep_, [4, 1, 2], [4, _raised(h.fail_on_odd, 1), 2], failed={1}, elapsed=[0.5, 0.25, 1.0])
        error = _raised(h.fail_on_odd, 3)
        _record(sweep_, [3, 4], [error, 40], failed={0}, elapsed=[0.125, 2.0], worker="pid 2")
        results = sweep_.results()
    assert isinstance(results, Results)
    assert list(results) == [4, 1, 2, 3] and results[4] == 40  # re-recorded: replaced, kept its place
    assert set(results.errors) == {1, 3} and isinstance(results[3], ValueError)
    assert results.elapsed == {4: 2.0, 1: 0.25, 2: 1.0, 3: 0.125}
    assert results.workers == {4: "pid 2", 1: "pid 1", 2: "pid 1", 3: "pid 2"}
    assert results.wall_time >= 2.0  # from the start of the first task to the end of the last
    assert results.summary().startswith("4 tasks, 2 failed")


def test_a_stored_value_that_cannot_be_loaded_runs_again_and_reads_as_a_store_error(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        _record(store.sweep(h.square), [1], [1])
        _record(store.sweep(h.square), [2], [4])
    _tamper(path, 1, "outcome", b"\x00")  # the values of one record call, signed: they cannot be loaded
    with Store(path) as store:
        sweep_ = store.sweep(h.square)
        assert sorted(sweep_.lookup([1, 2])) == [1]
        results = sweep_.results()
    assert list(results.errors) == [1] and results[2] == 4
    assert isinstance(results[1], StoreError)
    assert "the stored value of task 1 cannot be loaded" in str(results[1])


def test_stored_tasks_that_cannot_be_loaded_are_left_out(tmp_path, caplog):
    path = tmp_path / "s.db"
    with Store(path) as store:
        _record(store.sweep(h.square), [1, 2], [1, 4])
        _record(store.sweep(h.square), [3], [9])
    _tamper(path, 1, "tasks", b"\x00")
    with Store(path) as store:
        sweep_ = store.sweep(h.square)
        assert sorted(sweep_.lookup([1, 2, 3])) == [2]  # 1 and 2 run again
        assert sweep_.results() == {3: 9} and store.sweeps()[0].done == 1
    assert "the tasks of a stored batch cannot be loaded, left out" in caplog.text


def test_lookup_reads_in_groups_or_whole_and_finds_the_same(tmp_path, monkeypatch):
    tasks = list(range(300))
    wanted = [7, 7.0, -1, *range(100, 120), "missing"]
    expected = {0: 49, 1: 49, **{3 + k: (100 + k) ** 2 for k in range(20)}}
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.square)
        for start in range(0, 300, 10):  # 30 rows
            _record(sweep_, tasks, [n * n for n in tasks[start : start + 10]], start=start)
        monkeypatch.setattr(index_module, "LOOKUP_GROUP", 2)
        monkeypatch.setattr(index_module, "SCAN_SHARE", 1.0)
        grouped = sweep_.lookup(wanted)  # the values of three rows, by id, two at a time
        monkeypatch.setattr(index_module, "SCAN_SHARE", 0.0)
        whole = sweep_.lookup(wanted)  # the sweep read in full
    assert grouped == whole
    assert {i: outcome.value for i, outcome in grouped.items()} == expected


def test_outcomes_are_buffered_then_committed_by_time_count_flush_and_close(tmp_path, monkeypatch):
    path = tmp_path / "s.db"
    monkeypatch.setattr(sweep_module, "COMMIT_SECONDS", 3600.0)
    monkeypatch.setattr(sweep_module, "COMMIT_ROWS", 5)

    def committed() -> int:  # tasks in committed rows: 8 bytes of run time each
        return _sql(path, "SELECT coalesce(sum(length(elapsed)), 0) / 8 FROM batches")[0][0]

    store = Store(path)
    sweep_ = store.sweep(h.square)
    _record(sweep_, range(10), [0] * 3)
    assert committed() == 0
    _record(sweep_, range(10), [0] * 2, start=3)  # five buffered: committed
    assert committed() == 5
    _record(sweep_, range(10), [0], start=5)
    sweep_.flush()
    assert committed() == 6
    monkeypatch.setattr(sweep_module, "COMMIT_SECONDS", 0.05)
    _record(sweep_, range(10), [0], start=6)
    _record(sweep_, range(10), [0], start=7)
    # Within 0.05 s both are committed: by the next record once it is due, or by the
    # timer when none comes (here, none does).
    deadline = time.monotonic() + 10
    while committed() < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert committed() == 8
    _record(sweep_, range(10), [0], start=8)
    store.close()
    assert committed() == 9
    store.close()  # twice: nothing
    with pytest.raises(StoreError, match="closed"):
        sweep_.lookup([1])
    with pytest.raises(StoreError, match="closed"):
        _record(sweep_, range(10), [0], start=9)  # refused, not buffered to be lost


def test_threads_share_one_store(tmp_path):
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.square)

        def work(first: int) -> None:
            for start in range(first, first + 500, 50):
                _record(sweep_, range(2000), list(range(start, start + 50)), start=start)

        threads = [threading.Thread(target=work, args=(first,)) for first in range(0, 2000, 500)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        found = sweep_.lookup(range(2000))
    assert {i: outcome.value for i, outcome in found.items()} == {i: i for i in range(2000)}


def test_forget_failed_deletes_only_the_failures(tmp_path):
    errors = [_raised(h.fail_on_odd, n) for n in (1, 3)]
    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.fail_on_odd)
        _record(sweep_, [0, 1, 2, 3], [0, errors[0], 2, errors[1]], failed={1, 3})
        assert sweep_.forget_failed() == 2
        assert sorted(sweep_.lookup([0, 1, 2, 3])) == [0, 2]
        assert sweep_.forget_failed() == 0
        assert store.sweeps()[0][3:] == (2, 0)


def test_forget_failed_forgets_the_task_not_only_its_last_outcome(tmp_path):
    path = tmp_path / "s.db"
    error = _raised(h.fail_on_odd, 1)
    with Store(path) as store:
        sweep_ = store.sweep(h.fail_on_odd)
        _record(sweep_, [1, 2, 3], [10, error, error], failed={1, 2})
        _record(sweep_, [1, 3], [error, 30], failed={0})  # 1 failed later, 3 succeeded later
        assert sweep_.forget_failed() == 2  # 1 and 2: their latest outcomes failed
        assert sorted(sweep_.lookup([1, 2, 3])) == [2]  # 1's earlier value does not come back
        assert store.sweeps()[0][3:] == (1, 0)
        _record(sweep_, [2, 1], [20, 11])
        assert list(sweep_.results()) == [3, 2, 1]  # forgotten, then recorded again: last
    with Store(path) as store:  # read again from the file: the same
        sweep_ = store.sweep(h.fail_on_odd)
        assert sweep_.results() == {3: 30, 2: 20, 1: 11} and list(sweep_.results()) == [3, 2, 1]
        assert sweep_.forget_failed() == 0


# --- the layout: one row per record call, an index built on reading ---


def test_a_record_call_is_one_row_and_computes_no_task_key(tmp_path, monkeypatch):
    def refused(*args):
        raise AssertionError("a task key was computed while recording")

    path = tmp_path / "s.db"
    tasks = [*range(1000), *(f"task {n}" for n in range(500)), *((n, n / 2) for n in range(500))]
    with Store(path) as store:
        sweep_ = store.sweep(h.square)
        with monkeypatch.context() as patch:
            for module in (batches_module, index_module, sweep_module):
                for name in ("task_key", "task_keys"):
                    if hasattr(module, name):
                        patch.setattr(module, name, refused)
            for start in range(0, 2000, 500):
                _record(sweep_, tasks, [str(task) for task in tasks[start : start + 500]], start=start)
            sweep_.flush()
        assert _sql(path, "SELECT count(*), sum(layout) FROM batches") == [(4, 0)]  # whole lists
        found = sweep_.lookup(tasks)
    assert {i: outcome.value for i, outcome in found.items()} == {i: str(t) for i, t in enumerate(tasks)}


def test_known_says_whether_the_sweep_holds_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "COMMIT_SECONDS", 3600.0)
    path = tmp_path / "s.db"
    with Store(path) as store:
        sweep_ = store.sweep(h.square)
        assert not sweep_.known()
        _record(sweep_, [1], [1])
        assert sweep_.known()  # buffered counts too
        assert not store.sweep(h.square, store_key="other").known()
    with Store(path, readonly=True) as store:
        assert store.find("tests._helpers.square").known()


def test_lookups_see_what_was_recorded_since_by_this_store_and_by_others(tmp_path):
    path = tmp_path / "s.db"
    error = _raised(h.fail_on_odd, 1)
    with Store(path) as store, Store(path) as other:
        sweep_ = store.sweep(h.fail_on_odd)
        _record(sweep_, [1, 2], [error, 2], failed={0})
        assert sweep_.lookup([1, 2])[0].failed  # the index is built here
        _record(sweep_, [1], [1])  # a later outcome replaces the failure
        found = sweep_.lookup([1, 2])
        assert found[0] == StoredOutcome(1, 0.01, "pid 1", False) and found[1].value == 2
        elsewhere = other.sweep(h.fail_on_odd)
        _record(elsewhere, [3, 2], [error, 22], failed={0}, worker="pid 2")
        elsewhere.flush()
        assert {i: o.value for i, o in sweep_.lookup([1, 2, 3]).items() if not o.failed} == {0: 1, 1: 22}
        assert elsewhere.forget_failed() == 1
        assert sorted(sweep_.lookup([1, 2, 3])) == [0, 1]
        assert store.sweeps()[0][3:] == (2, 0) and sweep_.results() == {1: 1, 2: 22}


def test_tasks_and_values_pickle_refuses_are_stored_one_by_one(tmp_path):
    class Name(str):  # a local class: pickle refuses it, cloudpickle takes it
        pass

    with Store(tmp_path / "s.db") as store:
        sweep_ = store.sweep(h.square)
        _record(sweep_, [Name("a"), "b", "c"], [1, lambda: 2, threading.Lock()])
        found = sweep_.lookup(["a", "b", "c"])
        results = sweep_.results()
    assert found[0].value == 1 and found[1].value() == 2 and isinstance(found[2].value, ResultNotSerializable)
    assert list(results) == ["a", "b", "c"] and type(next(iter(results))).__name__ == "Name"


# --- sweeps and the identity of their function ---


def test_sweeps_are_named_by_the_functions_they_run():
    assert sweep_name(h.square) == "tests._helpers.square"
    assert sweep_name(functools.partial(functools.partial(h.add, 1))) == "tests._helpers.add"
    assert sweep_name(_Scaler) == "tests.test_store._Scaler"
    assert sweep_name(_Scaler().scale) == "tests.test_store._Scaler.scale"
    assert sweep_name(_Scaler()) == "tests.test_store._Scaler"
    assert sweep_name(_adder(1)) == "tests.test_store._adder.<locals>.add"
    assert sweep_name(abs) == "builtins.abs"


def test_changed_code_is_refused_naming_the_file_the_function_and_the_way_out(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.sweep(_version_one)
        store.sweep(_version_one)  # the same code: the same sweep
    with Store(path) as store, pytest.raises(StoreMismatch) as raised:
        store.sweep(_version_two)
    message = str(raised.value)
    assert str(path) in message and "tests.test_store._version_one" in message
    assert "its code changed" in message and "captures" not in message
    assert 'store_key="' in message and "another file" in message
    assert isinstance(raised.value, StoreError)


def test_changed_captured_values_are_refused(tmp_path):
    with Store(tmp_path / "s.db") as store:
        store.sweep(_adder(1))
        store.sweep(_adder(1))
        with pytest.raises(StoreMismatch, match="the values it captures changed") as raised:
            store.sweep(_adder(2))
        assert "code" not in str(raised.value)
        store.sweep(functools.partial(h.add, 1))
        with pytest.raises(StoreMismatch, match="captures"):
            store.sweep(functools.partial(h.add, 2))
        store.sweep(_Scaler().scale)
        scaler = _Scaler()
        scaler.factor = 4
        with pytest.raises(StoreMismatch, match="captures"):
            store.sweep(scaler.scale)
        store.sweep(_limited(5))
        store.sweep(_limited(5))
        with pytest.raises(StoreMismatch, match="captures"):
            store.sweep(_limited(6))  # a class attribute


def test_code_and_values_both_changed_are_both_named(tmp_path):
    def first(x, offset=1):
        return x + offset

    def second(x, offset=2):
        return x - offset

    second.__qualname__ = first.__qualname__
    with Store(tmp_path / "s.db") as store:
        store.sweep(first)
        with pytest.raises(StoreMismatch, match="its code changed and the values it captures changed"):
            store.sweep(second)


def test_values_that_cannot_be_pickled_leave_only_the_code_compared(tmp_path, caplog):
    caplog.set_level("DEBUG", logger="ezpool.store.identity")
    assert identity(_adder(threading.Lock())).data == ""
    assert "cannot be pickled" in caplog.text
    with Store(tmp_path / "s.db") as store:
        store.sweep(_adder(threading.Lock()))
        store.sweep(_adder(threading.Lock()))  # another lock, and no mismatch


def test_the_identity_does_not_depend_on_the_hash_seed(core_python, core_child_env):
    names = [f"name{n}" for n in range(20)]
    script = (
        "from tests.test_store import _member_of\n"
        "from ezpool.store.identity import identity\n"
        f"names = set({names!r})\n"
        "print(identity(_member_of(names)).data, list(names))\n"
    )
    printed = []
    for seed in ("1", "2"):
        done = subprocess.run(
            [core_python, "-c", script], env={**core_child_env, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        printed.append(done.stdout.split(" ", 1))
    (digest_1, order_1), (digest_2, order_2) = printed
    assert order_1 != order_2  # the set iterates in another order...
    assert digest_1 == digest_2 == identity(_member_of(set(names))).data  # ...and it changes nothing


def test_a_store_key_keeps_two_sets_of_outcomes_apart_and_is_checked_too(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        _record(store.sweep(_version_one), [1], [2])
        _record(store.sweep(_version_two, store_key="v2"), [1], [3])
        with pytest.raises(StoreMismatch, match="pass another store_key"):
            store.sweep(_version_one, store_key="v2")
        with pytest.raises(TypeError, match="store_key"):
            store.sweep(_version_one, store_key="")
        infos = store.sweeps()
    assert [(info.label, info.store_key, info.done) for info in infos] == [
        ("tests.test_store._version_one", None, 1),
        ("tests.test_store._version_one[v2]", "v2", 1),
    ]
    assert open_store(path, "tests.test_store._version_one") == {1: 2}
    assert open_store(path, "tests.test_store._version_one[v2]") == {1: 3}


# --- opening files ---


def test_open_store_with_no_one_and_two_sweeps(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    with pytest.raises(StoreError, match="no sweeps"):
        open_store(path)
    with Store(path) as store:
        _record(store.sweep(h.square), [2, 3], [4, 9])
    assert open_store(path) == {2: 4, 3: 9}
    assert open_store(str(path), sweep="tests._helpers.square") == {2: 4, 3: 9}
    with Store(path) as store:
        store.sweep(h.square, store_key="other")
    with pytest.raises(StoreError, match=r"several sweeps; name one of: tests._helpers.square, .*\[other\]"):
        open_store(path)
    with pytest.raises(StoreError, match=r"no sweep is called 'nope'; its sweeps: tests._helpers.square, "):
        open_store(path, "nope")
    assert open_store(path, "tests._helpers.square[other]") == {}


def test_a_missing_or_foreign_file_is_refused_naming_it(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(FileNotFoundError, match=r"missing\.db"):
        Store(missing, readonly=True)
    with pytest.raises(FileNotFoundError, match=r"missing\.db"):
        open_store(missing)
    assert not missing.exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    for readonly in (True, False):
        with pytest.raises(StoreError, match=r"notes.txt is not an ezpool store"):
            Store(text, readonly=readonly)
    assert text.read_text() == "not a database\n" * 100
    other = tmp_path / "other.db"
    _sql(other, "CREATE TABLE things (x)")
    with pytest.raises(StoreError, match=r"other\.db is an SQLite file, but not an ezpool store"):
        Store(other)
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match=r"empty\.db is empty"):
        Store(empty, readonly=True)
    Store(empty).close()  # an empty file becomes a store


def test_a_store_of_another_format_is_refused(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    _sql(path, "PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="format 99"):
        Store(path)
    _sql(path, "PRAGMA user_version = 1")  # one row a task: not read, not converted
    for readonly in (False, True):
        with pytest.raises(StoreError, match=rf"{path.name} is an ezpool store of format 1; this ezpool"):
            Store(path, readonly=readonly)


def test_a_read_only_store_writes_nothing(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        _record(store.sweep(h.square), [1], [1])
    with Store(path, readonly=True) as store:
        sweep_ = store.sweep(h.square)
        assert sweep_.lookup([1])[0].value == 1
        with pytest.raises(StoreError, match="read-only"):
            _record(sweep_, [2], [4])
        with pytest.raises(StoreError, match=r"no sweep tests\._helpers\.add"):
            store.sweep(h.add)


def test_the_file_is_never_world_writable(tmp_path):
    old = os.umask(0)
    try:
        Store(tmp_path / "s.db").close()
    finally:
        os.umask(old)
    assert not (tmp_path / "s.db").stat().st_mode & 0o002


# --- durability: a real process killed mid-run ---

_RECORDER = """
import sys

from ezpool.store import Store
from tests._helpers import square

store = Store(sys.argv[1])
sweep = store.sweep(square)
tasks = range(10**9)
done = 0
while True:
    sweep.record(tasks, done, [n * n for n in range(done, done + 100)], [0.001] * 100, (), "pid child")
    done += 100
    if done % 1000 == 0:
        sweep.flush()
        print(done, flush=True)
"""


def test_every_flushed_outcome_survives_a_sigkill(tmp_path, core_python, core_child_env):
    path = tmp_path / "s.db"
    command = [core_python, "-c", _RECORDER, str(path)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=core_child_env,
        start_new_session=True,
    )
    try:
        flushed = int(read_lines(process, 20, command)[-1])
        time.sleep(0.05)  # it is recording and committing still
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert _sql(path, "PRAGMA integrity_check") == [("ok",)]
    with Store(path) as store:
        found = store.sweep(h.square).lookup(range(flushed))
        (info,) = store.sweeps()
    assert len(found) == flushed and found[flushed - 1].value == (flushed - 1) ** 2
    assert info.done >= flushed


# --- python -m ezpool.store ---


def _cli(core_python, env, *args):
    return subprocess.run(
        [core_python, "-m", "ezpool.store", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_the_command_line_summarises_every_sweep(tmp_path, core_python, core_child_env):
    path = tmp_path / "s.db"
    with Store(path) as store:
        _record(
            store.sweep(h.fail_on_odd), ["slow", "slower", "quick"],
            [1, _raised(h.fail_on_odd, 1), 3], failed={1}, elapsed=[1.5, 2.5, 0.001],
        )
        _record(store.sweep(h.square, store_key="k"), [7], [49], elapsed=[0.25])
    done = _cli(core_python, core_child_env, path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "sweep tests._helpers.fail_on_odd" in out and "sweep tests._helpers.square[k]" in out
    assert "3 tasks done, 1 failed" in out and "1 tasks done, 0 failed" in out
    assert "task time 4.001 s" in out
    slowest = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert [line[2] for line in slowest] == ["'slower'", "'slow'", "'quick'", "7"]
    assert "failed: ValueError" in out
    one = _cli(core_python, core_child_env, path, "--sweep", "tests._helpers.square[k]", "--slowest", "0")
    assert one.returncode == 0 and "fail_on_odd" not in one.stdout and "slowest" not in one.stdout


def test_the_command_line_exits_2_with_one_line_for_a_bad_file(tmp_path, core_python, core_child_env):
    (tmp_path / "notes.txt").write_text("hello\n" * 50)
    for name in ("missing.db", "notes.txt"):
        done = _cli(core_python, core_child_env, tmp_path / name)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith("ezpool.store: error:") and name in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1



@pytest.mark.timeout(60)
def test_a_new_store_opened_by_many_threads_at_once_opens_in_every_one(tmp_path):
    # Switching a new file to WAL from several connections at once makes SQLite say
    # "database is locked" without waiting; it met one try in twelve of six threads.
    from ezpool.store.database import Database

    failures: list[BaseException] = []
    for trial in range(100):
        path = str(tmp_path / f"store-{trial}.sqlite")
        start = threading.Barrier(6)

        def open_it(path: str = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                Database(path, readonly=False).close()
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert failures == []
