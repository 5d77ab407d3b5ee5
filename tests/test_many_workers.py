"""dmap with many workers and many calls: what one call sets up serves the next.

The workers are real ``ezpool.serve`` processes on 127.0.0.1. Some log at debug
level into a file, which tells how often a client connected to them and how often
it checked who they are (``hello``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ezpool import Pool
from ezpool._backends.distributed.crew import Crew
from ezpool._pyro.server import SERVER_IDLE_TIMEOUT
from tests import _helpers as h
from tests.conftest import eventually, free_port, read_lines, stop_group

#: What a worker logs at debug level when a client connects, and when it is checked.
CONNECTED = "a client connected and authenticated"
CHECKED = "a client checks who this worker is"

_LOGGING_SERVE = (
    "import logging, sys; "
    "logging.basicConfig(level=logging.DEBUG, filename=sys.argv.pop(1), format='%(name)s: %(message)s'); "
    "from ezpool.serve import main; sys.exit(main(sys.argv[1:]))"
)


class LoggingWorker:
    """A generic worker whose debug log goes to ``log``."""

    def __init__(self, uri: str, log: Path) -> None:
        self.uri = uri
        self.log = log

    def count(self, message: str) -> int:
        return self.log.read_text().count(message) if self.log.exists() else 0


@pytest.fixture
def logging_workers(start_daemon, tmp_path):
    """``logging_workers(n)``: ``n`` generic workers that log at debug level to files."""

    def start(count: int) -> list[LoggingWorker]:
        workers = []
        for index in range(count):
            log = tmp_path / f"worker-{index}.log"
            port = free_port()
            command = [sys.executable, "-c", _LOGGING_SERVE, str(log), "--port", str(port)]
            served = start_daemon(command)
            workers.append(LoggingWorker(served.uris[0], log))
        return workers

    return start


def _counts(workers: list[LoggingWorker]) -> list[tuple[int, int]]:
    return [(worker.count(CONNECTED), worker.count(CHECKED)) for worker in workers]


@pytest.mark.timeout(60)
def test_a_second_call_neither_connects_nor_checks_a_worker_again(logging_workers):
    workers = logging_workers(3)
    uris = [worker.uri for worker in workers]
    with Pool("distributed", workers=uris, spawn=False, progress=False) as pool:
        first = pool.map(h.square, range(30))
        after_first = _counts(workers)
        second = pool.map(h.square, range(30, 60))
        third = pool.map(h.add, [(1, 2), (3, 4)])  # another function: it travels, the workers stay
        after_third = _counts(workers)
    assert first.errors == second.errors == third.errors == {}
    assert second[59] == 59 * 59 and third[(3, 4)] == 7
    # The first call checked each worker once, on the one connection its chunks took.
    assert after_first == [(1, 1)] * 3
    assert after_third == after_first


@pytest.mark.timeout(60)
def test_a_connection_the_worker_dropped_while_idle_is_opened_again_without_a_check(logging_workers):
    (worker,) = logging_workers(1)
    with Pool("distributed", workers=[worker.uri], spawn=False, progress=False) as pool:
        assert pool.map(h.square, range(5)).errors == {}
        assert _counts([worker]) == [(1, 1)]
        time.sleep(SERVER_IDLE_TIMEOUT + 1)  # the worker hangs up on the idle connection
        results = pool.map(h.square, range(5, 10))
    assert results.errors == {} and results[9] == 81
    # One new connection, and no check: nothing suggested the worker had changed.
    assert _counts([worker]) == [(2, 1)]


@pytest.mark.timeout(60)
def test_a_replaced_worker_is_still_noticed_on_the_next_call(start_daemon):
    port = free_port()
    command = [sys.executable, "-m", "ezpool.serve", "--port", str(port)]
    served = start_daemon(command)
    with Pool("distributed", workers=served.uris, spawn=False, progress=False) as pool:
        before = pool.map(h.pid_after_nap, [0])
        assert before[0] == served.process.pid
        os.killpg(served.process.pid, signal.SIGKILL)
        served.process.wait(10)
        start_daemon(command)  # a new process at the same address
        after = pool.map(h.pid_after_nap, [1, 2])
    assert after.errors == {}
    assert before[0] not in set(after.values())


@pytest.mark.timeout(120)
def test_client_threads_do_not_grow_with_calls(serve):
    uris = [*serve("", procs=4).uris]
    with Pool("distributed", workers=uris, spawn=False, progress=False) as pool:
        pool.map(h.nap, [0.01 + i / 1000 for i in range(8)])
        pool.map(h.nap, [0.02 + i / 1000 for i in range(8)])
        settled = {thread.ident for thread in threading.enumerate()}
        for call in range(5):
            results = pool.map(h.nap, [0.03 + call / 100 + i / 1000 for i in range(8)])
            assert results.errors == {}
            assert {thread.ident for thread in threading.enumerate()} == settled
            drivers = [thread for thread in threading.enumerate() if thread.name.startswith("ezpool-drive")]
            assert len(drivers) == 4  # one per worker, for the life of the pool
    # ... and they go with it.
    eventually(lambda: not any(t.name.startswith("ezpool-drive") for t in threading.enumerate()),
               "end of the pool's driving threads", timeout=10)


@pytest.mark.timeout(180)
def test_sixteen_workers_share_one_call_and_serve_the_next(serve):
    uris = serve("", procs=16).uris
    assert len(uris) == 16
    with Pool("distributed", workers=uris, spawn=False, progress=False) as pool:
        for call in range(2):
            tasks = [(call * 1000 + i, 0.05) for i in range(64)]
            results = pool.map(h.pid_after_nap, tasks)
            assert results.errors == {} and len(results) == 64
            # Every worker took a chunk at the start: each ran at least one task.
            assert len(set(results.workers.values())) == 16
            assert len(set(results.values())) == 16


# --- the crew: threads that live with the pool ---------------------------------------


@pytest.mark.timeout(30)
def test_the_crew_reuses_idle_threads_and_starts_one_only_when_none_is_idle():
    crew = Crew()
    seen: list[int] = []
    gate = threading.Event()

    def job(wait: bool) -> None:
        seen.append(threading.get_ident())
        if wait:
            gate.wait(10)

    try:
        assert crew.run(job, False).wait(10)
        assert crew.run(job, False).wait(10)
        assert crew.size == 1 and len(set(seen)) == 1
        busy = crew.run(job, True)  # the one thread is busy now: a second one starts
        assert crew.run(job, False).wait(10)
        assert crew.size == 2
        gate.set()
        assert busy.wait(10)
    finally:
        crew.stop()
    assert crew.size == 0


@pytest.mark.timeout(30)
def test_a_stopped_crew_lets_its_threads_end_and_can_run_again():
    crew = Crew(name="ezpool-test-crew")
    assert crew.run(lambda: None).wait(10)
    crew.stop()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("ezpool-test-crew") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the crew's threads did not end"
        time.sleep(0.01)
    ran = []
    try:
        assert crew.run(ran.append, 1).wait(10)
    finally:
        crew.stop()
    assert ran == [1]


#: What a served worker logs at debug level (``-v``) when a client proves the key, and
#: when it is checked; each line begins with the time, to the millisecond.
_LOGGED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[pid (\d+)\] .*(" + CONNECTED + "|" + CHECKED + ")"
)


def _most_at_once(log: str) -> int:
    """The most workers seen between a client's proof of the key and their check at once."""
    opened: dict[str, str] = {}
    spans = []
    for line in log.splitlines():
        found = _LOGGED.match(line)
        if found is None:
            continue
        when, pid, what = found.groups()
        if what == CONNECTED:
            opened[pid] = when
        elif pid in opened:
            spans.append((opened.pop(pid), when))
    return max(sum(1 for b in spans if b[0] < a[1] and a[0] < b[1]) for a in spans)


@pytest.mark.timeout(240)
def test_a_cold_call_over_64_workers_checks_them_at_once_and_gets_every_result(core_child_env, tmp_path):
    port = free_port(count=64)
    command = [sys.executable, "-m", "ezpool.serve", "-v", "--port", str(port), "--procs", "64"]
    with open(tmp_path / "workers.log", "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                   env=core_child_env, start_new_session=True)
    try:
        uris = read_lines(process, 64, command, timeout=180)
        with Pool("distributed", workers=uris, spawn=False, progress=False) as pool:
            results = pool.map(h.nap, [0.05 + i * 1e-6 for i in range(64 * 4)])
        assert results.errors == {} and len(results) == 256
        assert len(set(results.workers.values())) == 64
        text = (tmp_path / "workers.log").read_text()
        assert text.count(CHECKED) == 64
        # Checked one after another, no two workers would be between the two at once.
        assert _most_at_once(text) >= 4
    finally:
        stop_group(process)
