"""``Pool.imap``: what a mode-independent contract test cannot show."""

from __future__ import annotations

import threading

import pytest

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


def test_a_task_that_cannot_be_sent_is_a_type_error_naming_it():
    lock = threading.Lock()
    with Pool("parallel", ncpu=2, progress=False) as pool:
        seen = []
        with pytest.raises(TypeError, match="cannot send task"):
            for outcome in pool.imap(h.square, iter([1, 2, lock, 3]), chunksize=1):
                seen.append(outcome.task)
        assert set(seen) <= {1, 2}
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
