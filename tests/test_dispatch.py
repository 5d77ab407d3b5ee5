"""dmap never hangs, never returns a wrong value, never throws away a result it has.

Each test breaks real ``ezpool.serve`` workers (signals, restarts, a name server
killed, a second client, a paused or killed client) and checks that every task
ends up in the results exactly once, as its value or as the reason it has none.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ezpool import Pool, ResultNotSerializable, TaskTimeout, WorkerUnavailable
from tests import _workers as w
from tests.conftest import free_port


def _square_uri(port: int) -> str:
    return f"PYRO:worker@127.0.0.1:{port}"


def _wait_listening(uri_port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", uri_port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# --- 1. timeouts never hang the call ---------------------------------------------------


@pytest.mark.timeout(90)
def test_tasks_that_never_return_time_out_and_every_other_task_finishes(serve):
    uris = serve("tests._workers:Napper").uris + serve("tests._workers:Napper").uris
    tasks = [600.0, 601.0] + [0.05 + i / 1000 for i in range(10)]
    began = time.monotonic()
    with Pool() as pool:
        results = pool.dmap(w.Napper, tasks, workers=uris, spawn=False, timeout=1)
        took = time.monotonic() - began
        assert sorted(results.errors) == [600.0, 601.0]
        assert all(isinstance(results[t], TaskTimeout) for t in (600.0, 601.0))
        assert all(isinstance(results[t], int) for t in tasks[2:])
        assert took < 60, f"the call took {took:.0f} s"
        # The workers restarted to stop those tasks, and serve the next call.
        again = pool.dmap(w.Napper, [0.01, 0.02], workers=uris, spawn=False, timeout=5)
    assert again.errors == {}


# --- 2. a name server that dies ---------------------------------------------------------


@pytest.mark.timeout(90)
def test_pyroname_workers_keep_working_when_the_name_server_dies(serve, name_server, start_daemon):
    served = [serve("tests._workers:Napper", "--ns", name_server) for _ in range(2)]
    ns_port = name_server.rsplit(":", 1)[1]
    names = [
        f"PYRONAME:ezpool.worker.127.0.0.1.{s.uris[0].rsplit(':', 1)[1]}@127.0.0.1:{ns_port}" for s in served
    ]
    ns_process = next(p for p in _children_matching("ezpool.nameserver", ns_port))
    tasks = [0.05 + i / 10000 for i in range(40)]

    def break_things() -> None:
        os.kill(ns_process, signal.SIGKILL)
        time.sleep(0.3)
        os.killpg(served[0].process.pid, signal.SIGKILL)

    breaker = threading.Timer(0.5, break_things)
    with Pool(heartbeat=2) as pool:
        breaker.start()
        try:
            results = pool.dmap(w.Napper, tasks, workers=names, spawn=False)
        finally:
            breaker.cancel()
    assert len(results) == 40 and results.errors == {}


def test_a_name_server_that_is_down_at_the_start_is_worker_unavailable_naming_it():
    port = free_port()
    with Pool() as pool, pytest.raises(WorkerUnavailable, match=f"127.0.0.1:{port}"):
        pool.dmap(w.Square, [1], workers=[f"PYRONAME:ezpool.anything@127.0.0.1:{port}"], spawn=False)


def _children_matching(*words: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(word in command for word in words):
            found.append(int(entry.name))
    return found


# --- 3. a process that takes a lost worker's port must prove who it is ----------------


@pytest.mark.timeout(90)
def test_another_class_on_a_lost_workers_port_gets_no_work(serve, caplog):
    port = free_port()
    doomed = serve("tests._workers:Napper", port=port)
    other = serve("tests._workers:Napper")
    tasks = [0.05 + i / 10000 for i in range(60)]
    impostor: list = []

    def swap() -> None:
        os.killpg(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
        impostor.append(serve("tests._workers:Killer", port=port))  # also answers 'run'

    swapper = threading.Timer(0.5, swap)
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(heartbeat=2) as pool:
        swapper.start()
        try:
            results = pool.dmap(w.Napper, tasks, workers=doomed.uris + other.uris, spawn=False)
        finally:
            swapper.cancel()
    assert results.errors == {} and len(results) == 60
    assert all(isinstance(value, int) for value in results.values())  # pids, never a Killer's echo
    assert impostor, "the impostor never started"
    assert any("serves 'Killer'" in r.message for r in caplog.records)


@pytest.mark.timeout(90)
def test_a_worker_restarted_on_its_port_rejoins_as_a_new_process_and_costs_no_task(serve, caplog):
    port = free_port()
    first = serve("tests._workers:Napper", port=port)
    other = serve("tests._workers:Napper")
    tasks = [0.05 + i / 10000 for i in range(80)]
    second: list = []

    def restart() -> None:
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
        second.append(serve("tests._workers:Napper", port=port))

    restarter = threading.Timer(0.5, restart)
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(heartbeat=2) as pool:
        restarter.start()
        try:
            results = pool.dmap(w.Napper, tasks, workers=first.uris + other.uris, spawn=False)
        finally:
            restarter.cancel()
    assert results.errors == {} and len(results) == 80
    assert second and second[0].process.pid in set(results.values())  # the new process did work
    assert any("a new process" in r.message for r in caplog.records)


# --- 4. a dropped connection, a paused client or a task's BaseException is not a lost worker


def test_a_tasks_system_exit_or_keyboard_interrupt_is_its_own_outcome(serve):
    uris = serve("tests._workers:Raiser").uris
    tasks = ["exit", "interrupt", *range(8)]
    with Pool() as pool:
        results = pool.dmap(w.Raiser, tasks, workers=uris, spawn=False)
    assert sorted(map(str, results.errors)) == ["exit", "interrupt"]
    assert type(results["exit"]) is SystemExit and results["exit"].code == 3
    assert type(results["interrupt"]) is KeyboardInterrupt
    assert all(results[n] == n for n in range(8))


def test_a_dropped_reply_from_a_live_worker_is_sent_again_at_no_cost(serve, core_child_env, caplog):
    env = dict(core_child_env, EZPOOL_TEST_FAULTS="drop_reply=2")
    uris = serve("tests._workers:Square", env=env).uris
    with caplog.at_level(logging.INFO, logger="ezpool"), Pool() as pool:
        results = pool.dmap(w.Square, range(30), workers=uris, spawn=False, chunksize=5, max_attempts=1)
    assert results == {n: n * n for n in range(30)} and results.errors == {}
    assert any("still answers" in r.message for r in caplog.records)


def test_a_chunk_waiting_behind_one_whose_worker_died_is_sent_again_at_no_cost(serve, caplog):
    """A worker holds the chunk it runs and the next one, sent behind it. When it dies,
    only the first counts an attempt: the second never started there."""
    uris = serve("tests._workers:Killer").uris + serve("tests._workers:Killer").uris
    tasks = ["die", *range(1, 12)]
    with caplog.at_level(logging.DEBUG, logger="ezpool"), Pool(heartbeat=2) as pool:
        results = pool.dmap(w.Killer, tasks, workers=uris, spawn=False, chunksize=1, max_attempts=1)
    assert list(results.errors) == ["die"]
    assert all(results[n] == n for n in range(1, 12))
    assert any("they go back" in r.message for r in caplog.records)


# --- a warm call's first chunks go out from the caller's thread -------------------------


def _spy_on_sends(monkeypatch, fail_first_from=None, interrupt_at=None):
    """Note each ``run_chunk`` sent: (thread name, connection, queued). With
    ``fail_first_from``, the first one that thread sends fails as a broken socket would;
    with ``interrupt_at=N``, the Nth one the caller's thread sends meets a Ctrl-C."""
    from ezpool._pyro import client

    sends, send = [], client.Connection.send
    caller = threading.current_thread().name

    def spy(self, method, *args, queued=False):
        if method == "run_chunk":
            thread = threading.current_thread().name
            if thread == fail_first_from and not any(each[0] == thread for each in sends):
                sends.append((thread, id(self), queued))
                self.close()
                raise ConnectionResetError("connection reset (injected)")
            sends.append((thread, id(self), queued))
            if thread == caller and sum(each[0] == caller for each in sends) == interrupt_at:
                raise KeyboardInterrupt
        return send(self, method, *args, queued=queued)

    monkeypatch.setattr(client.Connection, "send", spy)
    return sends


def _first_sends(sends):
    firsts = {}
    for thread, connection, _ in sends:
        firsts.setdefault(connection, thread)
    return firsts


@pytest.mark.timeout(90)
def test_a_warm_calls_first_chunks_go_out_from_the_callers_thread(serve, monkeypatch):
    uris = serve("tests._workers:Square").uris + serve("tests._workers:Square").uris
    with Pool() as pool:
        assert pool.dmap(w.Square, range(40), workers=uris, spawn=False) == {n: n * n for n in range(40)}
        sends = _spy_on_sends(monkeypatch)
        results = pool.dmap(w.Square, range(40), workers=uris, spawn=False)
    assert results == {n: n * n for n in range(40)} and results.errors == {}
    firsts = _first_sends(sends)
    assert len(firsts) == 2 and set(firsts.values()) == {threading.current_thread().name}
    # Each worker's thread sends the rest.
    assert {thread for thread, _, _ in sends} - {threading.current_thread().name}


@pytest.mark.timeout(90)
def test_a_first_chunk_too_big_to_send_at_once_goes_from_its_workers_thread(serve, monkeypatch):
    uris = serve("tests._workers:Mirror").uris
    tasks = [bytes([n]) * 100_000 for n in range(6)]  # over 64 KiB in any chunk
    with Pool() as pool:
        pool.dmap(w.Mirror, tasks[:2], workers=uris, spawn=False)
        sends = _spy_on_sends(monkeypatch)
        results = pool.dmap(w.Mirror, tasks, workers=uris, spawn=False)
    assert results.errors == {} and all(results[task] == task for task in tasks)
    assert threading.current_thread().name not in _first_sends(sends).values()


@pytest.mark.timeout(90)
def test_a_first_chunk_that_fails_to_go_out_is_sent_again_at_no_cost(serve, monkeypatch, caplog):
    uris = serve("tests._workers:Square").uris + serve("tests._workers:Square").uris
    with Pool() as pool:
        pool.dmap(w.Square, range(4), workers=uris, spawn=False)
        sends = _spy_on_sends(monkeypatch, fail_first_from=threading.current_thread().name)
        with caplog.at_level(logging.INFO, logger="ezpool"):
            results = pool.dmap(w.Square, range(40), workers=uris, spawn=False, max_attempts=1)
    # The worker still answers: its chunk was returned, not charged an attempt.
    assert results == {n: n * n for n in range(40)} and results.errors == {}
    assert sends[0][0] == threading.current_thread().name
    assert any("still answers" in r.message for r in caplog.records)


@pytest.mark.timeout(90)
def test_a_ctrl_c_while_the_first_chunks_go_out_leaves_the_workers_ready(serve, monkeypatch):
    uris = [uri for _ in range(3) for uri in serve("tests._workers:Square").uris]
    with Pool() as pool:
        pool.dmap(w.Square, range(6), workers=uris, spawn=False)
        with monkeypatch.context() as patch:
            sends = _spy_on_sends(patch, interrupt_at=2)
            with pytest.raises(KeyboardInterrupt):
                pool.dmap(w.Square, range(60), workers=uris, spawn=False)
        assert len(sends) == 2  # one first chunk went out, then the Ctrl-C came
        links = pool._backends["distributed"]._links.values()
        assert sorted(link.state.value for link in links) == ["ready"] * 3
        began = time.monotonic()
        again = pool.dmap(w.Square, range(60), workers=uris, spawn=False, max_attempts=1)
        took = time.monotonic() - began
    assert again == {n: n * n for n in range(60)} and again.errors == {}
    assert took < 30, f"the next call took {took:.0f} s"


# --- idle threads leave when enough others wait, and come back for work given back ------


def _spy_on_parking(monkeypatch):
    """The name of each worker whose driver left a call early, as it left."""
    from ezpool._backends.distributed.work import Work

    parked, park = [], Work._park

    def spy(self, driver):
        leaves = park(self, driver)
        if leaves:
            parked.append(driver.name)
        return leaves

    monkeypatch.setattr(Work, "_park", spy)
    return parked


@pytest.mark.timeout(90)
def test_idle_threads_leave_a_call_once_enough_others_wait(serve, monkeypatch):
    uris = [uri for _ in range(6) for uri in serve("tests._workers:Napper").uris]
    parked = _spy_on_parking(monkeypatch)
    tasks = [1.0] + [0.01 + n / 10**6 for n in range(60)]  # one long task holds up the end
    with Pool() as pool:
        results = pool.dmap(w.Napper, tasks, workers=uris, spawn=False, chunksize=1)
    assert results.errors == {} and len(results) == len(tasks)
    # One worker runs the long task, one thread waits in case it needs a copy: the others left.
    assert len(parked) >= 4 and len(set(parked)) == len(parked)


@pytest.mark.timeout(90)
def test_work_given_back_after_idle_threads_left_is_still_run(serve, monkeypatch):
    """Two workers die a second into their first task, after the two others ran every
    other task and went idle: one of those waited, the other left. The two retries go to
    both, so the one that left must be brought back."""
    uris = [uri for _ in range(4) for uri in serve("tests._workers:LateKiller").uris]
    parked = _spy_on_parking(monkeypatch)
    tasks = ["die-0", "die-1", *range(2, 30)]
    with Pool() as pool:
        results = pool.dmap(w.LateKiller, tasks, workers=uris, spawn=False, chunksize=1, max_attempts=2,
                            backup=False)
    assert parked, "no thread left early: the case is not tested"
    assert sorted(results.errors) == ["die-0", "die-1"]
    assert all(type(results[task]).__name__ == "WorkerCrashed" for task in ("die-0", "die-1"))
    assert all(results[n] == n for n in range(2, 30))


@pytest.mark.timeout(90)
def test_a_caller_that_leaves_while_answers_are_on_their_way_leaves_the_workers_ready(serve, monkeypatch):
    from ezpool._backends.distributed.work import Work
    from ezpool._core.ledger import Answered

    uris = serve("tests._workers:Napper").uris + serve("tests._workers:Napper").uris
    settle = Work.settle

    def settle_then_wait(self, driver, chunk, event, reply=b"", trip=None, window=None):
        settle(self, driver, chunk, event, reply, trip, window)
        if isinstance(event, Answered):  # a chunk is still on its way behind this one:
            self.stop.wait(5)  # the caller leaves before this thread looks at it again

    with Pool(mode="distributed") as pool:
        with monkeypatch.context() as patch:
            patch.setattr(Work, "settle", settle_then_wait)
            for outcome in pool.imap(w.Napper, [0.05 + n / 1000 for n in range(20)], workers=uris,
                                     spawn=False, chunksize=1):
                assert not outcome.failed
                break
        links = pool._backends["distributed"]._links.values()
        assert sorted(link.state.value for link in links) == ["ready"] * 2
        again = pool.dmap(w.Napper, [0.01 + n / 1000 for n in range(8)], workers=uris, spawn=False)
    assert again.errors == {} and len(again) == 8


@pytest.mark.timeout(90)
def test_tasks_left_when_every_thread_failed_are_reported_as_crashed(serve, monkeypatch, caplog):
    from ezpool._backends.distributed.call import Call
    from ezpool._backends.distributed.drivers import PushDriver

    uris = serve("tests._workers:Square").uris
    with Pool() as pool:
        assert pool.dmap(w.Square, range(4), workers=uris, spawn=False) == {n: n * n for n in range(4)}

        def broken(self, chunk):
            raise RuntimeError("a bug in the thread")

        monkeypatch.setattr(PushDriver, "_launch", broken)
        monkeypatch.setattr(Call, "_first_round", lambda self: None)
        results = pool.dmap(w.Square, range(10, 20), workers=uris, spawn=False)
    assert sorted(results.errors) == list(range(10, 20))
    assert all(type(error).__name__ == "WorkerCrashed" for error in results.errors.values())
    assert any("failed" in r.message for r in caplog.records if r.levelname == "ERROR")


PAUSED_CLIENT = textwrap.dedent(
    """
    import sys
    from ezpool import Pool
    from tests import _workers as w

    uris = sys.argv[1:]
    tasks = [0.02 + i / 100000 for i in range(300)]
    with Pool(progress=False) as pool:
        results = pool.dmap(w.Napper, tasks, workers=uris, spawn=False)
        print("first", len(results), len(results.errors), flush=True)
        sys.stdin.readline()  # paused meanwhile, longer than the workers' idle limit
        again = pool.dmap(w.Napper, tasks[:50], workers=uris, spawn=False)
        print("second", len(again), len(again.errors), flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_client_paused_longer_than_the_idle_limit_loses_nothing(serve, tmp_path, core_child_env):
    uris = serve("tests._workers:Napper").uris + serve("tests._workers:Napper").uris
    script = tmp_path / "paused.py"
    script.write_text(PAUSED_CLIENT)
    client = subprocess.Popen(
        [sys.executable, str(script), *uris], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=core_child_env, start_new_session=True,
    )
    try:
        time.sleep(1.0)  # mid-way through the first call
        os.kill(client.pid, signal.SIGSTOP)
        time.sleep(12)  # the workers drop connections idle for 10 s
        os.kill(client.pid, signal.SIGCONT)
        first = client.stdout.readline().split()
        time.sleep(11)  # between calls, idle again
        out, err = client.communicate("\n", timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert first == ["first", "300", "0"], err
    assert out.split() == ["second", "50", "0"], err


# --- 5. the timeout is the task's own run time, measured where it runs ------------------


@pytest.mark.timeout(60)
def test_a_chunk_queued_behind_another_clients_chunk_does_not_time_out(serve):
    uris = serve("tests._workers:Napper").uris
    outcome: dict = {}

    def other_client() -> None:
        with Pool() as pool:
            outcome["other"] = pool.dmap(w.Napper, [0.6 + i / 1000 for i in range(6)], workers=uris,
                                         spawn=False, chunksize=3)

    neighbour = threading.Thread(target=other_client)
    neighbour.start()
    time.sleep(0.2)
    with Pool() as pool:
        mine = pool.dmap(w.Napper, [0.5 + i / 1000 for i in range(4)], workers=uris, spawn=False, timeout=1)
    neighbour.join(60)
    assert mine.errors == {} and len(mine) == 4
    assert outcome["other"].errors == {}


# --- 6. one value the client cannot unpickle costs only its own slot ------------------


def test_one_value_the_client_cannot_unpickle_costs_only_its_own_slot(serve, tmp_path, core_child_env):
    only_there = tmp_path / "only_there"
    only_there.mkdir()
    (only_there / "things.py").write_text("class Thing:\n    def __init__(self, x):\n        self.x = x\n")
    env = dict(core_child_env, PYTHONPATH=os.pathsep.join([str(only_there), core_child_env["PYTHONPATH"]]))
    uris = serve("", env=env).uris  # a generic worker that can import a module this client cannot

    def make(x):
        import things

        return things.Thing(x) if x == 7 else x * 2

    with Pool() as pool:
        results = pool.dmap(make, range(40), workers=uris, spawn=False, chunksize=40)
    assert list(results.errors) == [7] and isinstance(results[7], ResultNotSerializable)
    assert all(results[n] == n * 2 for n in range(40) if n != 7)


# --- 7. a worker stops work for a client that is gone ----------------------------------

DEAD_CLIENT = textwrap.dedent(
    """
    import sys
    from ezpool import Pool
    from tests import _workers as w

    directory, uri = sys.argv[1:]
    with Pool(progress=False) as pool:
        pool.dmap(w.Recorder, [(directory, n, 0.05) for n in range(400)], workers=[uri], spawn=False,
                  chunksize=200)
    """
)


@pytest.mark.timeout(60)
def test_a_worker_stops_a_chunk_soon_after_its_client_is_killed(serve, tmp_path, core_child_env):
    uris = serve("tests._workers:Recorder").uris
    directory = tmp_path / "calls"
    directory.mkdir()
    script = tmp_path / "client.py"
    script.write_text(DEAD_CLIENT)
    client = subprocess.Popen([sys.executable, str(script), str(directory), uris[0]], env=core_child_env)
    try:
        deadline = time.monotonic() + 30
        while len(list(directory.iterdir())) < 5:
            assert time.monotonic() < deadline and client.poll() is None, "the client never got going"
            time.sleep(0.05)
    finally:
        client.kill()
        client.wait()
    at_kill = len(list(directory.iterdir()))
    time.sleep(2.0)  # 40 more tasks' worth, had the worker gone on
    after = len(list(directory.iterdir()))
    assert after - at_kill <= 3, f"the worker ran {after - at_kill} tasks for a dead client"
    with Pool() as pool:  # and it serves the next client at once
        assert pool.dmap(w.Recorder, [(str(directory), "next", 0)], workers=uris, spawn=False, timeout=5) == {
            (str(directory), "next", 0): "next"
        }



@pytest.mark.timeout(30)
def test_a_chunk_sent_behind_another_never_runs_once_its_client_has_hung_up(serve, tmp_path):
    from ezpool import _pyro
    from ezpool._core.serialization import dumps_tasks
    from ezpool.security import resolve_key

    (uri,) = serve("tests._workers:Recorder").uris
    connection = _pyro.Connection(_pyro.parse_uri(uri), resolve_key(), None)
    identity = connection.call("hello")["identity"]
    for n, (name, seconds) in enumerate([("ahead", 0.5), ("behind", 0.0)]):
        payload = b"".join(dumps_tasks([(str(tmp_path), name, seconds)]))
        connection.send("run_chunk", identity, "", n, 1, [payload], None, queued=n > 0)
    deadline = time.monotonic() + 10
    while not list(tmp_path.iterdir()):  # the first has started
        assert time.monotonic() < deadline
        time.sleep(0.01)
    connection.close()
    time.sleep(1.5)  # the first ends, and the worker reads the second
    assert sorted(path.name.split("-")[0] for path in tmp_path.iterdir()) == ["ahead"]

# --- 8. a silent worker is found within ``heartbeat`` seconds ---------------------------


@pytest.mark.timeout(90)
def test_a_stopped_worker_is_found_within_heartbeat_seconds(serve, caplog):
    frozen, healthy = serve("tests._workers:Napper"), serve("tests._workers:Napper")
    tasks = [0.1 + i / 10000 for i in range(60)]
    stopped_at: list[float] = []

    def stop() -> None:
        os.killpg(frozen.process.pid, signal.SIGSTOP)
        stopped_at.append(time.time())

    stopper = threading.Timer(0.5, stop)
    heartbeat = 3.0
    try:
        with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(heartbeat=heartbeat) as pool:
            stopper.start()
            results = pool.dmap(w.Napper, tasks, workers=frozen.uris + healthy.uris, spawn=False)
    finally:
        stopper.cancel()
        os.killpg(frozen.process.pid, signal.SIGCONT)
    assert results.errors == {} and len(results) == 60
    found = [r.created for r in caplog.records if "unanswered" in r.message and frozen.uris[0] in r.message]
    assert found and stopped_at
    # The documented margin is a quarter of the heartbeat; the rest is for a busy machine.
    assert found[0] - stopped_at[0] < heartbeat + 2.0, found[0] - stopped_at[0]


# --- 10. a worker that cannot be reached says what to check ----------------------------


def test_a_refused_connection_says_what_to_check():
    uri = f"PYRO:worker@127.0.0.1:{free_port()}"
    with Pool() as pool, pytest.raises(WorkerUnavailable) as caught:
        pool.dmap(w.Square, [1], workers=[uri], spawn=False)
    message = str(caught.value)
    assert uri in message and "--host" in message and "key" in message and "firewall" in message


def test_a_worker_that_does_not_answer_is_left_out_when_others_do(serve, caplog):
    uris = [*serve("tests._workers:Square").uris, f"PYRO:worker@127.0.0.1:{free_port()}"]
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool() as pool:
        results = pool.dmap(w.Square, range(20), workers=uris, spawn=False)
    assert results == {n: n * n for n in range(20)}
    assert any(uris[1] in r.message and "goes on without it" in r.message for r in caplog.records)


# --- every chunk exactly once, while workers die and come back at random --------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_soak_every_task_once_with_the_right_value_while_workers_die_and_return(serve):
    import random

    ports = [free_port() for _ in range(3)]
    served = {port: serve("tests._workers:SlowSquare", port=port) for port in ports}
    uris = [_square_uri(port) for port in ports]
    rng = random.Random(9)
    done = threading.Event()
    kills = []

    def chaos() -> None:
        while not done.wait(rng.uniform(0.3, 0.8)):
            port = rng.choice(ports)
            os.killpg(served[port].process.pid, signal.SIGKILL)
            served[port].process.wait()
            kills.append(port)
            if done.wait(rng.uniform(0.0, 0.3)):
                return
            served[port] = serve("tests._workers:SlowSquare", port=port)

    tasks = range(6000)
    monkey = threading.Thread(target=chaos)
    with Pool(heartbeat=2, max_attempts=4) as pool:
        monkey.start()
        try:
            results = pool.dmap(w.SlowSquare, tasks, workers=uris, spawn=False)
        finally:
            done.set()
            monkey.join(30)
    assert len(kills) >= 3, kills
    assert len(results) == 6000
    wrong = {n: results[n] for n in tasks if results[n] != n * n}
    assert not wrong, f"{len(wrong)} tasks wrong or failed, e.g. {list(wrong.items())[:3]}"
