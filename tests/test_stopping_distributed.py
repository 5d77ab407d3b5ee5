"""Stopping running work in dmap, against real ezpool.serve workers on 127.0.0.1: ``Stops``
(positions, everything) and an ``imap`` left early. A running task stops only with its
process, so the worker restarts itself; the next call finds it ready."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from ezpool import EzPoolError, Pool
from ezpool._core.stopping import Stops
from tests.conftest import REPO_ROOT, stop_group


def nap(seconds, tag, mark_dir=None):
    """Sleep, leaving a file named ``tag`` in ``mark_dir`` first (proof that it ran)."""
    if mark_dir is not None:
        Path(mark_dir, str(tag)).touch()
    time.sleep(seconds)
    return tag


@pytest.fixture
def two_generic(serve):
    return serve("").uris + serve("").uris


def busy(uris):
    """Whether each worker runs a chunk now, as ``python -m ezpool.status --json`` says."""
    done = subprocess.run([sys.executable, "-m", "ezpool.status", *uris, "--json"], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=60)
    assert done.stdout, done.stderr
    return [entry["busy"] for entry in json.loads(done.stdout)["workers"]]


def later(seconds, action):
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(90)
def test_a_stopped_running_task_is_cancelled_and_the_others_finish(two_generic):
    tasks = [(60, "long"), (0.2, "a"), (0.2, "b"), (0.2, "c"), (0.2, "d")]
    stops = Stops()
    with Pool() as pool:
        later(1.5, lambda: stops.stop({0}))
        began = time.monotonic()
        results = pool._map("distributed", nap, tasks, {"workers": two_generic, "spawn": False,
                                                        "chunksize": 1}, stops=stops)
        took = time.monotonic() - began
        assert isinstance(results[(60, "long")], CancelledError), results
        assert [results[t] for t in tasks[1:]] == ["a", "b", "c", "d"]
        assert took < 20, took
        assert pool.dmap(nap, [(0, "x"), (0, "y")], workers=two_generic, spawn=False) == \
            {(0, "x"): "x", (0, "y"): "y"}
    assert busy(two_generic) == [False, False]


@pytest.mark.timeout(90)
def test_a_stopped_task_not_yet_sent_is_cancelled_and_never_runs(two_generic, tmp_path):
    tasks = [(60, "one", str(tmp_path)), (60, "two", str(tmp_path)), (0.1, "three", str(tmp_path)),
             (0.1, "four", str(tmp_path))]
    stops = Stops()
    with Pool() as pool:
        later(1.5, lambda: stops.stop({0, 1, 3}))
        began = time.monotonic()
        results = pool._map("distributed", nap, tasks, {"workers": two_generic, "spawn": False,
                                                        "chunksize": 1, "backup": False}, stops=stops)
        took = time.monotonic() - began
    assert [type(results[t]) for t in tasks] == [CancelledError, CancelledError, str, CancelledError]
    assert results[tasks[2]] == "three"
    assert not (tmp_path / "four").exists()  # never ran
    assert took < 20, took


@pytest.mark.timeout(90)
def test_stop_all_returns_promptly_and_leaves_no_worker_running(two_generic):
    stops = Stops()
    with Pool() as pool:
        later(1.5, stops.stop_all)
        began = time.monotonic()
        # What the map makes of outcomes never known is the caller's (the Pool's) to say:
        # here only the backend's part counts, that it ended at once and stopped the workers.
        with contextlib.suppress(EzPoolError, CancelledError):
            pool._map("distributed", nap, [(60, "a"), (60, "b"), (60, "c")],
                      {"workers": two_generic, "spawn": False, "chunksize": 1}, stops=stops)
        assert time.monotonic() - began < 5
        began = time.monotonic()
        assert pool.dmap(nap, [(0, "x")], workers=two_generic, spawn=False) == {(0, "x"): "x"}
        assert time.monotonic() - began < 15
    assert busy(two_generic) == [False, False]


@pytest.mark.timeout(90)
def test_an_imap_left_early_stops_the_chunks_still_running(two_generic):
    with Pool(mode="distributed") as pool:
        began = time.monotonic()
        for _ in pool.imap(nap, [(0.2, "quick"), (60, "a"), (60, "b")], workers=two_generic,
                           spawn=False, chunksize=1):
            break
        assert time.monotonic() - began < 5
        began = time.monotonic()
        again = pool.dmap(nap, [(0, "x"), (0, "y")], workers=two_generic, spawn=False)
        assert again == {(0, "x"): "x", (0, "y"): "y"}
        assert time.monotonic() - began < 15
    assert busy(two_generic) == [False, False]


@pytest.mark.timeout(120)
def test_an_imap_left_early_stops_workers_that_dial_in(core_child_env, tmp_path):
    listen_file = tmp_path / "pool.json"
    started = [subprocess.Popen(
        [sys.executable, "-m", "ezpool.serve", "--connect", str(listen_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=core_child_env, start_new_session=True, cwd=REPO_ROOT,
    ) for _ in range(2)]
    try:
        with Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
            assert pool.map(nap, [(0, "warm"), (0, "up")], chunksize=1)[(0, "up")] == "up"
            began = time.monotonic()
            for _ in pool.imap(nap, [(0.2, "quick"), (60, "a"), (60, "b")], chunksize=1):
                break
            assert time.monotonic() - began < 5
            began = time.monotonic()
            again = pool.map(nap, [(0, "x"), (0, "y")], chunksize=1)
            assert again == {(0, "x"): "x", (0, "y"): "y"}
            assert time.monotonic() - began < 20
    finally:
        for process in started:
            stop_group(process)
