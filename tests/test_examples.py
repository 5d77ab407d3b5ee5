"""The programs in examples/ run as the docs say, in every mode, so they cannot rot.

Each example runs as a subprocess of its own (bounded in time, in its own process
group, which is killed whatever happens) with this checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _distributed_available() -> bool:
    try:
        return importlib.util.find_spec("ezpool._backends.distributed.backend") is not None
    except ImportError:
        return False


needs_distributed = pytest.mark.skipif(
    not _distributed_available(), reason="ezpool._backends.distributed.backend is not in this checkout yet"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("EZPOOL_HMAC_KEY", None)
    # Pyro4 trips deprecation warnings in its own code; keep ours as errors.
    env["PYTHONWARNINGS"] = "error,ignore::DeprecationWarning"
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def run_example(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python examples/<args>`` from the checkout root; kill its group if it overstays."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{args} did not finish within {timeout} s:\n{out}\n{err}")
    finally:
        _kill_group(proc)  # anything it left behind in its group
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _servers_on(port: int) -> list[int]:
    """Pids of ``ezpool.serve`` processes started for ``port`` (e.g. auto-spawned ones)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = entry.read_bytes().split(b"\0")
            if b"ezpool.serve" in b" ".join(words) and str(port).encode() in words:
                pids.append(int(entry.parent.name))
    return pids


@contextlib.contextmanager
def no_servers_left(*ports: int) -> Iterator[None]:
    """Kill any worker still serving ``ports`` when the block ends, whatever happens."""
    try:
        yield
    finally:
        for port in ports:
            for pid in _servers_on(port):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def fib_lines(output: str) -> dict[int, int]:
    return {int(n): int(v) for n, v in re.findall(r"^fib\((\d+)\) = (\d+)  \(", output, re.MULTILINE)}


FIRST_FIVE = {1: 1, 2: 1, 3: 2, 4: 3, 5: 5}


# --- examples/fib.py: every command line of the tutorial ---------------------------------------


def test_fib_serial_as_in_the_tutorial() -> None:
    done = run_example("examples/fib.py", "--tasks", "1", "2", "3", "4", "5")
    assert done.returncode == 0, done.stderr
    assert fib_lines(done.stdout) == FIRST_FIVE
    assert "5 tasks, 0 failed" in done.stdout


def test_fib_parallel_as_in_the_tutorial() -> None:
    done = run_example(
        "examples/fib.py", "--mode", "parallel", "--tasks", "1", "2", "3", "4", "5", "--ncpu", "2"
    )
    assert done.returncode == 0, done.stderr
    assert fib_lines(done.stdout) == FIRST_FIVE
    pids = set(re.findall(r"on pid (\d+)\)", done.stdout))
    assert pids and str(os.getpid()) not in pids


def test_fib_default_tasks_short_flags() -> None:
    done = run_example("examples/fib.py", "-m", "parallel", "-n", "2")
    assert done.returncode == 0, done.stderr
    values = fib_lines(done.stdout)
    assert list(values) == list(range(25))
    assert values[10] == 55 and values[24] == 46368


def test_fib_rejects_an_unknown_mode_naming_it() -> None:
    done = run_example("examples/fib.py", "--mode", "cluster")
    assert done.returncode == 2
    assert "'cluster'" in done.stderr


def test_fib_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("fib_example", EXAMPLES / "fib.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tasks", "10", "20"]) == 0
    assert fib_lines(capsys.readouterr().out) == {10: 55, 20: 6765}
    assert module.FibWorker().run(10) == 55


@needs_distributed
def test_fib_distributed_spawns_its_own_worker() -> None:
    port = free_port()
    uri = f"PYRO:worker@localhost:{port}"
    with no_servers_left(port):
        done = run_example(
            "examples/fib.py", "--mode", "distributed", "--tasks", "1", "2", "3", "4", "5", "--workers", uri,
            "--spawn", timeout=90,
        )
        assert done.returncode == 0, done.stderr
        assert fib_lines(done.stdout) == FIRST_FIVE
        deadline = time.monotonic() + 10
        while answers(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not answers(port), "the auto-spawned worker outlived the pool"


@contextlib.contextmanager
def served(spec: str, port: int) -> Iterator[subprocess.Popen]:
    """``python -m ezpool.serve SPEC --port PORT``, up and answering; killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ezpool.serve", spec, "--port", str(port)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill_group(proc)
                pytest.fail(f"ezpool.serve {spec} did not come up: {proc.communicate(timeout=10)}")
            time.sleep(0.2)
        yield proc
    finally:
        _kill_group(proc)
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            proc.communicate(timeout=10)  # read and close its pipes


@needs_distributed
def test_fib_distributed_on_two_served_workers() -> None:
    ports = [free_port(), free_port()]
    with no_servers_left(*ports), served("examples/fib.py:FibWorker", ports[0]), served(
        "examples/fib.py:FibWorker", ports[1]
    ):
        uris = [f"PYRO:worker@localhost:{port}" for port in ports]
        done = run_example(
            "examples/fib.py", "--mode", "distributed", "--tasks", *map(str, range(21)), "--workers", *uris,
            timeout=90,
        )
        assert done.returncode == 0, done.stderr
        values = fib_lines(done.stdout)
        assert values[10] == 55 and values[20] == 6765 and len(values) == 21


# --- examples/montecarlo_pi.py: progress, timing, failures, retries -----------------------------

#: Estimates are reproducible: each task seeds its own generator.
KNOWN = {(1000, 0): "3.12800", (10000, 1): "3.14160", (100000, 0): "3.14844"}


def check_sweep(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr
    for (samples, seed), estimate in KNOWN.items():
        assert re.search(rf"^\s*{samples}\s+{seed}\s+{estimate}\s", done.stdout, re.MULTILINE), done.stdout
    assert "failed: ValueError: samples must be positive, got 0" in done.stdout
    assert "12 estimates, 8 failed (0 glitches left after retrying)" in done.stdout
    assert re.search(r"^first round: 20 tasks, \d+ failed, wall ", done.stdout, re.MULTILINE)


def test_montecarlo_serial_reports_progress_and_retries() -> None:
    done = run_example("examples/montecarlo_pi.py", "--glitch", "0.3", "--retries", "40")
    check_sweep(done)
    assert re.search(r"\[ 20/20\] \(-5, 3, 0\.3\): failed \(ValueError\)", done.stderr), done.stderr


def test_montecarlo_glitches_are_retried() -> None:
    # With 20 tasks that glitch 90% of the time, the first round cannot all succeed
    # (odds 1e-20), and 300 rounds of retries leave none behind (odds 1e-13).
    done = run_example("examples/montecarlo_pi.py", "--glitch", "0.9", "--retries", "300", "--seeds", "20",
                       "--samples", "1000")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^retry 1: \d+ tasks", done.stdout, re.MULTILINE), done.stdout
    assert "20 estimates, 0 failed (0 glitches left after retrying)" in done.stdout


def test_montecarlo_parallel_with_bar() -> None:
    done = run_example("examples/montecarlo_pi.py", "--mode", "parallel", "--ncpu", "2", "--bar",
                       "--retries", "40")
    check_sweep(done)
    assert "Sweep" in done.stderr  # the bar's label


@needs_distributed
def test_montecarlo_distributed() -> None:
    port = free_port()
    with no_servers_left(port):
        done = run_example(
            "examples/montecarlo_pi.py", "--mode", "distributed", "--retries", "40",
            "--workers", f"PYRO:worker@localhost:{port}", "--spawn", timeout=90,
        )
        check_sweep(done)


# --- examples/sklearn_grid.py: a scikit-learn grid search through the "ezpool" joblib backend ---

#: What the search finds on the digits (SVC is deterministic, and so are the folds).
SKLEARN_BEST = "best params: {'C': 10, 'gamma': 0.001}"


@needs_distributed
def test_sklearn_grid_on_workers_it_starts_itself() -> None:
    done = run_example("examples/sklearn_grid.py", timeout=180)
    named = re.search(r"^workers: (.+)$", done.stdout, re.MULTILINE)
    ports = [int(uri.rsplit(":", 1)[1]) for uri in named.group(1).split()] if named else []
    with no_servers_left(*ports):
        assert done.returncode == 0, done.stderr
        assert len(ports) == 2
        assert "starting one there" not in done.stderr, done.stderr  # as asked: news at INFO
        assert "18 fits in" in done.stdout and "(distributed)" in done.stdout
        assert SKLEARN_BEST in done.stdout, done.stdout
        deadline = time.monotonic() + 10
        while any(map(answers, ports)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(answers, ports)), "an auto-started worker outlived the search"


def test_sklearn_grid_parallel() -> None:
    done = run_example("examples/sklearn_grid.py", "--mode", "parallel", "--n-jobs", "2", timeout=180)
    assert done.returncode == 0, done.stderr
    assert "18 fits in" in done.stdout and "(parallel)" in done.stdout
    assert SKLEARN_BEST in done.stdout, done.stdout
