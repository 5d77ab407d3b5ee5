"""Starting and stopping local worker processes for the distributed workloads.

Each worker is a separate ``python -m ...`` process on a free port of 127.0.0.1,
in its own process group, whose stdout goes to a file we read its URI from. Every
process started here is killed on leaving the context manager, whatever happens.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

from .harness import Skip

logger = logging.getLogger(__name__)

__all__ = ["free_port", "distributed_available", "served_workers", "shared", "child_environment", "stop_all"]

#: Seconds a worker process may take to print its URI (32 of them start at once on 2 cores).
_START_TIMEOUT = 120.0

#: Ports tried per worker: with many workers starting at once, a free port may be taken.
_PORT_ATTEMPTS = 3

_URI = re.compile(r"PYRO:[\w.\-]+@[\w.\-]+:\d+")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distributed_available() -> None:
    """Raise ``Skip`` unless this checkout of EzPool has its distributed mode."""
    for module in ("ezpool._backends.distributed.backend", "ezpool.serve"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise Skip(f"distributed mode not available: {exc}") from exc


def child_environment() -> dict[str, str]:
    """The environment of worker processes: they import this EzPool and ``bench``."""
    import ezpool

    roots = [str(Path(ezpool.__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent)]
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *([old] if old else [])]))
    return env


@contextlib.contextmanager
def served_workers(
    module: str, arguments: Sequence[str], count: int, extra_env: Optional[Mapping[str, str]] = None
) -> Iterator[list[str]]:
    """Start ``count`` processes ``python -m module *arguments --host 127.0.0.1 --port P``.

    Yields the URIs they print, once every one of them has printed one.
    ``extra_env``: variables added to their environment.
    """
    env = {**child_environment(), **(extra_env or {})}
    with tempfile.TemporaryDirectory(prefix="ezpool-bench-") as scratch:
        processes: list[subprocess.Popen[bytes]] = []

        def launch(index: int) -> tuple[subprocess.Popen[bytes], Path]:
            log = Path(scratch, f"worker-{index}.out")
            command = [sys.executable, "-m", module, *arguments, "--host", "127.0.0.1"]
            command += ["--port", str(free_port())]
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            processes.append(process)
            return process, log

        try:
            started = [launch(index) for index in range(count)]
            uris = []
            for index, (process, log) in enumerate(started):
                for attempt in range(_PORT_ATTEMPTS):
                    try:
                        uris.append(_wait_for_uri(process, log))
                        break
                    except _PortTaken:  # another process took the free port first: try another
                        if attempt == _PORT_ATTEMPTS - 1:
                            raise
                        process, log = launch(index)
            yield uris
        finally:
            stop_all(processes)


def shared(start: Callable[[], ContextManager[Any]]) -> Callable[[], ContextManager[Any]]:
    """``start`` entered once for every contender that enters the returned context
    manager (e.g. one set of served workers for a warm and a cold contender), and
    left when the last of them leaves."""
    state: dict[str, Any] = {"users": 0, "stack": None, "value": None}

    @contextlib.contextmanager
    def enter() -> Iterator[Any]:
        if state["users"] == 0:
            stack = contextlib.ExitStack()
            state["value"] = stack.enter_context(start())
            state["stack"] = stack
        state["users"] += 1
        try:
            yield state["value"]
        finally:
            state["users"] -= 1
            if state["users"] == 0:
                state["stack"].close()
                state["stack"] = state["value"] = None

    return enter


class _PortTaken(RuntimeError):
    """A worker could not listen: its port was taken between ``free_port`` and its start."""


def _wait_for_uri(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        found = _URI.search(log.read_text(errors="replace"))
        if found:
            return found.group(0)
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            kind = _PortTaken if "already in use" in output else RuntimeError
            raise kind(f"worker {process.args!r} exited with {process.returncode}:\n{output}")
        time.sleep(0.05)
    raise RuntimeError(f"worker {process.args!r} printed no URI within {_START_TIMEOUT:.0f} s")


def stop_all(processes: Sequence[subprocess.Popen[Any]]) -> None:
    """End workers and everything they started: SIGTERM every group at once, then
    SIGKILL the groups whose leader has not exited within 5 s, and every group whose
    leader has (nothing it forked outlives it). One at a time, 512 workers took
    two minutes to stop."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)
