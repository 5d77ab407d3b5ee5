"""Every ``python -m ezpool.*`` command piped into a real ``head -n 1`` ends quietly (``ezpool._core.cli``).

``head`` takes its line and exits; a command that writes on gets ``BrokenPipeError``.
It then ends with nothing on stderr and exit status 141 (128 + SIGPIPE, what a shell
shows for ``seq 1 100000 | head -1`` under ``set -o pipefail``). A server (``serve``,
``nameserver``) whose one line no one reads serves all the same.

Two kinds of pipe: a command that writes more than a pipe holds (a store's summary
of 3000 tasks, ``status --watch``) streams into ``head``; for a command that writes
a few lines, ``head`` has read its one line (written by the test) and left before
the command starts, as in ``(echo first; COMMAND) | head -n 1``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import free_port, listening, stop_group

pytestmark = pytest.mark.timeout(120)

#: 128 + SIGPIPE: the exit status of a command whose reader went away (``ezpool._core.cli``).
CLOSED = 141


def square(x: int) -> int:
    return x * x


class Piped(NamedTuple):
    status: int  # the command's exit status
    stderr: str  # what the command wrote on stderr
    shown: str  # what head printed


@pytest.fixture(scope="module")
def store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of one sweep of 3000 outcomes: its summary of them all, ~110 kB, is more than a pipe holds."""
    from ezpool import Pool

    path = tmp_path_factory.mktemp("store") / "sweep.sqlite"
    with Pool(progress=False) as pool:
        pool.map(square, range(3000), store=str(path))
    return path


@contextlib.contextmanager
def reaped(*processes: subprocess.Popen[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            stop_group(process)


def into_head(command: list[str], env: dict[str, str], cwd: Path, head_first: bool = False) -> Piped:
    """``command | head -n 1``; with ``head_first``, head has read a line of the test's and left
    before the command starts."""
    read, write = os.pipe()
    try:
        head = subprocess.Popen(["head", "-n", "1"], stdin=read, stdout=subprocess.PIPE, text=True)
    finally:
        os.close(read)  # head holds the only reading end
    with reaped(head):
        try:
            if head_first:
                os.write(write, b"a line before the command's\n")
                head.wait(timeout=10)
            started = subprocess.Popen(
                command, stdout=write, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                start_new_session=True,
            )
        finally:
            os.close(write)  # the command holds the only writing end
        with reaped(started):
            stderr = started.communicate(timeout=60)[1]
            shown = head.communicate(timeout=10)[0]
    return Piped(started.returncode, stderr, shown)


def assert_quiet(piped: Piped) -> None:
    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, piped.stderr
    assert piped.stderr == "", piped.stderr
    assert piped.status == CLOSED, piped


def python_m(module: str, *args: Any) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def test_a_stores_summary_into_head(store_file: Path, core_child_env: dict[str, str], tmp_path: Path) -> None:
    piped = into_head(python_m("ezpool.store", store_file, "--slowest", 3000), core_child_env, tmp_path)

    assert piped.shown.startswith("sweep tests.test_cli_pipes.square"), piped.shown
    assert_quiet(piped)


@pytest.mark.parametrize("pipefail", [True, False], ids=["pipefail", "default"])
def test_a_stores_summary_into_head_in_a_shell(
    pipefail: bool, store_file: Path, core_child_env: dict[str, str], tmp_path: Path
) -> None:
    """The pipeline's status is head's (0), or under ``set -o pipefail`` the command's 141, as for ``seq``."""
    options = "set -o pipefail; " if pipefail else ""
    script = f'{options}"$@" | head -n 1 >/dev/null'
    done = subprocess.run(
        ["bash", "-c", script, "bash", *python_m("ezpool.store", store_file, "--slowest", 3000)],
        capture_output=True, text=True, env=core_child_env, cwd=tmp_path, timeout=60,
    )
    assert done.stderr == "", done.stderr
    assert done.returncode == (CLOSED if pipefail else 0)
    if pipefail:  # the status a C program stopped by SIGPIPE gives the same pipeline
        seq = subprocess.run(["bash", "-c", f"{options}seq 1 1000000 | head -n 1 >/dev/null"], timeout=30)
        assert seq.returncode == done.returncode


def test_status_watch_into_head(core_child_env: dict[str, str], tmp_path: Path) -> None:
    """``--watch`` writes a table every 0.2 s until head has gone; then it ends within a look."""
    nobody = f"PYRO:worker@127.0.0.1:{free_port()}"
    began = time.monotonic()
    piped = into_head(
        python_m("ezpool.status", nobody, "--timeout", 0.5, "--watch", 0.2), core_child_env, tmp_path
    )

    assert piped.shown.startswith(nobody), piped.shown
    assert_quiet(piped)
    assert time.monotonic() - began < 30


def report_command(store_file: Path, tmp_path: Path) -> list[str]:
    return python_m("ezpool.report", store_file, "-o", tmp_path / "report.html")


#: The commands that write a few lines, each given the test's store and a fresh directory.
SHORT = {
    "store": lambda store, tmp: python_m("ezpool.store", store),
    "report": report_command,
    "status": lambda store, tmp: python_m("ezpool.status", f"PYRO:worker@127.0.0.1:{free_port()}",
                                          "--timeout", 0.5),
    "tls": lambda store, tmp: python_m("ezpool.tls", "init", tmp / "ca", "--host", "127.0.0.1"),
    "security": lambda store, tmp: python_m("ezpool.security", "new-key"),
}
# (``--help`` was quiet already: argparse drops an OSError from writing the help, and exits 0.)


@pytest.mark.parametrize("name", list(SHORT))
def test_a_command_whose_reader_has_gone(
    name: str, store_file: Path, core_child_env: dict[str, str], tmp_path: Path
) -> None:
    if name == "tls":
        pytest.importorskip("cryptography", reason="ezpool.tls needs cryptography (the tls extra)")
    piped = into_head(SHORT[name](store_file, tmp_path), core_child_env, tmp_path, head_first=True)

    assert piped.shown == "a line before the command's\n"
    assert_quiet(piped)


@pytest.mark.parametrize("module", ["ezpool.serve", "ezpool.nameserver"])
def test_a_server_whose_reader_has_gone_serves_on(
    module: str, core_child_env: dict[str, str], tmp_path: Path
) -> None:
    """``serve``/``nameserver`` print one line, their address; unread, it is no reason to stop serving."""
    port = free_port()
    read, write = os.pipe()
    os.close(read)
    try:
        server = subprocess.Popen(
            python_m(module, "--port", port), stdout=write, stderr=subprocess.PIPE, text=True,
            env=core_child_env, cwd=tmp_path, start_new_session=True,
        )
    finally:
        os.close(write)
    with reaped(server):
        deadline = time.monotonic() + 30
        while not listening(port) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # it wrote its line (to no one) by now
        serving = server.poll() is None and listening(port)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        stderr = server.communicate(timeout=30)[1]
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert serving, f"{module} stopped serving (status {server.returncode}): {stderr}"
