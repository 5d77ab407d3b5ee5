"""Workers stopped or killed in the middle of a ``dmap`` call: real ``ezpool.serve``
workers, real SIGSTOP, SIGCONT and SIGKILL.

A SIGSTOPped worker holds up no call once copies settled what it held, and is
noticed within ``heartbeat`` without copies. A worker killed in the middle of a
chunk charges no attempt to the tasks of that chunk that never started: the
chunk at the head of its connection runs again one task per chunk, and only a
task lost alone counts (``ezpool._backends.distributed.breaks``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from ezpool import Pool, WorkerCrashed
from ezpool._core.records import ChunkCall, read_mark
from ezpool._worker.servant import Servant
from tests.conftest import eventually, free_port

# --- tasks (module-level, so that generic workers import them by name) ---------------------


def stop_once(directory: str, task: int, seconds: float) -> int:
    """Task 0 stops its own process (SIGSTOP) the first time it runs anywhere, after writing
    ``pid time`` to ``directory/stopped``; every task naps ``seconds`` and returns ``10 * task``."""
    if task == 0:
        with contextlib.suppress(FileExistsError):
            fd = os.open(Path(directory, "stopped"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, f"{os.getpid()} {time.time()}".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(seconds)
    return 10 * task


def kill_at(directory: str, task: int, seconds: float, killer: int, always: bool) -> int:
    """Leaves ``directory/started-TASK-PID`` as it starts; task ``killer`` kills its own
    process (SIGKILL) every time it runs with ``always``, else the first time only, after
    writing its pid to ``directory/killed``; naps ``seconds``."""
    Path(directory, f"started-{task}-{os.getpid()}").touch()
    if task == killer:
        if always:
            os.kill(os.getpid(), signal.SIGKILL)
        with contextlib.suppress(FileExistsError):
            fd = os.open(Path(directory, "killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(seconds)
    return 10 * task


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def resumed():
    """Pids stopped during the test: each is sent SIGCONT at teardown, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _stopped(directory: Path, resumed: list[int]) -> tuple[int, float]:
    """The pid ``stop_once`` stopped (resumed at teardown) and when (``time.time()``)."""
    text = eventually(lambda: (directory / "stopped").exists() and (directory / "stopped").read_text(),
                      "a stopped worker")
    pid, when = text.split()
    resumed.append(int(pid))
    return int(pid), float(when)


def _started(directory: Path) -> dict[int, set[int]]:
    """Each task that started, and the pids it started in."""
    runs: dict[int, set[int]] = {}
    for path in directory.glob("started-*"):
        _, task, pid = path.name.split("-")
        runs.setdefault(int(task), set()).add(int(pid))
    return runs


# --- a stopped worker ------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_stopped_worker_holds_up_no_call_once_copies_settled_what_it_held(serve, resumed, tmp_path):
    """The worker stops itself in its first task and is resumed only at teardown. Its chunk's
    copy ends the first call; in the second its connection must be opened again: a stopped
    worker's system accepts the connection and the handshake waits. The copy that answered
    breaks that off too (it used to wait for the resume, here for ever)."""
    uris = serve("").uris + serve("").uris
    tasks = [(str(tmp_path), n, 0.02) for n in range(40)]
    took = []
    # No check is judged silent for a minute: only copies can end these calls early.
    with Pool("distributed", workers=uris, spawn=False, progress=False, heartbeat=60) as pool:
        for _ in range(2):
            began = time.monotonic()
            results = pool.map(stop_once, tasks)
            took.append(time.monotonic() - began)
            _stopped(tmp_path, resumed)
            assert results.errors == {} and results == {task: 10 * task[1] for task in tasks}
    assert max(took) < 30, f"calls took {took}: they waited for the stopped worker"


@pytest.mark.timeout(120)
def test_without_copies_a_stopped_worker_is_noticed_within_heartbeat(serve, resumed, tmp_path, caplog):
    """Without copies the call waits for the watcher: the stopped worker is judged silent
    ``heartbeat`` seconds after its last sign of life, its chunk goes to the other, and the
    call ends then (it lingered two seconds more, checking the lost worker again)."""
    heartbeat = 2.0
    uris = serve("").uris + serve("").uris
    tasks = [(str(tmp_path), n, 0.02) for n in range(40)]
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(
        "distributed", workers=uris, spawn=False, progress=False, heartbeat=heartbeat, backup=False
    ) as pool:
        results = pool.map(stop_once, tasks)
        ended = time.time()
    _, stopped_at = _stopped(tmp_path, resumed)
    assert results.errors == {} and results == {task: 10 * task[1] for task in tasks}
    assert any("left a check unanswered" in r.getMessage() for r in caplog.records)
    assert ended - stopped_at < heartbeat + 1.5, f"the call ended {ended - stopped_at:.1f} s after the stop"


# --- a killed worker ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_tasks_queued_in_the_chunk_of_a_killed_worker_are_not_charged(serve, tmp_path):
    """Task 5 kills its worker in the middle of a chunk of ten, once. Every task of that
    chunk goes again at no cost (6 to 9 never started), task 5 included, as nothing
    says it was the one running: none may end as ``WorkerCrashed``, even at one attempt.
    (No copies: a copy of the chunk could settle it before the loss is seen.)"""
    uris = serve("").uris + serve("").uris
    tasks = [(str(tmp_path), n, 0.01, 5, False) for n in range(40)]
    with Pool("distributed", workers=uris, spawn=False, progress=False, max_attempts=1, chunksize=10,
              backup=False) as pool:
        results = pool.map(kill_at, tasks)
    assert results.errors == {}, {task[1]: str(error) for task, error in results.errors.items()}
    assert results == {task: 10 * task[1] for task in tasks}
    killed = int((tmp_path / "killed").read_text())
    runs = _started(tmp_path)
    assert killed in runs[5] and all(killed not in runs[task] for task in range(6, 10))  # never started there


@pytest.mark.timeout(180)
def test_a_task_that_kills_its_worker_every_time_is_charged_alone(tmp_path):
    """The same task kills its worker every time; the pool starts it again. The first loss
    falls on a chunk of ten and counts nothing; alone, the task counts its attempt and
    fails; its neighbours run."""
    port = free_port()
    tasks = [(str(tmp_path), n, 0.01, 5, True) for n in range(20)]
    with Pool("distributed", workers=[f"PYRO:worker@127.0.0.1:{port}"], spawn=True, progress=False,
              max_attempts=1, chunksize=10) as pool:
        results = pool.map(kill_at, tasks)
    assert list(results.errors) == [tasks[5]]
    error = results.errors[tasks[5]]
    assert isinstance(error, WorkerCrashed) and "while running task" in str(error)
    assert "attempt 1 of 1" in str(error)
    assert all(results[task] == 10 * task[1] for task in tasks if task[1] != 5)


@pytest.mark.timeout(120)
def test_the_tasks_a_check_saw_finish_go_back_whole(serve, tmp_path, caplog):
    """A chunk long enough for the watcher's checks: the worker said which task it ran,
    so the tasks before it, which finished, go back as one piece, and only the rest of
    the chunk runs again one by one."""
    uris = serve("").uris + serve("").uris
    tasks = [(str(tmp_path), n, 0.1, 15, False) for n in range(40)]
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(
        "distributed", workers=uris, spawn=False, progress=False, max_attempts=1, chunksize=20, heartbeat=1.2,
        backup=False,
    ) as pool:
        results = pool.map(kill_at, tasks)
    assert results.errors == {} and results == {task: 10 * task[1] for task in tasks}
    again = [r.getMessage() for r in caplog.records if "one by one" in r.getMessage()]
    assert len(again) == 1, again
    first = re.search(r"one of tasks \('[^']*', (\d+),", again[0])
    assert first is not None and 5 <= int(first.group(1)) <= 15, again  # the task a check saw running


# --- what a worker's check says ----------------------------------------------------------------


def test_a_workers_check_says_which_task_of_which_chunk_runs():
    servant = Servant(time.sleep)
    assert servant.ping() == (servant.identity, False)
    call = ChunkCall(servant.identity, "code-id", 7, 3, [pickle.dumps([0.01, 0.5, 0.01])], None)
    answer = []
    thread = threading.Thread(target=lambda: answer.append(servant.run_chunk(*call.wire())))
    thread.start()
    try:
        busy = eventually(lambda: servant.ping()[1] or None, "a check while the chunk runs")
        fid, first, mark = busy
        assert (fid, first) == ("code-id", 7) and 7 <= read_mark(mark)[0] <= 9
    finally:
        thread.join(10)
    assert answer and answer[0][0] == "ok" and servant.ping() == (servant.identity, False)
