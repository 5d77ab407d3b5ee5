"""Stopping running work in ``pmap``: stops asked from another thread (``ezpool._core.stopping``),
and ``imap`` left early. Real worker processes; a stopped one must be gone, and the pool
must serve its next call.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from ezpool import Pool
from ezpool._core.feed import Live
from ezpool._core.stopping import Stops
from ezpool._core.stream import open_feed, stream
from tests._helpers import process_gone

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["fork", "spawn"])
def pool(request):
    pool = Pool("parallel", start_method=request.param, progress=False)
    try:
        yield pool
    finally:
        pool.shutdown()


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def nap_and_note(where: str, number: int, seconds: float) -> int:
    """Sleep, having left a file saying that the task ran (a tuple task is unpacked)."""
    Path(where, str(number)).touch()
    time.sleep(seconds)
    return os.getpid()


def _map_with(pool: Pool, fun, tasks, stops: Stops, **given):
    return pool._map("parallel", fun, tasks, {"progress": False, **given}, stops)


def _after(seconds: float, ask) -> threading.Timer:
    timer = threading.Timer(seconds, ask)
    timer.start()
    return timer


def _workers(pool: Pool) -> set[int]:
    return {proc.process.pid for proc in pool._backend("parallel")._processes}


def test_a_running_task_stopped_is_cancelled_and_the_others_finish(pool):
    pool.pmap(nap, [0.0, 0.0], ncpu=2)
    stops = Stops()
    tasks = [60.0, 0.2, 0.3, 0.4, 0.5]
    timer = _after(1.0, lambda: stops.stop([0]))
    began = time.monotonic()
    try:
        results = _map_with(pool, nap, tasks, stops, ncpu=2, chunksize=1)
    finally:
        timer.cancel()
    assert time.monotonic() - began < 10
    assert isinstance(results[60.0], CancelledError) and "task 60.0 was cancelled" in str(results[60.0])
    assert all(isinstance(results[task], int) for task in tasks[1:])
    assert set(results.errors) == {60.0}
    # The next call works, on processes that are all alive.
    assert len(set(pool.pmap(nap, [0.0] * 4, ncpu=2).values())) <= 2


def test_the_process_of_a_stopped_task_is_killed(pool, tmp_path):
    pool.pmap(nap, [0.0, 0.0], ncpu=1)
    before = _workers(pool)
    stops = Stops()
    timer = _after(1.0, lambda: stops.stop([0]))
    try:
        results = _map_with(pool, nap, [30.0], stops, ncpu=1)
    finally:
        timer.cancel()
    assert isinstance(results[30.0], CancelledError)
    assert all(process_gone(pid) for pid in before)
    assert _workers(pool).isdisjoint(before)


def test_a_stopped_task_not_yet_sent_is_cancelled_and_never_runs(pool, tmp_path):
    stops = Stops()
    stops.stop([3])
    tasks = [(str(tmp_path), number, 0.01) for number in range(8)]
    results = _map_with(pool, nap_and_note, tasks, stops, ncpu=2, chunksize=2)
    assert isinstance(results[tasks[3]], CancelledError)
    assert set(results.errors) == {tasks[3]}
    assert sorted(int(path.name) for path in tmp_path.iterdir()) == [0, 1, 2, 4, 5, 6, 7]


def test_a_task_stopped_after_it_finished_is_left_alone(pool):
    stops = Stops()
    timer = _after(1.5, lambda: stops.stop([0]))
    try:
        results = _map_with(pool, nap, [0.0, 3.0], stops, ncpu=2, chunksize=1)
    finally:
        timer.cancel()
    assert not results.errors


def test_stop_all_kills_the_running_processes_and_returns_promptly(pool):
    pool.pmap(nap, [0.0, 0.0], ncpu=2)
    before = _workers(pool)
    stops = Stops()
    timer = _after(1.0, stops.stop_all)
    began = time.monotonic()
    settings = pool._settings({"progress": False, "ncpu": 2, "chunksize": 1})
    backend = pool._backend("parallel")
    try:
        batches = list(stream(backend, nap, [60.0, 61.0, 62.0, 63.0], settings, stops=stops))
    finally:
        timer.cancel()
    assert time.monotonic() - began < 10
    assert batches == []  # outcomes never known are never yielded
    assert all(process_gone(pid) for pid in before)
    assert pool.pmap(abs, [-1, -2], ncpu=2) == {-1: 1, -2: 2}


def test_stop_all_wakes_a_call_waiting_for_tasks_from_a_live_source(pool):
    live = Live()
    live.put([0.0])
    stops = Stops()
    settings = pool._settings({"progress": False, "ncpu": 2})
    timer = _after(1.0, stops.stop_all)
    began = time.monotonic()
    try:
        feed = open_feed(live, 100, None)
        batches = list(stream(pool._backend("parallel"), nap, feed, settings, stops=stops))
    finally:
        timer.cancel()
        live.close()
    assert time.monotonic() - began < 10
    assert [len(batch.values) for batch in batches] == [1]


def test_imap_left_early_stops_its_running_processes(pool):
    pool.pmap(nap, [0.0, 0.0], ncpu=2)
    before = _workers(pool)
    began = time.monotonic()
    for _ in pool.imap(nap, [0.0] + [60.0] * 4, ncpu=2, chunksize=1):
        break
    assert time.monotonic() - began < 10
    assert all(process_gone(pid) for pid in before)
    assert pool.pmap(abs, [-1, -2], ncpu=2) == {-1: 1, -2: 2}
