"""``PoolExecutor``: cancelling calls that already run, with real processes and workers.

In the parallel and distributed modes ``future.cancel()`` on a running call kills
the worker that runs it (the backend starts another: a served worker restarts in
place) and ends the future cancelled; ``shutdown(cancel_futures=True)`` stops the
running calls too, and a ``map`` whose results are left unread stops its running
calls. In the serial mode a running call cannot be stopped, and ``cancel()`` refuses
it as the standard executors do. A call stopped is seen to stop beating
(``tests/_beats.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any

import pytest

from tests import _helpers as h
from tests._beats import beat, started, stop_beating
from tests.conftest import eventually
from tests.modes import MODES, Mode

#: The modes that stop a running call: processes here, and distributed workers.
STOPPING = [MODES["fork"], MODES["distributed"]]

#: How long a cancelled call may take to end cancelled (the issue asks for 2 s).
CANCELLED_WITHIN = 2.0

#: How long a stopped call may take to stop running, on a loaded machine.
STOPPED_WITHIN = 10.0


@pytest.fixture
def make():
    made: list[Any] = []

    def build(mode: Mode, workers: int = 2, **options: Any) -> Any:
        made.append(mode.executor(workers, **options))
        return made[-1]

    yield build
    for opened in made:
        opened.shutdown(wait=True, cancel_futures=True)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_cancelling_a_running_call_stops_it_while_the_others_go_on(make, mode, tmp_path):
    executor = make(mode)
    long = executor.submit(beat, str(tmp_path), "long", 60)
    pids = started(tmp_path, ["long"])
    other = executor.submit(beat, str(tmp_path), "other", 1.5)
    assert started(tmp_path, ["other"])["other"] != pids["long"]  # on the other worker
    assert long.running()
    began = time.monotonic()
    assert long.cancel() is True
    with pytest.raises(cf.CancelledError):
        long.result(timeout=CANCELLED_WITHIN)
    assert time.monotonic() - began < CANCELLED_WITHIN
    assert long.cancelled() and long.done()
    assert cf.wait([long], timeout=0).done == {long}
    assert other.result(timeout=60) == "other"
    stop_beating(tmp_path, ["long"], STOPPED_WITHIN)
    # Its worker was replaced: the executor goes on with two.
    assert sorted(executor.map(h.square, range(20))) == sorted(n * n for n in range(20))
    assert long.cancel() is True  # cancelled it stays


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_cancel_calls_back_and_wakes_the_waiters_of_a_running_call(make, mode, tmp_path):
    executor = make(mode)
    long = executor.submit(beat, str(tmp_path), "long", 60)
    started(tmp_path, ["long"])
    heard: list[bool] = []
    long.add_done_callback(lambda future: heard.append(future.cancelled()))
    waiting = cf.as_completed([long], timeout=30)
    assert long.cancel()
    assert next(waiting) is long
    assert heard == [True]
    stop_beating(tmp_path, ["long"], STOPPED_WITHIN)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_shutdown_cancelling_futures_stops_the_running_calls(make, mode, tmp_path):
    executor = make(mode)
    running = [executor.submit(beat, str(tmp_path), name, 60) for name in ("a", "b")]
    started(tmp_path, ["a", "b"])
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
    stop_beating(tmp_path, ["a", "b"], STOPPED_WITHIN)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_a_map_left_unread_stops_its_running_calls(make, mode, tmp_path):
    executor = make(mode)
    results = executor.map(beat, [str(tmp_path)] * 2, ["x", "y"], [60, 60])
    started(tmp_path, ["x", "y"])
    del results  # left behind, unread
    stop_beating(tmp_path, ["x", "y"], STOPPED_WITHIN)
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
