"""dmap against real ezpool.serve workers on 127.0.0.1: results, checks, losses, auto-start."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ezpool import Pool, RemoteError, TaskNotSerializable, TaskTimeout, WorkerCrashed, WorkerUnavailable
from ezpool.security import is_loopback_host as is_loopback
from tests import _workers as w
from tests.conftest import free_port


@pytest.fixture
def two_squares(serve):
    return serve("tests._workers:Square").uris + serve("tests._workers:Square").uris


def test_results_timing_and_workers_come_back_per_task(two_squares):
    with Pool() as pool:
        results = pool.dmap(w.Square, range(200), workers=two_squares, spawn=False)
    assert results == {n: n * n for n in range(200)}
    assert set(results.workers.values()) <= set(two_squares)
    assert all(t >= 0 for t in results.elapsed.values()) and len(results.elapsed) == 200


def test_python_values_round_trip_faithfully(serve):
    uris = serve("tests._workers:Mirror").uris
    values = [b"\x00\xffbytes", frozenset({1, 2}), (1, "two", 3.0), w.Point(1, 2), "text", None, 10**30]
    with Pool() as pool:
        results = pool.dmap(w.Mirror, [(v,) for v in values], workers=uris, spawn=False)
    for value in values:
        assert results[(value,)] == value and type(results[(value,)]) is type(value)


def test_numpy_arrays_round_trip_when_installed(serve):
    np = pytest.importorskip("numpy")
    uris = serve("tests._workers:Arange").uris
    with Pool() as pool:
        results = pool.dmap(w.Arange, [3, 5], workers=uris, spawn=False)
    assert isinstance(results[5], np.ndarray) and results[5].tolist() == [0, 1, 2, 3, 4]
    assert results[3].dtype == np.arange(1).dtype


def test_custom_exceptions_keep_class_message_and_remote_traceback(serve):
    uris = serve("tests._workers:Mirror").uris
    with Pool() as pool:
        results = pool.dmap(w.Mirror, ["boom", "fine"], workers=uris, spawn=False)
    error = results["boom"]
    assert type(error) is w.Oops and str(error) == "custom failure"
    assert "_workers.py" in str(error.__cause__) and results["fine"] == "fine"
    assert list(results.errors) == ["boom"]


def test_a_worker_serving_something_else_is_refused_naming_both(serve):
    uris = serve("tests._workers:Square").uris
    with Pool() as pool, pytest.raises(WorkerUnavailable) as caught:
        pool.dmap(w.Mirror, [1], workers=uris, spawn=False)
    message = str(caught.value)
    assert uris[0] in message and "'Square'" in message and "'Mirror'" in message


@pytest.mark.parametrize("bad", ["nonsense", "PYRO:worker@localhost:port", "http://x:1", 21000, ""])
def test_a_bad_uri_is_a_value_error_quoting_it_before_any_work(bad, tmp_path):
    with Pool() as pool, pytest.raises((ValueError, TypeError)) as caught:
        pool.dmap(w.Square, [1], workers=[bad])
    assert repr(bad) in str(caught.value) or str(bad) in str(caught.value)
    assert pool._backends.get("distributed") is None or not pool._backends["distributed"]._started.processes


def test_an_unreachable_worker_is_unavailable_within_seconds_when_not_started():
    uri = f"PYRO:worker@127.0.0.1:{free_port()}"
    began = time.monotonic()
    with Pool() as pool, pytest.raises(WorkerUnavailable, match=uri):
        pool.dmap(w.Square, [1], workers=[uri], spawn=False)
    assert time.monotonic() - began < 10


def test_only_loopback_workers_are_ever_started():
    assert is_loopback("localhost") and is_loopback("127.0.0.1") and is_loopback("127.1.2.3")
    assert not is_loopback("example.invalid") and not is_loopback("10.0.0.1")


def test_a_worker_that_does_not_answer_is_started_and_stopped_with_the_pool():
    port = free_port()
    with Pool(workers=[f"PYRO:worker@127.0.0.1:{port}"], spawn=True) as pool:
        assert pool.dmap(w.Square, [2, 3]) == {2: 4, 3: 9}
        spawned = list(pool._backends["distributed"]._started.processes.values())
        assert len(spawned) == 1 and spawned[0].poll() is None
        assert pool.dmap(w.Square, [4]) == {4: 16}  # reused, not started again
        assert list(pool._backends["distributed"]._started.processes.values()) == spawned
    assert spawned[0].wait(10) is not None


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(60)
def test_a_mistyped_local_port_is_an_error_naming_it_not_a_new_worker(serve):
    (real,) = serve("tests._workers:Square").uris
    port = free_port()
    typo = f"PYRO:worker@localhost:{port}"
    with Pool(progress=False) as pool:
        with pytest.raises(WorkerUnavailable) as caught:
            pool.dmap(w.Square, [1, 2], workers=[typo])
        assert not pool._backends["distributed"]._started.processes and not _listens(port)
    assert str(caught.value) == (
        f"no worker answers at {typo} (connection refused), and EzPool starts one by itself only at "
        "the default address PYRO:worker@localhost:21000: is the address mistyped? Start a worker "
        f"there with python -m ezpool.serve --port {port}, or pass spawn=True to let the pool start one"
    )
    with Pool(progress=False) as pool:  # the same call on the right port runs
        assert pool.dmap(w.Square, [1, 2], workers=[real]) == {1: 1, 2: 4}


@pytest.mark.timeout(60)
def test_only_the_default_address_or_spawn_true_lets_the_pool_start_a_worker(serve):
    from ezpool._backends.distributed.connect import is_default, may_start
    from ezpool._backends.distributed.links import Link
    from ezpool._pyro import parse_uri

    def link(text):
        return Link(text, parse_uri(text), None)

    for text in ("PYRO:worker@localhost:21000", "PYRO:worker@127.0.0.1:21000"):
        assert is_default(link(text))
    for text in ("PYRO:worker@localhost:21010", "PYRO:wrker@localhost:21000", "PYRO:worker@10.0.0.1:21000"):
        assert not is_default(link(text))
    free = link(f"PYRO:worker@127.0.0.1:{free_port()}")
    assert may_start(free, True) and not may_start(free, None) and not may_start(free, False)
    busy = link(serve("tests._workers:Square").uris[0])
    assert not may_start(busy, True), "a port that answers never gets a second worker"
    assert not may_start(link("PYRO:worker@10.0.0.1:21000"), True)


@pytest.mark.timeout(60)
def test_a_wrong_object_name_says_what_the_port_serves_in_one_line(serve):
    (real,) = serve("tests._workers:Square").uris
    port = int(real.rsplit(":", 1)[1])
    wrong = f"PYRO:wrker@localhost:{port}"
    for spawn in (None, True):
        with Pool(progress=False, spawn=spawn) as pool:
            with pytest.raises(WorkerUnavailable) as caught:
                pool.dmap(w.Square, [1], workers=[wrong])
            assert not pool._backends["distributed"]._started.processes  # no doomed worker was started
        assert str(caught.value) == f"{wrong}: port {port} answers, but serves 'worker', not 'wrker'"


SCRIPT = textwrap.dedent(
    """
    import sys
    from ezpool import Pool, BaseWorker

    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    class FibWorker(BaseWorker):
        def run(self, n):
            return fib(n)

    if __name__ == "__main__":
        workers = [f"PYRO:worker@localhost:{sys.argv[1]}", f"PYRO:worker@localhost:{sys.argv[2]}"]
        with Pool() as pool:
            results = pool.dmap(FibWorker, range(20), workers=workers, spawn=True)
        print(results[19], len(results), len(results.errors))
    """
)


def test_a_worker_class_from_the_users_own_script_is_started_for_it(tmp_path, core_child_env):
    script = tmp_path / "quick.py"
    script.write_text(SCRIPT)
    ports = [free_port(), free_port()]
    done = subprocess.run(
        [sys.executable, str(script), *map(str, ports)],
        capture_output=True, text=True, timeout=90, env=core_child_env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4181", "20", "0"]
    assert "starting one there" not in done.stderr  # starting the workers asked for is news at INFO
    for port in ports:  # and nothing is left listening
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_map_in_distributed_mode_ignores_ncpu(two_squares):
    with Pool("distributed", workers=two_squares, spawn=False) as pool:
        assert pool.map(w.Square, [1, 2], ncpu=64) == {1: 1, 2: 4}


def test_a_lost_worker_costs_nothing_its_tasks_go_to_the_others(serve, caplog):
    doomed, survivor = serve("tests._workers:Napper"), serve("tests._workers:Napper")
    tasks = [0.05 + i / 10000 for i in range(60)]
    killer = threading.Timer(0.6, lambda: os.killpg(doomed.process.pid, signal.SIGKILL))
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool() as pool:
        killer.start()
        try:
            results = pool.dmap(w.Napper, tasks, workers=doomed.uris + survivor.uris, spawn=False)
        finally:
            killer.cancel()
    assert results.errors == {} and len(results) == 60
    assert any("lost worker" in r.message and doomed.uris[0] in r.message for r in caplog.records)


def test_a_task_that_kills_every_worker_ends_as_worker_crashed_promptly(serve):
    uris = serve("tests._workers:Killer").uris + serve("tests._workers:Killer").uris
    began = time.monotonic()
    with Pool() as pool:
        results = pool.dmap(w.Killer, ["die", "a", "b", "c"], workers=uris, spawn=False, chunksize=1)
    assert time.monotonic() - began < 30
    assert isinstance(results["die"], WorkerCrashed)
    assert len(results) == 4 and all(results[t] == t or isinstance(results[t], WorkerCrashed) for t in "abc")


def test_a_task_over_its_timeout_gets_timeout_error_and_others_finish(serve):
    uris = serve("tests._workers:Napper").uris + serve("tests._workers:Napper").uris
    with Pool() as pool:
        results = pool.dmap(w.Napper, [3.0, 0.1, 0.11, 0.12], workers=uris, spawn=False, timeout=1)
    assert isinstance(results[3.0], TaskTimeout) and isinstance(results[3.0], TimeoutError)
    assert list(results.errors) == [3.0]


def test_client_threads_are_bounded_by_workers_not_tasks(serve):
    four = [uri for _ in range(4) for uri in serve("tests._workers:Square").uris]
    counts = []
    with Pool() as pool:
        pool.dmap(
            w.Square, range(100_000), workers=four, spawn=False,
            progress=lambda outcome, done, total: counts.append(threading.active_count()),
        )
    # a feeding thread per worker and one watcher, whatever the number of tasks
    assert max(counts) <= threading.active_count() + 2 * len(four) + 1


def test_an_exception_the_client_cannot_rebuild_arrives_as_remote_error(serve):
    from tests import _helpers as h

    uris = serve("").uris  # a generic worker: it runs the function the client sends
    with Pool() as pool:
        results = pool.dmap(h.raise_unrebuildable, ["no"], workers=uris, spawn=False)
    assert isinstance(results["no"], RemoteError) and results["no"].type_name.endswith("UnrebuildableError")


def test_a_pinned_worker_with_other_code_than_the_client_is_refused_as_stale(serve, tmp_path):
    script = tmp_path / "fib_worker.py"
    script.write_text("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n")
    uris = serve(f"{script}:fib").uris

    def fib(n):  # "edited": same name, other code
        return -n

    fib.__qualname__ = "fib"
    stale = r"other code for 'fib'.*restart it"
    with Pool() as pool, pytest.raises(WorkerUnavailable, match=stale) as caught:
        pool.dmap(fib, [5], workers=uris, spawn=False)
    assert uris[0] in str(caught.value)


def test_a_worker_that_stops_answering_is_detected_and_used_again_when_back(serve, caplog):
    frozen, healthy = serve("tests._workers:Napper"), serve("tests._workers:Napper")
    uris = frozen.uris + healthy.uris
    tasks = [0.1 + i / 10000 for i in range(40)]
    stopper = threading.Timer(0.5, lambda: os.killpg(frozen.process.pid, signal.SIGSTOP))
    try:
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(heartbeat=2) as pool:
            stopper.start()
            results = pool.dmap(w.Napper, tasks, workers=uris, spawn=False)
            took = time.monotonic() - began
            assert results.errors == {} and len(results) == 40
            assert took < 30, f"a silent worker held the run for {took:.0f} s"
            assert any("unanswered" in r.message and frozen.uris[0] in r.message for r in caplog.records)
            os.killpg(frozen.process.pid, signal.SIGCONT)
            again = pool.dmap(w.Napper, [0.3, 0.31, 0.32, 0.33], workers=uris, spawn=False)
        assert len(set(again.workers.values())) == 2  # it is back, and used again
    finally:
        stopper.cancel()
        os.killpg(frozen.process.pid, signal.SIGCONT)


def test_a_worker_that_comes_back_mid_call_gets_work_again_in_that_call(serve, caplog):
    frozen, healthy = serve("tests._workers:Napper"), serve("tests._workers:Napper")
    tasks = [0.1 + i / 10000 for i in range(80)]  # about 4 s on two workers
    stop = threading.Timer(0.5, lambda: os.killpg(frozen.process.pid, signal.SIGSTOP))
    resume = threading.Timer(2.5, lambda: os.killpg(frozen.process.pid, signal.SIGCONT))
    try:
        with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(heartbeat=1) as pool:
            stop.start()
            resume.start()
            results = pool.dmap(w.Napper, tasks, workers=frozen.uris + healthy.uris, spawn=False)
        assert results.errors == {} and len(results) == 80
        messages = [r.message for r in caplog.records]
        assert any("unanswered" in m for m in messages) and any("answers again" in m for m in messages)
        # Before it stopped it could finish about 5 tasks; it did more after it came back.
        done_by_frozen = sum(1 for uri in results.workers.values() if uri == frozen.uris[0])
        assert done_by_frozen >= 10, done_by_frozen
    finally:
        stop.cancel()
        resume.cancel()
        os.killpg(frozen.process.pid, signal.SIGCONT)


def test_a_value_that_cannot_be_sent_back_fails_alone(serve):
    from ezpool import ResultNotSerializable

    uris = serve("tests._workers:LockMaker").uris
    with Pool() as pool:
        results = pool.dmap(w.LockMaker, ["a", "lock", "b"], workers=uris, spawn=False)
    assert list(results.errors) == ["lock"] and isinstance(results["lock"], ResultNotSerializable)
    assert "lock" in str(results["lock"]) and results["a"] == "a" and results["b"] == "b"


def test_a_task_that_cannot_be_sent_is_its_own_outcome(serve, tmp_path):
    uris = serve("tests._workers:Mirror").uris
    bad = (threading.Lock(),)
    with Pool() as pool:
        results = pool.dmap(w.Mirror, [1, bad], workers=uris, spawn=False)
    assert list(results.errors) == [bad] and isinstance(results[bad], TaskNotSerializable)
    assert results[1] == 1


def test_a_context_reaches_a_worker_class_and_a_function_on_generic_workers(serve):
    uris = serve("").uris + serve("").uris
    with Pool() as pool:
        for scale in (10, 10, 3):  # a changed context is sent, an equal one is not
            results = pool.dmap(w.Scaled, range(6), workers=uris, spawn=False, context=scale, chunksize=1)
            assert results == {x: (scale * x, 1) for x in range(6)}
        assert pool.dmap(lambda context, x: context + x, [1], workers=uris, spawn=False, context=5) == {1: 6}


def test_a_context_is_refused_by_a_worker_that_serves_its_own_code(serve, tmp_path):
    uris = serve("tests._workers:Square").uris
    with Pool() as pool, pytest.raises(WorkerUnavailable, match="takes no context"):
        pool.dmap(w.Square, [1], workers=uris, spawn=False, context=2)


def test_a_context_that_cannot_be_sent_to_a_worker_is_named(serve):
    uris = serve("").uris
    with Pool() as pool, pytest.raises(TypeError, match="cannot send the context"):
        pool.dmap(lambda context, x: x, [1], workers=uris, spawn=False, context=threading.Lock())


class _DroppingRelay:
    """A TCP relay to a worker that closes the first ``drops`` connections once they
    have sent something, and forwards the later ones: a worker shedding connections."""

    def __init__(self, upstream: tuple[str, int], drops: int) -> None:
        self.upstream, self.drops = upstream, drops
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.drops > 0:
                self.drops -= 1
                client.recv(1)  # the handshake has begun: close it under the client
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            self.sockets.append(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.timeout(60)
def test_a_check_whose_connection_is_closed_under_it_is_asked_again(serve):
    uri = serve("tests._workers:Square").uris[0]
    name, address = uri.split(":", 1)[1].split("@")
    host, port = address.rsplit(":", 1)
    relay = _DroppingRelay((host, int(port)), drops=2)
    try:
        relayed = f"PYRO:{name}@127.0.0.1:{relay.port}"
        with Pool() as pool:
            results = pool.dmap(w.Square, range(20), workers=relayed, spawn=False)
        assert results == {n: n * n for n in range(20)} and relay.drops == 0
    finally:
        relay.close()
