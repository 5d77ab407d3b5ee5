"""pmap recovers from dying, hung and misbehaving worker processes, task by task."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import pytest

from ezpool import Pool, ResultNotSerializable, TaskTimeout, WorkerCrashed
from tests import _helpers as h

START_METHODS = ["fork", "spawn"]


def explode_some(marker_dir: str, task: int) -> int:
    """Dies on 7 (exit code), is killed on 13 (SIGKILL), hangs on 21; records each run."""
    Path(marker_dir, f"{task}-{os.getpid()}-{time.monotonic_ns()}").touch()
    if task == 7:
        os._exit(3)
    if task == 13:
        os.kill(os.getpid(), 9)
    if task == 21:
        time.sleep(60)
    return task * 10


class _FailsToLoad:
    """Pickles fine in the worker, but raises when the caller unpickles it."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise RuntimeError("refusing to be unpickled")


def unloadable_on_five(task: int):
    return _FailsToLoad() if task == 5 else task


def _runs(marker_dir: Path, task: int) -> int:
    return sum(1 for path in marker_dir.iterdir() if path.name.split("-")[0] == str(task))


@pytest.mark.parametrize("start_method", START_METHODS)
def test_crash_kill_and_hang_cost_only_their_own_slots(tmp_path, start_method):
    tasks = [(str(tmp_path), n) for n in range(400)]
    with Pool(start_method=start_method) as pool:
        results = pool.pmap(explode_some, tasks, ncpu=2, timeout=2, progress=False)
        assert set(results.errors) == {(str(tmp_path), 7), (str(tmp_path), 13), (str(tmp_path), 21)}
        crashed = results[(str(tmp_path), 7)]
        assert isinstance(crashed, WorkerCrashed)
        assert "exited with code 3" in str(crashed) and "7)" in str(crashed)
        killed = results[(str(tmp_path), 13)]
        assert isinstance(killed, WorkerCrashed) and "SIGKILL" in str(killed)
        hung = results[(str(tmp_path), 21)]
        assert isinstance(hung, TaskTimeout) and isinstance(hung, TimeoutError)
        for task in tasks:
            if task not in results.errors:
                assert results[task] == task[1] * 10
        # The same pool keeps working afterwards.
        assert pool.pmap(abs, [-1, -2], ncpu=2) == {-1: 1, -2: 2}


def test_a_crashing_task_is_tried_max_attempts_times(tmp_path):
    with Pool() as pool:
        results = pool.pmap(explode_some, [(str(tmp_path), 7), (str(tmp_path), 8)], ncpu=2, max_attempts=1)
        assert isinstance(results[(str(tmp_path), 7)], WorkerCrashed)
        assert _runs(tmp_path, 7) == 1
        results = pool.pmap(explode_some, [(str(tmp_path), 7)], ncpu=2, max_attempts=3)
        assert "attempt 3 of 3" in str(results[(str(tmp_path), 7)])
        assert _runs(tmp_path, 7) == 1 + 3
        assert results.errors.keys() == {(str(tmp_path), 7)}


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_value_that_cannot_be_unpickled_by_the_caller_fails_alone(start_method):
    with Pool(start_method=start_method) as pool:
        results = pool.pmap(unloadable_on_five, range(50), ncpu=2, progress=False)
    assert list(results.errors) == [5]
    assert isinstance(results[5], ResultNotSerializable)
    assert "refusing to be unpickled" in str(results[5])
    assert all(results[n] == n for n in range(50) if n != 5)


def test_the_timeout_clock_starts_afresh_in_every_call():
    with Pool() as pool:
        # Call 1 leaves each worker having shown some position for a while...
        pool.pmap(time.sleep, [0.3, 0.31], ncpu=2, timeout=5)
        time.sleep(1.2)
        # ...which must not count against the same positions in call 2.
        results = pool.pmap(time.sleep, [0.5, 0.51], ncpu=2, timeout=1)
    assert results.errors == {}


@pytest.mark.timeout(120)
def test_a_crash_in_a_group_of_tiny_tasks_is_run_again_marked_and_lands_on_its_task(caplog):
    """Tiny tasks run in groups with one mark for the group: the group that died runs
    again with every task marked, and only the crasher is charged (once)."""
    with Pool(progress=False) as pool:
        results = pool.pmap(partial(h.exit_on, 4321), range(20_000), ncpu=2, max_attempts=1)
    assert list(results.errors) == [4321]
    assert "attempt 1 of 1" in str(results[4321]) and "task 4321" in str(results[4321])
    assert all(results[n] == n * 10 for n in range(20_000) if n != 4321)
    assert any("one by one" in record.getMessage() for record in caplog.records)
