"""Ctrl-C and a killed caller: no worker process outlives the call that started it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[1]

#: The first lines of every child script: Ctrl-C must raise ``KeyboardInterrupt`` there
#: even when the test run was started with SIGINT ignored (``nohup pytest &`` from a
#: non-interactive shell), which children inherit, and Python then leaves alone.
RESET_SIGINT = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"

SCRIPT = RESET_SIGINT + textwrap.dedent(
    """
    import os, sys, time
    from ezpool import Pool

    def nap(seconds, started):
        open(os.path.join(started, str(os.getpid())), "w").close()
        time.sleep(seconds)
        return os.getpid()

    if __name__ == "__main__":
        pids_file, started = sys.argv[1], sys.argv[3]
        with Pool(start_method=sys.argv[2]) as pool:
            pool.pmap(os.getpid, [()] * 4, ncpu=2)  # start the workers
            workers = [p.process.pid for p in pool._backends["parallel"]._processes]
            with open(pids_file, "w") as f:
                f.write(" ".join(map(str, workers)))
            print("ready", flush=True)
            pool.pmap(nap, [(60, started), (61, started), (62, started), (63, started)], ncpu=2,
                      progress=False)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Started(list):  # type: ignore[type-arg]
    """Callers the test started (each leads its own process group), and workers, which
    may be outside those groups (a worker a pool starts has a session of its own)."""

    workers: dict[int, str]  # pid: its start time, so that a reused pid is left alone

    def add_workers(self, pids: list[int]) -> None:
        self.workers.update((pid, _start_time(pid)) for pid in pids)


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[19]
    except OSError:
        return ""


@pytest.fixture
def cleanup():
    """Kill whatever the test started, whatever happened: every caller's process group,
    then every worker pid it recorded; reap the callers and close their pipes."""
    started = Started()
    started.workers = {}
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for pid, began in started.workers.items():
        if began and _start_time(pid) == began:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for proc in started:
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            proc.communicate(timeout=10)


def _start(tmp_path: Path, start_method: str, cleanup: Started) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "long_run.py"
    script.write_text(SCRIPT)
    pids_file = tmp_path / "pids"
    started = tmp_path / "started"
    started.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pids_file), start_method, str(started)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    cleanup.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
    workers = [int(pid) for pid in pids_file.read_text().split()]
    cleanup.add_workers(workers)
    return proc, workers


def _wait_started(tmp_path: Path) -> None:
    """Until the two workers have both started a long task (each leaves a file as it does)."""
    eventually(lambda: len(list((tmp_path / "started").iterdir())) >= 2, "the long tasks running")


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_ctrl_c_reaches_caller_and_stops_every_worker(tmp_path, cleanup, start_method):
    proc, workers = _start(tmp_path, start_method, cleanup)
    _wait_started(tmp_path)
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)  # to the calling process only
    _, stderr = proc.communicate(timeout=20)
    took = time.monotonic() - began
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert took < 10, f"KeyboardInterrupt took {took:.1f} s to reach the caller"
    assert _wait_gone(workers, 5) == []
    # Only the caller reports the interrupt: no traceback spam from the children.
    assert stderr.count("Traceback (most recent call last)") == 1, stderr


def test_ctrl_c_to_whole_process_group(tmp_path, cleanup):
    proc, workers = _start(tmp_path, "fork", cleanup)
    _wait_started(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # a real terminal sends it to the whole group
    _, stderr = proc.communicate(timeout=20)
    assert "KeyboardInterrupt" in stderr
    assert stderr.count("Traceback (most recent call last)") == 1, stderr
    assert _wait_gone(workers, 5) == []


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_workers_exit_when_the_caller_is_killed(tmp_path, cleanup, start_method):
    proc, workers = _start(tmp_path, start_method, cleanup)
    _wait_started(tmp_path)
    proc.kill()  # SIGKILL: no cleanup code runs in the caller
    proc.wait(10)
    assert _wait_gone(workers, 10) == [], "worker processes outlived their killed caller"


DMAP_SCRIPT = RESET_SIGINT + textwrap.dedent(
    """
    import os, sys, time
    from ezpool import Pool, BaseWorker

    class Slow(BaseWorker):
        def run(self, seconds, started=None):
            if started is not None:
                open(os.path.join(started, str(os.getpid())), "w").close()
            time.sleep(seconds)
            return seconds

    if __name__ == "__main__":
        started, ports = sys.argv[1], sys.argv[2:]
        with Pool(workers=[f"PYRO:worker@127.0.0.1:{p}" for p in ports], spawn=True) as pool:
            pool.dmap(Slow, [0.01, 0.02])  # starts both workers
            pids = [p.pid for p in pool._backends["distributed"]._started.processes.values()]
            print(" ".join(map(str, pids)), flush=True)
            pool.dmap(Slow, [(seconds, started) for seconds in (60, 61, 62, 63)], progress=False)
    """
)


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_workers_the_pool_started_for_dmap_end_with_it(tmp_path, cleanup, how):
    from tests.conftest import free_port

    script = tmp_path / "dmap_run.py"
    script.write_text(DMAP_SCRIPT)
    (tmp_path / "started").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "started"), str(free_port()), str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    cleanup.append(proc)
    assert proc.stdout is not None
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    cleanup.add_workers(workers)
    assert len(workers) == 2, proc.stderr.read() if proc.stderr else ""
    _wait_started(tmp_path)
    began = time.monotonic()
    proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    if how == "ctrl-c":
        assert "KeyboardInterrupt" in stderr
        assert time.monotonic() - began < 10
    assert _wait_gone(workers, 10) == [], "an auto-started worker outlived its caller"
