"""Fixtures shared by the core tests (distributed fixtures live in their own file)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from tests.modes import MODES, Mode

#: The checkout under test; child interpreters must import ezpool from here.
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _own_config_dir(tmp_path_factory):
    """Keys live in a config directory of the tests' own, never the user's real one.

    EzPool makes a per-user key file on first use; the tests and every process they
    start (which inherit this environment) use one made here, fresh for the run.
    """
    saved = {name: os.environ.get(name) for name in ("XDG_CONFIG_HOME", "EZPOOL_HMAC_KEY", "EZPOOL_KEY_FILE")}
    config = tmp_path_factory.mktemp("config")
    config.chmod(0o700)
    os.environ["XDG_CONFIG_HOME"] = str(config)
    os.environ.pop("EZPOOL_HMAC_KEY", None)
    os.environ.pop("EZPOOL_KEY_FILE", None)
    yield config
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and certificates for 127.0.0.1 (``python -m ezpool.tls init``), for the session."""
    pytest.importorskip("cryptography", reason="TLS files are made with cryptography (the tls extra)")
    import subprocess

    directory = tmp_path_factory.mktemp("tls") / "cluster"
    done = subprocess.run(
        [sys.executable, "-m", "ezpool.tls", "init", str(directory), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture
def core_child_env() -> dict[str, str]:
    """Environment for a child interpreter that imports this checkout's ezpool."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONSTARTUP", None)
    return env


@pytest.fixture
def core_python() -> str:
    """The interpreter running the tests, for child interpreters."""
    return sys.executable


@pytest.fixture(scope="module", params=list(MODES))
def mode(request) -> Mode:
    """Each mode in turn (``tests/modes.py``): every behaviour suite runs in all of them."""
    return MODES[request.param]


@pytest.fixture(scope="module")
def mode_pool(mode: Mode):
    """A pool of each mode in turn, shared by a module's tests and shut down after them."""
    pool = mode.pool()
    try:
        yield pool
    finally:
        pool.shutdown()


@pytest.fixture(params=[("serial", {}), ("parallel", {"ncpu": 2})], ids=["serial", "parallel"])
def local_pool(request):
    """A pool of each mode that runs on this machine alone, for the store's tests."""
    from ezpool import Pool

    mode, options = request.param
    with Pool(mode, progress=False, **options) as pool:
        yield pool


@pytest.fixture(autouse=True, scope="module")
def _core_no_worker_left_behind():
    """Every test module must leave no ezpool worker process of this interpreter running."""
    yield
    left = [p for p in multiprocessing.active_children() if p.name == "ezpool-worker"]
    for proc in left:
        proc.kill()
        proc.join(5)
    assert not left, f"worker processes left running: {left}"


# --- distributed: real ezpool.serve daemons and a real Pyro4 name server on 127.0.0.1 ---


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A TCP port on ``host`` that nothing uses right now, and the ``count - 1`` after it
    too (``serve --procs N`` listens on N consecutive ports)."""
    import contextlib
    import socket

    for _ in range(100):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            try:
                for offset in range(1, count):
                    stack.enter_context(socket.socket()).bind((host, port + offset))
            except (OSError, OverflowError):  # a neighbour is taken (a client's ephemeral port, say)
                continue
            return port
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def read_lines(process, count, command, timeout=30.0):
    """The first ``count`` lines ``process`` (started as ``command``) prints on its stdout."""
    import time

    lines = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{command} printed {lines} in {timeout} s")
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"{command} exited ({process.wait()}): {process.stderr.read()}")
        lines.append(line.strip())
    return lines


def listening(port, host="127.0.0.1"):
    """Whether something accepts connections at ``host:port`` now."""
    import socket

    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def eventually(check, what, timeout=30.0):
    """Poll ``check`` until it is true; fail naming ``what`` and the last value after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s (last: {value!r})")
        time.sleep(0.1)


def wait_for_port(host, port, timeout=20.0):
    """Return once something accepts connections at ``host:port``."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Served:
    """A started ``python -m ezpool.serve`` (or other daemon) and the lines it printed."""

    def __init__(self, process, lines):
        self.process = process
        self.lines = lines

    @property
    def uris(self):
        return [line for line in self.lines if line.startswith("PYRO:")]


def stop_group(process) -> None:
    """Kill a process started in a session of its own, with all it started; reap it."""
    import signal
    import subprocess

    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
        process.communicate(timeout=10)


@pytest.fixture
def start_daemon(core_child_env):
    """Start a daemon command, wait for ``expect`` lines on its stdout; killed at teardown."""
    import subprocess

    started = []

    def start(command, expect=1, env=None, timeout=30.0):
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or core_child_env,
            start_new_session=True,
        )
        started.append(process)
        return Served(process, read_lines(process, expect, command, timeout))

    yield start
    for process in started:
        stop_group(process)


@pytest.fixture
def serve(start_daemon):
    """``serve(spec, *flags, procs=1)``: start real ``ezpool.serve`` workers; their URIs.

    An empty ``spec`` starts generic workers, which run whatever a client sends.
    """

    def run(spec, *flags, procs=1, port=None, env=None):
        port = port or free_port(count=procs)
        command = [sys.executable, "-m", "ezpool.serve", *([spec] if spec else [])]
        command += ["--port", str(port), *flags]
        if procs > 1:
            command += ["--procs", str(procs)]
        return start_daemon(command, expect=procs, env=env)

    return run


@pytest.fixture
def name_server(start_daemon):
    """A real name server (``python -m ezpool.nameserver``, keyed) on 127.0.0.1; its ``HOST:PORT``."""
    port = free_port()
    served = start_daemon([sys.executable, "-m", "ezpool.nameserver", "--port", str(port)])
    (address,) = served.lines
    return address
