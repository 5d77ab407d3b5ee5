"""``Pool.imap``: what a mode-independent contract test cannot show."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

import ezpool
from ezpool import Pool
from tests import _helpers as h


@pytest.mark.parametrize(
    ("tasks", "message"),
    [(None, "tasks must be an iterable"), ("abc", "wrap a single task"), (5, "got int 5")],
)
def test_bad_tasks_are_refused_at_the_call(tasks, message):
    with Pool(progress=False) as pool, pytest.raises(TypeError, match=message):
        pool.imap(h.square, tasks)


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError)])
def test_a_bad_buffersize_is_refused_at_the_call(value, error):
    with Pool(progress=False) as pool, pytest.raises(error, match="buffersize"):
        pool.imap(h.square, [1], buffersize=value)


def test_ordered_must_be_a_bool():
    with Pool(progress=False) as pool, pytest.raises(TypeError, match="ordered must be True or False"):
        pool.imap(h.square, [1], ordered="yes")


def test_a_closed_pool_refuses_imap():
    pool = Pool(progress=False)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.imap(h.square, [1])


def test_a_task_that_cannot_be_sent_is_its_own_outcome_naming_it():
    lock = threading.Lock()
    with Pool("parallel", ncpu=2, progress=False) as pool:
        streamed = pool.imap(h.square, iter([1, 2, lock, 3]), chunksize=1)
        outcomes = {outcome.task: outcome for outcome in streamed}
        assert [outcomes[n].value for n in (1, 2, 3)] == [1, 4, 9]
        assert outcomes[lock].failed and isinstance(outcomes[lock].value, ezpool.TaskNotSerializable)
        assert repr(lock) in str(outcomes[lock].value)
        assert pool.pmap(h.square, [5]) == {5: 25}


def test_tasks_need_not_be_hashable_when_streamed():
    with Pool(progress=False) as pool:
        outcomes = list(pool.imap(len, [[1, 2], [3]], ordered=True))
    assert [outcome.value for outcome in outcomes] == [2, 1]


def test_outcomes_unpack_like_tuples():
    with Pool(progress=False) as pool:
        pairs = {task: value for task, value, *_ in pool.imap(h.square, range(4))}
    assert pairs == {0: 0, 1: 1, 2: 4, 3: 9}


def test_the_store_options_need_a_store():
    with Pool(progress=False) as pool, pytest.raises(ValueError, match="need a store"):
        pool.map(h.square, [1], retry_failed=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("mode", ["threads", "parallel"])
def test_outcomes_are_handed_out_without_python_code_of_ezpools_per_outcome(mode, ordered):
    """Outcomes are made a batch at a time, in C: what EzPool's Python code runs in the caller's
    thread while they are consumed grows with the batches, not with the outcomes (it was a few
    generator steps and a function call per outcome)."""
    package = str(Path(ezpool.__file__).parent)
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.startswith(package):
            calls += 1

    tasks = 20_000
    with Pool(mode, ncpu=2, nthreads=2, progress=False) as pool:
        outcomes = pool.imap(h.square, range(tasks), ordered=ordered)
        sys.setprofile(count)
        try:
            handed = sum(1 for outcome in outcomes if outcome.value == outcome.task**2)
        finally:
            sys.setprofile(None)
    assert handed == tasks
    assert calls < tasks // 4, f"{calls} calls of EzPool's Python functions for {tasks} outcomes"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [False, True])
def test_closing_imap_in_the_middle_of_a_batch_ends_its_outcomes_at_once(ordered):
    with Pool("parallel", ncpu=2, progress=False) as pool:
        outcomes = pool.imap(h.square, range(10_000), chunksize=5_000, ordered=ordered)
        first = next(outcomes)
        assert first.value == first.task**2
        outcomes.close()
        assert list(outcomes) == []
        outcomes.close()  # twice does nothing
        assert pool.pmap(h.square, [7]) == {7: 49}


def _open_files(prefix: str) -> list[str]:
    """The files this process holds open whose path starts with ``prefix``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the fd listing itself)
            continue
        if target.startswith(prefix):
            found.append(target)
    return found


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to list open files")
def test_closing_an_imap_never_read_closes_its_store(tmp_path):
    store = tmp_path / "results.sqlite"
    with Pool(progress=False) as pool:
        outcomes = pool.imap(h.square, range(10), store=store)
        assert _open_files(str(store)), "the store is opened at the call (a bad one raises there)"
        outcomes.close()
        assert _open_files(str(store)) == []
        assert list(outcomes) == []
        assert sorted(outcome.value for outcome in pool.imap(h.square, range(4), store=store)) == [0, 1, 4, 9]
        assert _open_files(str(store)) == []
