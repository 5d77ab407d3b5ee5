"""``PoolExecutor``: cancelling calls that already run, with real processes and workers.

In the parallel and distributed modes ``future.cancel()`` on a running call kills
the worker that runs it (the backend starts another) and ends the future cancelled;
``shutdown(cancel_futures=True)`` stops the running calls too, and a ``map`` whose
results are left unread stops its running calls. In the serial mode a running call
cannot be stopped, and ``cancel()`` refuses it as the standard executors do.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests import _helpers as h
from tests.conftest import eventually
from tests.modes import MODES, Mode

#: The modes that stop a running call: processes here, and distributed workers.
STOPPING = [MODES["fork"], MODES["distributed"]]

#: How long a cancelled call may take to end cancelled (the issue asks for 2 s).
CANCELLED_WITHIN = 2.0

#: How long a stopped call's process may take to be gone (killed, reaped), on a loaded machine.
GONE_WITHIN = 20.0


@pytest.fixture
def make():
    made: list[Any] = []

    def build(mode: Mode, workers: int = 2, **options: Any) -> Any:
        made.append(mode.executor(workers, **options))
        return made[-1]

    yield build
    for opened in made:
        opened.shutdown(wait=True, cancel_futures=True)


def started(directory: Path, task: Any, timeout: float = 60.0) -> int:
    """The pid of the process that started ``task`` (``h.record_then_nap``), once it has."""
    found: list[int] = []

    def look() -> bool:
        for path in directory.iterdir():
            name, pid, _ = path.name.rsplit("-", 2)
            if name == repr(task):
                found.append(int(pid))
                return True
        return False

    eventually(look, f"task {task!r} to start", timeout)
    return found[0]


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_cancelling_a_running_call_stops_it_while_the_others_go_on(make, mode, tmp_path):
    executor = make(mode)
    long = executor.submit(h.record_then_nap, str(tmp_path), "long", 60)
    pid = started(tmp_path, "long")
    other = executor.submit(h.record_then_nap, str(tmp_path), "other", 1.5)
    assert started(tmp_path, "other") != pid  # on the other worker
    assert long.running()
    began = time.monotonic()
    assert long.cancel() is True
    with pytest.raises(cf.CancelledError):
        long.result(timeout=CANCELLED_WITHIN)
    assert time.monotonic() - began < CANCELLED_WITHIN
    assert long.cancelled() and long.done()
    assert cf.wait([long], timeout=0).done == {long}
    assert other.result(timeout=60) == "other"
    eventually(lambda: gone(pid), f"the process {pid} of the cancelled call to end", GONE_WITHIN)
    # Its worker was replaced: the executor goes on with two.
    assert sorted(executor.map(h.square, range(20))) == sorted(n * n for n in range(20))
    assert long.cancel() is True  # cancelled it stays


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_cancel_calls_back_and_wakes_the_waiters_of_a_running_call(make, mode, tmp_path):
    executor = make(mode)
    long = executor.submit(h.record_then_nap, str(tmp_path), "long", 60)
    started(tmp_path, "long")
    heard: list[bool] = []
    long.add_done_callback(lambda future: heard.append(future.cancelled()))
    waiting = cf.as_completed([long], timeout=30)
    assert long.cancel()
    assert next(waiting) is long
    assert heard == [True]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_shutdown_cancelling_futures_stops_the_running_calls(make, mode, tmp_path):
    executor = make(mode)
    running = [executor.submit(h.record_then_nap, str(tmp_path), name, 60) for name in ("a", "b")]
    pids = [started(tmp_path, name) for name in ("a", "b")]
    waiting = [executor.submit(h.square, n) for n in range(5)]
    mapped = executor.map(h.square, range(3))
    began = time.monotonic()
    executor.shutdown(wait=True, cancel_futures=True)
    took = time.monotonic() - began
    assert took < 20, f"shutdown(cancel_futures=True) took {took:.1f} s"
    assert all(future.cancelled() for future in running)
    assert all(future.done() for future in waiting)
    with pytest.raises(cf.CancelledError):
        list(mapped)
    for pid in pids:
        eventually(lambda pid=pid: gone(pid), f"the process {pid} of a stopped call to end", GONE_WITHIN)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_a_map_left_unread_stops_its_running_calls(make, mode, tmp_path):
    executor = make(mode)
    results = executor.map(h.record_then_nap, [str(tmp_path)] * 2, ["x", "y"], [60, 60])
    pids = [started(tmp_path, name) for name in ("x", "y")]
    del results  # left behind, unread
    for pid in pids:
        eventually(lambda pid=pid: gone(pid), f"the process {pid} of a left call to end", GONE_WITHIN)
    assert executor.submit(h.square, 7).result(timeout=60) == 49


@pytest.mark.timeout(60)
def test_a_running_call_in_this_process_cannot_be_cancelled(make, tmp_path):
    executor = make(MODES["serial"])
    gate = tmp_path / "open"
    future = executor.submit(h.wait_for, str(gate), "done")
    eventually(future.running, "the call to run", 30)
    assert future.cancel() is False
    gate.touch()
    assert future.result(timeout=30) == "done"
    assert not future.cancelled()


def test_the_pids_look_is_right():
    assert not gone(os.getpid())
