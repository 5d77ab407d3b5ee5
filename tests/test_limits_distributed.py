"""max_tasks_per_worker and max_memory in dmap, against real ezpool.serve workers on 127.0.0.1.

A served worker restarts itself by replacing its program (``execve``), as after a
timeout: its pid stays, its process is new. So the tasks here say which process ran
them by a token drawn when this module is imported, which the worker does anew in
each new process (functions of an importable module travel by reference).
"""

from __future__ import annotations

import collections
import os
import secrets
import subprocess
import sys
import time

import pytest

from ezpool import Pool, WorkerOutOfMemory
from tests.conftest import REPO_ROOT, free_port, stop_group

#: Drawn once per process that imports this module: a worker's new process draws another.
BORN = secrets.token_hex(8)

MiB = 1024 * 1024


def born(x):
    return BORN, os.getpid(), x


def hog(task, mib=0):
    """``("eat", MiB)``: touch that much memory and hold it a while; ``("spike", MiB)``: touch
    it and let it go at once; else return the task."""
    if task == "eat":
        block = b"x" * (mib * MiB)
        time.sleep(20)
        return len(block)
    if task == "spike":
        return len(b"x" * (mib * MiB))
    time.sleep(0.05)
    return task


@pytest.fixture
def two_generic(serve):
    return serve("").uris + serve("").uris


@pytest.mark.timeout(120)
def test_a_served_worker_is_a_new_process_every_n_tasks_and_every_task_succeeds(two_generic):
    with Pool() as pool:
        results = pool.dmap(born, range(30), workers=two_generic, spawn=False, max_tasks_per_worker=4)
    assert all(isinstance(results[x], tuple) and results[x][2] == x for x in range(30)), results
    ran = collections.Counter(results[x][0] for x in range(30))
    assert all(count <= 4 for count in ran.values()), ran  # no process ran more than N
    assert len(ran) >= 30 // 4  # so at least ceil(30 / 4) processes ran them
    assert len({results[x][1] for x in range(30)}) == 2  # each restarted in place: same pids


@pytest.mark.timeout(120)
def test_ezpool_serve_max_tasks_per_worker_is_the_default_for_calls_that_set_none(serve):
    uris = serve("", "--max-tasks-per-worker", "3").uris
    with Pool() as pool:
        results = pool.dmap(born, range(9), workers=uris, spawn=False)
        again = pool.dmap(born, range(9), workers=uris, spawn=False, max_tasks_per_worker=9)
    ran = collections.Counter(results[x][0] for x in range(9))
    assert sorted(ran.values()) == [3, 3, 3], ran
    assert len({again[x][0] for x in range(9)}) == 1  # the call's own limit wins


@pytest.mark.timeout(120)
def test_a_task_past_max_memory_fails_alone_naming_task_limit_and_size(two_generic):
    tasks = [1, 2, ("eat", 800), 3, 4, 5, 6]
    began = time.monotonic()
    with Pool() as pool:
        results = pool.dmap(hog, tasks, workers=two_generic, spawn=False, max_memory="200MiB",
                            chunksize=1)
        after = pool.dmap(hog, [7, 8], workers=two_generic, spawn=False, max_memory="200MiB")
    error = results[("eat", 800)]
    assert isinstance(error, WorkerOutOfMemory) and isinstance(error, MemoryError), error
    text = str(error)
    assert "('eat', 800)" in text and "200.0 MiB" in text and "MiB of resident memory" in text, text
    assert all(results[t] == t for t in tasks if t != ("eat", 800))
    assert after == {7: 7, 8: 8}
    assert time.monotonic() - began < 19  # answered for, not waited out


@pytest.mark.timeout(120)
def test_a_task_whose_peak_passed_max_memory_is_blamed_after_it_ends(serve):
    uris = serve("", "--max-memory", "150MiB").uris
    with Pool() as pool:
        results = pool.dmap(hog, [1, ("spike", 600), 2, 3], workers=uris, spawn=False, chunksize=4)
    assert isinstance(results[("spike", 600)], WorkerOutOfMemory), results
    assert "150.0 MiB" in str(results[("spike", 600)])
    assert [results[t] for t in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.timeout(120)
def test_a_worker_restarted_for_a_peak_still_sees_the_next_one_below_it(serve):
    """The restart (an exec: the same pid) keeps ``ru_maxrss`` at the first spike's peak, so a
    second spike below it raised no peak there. A spike made by one C call holds the GIL,
    so the watchdog thread cannot see it either: only the peak check after the task can."""
    uris = serve("", "--max-memory", "150MiB").uris
    with Pool() as pool:
        first = pool.dmap(hog, [("spike", 600)], workers=uris, spawn=False)
        assert isinstance(first[("spike", 600)], WorkerOutOfMemory), first
        second = pool.dmap(hog, [1, ("spike", 400), 2], workers=uris, spawn=False, chunksize=3)
    assert isinstance(second[("spike", 400)], WorkerOutOfMemory), second
    assert [second[1], second[2]] == [1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", ["lots", "0", "-3MB"])
def test_ezpool_serve_refuses_a_bad_max_memory_naming_it_before_serving(size, core_child_env):
    done = subprocess.run(
        [sys.executable, "-m", "ezpool.serve", "--port", str(free_port()), f"--max-memory={size}"],
        capture_output=True, text=True, timeout=30, env=core_child_env, cwd=REPO_ROOT,
    )
    assert done.returncode == 2, done
    assert "--max-memory" in done.stderr and repr(size) in done.stderr, done.stderr
    assert "serving" not in done.stderr


@pytest.fixture
def dialing(core_child_env):
    """``dialing(ADDRESS, *flags, n=1)``: ``n`` workers that dial ADDRESS (``--connect``); killed
    at teardown."""
    started: list[subprocess.Popen] = []

    def start(address, *flags, n=1):
        for _ in range(n):
            started.append(subprocess.Popen(
                [sys.executable, "-m", "ezpool.serve", "--connect", str(address), *flags],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                env=core_child_env, start_new_session=True, cwd=REPO_ROOT,
            ))
        return started[-n:]

    yield start
    for process in started:
        stop_group(process)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_that_dial_in_restart_after_n_tasks_and_for_memory(dialing, tmp_path):
    listen_file = tmp_path / "pool.json"
    dialing(listen_file, "--max-tasks-per-worker", "3", n=2)
    with Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
        results = pool.map(born, range(12))
        assert all(results[x][2] == x for x in range(12)), results
        ran = collections.Counter(results[x][0] for x in range(12))
        assert all(count <= 3 for count in ran.values()) and len(ran) >= 4, ran
        eaten = pool.map(hog, [1, ("eat", 800), 2], max_memory="200MiB", chunksize=1)
        assert isinstance(eaten[("eat", 800)], WorkerOutOfMemory), eaten
        assert eaten[1] == 1 and eaten[2] == 2


@pytest.mark.timeout(120)
def test_the_processes_of_procs_get_the_limits_too(serve):
    uris = serve("", "--max-tasks-per-worker", "2", "--max-memory", "150MiB", procs=2).uris
    with Pool() as pool:
        results = pool.dmap(born, range(8), workers=uris, spawn=False)
        eaten = pool.dmap(hog, [1, ("spike", 600)], workers=uris, spawn=False, chunksize=1)
    ran = collections.Counter(results[x][0] for x in range(8))
    assert all(count <= 2 for count in ran.values()) and len(ran) >= 4, ran
    assert isinstance(eaten[("spike", 600)], WorkerOutOfMemory) and eaten[1] == 1, eaten
