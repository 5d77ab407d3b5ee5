"""``ezpool-status`` (``python -m ezpool.status``) against real workers on 127.0.0.1, real keys:
by URI, through a real name server, and through a real pool that listens for workers that dial in."""

from __future__ import annotations

import json
import os
import platform
import pty
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ezpool
import ezpool.security
from tests.conftest import REPO_ROOT, eventually, free_port, stop_group

pytestmark = pytest.mark.timeout(90)


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def fails_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def status(*args, env=None, timeout=60):
    """Run ``python -m ezpool.status ARGS``; the finished process (stdout and stderr as text)."""
    return subprocess.run(
        [sys.executable, "-m", "ezpool.status", *map(str, args)], capture_output=True, text=True,
        env=env, cwd=REPO_ROOT, timeout=timeout,
    )


def rows(*args, env=None):
    """``--json`` for ARGS: the exit status, and each worker's entry by its name."""
    done = status(*args, "--json", env=env)
    assert done.stdout, done.stderr
    document = json.loads(done.stdout)
    return done.returncode, {entry["worker"]: entry for entry in document["workers"]}


def other_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "other-key"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def dialing(core_child_env):
    """``dialing(ADDRESS, n=1)``: ``n`` workers that dial ADDRESS (``ezpool-serve --connect``);
    killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(address, *flags, n=1):
        for _ in range(n):
            started.append(subprocess.Popen(
                [sys.executable, "-m", "ezpool.serve", "--connect", str(address), *map(str, flags)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                env=core_child_env, start_new_session=True, cwd=REPO_ROOT,
            ))
        return started[-n:]

    yield start
    for process in started:
        stop_group(process)


def test_an_idle_worker_is_listed_with_host_pid_serves_uptime_and_versions(serve):
    generic = serve("")
    pinned = serve("tests._workers:Napper")
    (first,), (second,) = generic.uris, pinned.uris
    code, found = rows(first, second)
    assert code == 0
    for uri, served, what in ((first, generic, "generic"), (second, pinned, "tests._workers:Napper")):
        row = found[uri]
        assert row["answered"] is True
        assert row["pid"] == served.process.pid
        assert row["host"] == platform.node()
        assert row["serves"] == what
        assert row["busy"] is False and row["client"] == ""
        assert row["tasks"] == 0
        assert 0 < row["uptime"] < 120
        assert row["python"] == platform.python_version()
        assert row["ezpool"] == ezpool.__version__
    done = status(first, second)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["WORKER", "HOST", "PID", "SERVES", "STATE", "CLIENT", "TASKS", "UPTIME",
                                "PYTHON", "EZPOOL"]
    line = next(line for line in lines if line.startswith(second))
    assert line.split()[1:5] == [platform.node(), str(pinned.process.pid), "tests._workers:Napper", "idle"]
    assert lines[-1].startswith("2 answered (")


def test_the_console_script_answers_as_the_module_does(serve):
    script = Path(sys.executable).with_name("ezpool-status")
    if not os.access(script, os.X_OK):
        pytest.skip(f"no ezpool-status script next to {sys.executable} (pip install the package)")
    (uri,) = serve("").uris
    done = subprocess.run([str(script), uri], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "generic" in done.stdout and "idle" in done.stdout


def test_a_busy_worker_shows_busy_and_the_client_it_works_for(serve):
    (uri,) = serve("").uris
    port = int(uri.rpartition(":")[2])
    with ezpool.Pool(mode="distributed", workers=[uri]) as pool:
        mapping = threading.Thread(target=pool.dmap, args=(nap, [0.5 + i * 1e-6 for i in range(8)]))
        mapping.start()
        try:
            row = eventually(lambda: next((r for r in rows(uri)[1].values() if r.get("busy")), None),
                             "a status that says busy")
        finally:
            mapping.join(30)
    host, _, client_port = row["client"].rpartition(":")
    assert host == "127.0.0.1" and int(client_port) not in (0, port)  # the pool's end of its connection
    assert row["busy_for"] >= 0 and row["task"] >= -1
    done = status(uri)
    assert "idle" in done.stdout  # the map is over


def test_tasks_done_count_up_after_a_dmap(serve):
    (uri,) = serve("").uris
    assert rows(uri)[1][uri]["tasks"] == 0
    with ezpool.Pool(mode="distributed", workers=[uri]) as pool:
        results = pool.dmap(fails_on_three, range(10))
    assert set(results.errors) == {3}
    row = rows(uri)[1][uri]
    assert (row["tasks"], row["failed"]) == (10, 1)
    assert row["chunks"] >= 1
    assert "10 (1 failed)" in status(uri).stdout


@pytest.mark.parametrize("how", ["--hmac-key-file", "EZPOOL_HMAC_KEY"])
def test_a_wrong_key_is_refused_and_nothing_about_the_worker_is_said(serve, tmp_path, how):
    served = serve("tests._workers:Napper")  # the per-user key of the tests' own config directory
    (uri,) = served.uris
    wrong = other_key_file(tmp_path)
    env = dict(os.environ)
    args = [uri]
    if how == "EZPOOL_HMAC_KEY":
        env["EZPOOL_HMAC_KEY"] = wrong.read_text().strip()
    else:
        args += ["--hmac-key-file", wrong]
    done = status(*args, env=env)
    assert done.returncode == 1
    assert f"{uri}  refused: wrong key" in done.stdout
    for secret in (str(served.process.pid), "Napper", "tests._workers", platform.python_version(), "idle"):
        assert secret not in done.stdout + done.stderr
    code, found = rows(*args, env=env)
    assert code == 1
    assert found[uri] == {"worker": uri, "answered": False, "error": "refused: wrong key"}


def test_status_is_answered_only_on_a_connection_that_proved_the_key(serve):
    from ezpool import _pyro

    served = serve("")
    (uri,) = served.uris
    unproven = _pyro.Connection(_pyro.parse_uri(uri), None, 5.0, authenticate=False)
    try:
        with pytest.raises(_pyro.ConnectionClosed):  # hung up on: no answer at all
            unproven.call("call", "status", 1, b"", [])
        with pytest.raises(AttributeError, match="no attribute 'status'"):
            unproven.call("status")  # not a method of the exposed object: only auth and call are
    finally:
        unproven.close()
    proven = _pyro.Connection(_pyro.parse_uri(uri), ezpool.security.resolve_key(), 5.0)
    try:
        assert proven.call("status")["pid"] == served.process.pid
    finally:
        proven.close()


def test_a_worker_that_does_not_answer_is_named_and_the_others_are_listed(serve):
    (live,) = serve("").uris
    stopped = serve("")
    (silent,) = stopped.uris
    nothing = f"PYRO:worker@127.0.0.1:{free_port()}"
    os.kill(stopped.process.pid, signal.SIGSTOP)
    try:
        done = status(live, silent, nothing, "--timeout", "1")
    finally:
        os.kill(stopped.process.pid, signal.SIGCONT)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(line.startswith(live) and "idle" in line for line in lines), done.stdout
    assert f"{silent}  no answer in 1 s" in lines
    assert f"{nothing}  refused: nothing listens at 127.0.0.1:{nothing.rpartition(':')[2]}" in lines
    assert lines[-1].startswith("1 answered, 2 did not (")
    assert str(stopped.process.pid) not in done.stdout


def test_the_workers_a_name_server_lists(serve, name_server):
    first = serve("", "--ns", name_server)
    second = serve("tests._workers:Napper", "--ns", name_server)
    expected = {*first.uris, *second.uris}
    eventually(lambda: set(ezpool.list_workers(ns=name_server)) == expected, "both workers registered")
    code, found = rows("--ns", name_server)
    assert code == 0
    assert set(found) == expected
    assert {row["pid"] for row in found.values()} == {first.process.pid, second.process.pid}
    empty = status("--ns", name_server, "--ns-prefix", "nobody.")
    assert empty.returncode == 0
    assert "no worker is registered under 'nobody.'" in empty.stdout
    down = f"127.0.0.1:{free_port()}"
    code, found = rows("--ns", down, "--ns", name_server)
    assert code == 1
    assert found[f"name server {down}"]["answered"] is False
    assert set(found) - {f"name server {down}"} == expected


def test_a_listening_pool_lists_the_workers_that_joined_it(dialing, tmp_path):
    listen_file = tmp_path / "pool.json"
    started = dialing(listen_file, n=2)
    with ezpool.Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
        assert not pool.dmap(nap, [0.01 + i * 1e-6 for i in range(10)]).errors
        address = json.loads(listen_file.read_text())["address"]
        code, found = rows("--pool", listen_file)
        assert code == 0
        assert {row["pid"] for row in found.values()} == {process.pid for process in started}
        assert sum(row["tasks"] for row in found.values()) == 10
        assert set(found) == {f"{platform.node()}:{process.pid}@{listen_file}" for process in started}
        assert all(row["serves"] == "generic" and row["busy"] is False for row in found.values())
        mapping = threading.Thread(target=pool.dmap, args=(nap, [0.5 + i * 1e-6 for i in range(12)]))
        mapping.start()
        try:
            busy = eventually(
                lambda: [row for row in rows("--pool", address)[1].values() if row.get("busy")],
                "a worker of the pool that says busy")
        finally:
            mapping.join(30)
        assert busy[0]["client"] == address  # a worker that dialed in works for the pool it dialed
        table = status("--pool", address)
        assert table.returncode == 0
        assert table.stdout.splitlines()[-1].startswith("2 answered (")


def test_a_worker_of_a_pool_that_does_not_answer_is_named_and_the_other_listed(dialing, tmp_path):
    listen_file = tmp_path / "pool.json"
    stopped, live = dialing(listen_file, n=2)
    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool:
        assert not pool.dmap(nap, [0.01 + i * 1e-6 for i in range(10)]).errors
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            done = status("--pool", listen_file, "--timeout", "1")
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"{platform.node()}:{stopped.pid}@{listen_file}  no answer in 1 s" in lines
    assert any(line.startswith(f"{platform.node()}:{live.pid}@{listen_file}") and "idle" in line
               for line in lines), done.stdout
    assert lines[-1].startswith("1 answered, 1 did not (")


def test_a_pool_refuses_a_status_client_with_another_key_and_says_nothing(dialing, tmp_path):
    listen_file = tmp_path / "pool.json"
    started = dialing(listen_file)
    with ezpool.Pool(mode="distributed", listen_file=listen_file) as pool:
        assert pool.dmap(nap, [0.01]).errors == {}
        done = status("--pool", listen_file, "--hmac-key-file", other_key_file(tmp_path))
        assert done.returncode == 1
        assert f"pool {listen_file}  refused: wrong key" in done.stdout
        assert str(started[0].pid) not in done.stdout + done.stderr
        assert "generic" not in done.stdout
        assert pool.dmap(nap, [0.02]).errors == {}  # the pool and its worker carry on
        assert rows("--pool", listen_file)[0] == 0
    gone = status("--pool", f"127.0.0.1:{free_port()}")
    assert gone.returncode == 1 and "refused: nothing listens at 127.0.0.1:" in gone.stdout


def test_a_pool_with_no_worker_yet_says_so(dialing, tmp_path):
    listen_file = tmp_path / "pool.json"
    with ezpool.Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
        mapping = threading.Thread(target=pool.dmap, args=(nap, [0.01]))  # waits for a worker
        mapping.start()
        try:
            eventually(listen_file.exists, "the listen file")
            done = status("--pool", listen_file)
        finally:
            dialing(listen_file)
            mapping.join(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pool {listen_file}: no worker has joined" in done.stdout


def test_watch_refreshes_until_ctrl_c_which_ends_it_with_status_0(serve):
    (uri,) = serve("").uris
    process = subprocess.Popen(
        [sys.executable, "-m", "ezpool.status", uri, "--watch", "0.3"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        seen = []
        while sum(1 for line in seen if " answered (" in line) < 2:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            seen.append(line.rstrip("\n"))
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "\x1b[" not in "".join(seen) + out  # not a terminal: blocks, no screen clearing
    blocks = "\n".join(seen).split("\n\n")
    assert len(blocks) >= 2 and all(block.startswith("WORKER") for block in blocks if block)
    assert "Traceback" not in err


def test_watch_on_a_terminal_clears_the_screen_and_json_gives_a_document_a_look(serve):
    (uri,) = serve("").uris
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ezpool.status", uri, "--watch", "0.3"], stdout=child,
        stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
    )
    os.close(child)
    try:
        seen = b""
        while seen.count(b"\x1b[H\x1b[2J") < 2:
            chunk = os.read(main, 4096)
            assert chunk
            seen += chunk
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(main)
    assert b"generic" in seen
    looks = subprocess.Popen(
        [sys.executable, "-m", "ezpool.status", uri, "--watch", "0.3", "--json"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        documents = [json.loads(looks.stdout.readline()) for _ in range(2)]
        looks.send_signal(signal.SIGINT)
        assert looks.wait(20) == 0
    finally:
        if looks.poll() is None:
            looks.kill()
        looks.communicate()
    assert [document["workers"][0]["worker"] for document in documents] == [uri, uri]
    assert documents[0]["time"] < documents[1]["time"]


@pytest.mark.parametrize(("args", "named"), [
    (["not-a-uri"], "'not-a-uri' is not a Pyro URI"),
    (["--watch", "0", "PYRO:worker@127.0.0.1:1"], "must be a positive number of seconds, got '0'"),
    (["--timeout", "soon", "PYRO:worker@127.0.0.1:1"], "must be a number of seconds, got 'soon'"),
    ([], "name the workers"),
])
def test_bad_input_is_a_clear_error_naming_the_value(args, named):
    done = status(*args)
    assert done.returncode == 2
    assert named in done.stderr


def test_workers_and_pools_over_tls(serve, dialing, certificates, tmp_path):
    c = certificates
    served = serve("", "--tls-cert", c / "server.pem", "--tls-key", c / "server-key.pem",
                   "--tls-ca", c / "ca.pem", "--tls-require-client-cert")
    (uri,) = served.uris
    client = ["--tls-ca", c / "ca.pem", "--tls-cert", c / "client.pem", "--tls-key", c / "client-key.pem"]
    code, found = rows(uri, *client)
    assert code == 0 and found[uri]["pid"] == served.process.pid
    plain = status(uri)
    assert plain.returncode == 1
    assert f"{uri}  hung up before the key was proven (does it serve over TLS? give --tls-ca)" in plain.stdout
    listen_file = tmp_path / "pool.json"
    (worker,) = dialing(listen_file, "--tls-cert", c / "server.pem", "--tls-key", c / "server-key.pem")
    with ezpool.Pool(mode="distributed", listen_file=listen_file, tls_ca=c / "ca.pem") as pool:
        assert pool.dmap(nap, [0.01]).errors == {}
        untold = status("--pool", listen_file)
        assert untold.returncode == 1 and "it uses TLS: give --tls-cert and --tls-key" in untold.stdout
        code, found = rows("--pool", listen_file, "--tls-cert", c / "server.pem", "--tls-key",
                           c / "server-key.pem")
        assert code == 0
        assert [row["pid"] for row in found.values()] == [worker.pid]
