"""ezpool._worker.servant: what a distributed worker does with a chunk, without the network."""

from __future__ import annotations

import logging
import pickle
import select
import threading
import time

import pytest

from ezpool import TaskTimeout
from ezpool._core.serialization import rebuild
from ezpool._worker.faults import Faults
from ezpool._worker.servant import Servant
from tests import _helpers as h
from tests.conftest import eventually


def _decode(reply: bytes):
    first, values, times, failures = pickle.loads(reply)
    for offset, record in failures.items():
        values[offset] = rebuild(record)
    return first, values, list(times), set(failures)


def _payload(tasks) -> list[bytes]:
    return [pickle.dumps(list(tasks))]


def test_every_process_has_its_own_identity_and_says_what_it_serves():
    one, two = Servant(h.square), Servant(h.square)
    assert one.identity != two.identity and len(one.identity) >= 32
    info = one.hello()
    assert info["identity"] == one.identity and info["serves"] == "square" and not info["restarting"]
    assert one.ping() == (one.identity, False)


def test_a_chunk_for_another_identity_is_refused_and_nothing_runs(tmp_path):
    servant = Servant(lambda task: h.record_call(str(tmp_path), task))
    status, reply = servant.run_chunk("not-me", "", 0, 2, _payload([1, 2]), None)
    assert status == "wrong-worker" and reply == servant.identity.encode()
    assert h.calls(tmp_path) == {}


def test_a_chunk_runs_and_base_exceptions_are_task_outcomes():
    servant = Servant(h.raise_base)
    tasks = _payload(["SystemExit", "KeyboardInterrupt"])
    status, reply = servant.run_chunk(servant.identity, "", 5, 2, tasks, None)
    first, values, _, failed = _decode(reply)
    assert status == "ok" and first == 5 and failed == {0, 1}
    assert type(values[0]) is SystemExit and type(values[1]) is KeyboardInterrupt


def test_an_overrunning_task_is_answered_as_timeout_with_what_ran_and_a_restart_asked():
    restarts = []
    servant = Servant(h.nap, on_restart=lambda: restarts.append(True))
    status, reply = servant.run_chunk(servant.identity, "", 0, 4, _payload([0.01, 30.0, 0.01, 0.01]), 0.3)
    _, values, times, failed = _decode(reply)
    assert status == "ok" and len(values) == 2, "the tasks after the overrunning one did not run"
    assert values[0] == 0.01 and isinstance(values[1], TaskTimeout) and failed == {1}
    assert times[1] >= 0.3 and restarts == [True]
    assert servant.hello()["restarting"]
    assert servant.run_chunk(servant.identity, "", 4, 1, _payload([0.01]), None) == ("restarting", b"")


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["run-here", "runner"])
def test_a_chunk_whose_client_hung_up_stops_after_the_running_task(tmp_path, timeout):
    gone = threading.Event()

    def slow_record(task):
        h.record_call(str(tmp_path), task)
        time.sleep(0.1)
        return task

    def client_gone(seconds, wake):
        return gone.wait(seconds)

    servant = Servant(slow_record)
    threading.Timer(0.25, gone.set).start()
    status, reply = servant.run_chunk(
        servant.identity, "", 0, 50, _payload(range(50)), timeout, client_gone=client_gone
    )
    _, values, _, _ = _decode(reply)
    assert status == "ok" and len(values) <= 5
    assert sum(h.calls(tmp_path).values()) == len(values)
    assert not servant.busy()


def test_once_its_client_hung_up_a_chunk_stops_asking_and_waits_for_the_running_task():
    # A hang-up stays visible: asked again while a long task ends, it would answer at
    # once, over and over, and the watching thread would spin.
    asked = []

    def client_gone(seconds, wake):  # there when the chunk starts, gone from then on
        asked.append(seconds)
        return len(asked) > 1

    def long_task(task):
        time.sleep(0.6)
        return task

    servant = Servant(long_task)
    looks = []  # the watching thread reads the runner's wakes once per look at the chunk
    drain = servant._drain
    servant._drain = lambda: looks.append(drain())
    status, reply = servant.run_chunk(servant.identity, "", 0, 3, _payload(range(3)), 30.0,
                                      client_gone=client_gone)
    _, values, _, _ = _decode(reply)
    assert status == "ok" and values == [0]
    assert len(asked) == 2  # before the chunk starts, and once while it runs
    assert len(looks) < 20, f"{len(looks)} looks while one task of 0.6 s ended"


def _waiting_for_the_wake(asked):
    """A client that stays: it waits as ``Servant.run_chunk`` says, noting each ``seconds``."""

    def client_gone(seconds, wake):
        asked.append(seconds)
        if seconds is None or seconds > 0:
            select.select([wake], [], [], seconds)
        return False

    return client_gone


def _napping_where(threads):
    def nap(seconds):
        threads.add(threading.get_ident())
        time.sleep(seconds)
        return seconds

    return nap


def test_without_a_timeout_a_chunk_runs_in_the_requests_thread_and_looks_without_waiting():
    asked, threads = [], set()
    servant = Servant(_napping_where(threads))
    status, reply = servant.run_chunk(servant.identity, "", 0, 10, _payload([0.03] * 10), None,
                                      client_gone=_waiting_for_the_wake(asked))
    _, values, _, _ = _decode(reply)
    assert status == "ok" and values == [0.03] * 10
    assert threads == {threading.get_ident()}, "no other thread ran the tasks"
    # Before the chunk starts, then between tasks at most every 50 ms, never waiting.
    assert set(asked) == {0.0} and 2 <= len(asked) <= 8, asked
    assert not servant.busy()


def test_with_a_timeout_a_chunk_runs_in_the_runner_thread_every_time():
    threads = set()
    servant = Servant(_napping_where(threads))
    for first in (0, 2):
        status, _ = servant.run_chunk(servant.identity, "", first, 2, _payload([0.01] * 2), 10.0)
        assert status == "ok"
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_a_chunk_run_in_the_requests_thread_is_busy_to_pings_and_one_runs_at_a_time():
    running, most, lock = [0], [0], threading.Lock()

    def counted(seconds):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(seconds)
        with lock:
            running[0] -= 1
        return seconds

    servant = Servant(counted)
    answers = {}

    def client(name, timeout):
        answers[name] = servant.run_chunk(servant.identity, "", 0, 4, _payload([0.05] * 4), timeout)

    clients = [threading.Thread(target=client, args=(name, timeout))
               for name, timeout in (("a", None), ("b", None), ("c", 10.0))]
    for thread in clients:
        thread.start()
    eventually(lambda: servant.ping()[1] is not False, "the worker busy with a chunk")
    for thread in clients:
        thread.join(30)
    assert sorted(answers) == ["a", "b", "c"] and all(status == "ok" for status, _ in answers.values())
    assert most[0] == 1, "two chunks ran at once"
    assert servant.ping() == (servant.identity, False)


def test_with_a_timeout_a_chunk_is_looked_at_again_and_again():
    asked = []
    servant = Servant(h.nap)
    status, _ = servant.run_chunk(servant.identity, "", 0, 3, _payload([0.2] * 3), 10.0,
                                  client_gone=_waiting_for_the_wake(asked))
    assert status == "ok"
    assert asked[0] == 0.0 and None not in asked and len(asked) >= 3


def test_faults_are_named_or_refused():
    faults = Faults("drop_reply=2, drop_reply=5, python=3.0.1")
    assert [call for call in range(1, 7) if faults.at("reply", b"reply", call=call) is None] == [2, 5]
    assert faults.at("hello", {"python": "3.11.7", "pid": 1}) == {"python": "3.0.1", "pid": 1}
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        Faults("explode")


def test_a_reply_a_test_asked_to_drop_is_no_answer_at_all():
    servant = Servant(h.square, faults=Faults("drop_reply=1"))
    status, reply = servant.run_chunk(servant.identity, "", 0, 2, _payload([1, 2]), None)
    assert (status, reply) == ("gone", b"")
    status, _ = servant.run_chunk(servant.identity, "", 0, 2, _payload([1, 2]), None)
    assert status == "ok"


def test_a_chunk_asked_to_capture_answers_with_what_each_task_wrote():
    servant = Servant(h.chatty)
    status, reply = servant.run_chunk(servant.identity, "", 4, 2, _payload(["a", "bad"]), None, logging.INFO)
    first, values, _, failures, outputs = pickle.loads(reply)
    assert status == "ok" and first == 4 and values[0] == "a" and set(failures) == {1}
    assert sorted(outputs) == [0, 1], "a failing task's output is sent too"
    kinds = [kind for kind, _ in outputs[1]]
    assert kinds == ["stdout", "stderr", "log", "log"]
    assert outputs[1][0] == ("stdout", "out bad\n") and outputs[1][3][1]["msg"] == "warned bad"


def test_a_capture_level_that_is_not_a_level_fails_every_task_and_runs_nothing(tmp_path):
    servant = Servant(lambda task: h.record_call(str(tmp_path), task))
    status, reply = servant.run_chunk(servant.identity, "", 0, 2, _payload([1, 2]), None, "loud")
    _, values, _, failed = _decode(reply)
    assert status == "ok" and failed == {0, 1} and isinstance(values[0], TypeError)
    assert h.calls(tmp_path) == {}
