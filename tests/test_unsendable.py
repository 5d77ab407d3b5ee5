"""A task that cannot be sent to a worker is that task's outcome (``TaskNotSerializable``):
every other task of the call runs and keeps its value, in every mode, in ``map``,
``imap``, ``amap``, an executor's ``submit``, and with retries
(``ezpool._core.unsendable``). Serial and threads modes never pickle a task: there the
same call simply runs the function on it, and the results have the same shape."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ezpool import Pool, TaskNotSerializable
from tests.modes import MODES, Mode

#: Modes whose tasks are pickled (into worker processes, or to workers elsewhere).
REMOTE = [name for name, mode in MODES.items() if mode.remote]


def kind(task: Any) -> Any:
    """Twice an int; the type's name of anything else (a lock, run where it was made)."""
    return task * 2 if isinstance(task, int) else type(task).__name__


def _tasks(lock: Any, where: str) -> list[Any]:
    """99 good tasks and the lock, or several locks, where ``where`` says."""
    good: list[Any] = list(range(99))
    if where == "first":
        return [lock, *good]
    if where == "last":
        return [*good, lock]
    if where == "middle":
        return [*good[:50], lock, *good[50:]]
    return [threading.Lock(), *good[:30], lock, *good[30:60], threading.Lock(), threading.Lock(), *good[60:]]


def _check(results: Any, tasks: list[Any], mode: Mode) -> None:
    """One outcome a task: the good ones' values; each lock's TaskNotSerializable, naming it
    (or, where tasks are not pickled, the function's value for it)."""
    locks = [task for task in tasks if not isinstance(task, int)]
    assert list(results) == tasks
    assert {task: results[task] for task in tasks if isinstance(task, int)} == {n: 2 * n for n in range(99)}
    if not mode.remote:
        assert not results.errors and all(results[lock] == "lock" for lock in locks)
        return
    assert list(results.errors) == locks
    for lock in locks:
        error = results[lock]
        assert isinstance(error, TaskNotSerializable) and isinstance(error, TypeError)
        message = str(error)
        assert repr(lock)[:40] in message and "cannot pickle '_thread.lock' object" in message
        assert "Make it picklable" in message


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["first", "middle", "last", "several"])
def test_a_task_that_cannot_be_pickled_costs_only_itself_in_map(
    mode_pool: Pool, mode: Mode, where: str
) -> None:
    tasks = _tasks(threading.Lock(), where)
    _check(mode_pool.map(kind, tasks), tasks, mode)


@pytest.mark.timeout(120)
def test_only_tasks_that_cannot_be_pickled_still_give_results(mode_pool: Pool, mode: Mode) -> None:
    locks = [threading.Lock(), threading.Lock()]
    results = mode_pool.map(kind, locks)
    assert list(results) == locks
    assert len(results.errors) == (2 if mode.remote else 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_task_that_cannot_be_pickled_costs_only_itself_in_imap(
    mode_pool: Pool, mode: Mode, ordered: bool
) -> None:
    tasks = _tasks(threading.Lock(), "several")
    outcomes = list(mode_pool.imap(kind, iter(tasks), ordered=ordered))
    assert len(outcomes) == len(tasks)
    if ordered:
        assert [outcome.task for outcome in outcomes] == tasks
    by_task = {outcome.task: outcome for outcome in outcomes}
    for task in tasks:
        if isinstance(task, int):
            assert by_task[task].value == 2 * task and not by_task[task].failed
        elif mode.remote:
            assert by_task[task].failed and isinstance(by_task[task].value, TaskNotSerializable)
        else:
            assert by_task[task].value == "lock"


@pytest.mark.timeout(120)
def test_a_task_that_cannot_be_pickled_costs_only_itself_in_amap(mode_pool: Pool, mode: Mode) -> None:
    tasks = _tasks(threading.Lock(), "middle")
    _check(asyncio.run(mode_pool.amap(kind, tasks)), tasks, mode)


@pytest.mark.timeout(120)
def test_a_submitted_call_that_cannot_be_pickled_fails_only_its_future(mode: Mode) -> None:
    lock = threading.Lock()
    with mode.executor() as executor:
        futures = [executor.submit(kind, task) for task in [1, lock, 3]]
        assert [futures[0].result(60), futures[2].result(60)] == [2, 6]
        if mode.remote:
            error = futures[1].exception(60)
            assert isinstance(error, TaskNotSerializable) and f"with arguments ({lock!r},)" in str(error)
        else:
            assert futures[1].result(60) == "lock"
        assert list(executor.map(kind, [4, 5])) == [8, 10]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["fork", "distributed"])
def test_retries_never_run_a_task_that_cannot_be_pickled_again(name: str) -> None:
    """It would fail the same way: with a 30 s backoff, a retry would hold the call up 15 s or more."""
    lock = threading.Lock()
    with MODES[name].pool() as pool:
        begun = time.monotonic()
        results = pool.map(kind, [1, lock, 3], retries=3, retry_on=Exception, retry_backoff=30.0)
        took = time.monotonic() - begun
    assert list(results.errors) == [lock] and results[1] == 2 and results[3] == 6
    assert took < 12.0, f"the call took {took:.1f} s: the task that cannot be pickled was retried"


#: A task whose class only the caller's ``__main__`` holds (made under the main guard): it
#: pickles here, by reference, but a spawned process or a served worker cannot unpickle it.
_LOCAL_CLASS = """
    import sys
    from ezpool import Pool

    def describe(task):
        return repr(task)

    if __name__ == "__main__":
        class Local:
            def __repr__(self):
                return "Local()"

        mode = sys.argv[1]
        remote = {"workers": sys.argv[2:], "spawn": False}
        options = {"start_method": mode} if mode != "distributed" else remote
        tasks = [*range(50), Local(), *range(100, 149)]
        with Pool("distributed" if "workers" in options else "parallel", progress=False, **options) as pool:
            results = pool.map(describe, tasks)
        print(len(results), len(results.errors))
        for task, error in results.errors.items():
            print(repr(task), type(error).__name__, error)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["spawn", "forkserver", "distributed"])
def test_a_task_that_cannot_be_unpickled_where_it_runs_costs_only_itself(
    name: str, tmp_path: Path, serve: Any, core_child_env: dict[str, str]
) -> None:
    """Its chunk runs again one task at a time (before: all of its chunk's tasks failed)."""
    if name != "distributed" and name not in multiprocessing.get_all_start_methods():
        pytest.skip(f"this platform has no {name} start method")
    script = tmp_path / "local_class.py"
    script.write_text(textwrap.dedent(_LOCAL_CLASS))
    uris = serve("").uris if name == "distributed" else []
    done = subprocess.run([sys.executable, str(script), name, *uris], capture_output=True, text=True,
                          timeout=100, env=core_child_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "100 1", done.stdout
    assert lines[1].startswith("Local() TaskNotSerializable task Local() cannot be unpickled where it runs (")
    assert "AttributeError: Can't get attribute 'Local'" in lines[1] and len(lines) == 2
