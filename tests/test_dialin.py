"""Workers that dial in (``ezpool-serve --connect``) to a pool that listens (``listen=``,
``listen_file=``): real worker processes, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ezpool
from ezpool.errors import SecurityError, WorkerCrashed, WorkerUnavailable
from tests.conftest import REPO_ROOT, eventually, stop_group

pytestmark = pytest.mark.timeout(120)


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def square(x):
    return x * x


@pytest.fixture
def workers(core_child_env):
    """``workers(ADDRESS, *flags, n=1, env=None)``: start ``n`` workers that dial ADDRESS;
    each a ``Popen`` (stderr captured); all killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(address, *flags, n=1, env=None, stdin=None):
        for _ in range(n):
            process = subprocess.Popen(
                [sys.executable, "-m", "ezpool.serve", "--connect", str(address), *flags],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin or subprocess.DEVNULL,
                text=True, env=env or core_child_env, start_new_session=True, cwd=REPO_ROOT,
            )
            started.append(process)
        return started[-n:]

    yield start
    for process in started:
        stop_group(process)


def ended(process, timeout=20.0):
    """The exit status and stderr of a worker that should end by itself."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the worker did not end within {timeout} s: {err}") from None
    return process.returncode, err


def test_workers_that_dial_in_run_a_map_and_leave_when_the_pool_closes(tmp_path, workers):
    listen_file = tmp_path / "pool.json"
    started = workers(listen_file, n=2)  # before the pool: they wait for the file
    time.sleep(0.5)
    with ezpool.Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
        written = json.loads(listen_file.read_text())
        assert written["address"].startswith("127.0.0.1:")
        assert "key" not in json.dumps(written).lower()
        first = pool.map(nap, [0.05 + i * 1e-6 for i in range(40)])
        assert not first.errors
        assert len(set(first.values())) == 2  # both processes ran tasks
        assert len(set(first.workers.values())) == 2
        second = pool.map(square, range(100))
        assert dict(second) == {x: x * x for x in range(100)}
    assert not listen_file.exists()  # the pool removed what it wrote
    for process in started:
        status, err = ended(process)
        assert status == 0, err
        assert "joined the pool at 127.0.0.1:" in err


def test_a_worker_dials_until_the_pool_answers(workers):
    with contextlib.closing(__import__("socket").socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (process,) = workers(f"127.0.0.1:{port}")
    time.sleep(1.5)  # nothing listens: it keeps trying
    assert process.poll() is None
    with ezpool.Pool(mode="distributed", listen=f"127.0.0.1:{port}") as pool:
        assert pool.map(square, [3]) == {3: 9}
    assert ended(process)[0] == 0


def test_a_worker_that_joins_mid_call_gets_a_fair_share_of_what_is_left(workers, tmp_path):
    listen_file = tmp_path / "pool.json"
    workers(listen_file)
    late: list[subprocess.Popen] = []

    def join_later():
        time.sleep(2.0)
        late.extend(workers(listen_file))

    tasks = [0.05 + i * 1e-6 for i in range(200)]  # 10 s on one worker
    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool:
        threading.Thread(target=join_later, daemon=True).start()
        results = pool.map(nap, tasks)
    assert not results.errors
    assert late
    latecomer = late[0].pid
    ran = sum(1 for pid in results.values() if pid == latecomer)
    # It joined ~2 s in (plus its start-up): about 150 tasks were left, half of them its share.
    assert ran >= 40, f"the worker that joined late ran {ran} of 200 tasks"


def test_a_worker_told_to_stop_hands_its_work_back_without_a_charge(workers, tmp_path):
    listen_file = tmp_path / "pool.json"
    stays, leaves = workers(listen_file, "--grace", "1", n=2)

    def stop_one(listener):
        eventually(lambda: len(listener.links) == 2, "both workers joined")
        time.sleep(1.5)  # within a chunk of 10 tasks of 0.1 s
        leaves.send_signal(signal.SIGTERM)

    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool:
        listener = pool._backends["distributed"]._dial.listener
        threading.Thread(target=stop_one, args=(listener,), daemon=True).start()
        # max_attempts=1: a task charged for the worker that left would fail.
        results = pool.map(nap, [0.1 + i * 1e-6 for i in range(80)], max_attempts=1, chunksize=10)
    assert not results.errors, results.errors
    status, err = ended(leaves)
    assert status == 0, err
    pids = set(results.values())
    assert pids == {stays.pid, leaves.pid}


def test_a_worker_takes_no_chunk_it_cannot_finish_before_its_end(workers, tmp_path):
    listen_file = tmp_path / "pool.json"
    stays = workers(listen_file)[0]
    ends = workers(listen_file, "--end-at", str(time.time() + 6))[0]
    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool:
        results = pool.map(nap, [0.2 + i * 1e-6 for i in range(60)], max_attempts=1, chunksize=4)
    assert not results.errors, results.errors
    assert ends.pid in set(results.values())
    assert stays.pid in set(results.values())
    assert ended(ends)[0] == 0


def test_a_worker_with_another_key_is_refused_on_both_sides(workers, tmp_path, core_child_env):
    listen_file = tmp_path / "pool.json"
    env = dict(core_child_env, EZPOOL_HMAC_KEY=secrets.token_hex(16))
    (stranger,) = workers(listen_file, env=env)
    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool, \
            pytest.raises(WorkerUnavailable, match="could not prove it holds this pool's key"):
        pool.map(square, range(3))
    status, err = ended(stranger)
    assert status == 3
    assert "refused this worker's key" in err


def test_a_worker_without_a_key_is_refused(workers, tmp_path):
    listen_file = tmp_path / "pool.json"
    (keyless,) = workers(listen_file, "--insecure")
    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool, \
            pytest.raises(WorkerUnavailable, match="disagree on having a key"):
        pool.map(square, range(3))
    assert ended(keyless)[0] == 3


def test_the_key_can_come_on_standard_input_and_the_worker_leaves_when_it_ends(workers, tmp_path,
                                                                               core_child_env):
    key = secrets.token_hex(16)
    listen_file = tmp_path / "pool.json"
    (worker,) = workers(listen_file, "--key-stdin", stdin=subprocess.PIPE)
    worker.stdin.write(key + "\n")
    worker.stdin.flush()
    with ezpool.Pool(mode="distributed", listen_file=listen_file, hmac_key=key) as pool:
        assert pool.map(square, [4]) == {4: 16}
        assert key not in Path(f"/proc/{worker.pid}/cmdline").read_text()
        status, err = ended(worker)  # closes its standard input: its ssh or srun went away
    assert status == 0, err


def test_a_worker_that_stays_joins_the_next_pool(workers, tmp_path):
    listen_file = tmp_path / "pool.json"
    (worker,) = workers(listen_file, "--stay")
    for round_ in range(2):
        with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool:
            results = pool.map(nap, [0.01])
            assert list(results.values()) == [worker.pid], round_
    assert worker.poll() is None  # still waiting for a third


def test_tls_workers_dial_in_and_a_certificate_of_another_ca_is_refused(workers, tmp_path, certificates):
    listen_file = tmp_path / "pool.json"
    tls = ["--tls-cert", str(certificates / "server.pem"), "--tls-key", str(certificates / "server-key.pem")]
    workers(listen_file, *tls)
    with ezpool.Pool(mode="distributed", listen_file=listen_file,
                     tls_ca=certificates / "ca.pem") as pool:
        assert pool.map(square, range(5)) == {x: x * x for x in range(5)}
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "ezpool.tls", "init", str(other), "--host", "127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    workers(listen_file, "--tls-cert", str(other / "server.pem"), "--tls-key", str(other / "server-key.pem"))
    with ezpool.Pool(mode="distributed", listen_file=listen_file, tls_ca=certificates / "ca.pem") as pool, \
            pytest.raises(WorkerUnavailable, match=r"no worker could join .*certificate"):
        pool.map(square, [1])


def test_a_listen_address_not_of_this_machine_is_named():
    with pytest.raises(WorkerUnavailable, match=r"cannot listen on '192\.0\.2\.77:0'"):
        ezpool.Pool(mode="distributed", listen="192.0.2.77:0")


@pytest.mark.parametrize("bad", ["nowhere:x", "node1:99999", 5000])
def test_a_listen_value_that_is_no_address_is_refused_before_any_work(bad):
    with pytest.raises((ValueError, TypeError), match="HOST:PORT"):
        ezpool.Pool(mode="distributed", listen=bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a folder others can write, and needs a second user")
def test_a_listen_file_others_can_write_is_refused_on_both_sides(workers, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone may replace what it holds
    with pytest.raises(SecurityError, match="others can replace"):
        ezpool.Pool(mode="distributed", listen_file=shared / "pool.json")
    mine = tmp_path / "pool.json"
    mine.write_text(json.dumps({"address": "127.0.0.1:9"}))
    mine.chmod(0o666)
    (worker,) = workers(mine)
    status, err = ended(worker)
    assert status == 1
    assert "writable" in err or "permissions" in err


@pytest.mark.parametrize("flags, message", [
    (["--stay"], "--stay is for a worker that dials its pool"),
    (["--connect", "-"], "add --key-stdin"),
    (["--connect", "127.0.0.1:1", "--ns", "127.0.0.1:9090"], "name server"),
    (["--connect", "nohost:99999"], "is not HOST:PORT"),
])
def test_serve_refuses_flags_that_do_not_go_with_dialing(flags, message, core_child_env):
    done = subprocess.run([sys.executable, "-m", "ezpool.serve", *flags], capture_output=True, text=True,
                          env=core_child_env, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert message in done.stderr


def test_an_empty_key_on_standard_input_is_refused(core_child_env):
    done = subprocess.run([sys.executable, "-m", "ezpool.serve", "--connect", "127.0.0.1:1", "--key-stdin"],
                          capture_output=True, text=True, env=core_child_env, timeout=30, input="\n")
    assert done.returncode != 0
    assert "holds no key" in done.stderr


def test_when_every_worker_has_gone_the_tasks_left_fail(workers, tmp_path):
    listen_file = tmp_path / "pool.json"
    (worker,) = workers(listen_file, "--patience", "1")

    def kill_it():
        time.sleep(1.5)
        worker.kill()

    with ezpool.Pool(mode="distributed", listen_file=listen_file, heartbeat=2.0) as pool:
        threading.Thread(target=kill_it, daemon=True).start()
        results = pool.map(nap, [0.1 + i * 1e-6 for i in range(100)])
    assert len(results) == 100
    failed = [error for error in results.errors.values() if isinstance(error, WorkerCrashed)]
    assert failed and len(failed) + len(results.values()) - len(results.errors) == 100


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_64_workers_that_join_within_a_second_all_get_work(workers, tmp_path):
    listen_file = tmp_path / "pool.json"
    started = workers(listen_file, "--procs", "32", n=2)
    for process in started:  # each prints one line per process once it dials
        lines = 0
        while lines < 32:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines += line.startswith("dialing")
    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool:
        pool.map(square, [0])  # the pool listens from its first call
        listener = pool._backends["distributed"]._dial.listener
        eventually(lambda: len(listener.links) == 64, "64 workers joined", timeout=60)
        results = pool.map(nap, [0.5 + i * 1e-6 for i in range(64 * 4)])
    assert not results.errors
    assert len(set(results.values())) == 64


def _own_name_if_only_here():
    import socket

    from ezpool.security import only_here

    name = socket.gethostname()
    return name if only_here(name) else None


@pytest.mark.skipif(_own_name_if_only_here() is None,
                    reason="this machine's name does not resolve to loopback here")
def test_a_host_name_that_means_this_machine_only_is_named_as_such(core_child_env):
    from tests.conftest import free_port

    name, port = _own_name_if_only_here(), free_port()
    with ezpool.Pool(mode="distributed") as pool, \
            pytest.raises(WorkerUnavailable, match="an address of this machine only") as caught:
        pool.map(square, [1], workers=f"PYRO:worker@{name}:{port}")
    assert "spawn=True" not in str(caught.value)  # a worker started here would run it all here
    serve = subprocess.Popen([sys.executable, "-m", "ezpool.serve", "--host", str(name), "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=core_child_env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        warning = serve.stderr.readline()
    finally:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.communicate(timeout=10)
    assert f"--host {name} resolves to" in warning and "this machine only" in warning



def stuck_on_minus_one(x):
    if x == -1:
        time.sleep(60)
    return x


def test_a_task_past_its_timeout_is_stopped_and_the_worker_dials_in_again(workers, tmp_path):
    from ezpool.errors import TaskTimeout

    key = secrets.token_hex(16)
    listen_file = tmp_path / "pool.json"
    (worker,) = workers(listen_file, "--key-stdin", stdin=subprocess.PIPE)
    worker.stdin.write(key + "\n")  # a key on standard input survives the restart
    worker.stdin.flush()
    with ezpool.Pool(mode="distributed", listen_file=listen_file, hmac_key=key) as pool:
        results = pool.map(stuck_on_minus_one, [-1, *range(10)], timeout=1.0)
        assert isinstance(results.errors.pop(-1), TaskTimeout)
        assert not results.errors
        assert dict(pool.map(square, range(5))) == {x: x * x for x in range(5)}  # it came back
    status, err = ended(worker)
    assert status == 0, err
    assert "restarting to stop a task that overran its timeout" in err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_128_workers_that_dial_in_at_once_all_get_work(workers, tmp_path):
    """They wait for the listen file, which the pool writes: all 128 dial it at once."""
    listen_file = tmp_path / "pool.json"
    started = workers(listen_file, "--procs", "32", n=4)
    for process in started:  # each prints one line per process once it waits to dial
        lines = 0
        while lines < 32:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines += line.startswith("dialing")
    with ezpool.Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
        pool.map(square, [0])  # the pool listens from its first call, and writes the file
        listener = pool._backends["distributed"]._dial.listener
        eventually(lambda: len(listener.links) == 128, "128 workers joined", timeout=120)
        results = pool.map(nap, [0.25 + i * 1e-6 for i in range(128 * 4)])
    assert not results.errors
    assert len(set(results.values())) == 128  # every process ran tasks
