"""``python -m ezpool.serve``: real daemons on 127.0.0.1, real signals, real name server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ezpool import AuthenticationError, Pool, list_workers
from tests._workers import Square
from tests.conftest import eventually, free_port, listening


def _run_serve(*args: str, env=None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ezpool.serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def triple(x):
    """The client names the function it wants by this; the worker runs its own copy."""
    return 3 * x


def test_serves_a_worker_class_and_prints_its_uri(serve):
    port = free_port()
    served = serve("tests._workers:Square", port=port)
    assert served.uris == [f"PYRO:worker@127.0.0.1:{port}"]
    with Pool() as pool:
        assert pool.dmap(Square, [1, 2, 3], workers=served.uris, spawn=False) == {1: 1, 2: 4, 3: 9}


def test_serves_a_function_from_a_file_path(serve, tmp_path):
    import inspect

    script = tmp_path / "tools.py"
    script.write_text(inspect.getsource(triple))  # the same code as the client's, or it is refused
    served = serve(f"{script}:triple", "--name", "tripler")
    assert served.uris[0].startswith("PYRO:tripler@127.0.0.1:")
    with Pool() as pool:
        assert pool.dmap(triple, [1, 2], workers=served.uris, spawn=False) == {1: 3, 2: 6}


def test_procs_starts_one_process_per_port_and_sigterm_stops_them_all(serve):
    port = free_port(count=3)  # one port a process
    served = serve("tests._workers:Napper", procs=3, port=port)
    assert sorted(served.uris) == [f"PYRO:worker@127.0.0.1:{port + i}" for i in range(3)]
    with Pool() as pool:
        from tests._workers import Napper

        pids = set(pool.dmap(Napper, [0.2, 0.21, 0.22, 0.23, 0.24, 0.25], workers=served.uris).values())
    assert len(pids) == 3
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(15)
    deadline = time.monotonic() + 10
    while any(listening(port + i) for i in range(3)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(listening(port + i) for i in range(3))
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sigint_stops_cleanly_after_teardown(serve, tmp_path, core_child_env):
    lifecycle = tmp_path / "lifecycle"
    env = dict(core_child_env, EZPOOL_TEST_LIFECYCLE=str(lifecycle))
    served = serve("tests._workers:Lifecycle", env=env)
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(15) == 0
    assert lifecycle.read_text() == "setup\nteardown\n"
    assert "Traceback" not in served.process.stderr.read()


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("tests._workers", "MODULE:NAME"),
        ("no_such_module_here:Thing", "cannot import 'no_such_module_here'"),
        ("tests._workers:Missing", "has no 'Missing'"),
        ("tests._workers:NOT_A_WORKER", "neither a BaseWorker subclass nor a function"),
        ("tests._workers:NotAWorkerClass", "neither a BaseWorker subclass nor a function"),
        ("/no/such/file.py:Thing", "no such file"),
    ],
)
def test_a_bad_spec_is_one_line_and_a_nonzero_exit(spec, says, core_child_env):
    done = _run_serve(spec, "--port", str(free_port()), env=core_child_env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert says in done.stderr


def test_a_taken_port_is_one_line_and_a_nonzero_exit(serve, core_child_env):
    port = free_port()
    serve("tests._workers:Square", port=port)
    done = _run_serve("tests._workers:Square", "--port", str(port), env=core_child_env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_worker_on_any_address_has_a_key_and_keyless_needs_insecure_with_a_warning(serve):
    served = serve("tests._workers:Square", "--host", "0.0.0.0")
    uri = served.uris[0].replace("0.0.0.0", "127.0.0.1")
    with Pool(spawn=False) as pool:
        assert pool.dmap(Square, [2], workers=[uri]) == {2: 4}  # the per-user key, on both sides
        with pytest.raises(AuthenticationError, match="none"):
            pool.dmap(Square, [2], workers=[uri], insecure=True)
    keyless = serve("tests._workers:Square", "--host", "0.0.0.0", "--insecure")
    with Pool(spawn=False, insecure=True) as pool:
        assert pool.dmap(Square, [3], workers=[keyless.uris[0].replace("0.0.0.0", "127.0.0.1")]) == {3: 9}
    keyless.process.terminate()
    warning = "without a key: anyone who can reach it can run code here"
    assert warning in keyless.process.communicate(timeout=10)[1]


def test_hmac_key_from_a_file_and_the_client_errors(serve, tmp_path, core_child_env, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("shared-5c1f9e7a3b2d4f6e8a0c\n")
    key_file.chmod(0o600)
    served = serve("tests._workers:Square", "--hmac-key-file", str(key_file))
    with Pool(spawn=False) as pool:
        shared = "shared-5c1f9e7a3b2d4f6e8a0c"
        assert pool.dmap(Square, [4], workers=served.uris, hmac_key=shared) == {4: 16}
        with pytest.raises(AuthenticationError, match="wrong"):
            pool.dmap(Square, [4], workers=served.uris, hmac_key="a-guess-b7e1c4f9a2d6e3f8c5a1")
        with pytest.raises(AuthenticationError, match="none"):
            pool.dmap(Square, [4], workers=served.uris, insecure=True)
        with pytest.raises(AuthenticationError, match="wrong"):  # the per-user key is another
            pool.dmap(Square, [4], workers=served.uris)
        monkeypatch.setenv("EZPOOL_HMAC_KEY", "shared-5c1f9e7a3b2d4f6e8a0c")
        assert pool.dmap(Square, [5], workers=served.uris) == {5: 25}


def test_a_key_file_others_can_read_is_refused_in_one_line(tmp_path, core_child_env):
    key_file = tmp_path / "key"
    key_file.write_text("shared-5c1f9e7a3b2d4f6e8a0c\n")
    key_file.chmod(0o644)
    done = _run_serve("tests._workers:Square", "--hmac-key-file", str(key_file), "--port", str(free_port()),
                      env=core_child_env)
    assert done.returncode == 1 and "chmod 600" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_workers_registered_with_a_name_server_are_found_and_used(serve, name_server):
    first = serve("tests._workers:Square", "--ns", name_server)
    second = serve("tests._workers:Square", "--ns", name_server, "--name", "other")
    found = list_workers(name_server)
    assert sorted(found) == sorted(first.uris + second.uris)
    with Pool() as pool:
        assert pool.dmap(Square, range(6), workers=found, spawn=False) == {n: n * n for n in range(6)}
        by_name = [f"PYRONAME:ezpool.worker.127.0.0.1.{first.uris[0].rsplit(':', 1)[1]}@{name_server}"]
        assert pool.dmap(Square, [7], workers=by_name, spawn=False) == {7: 49}
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(15)
    assert list_workers(name_server) == second.uris  # it unregistered itself


# --- hostile or broken clients on a worker's port (ideas from the dist branch's tests) ---


def _pyro_header(msg_type: int, data_size: int) -> bytes:
    """A well-formed Pyro4 frame header that announces ``data_size`` bytes of data."""
    import struct

    from Pyro4 import constants, message

    version, serializer, seq = constants.PROTOCOL_VERSION, 3, 1
    checksum = (msg_type + version + data_size + serializer + seq + message.Message.checksum_magic) & 0xFFFF
    fields = (b"PYRO", version, msg_type, 0, seq, data_size, serializer, 0, 0, checksum)
    return struct.pack(message.Message.header_format, *fields)


def _memory_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_garbage_on_the_port_does_not_stop_the_worker(serve):
    port = free_port()
    served = serve("tests._workers:Square", port=port)
    payloads = [b"", b"\x00" * 7, b"PYRO" + b"\xff" * 40, b"GET / HTTP/1.0\r\n\r\n"]
    payloads += [bytes((n * 7 + 3) % 256 for n in range(size)) for size in (13, 3000)]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
    with Pool(spawn=False) as pool:
        assert pool.dmap(Square, [1, 2], workers=served.uris) == {1: 1, 2: 4}
    assert served.process.poll() is None


def test_a_frame_promising_gigabytes_is_not_reserved_and_silent_clients_do_not_starve_others(serve):
    from Pyro4 import message

    port = free_port()
    served = serve("tests._workers:Square", port=port)
    before = _memory_kb(served.process.pid)
    hangers = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(_pyro_header(message.MSG_CONNECT, 2**31 - 1) + b"x" * 10_000)
            time.sleep(0.5)
            assert _memory_kb(served.process.pid) - before < 200_000  # not the 2 GB announced
        for _ in range(60):  # more silent connections than the daemon has threads
            hanger = socket.create_connection(("127.0.0.1", port), timeout=5)
            hanger.sendall(_pyro_header(message.MSG_CONNECT, 100)[:10])
            hangers.append(hanger)
        with Pool(spawn=False) as pool:
            assert pool.dmap(Square, [3, 4], workers=served.uris) == {3: 9, 4: 16}
    finally:
        for hanger in hangers:
            hanger.close()
    assert served.process.poll() is None


def test_a_few_thousand_malformed_frames_leave_the_worker_serving(serve):
    import random

    from Pyro4 import message

    port = free_port()
    served = serve("tests._workers:Square", port=port)
    rng = random.Random(20261125)
    deadline = time.monotonic() + 60
    sent = 0
    while sent < 2000 and time.monotonic() < deadline:  # bounded in count and in time
        sent += 1
        kind = rng.choice([message.MSG_CONNECT, message.MSG_INVOKE, message.MSG_PING, 99])
        header = _pyro_header(kind, rng.randrange(0, 5000))
        body = rng.randbytes(rng.randrange(0, 300))
        frame = rng.choice([header + body, header[: rng.randrange(1, len(header))], body, header])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(frame)
    assert sent >= 500
    with Pool(spawn=False) as pool:
        assert pool.dmap(Square, [6, 7], workers=served.uris) == {6: 36, 7: 49}
    assert served.process.poll() is None


# --- the command line a person meets: help, version, the start line, -v ---


def _stderr_line(process: subprocess.Popen, timeout: float = 20) -> str:
    """The next line ``process`` writes on stderr, waiting at most ``timeout`` seconds."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"nothing on stderr within {timeout} s")
    return process.stderr.readline().rstrip("\n")


def _stop_and_read_stderr(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    assert process.wait(15) == 0
    return process.stderr.read()


def test_help_names_the_command_as_started_with_two_examples_and_the_key_variable(core_child_env):
    done = _run_serve("--help", env=core_child_env)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: python -m ezpool.serve ")
    epilog = done.stdout[done.stdout.index("\nexamples:\n") :]
    commands = [line for line in epilog.splitlines() if line.strip().startswith("python -m ezpool.serve")]
    assert len(commands) == 2, epilog
    assert "EZPOOL_HMAC_KEY" in epilog and "--verbose" in done.stdout and "--version" in done.stdout


def test_the_program_name_is_how_it_was_started():
    from ezpool.serve import _prog

    assert _prog("/usr/lib/python3/site-packages/ezpool/serve.py") == "python -m ezpool.serve"
    assert _prog("/home/me/venv/bin/ezpool-serve") == "ezpool-serve"


def test_version_is_the_package_version(core_child_env):
    import ezpool

    done = _run_serve("--version", env=core_child_env)
    assert done.returncode == 0
    assert done.stdout.split()[:2] == ["ezpool", ezpool.__version__]


def test_a_started_worker_says_in_one_line_what_it_serves_where_and_how_to_stop(serve):
    served = serve("tests._workers:Square")
    (uri,) = served.uris
    line = _stderr_line(served.process)
    assert line == f"python -m ezpool.serve: serving tests._workers:Square at {uri}; Ctrl-C to stop"
    assert _stop_and_read_stderr(served.process) == ""  # that line was all, up to a clean stop
    generic = serve("")
    assert f"serving any function or BaseWorker class a client sends at {generic.uris[0]};" in _stderr_line(
        generic.process
    )


def test_procs_say_it_once_for_every_process(serve):
    port = free_port(count=2)  # the second process listens on the next port
    served = serve("tests._workers:Square", procs=2, port=port)
    first, last = (f"PYRO:worker@127.0.0.1:{port + i}" for i in range(2))
    line = _stderr_line(served.process)
    assert line == (
        f"python -m ezpool.serve: serving tests._workers:Square at {first} to {last} (2 processes); "
        "Ctrl-C to stop"
    )
    assert _stop_and_read_stderr(served.process) == ""


def test_a_worker_started_by_a_program_does_not_announce_itself(serve):
    served = serve("tests._workers:Square", "--parent-pid", str(os.getpid()))
    assert served.uris
    assert _stop_and_read_stderr(served.process) == ""


def test_verbose_logs_what_the_worker_does_to_stderr(serve):
    port = free_port()
    served = serve("tests._workers:Square", "-v", port=port)
    with Pool(spawn=False) as pool:
        assert pool.dmap(Square, [2], workers=served.uris) == {2: 4}
    log = _stop_and_read_stderr(served.process)
    assert f"ezpool.serve DEBUG: serving tests._workers:Square at PYRO:worker@127.0.0.1:{port}" in log
    quiet = serve("tests._workers:Square")
    with Pool(spawn=False) as pool:
        assert pool.dmap(Square, [2], workers=quiet.uris) == {2: 4}
    assert "DEBUG" not in _stop_and_read_stderr(quiet.process)


def _voluntary_switches(pid: int) -> int:
    """Times the threads of ``pid`` have gone to sleep so far (each wakeup ends one)."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/status") as status:
            total += sum(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt"))
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="counts wakeups in /proc (Linux)")
def test_an_idle_worker_sleeps_instead_of_polling(serve):
    # A pool may keep 128 workers on one machine: together, a few looks a second
    # each were a fifth of a core. The daemon's accept loop looks every 2 s, and the
    # main thread every 5 s; the rest wait for an event. (Counts, not times: ~16 a
    # second per worker before, about 1 now.)
    served = serve("tests._workers:Square", "--parent-pid", str(os.getpid()))
    with Pool() as pool:
        assert pool.dmap(Square, [1, 2, 3], workers=served.uris, spawn=False) == {1: 1, 2: 4, 3: 9}
    time.sleep(0.5)
    before = _voluntary_switches(served.process.pid)
    time.sleep(4)
    assert _voluntary_switches(served.process.pid) - before < 16


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states in /proc (Linux)")
def test_a_worker_stops_when_the_program_that_started_it_exits(core_child_env):
    starter = (
        "import os, subprocess, sys\n"
        "command = [sys.executable, '-m', 'ezpool.serve', 'tests._workers:Square', '--port', sys.argv[1],\n"
        "           '--parent-pid', str(os.getpid())]\n"
        "worker = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)\n"
        "worker.stdout.readline()\n"
        "print(worker.pid, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", starter, str(free_port())], capture_output=True, text=True,
                          env=core_child_env, timeout=60, check=True)
    pid = int(done.stdout)
    try:
        deadline = time.monotonic() + 20
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(pid)
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


# --- serve --procs: a process that dies is started again; the others serve on ----------------


def _children_by_port(pid: int) -> dict[int, int]:
    """The live child processes of ``pid``, by the ``--port`` on their command line."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            children = [int(child) for child in listed.read().split()]
    except FileNotFoundError:
        return {}
    found = {}
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                words = cmdline.read().decode().split("\0")
        except FileNotFoundError:
            continue
        if "--port" in words and not _gone(child):
            found[int(words[words.index("--port") + 1])] = child
    return found


def _stderr_until(process: subprocess.Popen, wanted: str, timeout: float = 30) -> list[str]:
    """The lines ``process`` writes on stderr, up to and with the first that holds ``wanted``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not lines or wanted not in lines[-1]:
        lines.append(_stderr_line(process, max(0.1, deadline - time.monotonic())))
    return lines


def _serving_anew(served, port: int, killed: int, timeout: float = 30) -> int:
    """The pid of the process that serves ``port`` in place of ``killed``, once it listens."""
    def anew():
        pid = _children_by_port(served.process.pid).get(port)
        return pid if pid not in (None, killed) and listening(port) else None

    return eventually(anew, f"a new process at port {port}", timeout)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the processes in /proc (Linux)")
@pytest.mark.timeout(120)
def test_procs_start_a_killed_process_again_at_its_address_and_the_others_serve_on(serve):
    from tests._workers import Napper

    port = free_port(count=3)
    served = serve("tests._workers:Napper", procs=3, port=port)
    assert _stderr_line(served.process).endswith("(3 processes); Ctrl-C to stop")
    before = _children_by_port(served.process.pid)
    assert sorted(before) == [port, port + 1, port + 2]
    victim = before[port + 1]
    tasks = [0.05 + i / 100_000 for i in range(90)]
    outcome: dict[str, object] = {}

    def run() -> None:
        with Pool(progress=False) as pool:
            outcome["results"] = pool.dmap(Napper, tasks, workers=served.uris, spawn=False)

    client = threading.Thread(target=run)
    client.start()
    time.sleep(0.5)
    os.kill(victim, signal.SIGKILL)  # mid-call
    client.join(90)
    results = outcome["results"]
    assert results.errors == {} and len(results) == len(tasks)
    said = _stderr_until(served.process, "was killed by SIGKILL")
    assert said[-1] == (
        f"python -m ezpool.serve: process 2 of 3 (port {port + 1}, pid {victim}) was killed by SIGKILL; "
        "starting it again at the same address (restart 1 of at most 5 within 60 s)"
    )
    fresh = _serving_anew(served, port + 1, victim)
    with Pool(progress=False) as pool:
        again = pool.dmap(Napper, [0.01, 0.02], workers=[f"PYRO:worker@127.0.0.1:{port + 1}"],
                          spawn=False)
    assert set(again.values()) == {fresh}
    after = _children_by_port(served.process.pid)
    assert (after[port], after[port + 2]) == (before[port], before[port + 2])  # untouched
    assert served.process.poll() is None


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the processes in /proc (Linux)")
@pytest.mark.timeout(120)
def test_procs_give_up_a_process_that_dies_more_than_5_times_a_minute_and_serve_on(serve):
    port = free_port(count=2)
    served = serve("", procs=2, port=port)
    _stderr_line(served.process)  # where they serve
    pid = _children_by_port(served.process.pid)[port + 1]
    for restart in range(1, 6):
        os.kill(pid, signal.SIGKILL)
        assert _stderr_until(served.process, "was killed by SIGKILL")[-1].endswith(
            f"(restart {restart} of at most 5 within 60 s)")
        pid = _serving_anew(served, port + 1, pid)
    os.kill(pid, signal.SIGKILL)
    said = _stderr_until(served.process, "giving it up")[-1]
    assert said == (
        f"python -m ezpool.serve: process 2 of 2 (port {port + 1}, pid {pid}) was killed by SIGKILL, after 5 "
        "restarts within 60 s: giving it up; the others serve on"
    )
    time.sleep(1)  # no sixth restart comes
    assert port + 1 not in _children_by_port(served.process.pid) and not listening(port + 1)
    assert served.process.poll() is None
    with Pool(progress=False) as pool:
        assert dict(pool.dmap(abs, [-1, -2], workers=[f"PYRO:worker@127.0.0.1:{port}"], spawn=False)) == {
            -1: 1, -2: 2}
