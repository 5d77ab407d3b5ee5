"""``retries``, ``retry_on`` and ``retry_backoff``: a task whose exception matches runs again.

The functions count their runs in files (one per task, in a folder of the test's
own), so that runs in other processes and on served workers are counted too.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from ezpool import Pool, PoolExecutor
from ezpool._core.retrying import BACKOFF_CAP, RetryPolicy
from tests import _helpers as h
from tests.modes import MODES, Mode


def runs_of(folder: Path, task: Any) -> list[float]:
    """When each run of ``task`` began (``time.time``), in order."""
    path = Path(folder) / f"run-{task}"
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def flaky(folder: str, failures: int, task: int) -> int:
    """Fails ``failures`` times with ``ConnectionError`` (even tasks only), then returns task * 10."""
    path = Path(folder) / f"run-{task}"
    with path.open("a") as runs:
        runs.write(f"{time.time()}\n")
    count = len(path.read_text().split())
    if task % 2 == 0 and count <= failures:
        raise ConnectionError(f"task {task}: run {count} failed")
    return task * 10


def wrong(folder: str, task: int) -> int:
    """Always fails with a ``ValueError`` (counted)."""
    flaky(folder, 0, task)
    raise ValueError(f"task {task} is wrong")


@pytest.mark.timeout(120)
def test_a_task_that_fails_twice_then_succeeds_runs_three_times(mode_pool: Pool, tmp_path: Path) -> None:
    results = mode_pool.map(partial(flaky, str(tmp_path), 2), range(6), retries=2, retry_on=ConnectionError)
    assert results == {task: task * 10 for task in range(6)}
    assert not results.errors
    assert dict(results.attempts) == {task: 3 if task % 2 == 0 else 1 for task in range(6)}
    assert [len(runs_of(tmp_path, task)) for task in range(6)] == [3, 1, 3, 1, 3, 1]
    # every run is in the timeline, numbered from the task's first
    runs = sorted((run.task, run.attempt, run.error is not None) for run in results.timeline.runs())
    assert [run for run in runs if run[0] == 0] == [(0, 1, True), (0, 2, True), (0, 3, False)]
    assert [run for run in runs if run[0] == 1] == [(1, 1, False)]


@pytest.mark.timeout(120)
def test_the_last_failure_is_kept_when_the_retries_run_out(mode_pool: Pool, tmp_path: Path) -> None:
    results = mode_pool.map(partial(flaky, str(tmp_path), 5), range(4), retries=1, retry_on=(OSError,))
    assert set(results.errors) == {0, 2}
    assert isinstance(results[0], ConnectionError)
    assert "run 2 failed" in str(results[0])
    assert results.attempts[0] == 2 and results.attempts[1] == 1
    assert len(runs_of(tmp_path, 2)) == 2


@pytest.mark.timeout(120)
def test_an_exception_not_named_is_not_retried(mode_pool: Pool, tmp_path: Path) -> None:
    results = mode_pool.map(partial(wrong, str(tmp_path)), range(3), retries=3, retry_on=ConnectionError)
    assert set(results.errors) == {0, 1, 2}
    assert all(isinstance(error, ValueError) for error in results.errors.values())
    assert [len(runs_of(tmp_path, task)) for task in range(3)] == [1, 1, 1]
    assert set(results.attempts.values()) == {1}


@pytest.mark.timeout(120)
def test_retry_on_exception_retries_every_exception(mode_pool: Pool, tmp_path: Path) -> None:
    results = mode_pool.map(partial(wrong, str(tmp_path)), [1], retries=2, retry_on=Exception)
    assert isinstance(results[1], ValueError)
    assert results.attempts[1] == 3
    assert len(runs_of(tmp_path, 1)) == 3


@pytest.mark.timeout(120)
def test_imap_hands_on_each_task_once_in_order_when_asked(mode_pool: Pool, tmp_path: Path) -> None:
    tasks = (task for task in range(10))  # a generator: read as the workers need them
    outcomes = list(mode_pool.imap(partial(flaky, str(tmp_path), 1), tasks, ordered=True, retries=1,
                              retry_on=ConnectionError))
    assert [outcome.task for outcome in outcomes] == list(range(10))
    assert [outcome.value for outcome in outcomes] == [task * 10 for task in range(10)]
    assert not any(outcome.failed for outcome in outcomes)


@pytest.mark.timeout(120)
def test_progress_counts_a_retried_task_once(mode_pool: Pool, tmp_path: Path) -> None:
    heard: list[tuple[Any, int, Any]] = []
    mode_pool.map(partial(flaky, str(tmp_path), 2), range(6), retries=2, retry_on=ConnectionError,
             progress=lambda outcome, done, total: heard.append((outcome.task, done, total)))
    assert sorted(task for task, _, _ in heard) == list(range(6))
    assert [done for _, done, _ in heard] == [1, 2, 3, 4, 5, 6]
    assert {total for _, _, total in heard} == {6}


@pytest.mark.timeout(120)
def test_retries_go_to_the_back_and_never_hold_up_other_tasks(mode_pool: Pool, tmp_path: Path) -> None:
    # Task 0 fails every time, waiting longer each time; the other tasks must all be handed
    # on while it waits, and it comes last.
    folder = str(tmp_path)
    order = [outcome.task for outcome in mode_pool.imap(
        partial(flaky, folder, 10), [0, *range(1, 40, 2)], retries=3, retry_on=ConnectionError,
        retry_backoff=0.3)]
    assert order[-1] == 0
    assert sorted(order) == [0, *range(1, 40, 2)]
    last_other = max(max(runs_of(tmp_path, task)) for task in range(1, 40, 2))
    assert last_other < runs_of(tmp_path, 0)[-1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [name for name, mode in MODES.items() if mode.remote])
def test_retries_set_but_idle_share_the_tasks_out_as_without(name: str) -> None:
    """Nothing fails: the tasks go out in shares for every worker, as without retries (the runs
    all went to the first worker asking, as one chunk, when the pool had timed the function).
    Modes that cut tasks into chunks only: the serial and threads modes cut none."""
    tasks = list(range(100_000))
    with MODES[name].pool() as pool:
        # The pool times the function first, until both workers ran some (one that dials in
        # may join after the first call, on a loaded machine).
        deadline = time.monotonic() + 60
        while len(set(pool.map(h.square, tasks).workers.values())) < 2:
            assert time.monotonic() < deadline, "the second worker never ran a task"
        results = pool.map(h.square, tasks, retries=2, retry_on=ConnectionError)
    assert results == {task: task * task for task in tasks}
    ran = Counter(results.workers.values())
    assert len(ran) == 2 and min(ran.values()) >= len(tasks) // 10, ran


@pytest.mark.timeout(60)
def test_the_backoff_doubles_with_jitter(tmp_path: Path) -> None:
    with Pool("serial", progress=False) as pool:
        results = pool.smap(partial(flaky, str(tmp_path), 3), [0], retries=3, retry_on=ConnectionError,
                            retry_backoff=0.2)
    assert results[0] == 0 and results.attempts[0] == 4
    began = runs_of(tmp_path, 0)
    gaps = [later - earlier for earlier, later in zip(began, began[1:])]
    # each wait lies between half and all of 0.2, 0.4, 0.8 s (plus this machine's slack)
    for gap, longest in zip(gaps, [0.2, 0.4, 0.8]):
        assert longest / 2 - 0.01 <= gap <= longest + 0.5, gaps


def test_the_policy_caps_the_wait_and_never_retries_an_exit() -> None:
    policy = RetryPolicy(5, (BaseException,), 1.0)
    assert not policy.wants(KeyboardInterrupt(), 1)
    assert not policy.wants(SystemExit(1), 1)
    assert policy.wants(ConnectionError(), 5) and not policy.wants(ConnectionError(), 6)
    import random

    rng = random.Random(7)
    waits = [policy.delay(tries, rng) for tries in range(1, 12)]
    assert all(wait <= BACKOFF_CAP for wait in waits)
    assert max(waits) > BACKOFF_CAP / 2  # doubled up to the cap
    assert RetryPolicy(2, (OSError,), 0.0).delay(3, rng) == 0.0


@pytest.mark.timeout(60)
def test_a_retried_outcome_is_stored_once(tmp_path: Path) -> None:
    store = tmp_path / "sweep.sqlite"
    folder = tmp_path / "runs"
    folder.mkdir()
    fun = partial(flaky, str(folder), 1)
    with Pool("serial", progress=False) as pool:
        first = pool.map(fun, [0], store=str(store), retries=2, retry_on=ConnectionError)
        again = pool.map(fun, [0], store=str(store), retries=2, retry_on=ConnectionError)
    assert first == again == {0: 0}
    assert len(runs_of(folder, 0)) == 2  # the second call found it stored
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT count(*) FROM batches").fetchone() == (1,)


@pytest.mark.timeout(120)
def test_the_executor_retries_a_submitted_call(mode: Mode, tmp_path: Path) -> None:
    with mode.executor(retries=2, retry_on=ConnectionError) as executor:
        futures = [executor.submit(flaky, str(tmp_path), 1, task) for task in range(4)]
        assert [future.result(timeout=60) for future in futures] == [0, 10, 20, 30]
    assert [len(runs_of(tmp_path, task)) for task in range(4)] == [2, 1, 2, 1]


def test_attempts_of_a_call_without_retries_are_all_one() -> None:
    with Pool("serial", progress=False) as pool:
        results = pool.map(abs, range(-3, 3))
    assert dict(results.attempts) == dict.fromkeys(range(-3, 3), 1)
    assert len(results.attempts) == 6
    with pytest.raises(KeyError):
        results.attempts[99]


@pytest.mark.parametrize(("options", "error", "named"), [
    ({"retries": -1}, ValueError, "retries"),
    ({"retries": 1.5}, TypeError, "retries"),
    ({"retries": True}, TypeError, "retries"),
    ({"retry_on": ValueError()}, TypeError, "retry_on"),
    ({"retry_on": (ConnectionError, "OSError")}, TypeError, "'OSError'"),
    ({"retry_on": int}, TypeError, "retry_on"),
    ({"retry_backoff": -0.5}, ValueError, "retry_backoff"),
    ({"retry_backoff": "1s"}, TypeError, "retry_backoff"),
])
def test_bad_retry_options_are_refused_before_any_work(options: dict, error: type, named: str) -> None:
    ran: list[int] = []
    with Pool("serial", progress=False) as pool, pytest.raises(error, match=named):
        pool.map(ran.append, range(3), **options)
    assert ran == []
    with pytest.raises(error, match=named):
        PoolExecutor("serial", **options)


def test_retries_without_retry_on_say_that_nothing_will_run_again(caplog: pytest.LogCaptureFixture) -> None:
    with Pool("serial", progress=False) as pool, caplog.at_level(logging.WARNING, logger="ezpool"):
        results = pool.map(abs, [-1], retries=3)
    assert results == {-1: 1}
    assert "without retry_on" in caplog.text and "retry_on=Exception" in caplog.text
