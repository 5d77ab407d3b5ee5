"""Long tasks that show whether they still run, wherever they run.

``beat(directory, task)`` leaves ``<task>.<pid>.started`` as it starts, then touches
``<task>.beat`` every 50 ms until its time is up. A task stopped (its process killed,
or a served worker restarted in place, under the same pid) stops beating: that is
what the cancelling tests check, in every mode alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.conftest import eventually

#: How long a task's beat must have been still for the task to count as stopped.
QUIET = 1.0


def beat(directory: str, task: Any, seconds: float = 60.0) -> Any:
    beating = Path(directory, f"{task}.beat")
    beating.touch()
    Path(directory, f"{task}.{os.getpid()}.started").touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        beating.touch()
        time.sleep(0.05)
    return task


def started(directory: Path, tasks: Iterable[Any], timeout: float = 60.0) -> dict[Any, int]:
    """Once each of ``tasks`` has started, the pid of the process that runs it."""
    wanted = [str(task) for task in tasks]
    found: dict[Any, int] = {}

    def look() -> bool:
        for path in directory.glob("*.started"):
            name, pid, _ = path.name.rsplit(".", 2)
            found[name] = int(pid)
        return all(name in found for name in wanted)

    eventually(look, f"tasks {wanted} to start", timeout)
    return {name: found[name] for name in wanted}


def still(directory: Path, task: Any) -> bool:
    """Whether ``task`` has stopped beating (for ``QUIET`` seconds)."""
    return time.time() - Path(directory, f"{task}.beat").stat().st_mtime > QUIET


def stop_beating(directory: Path, tasks: Iterable[Any], within: float) -> None:
    """Fail unless every one of ``tasks`` stops beating ``within`` seconds."""
    for task in tasks:
        eventually(lambda task=task: still(directory, task), f"stop of the task {task!r}", within + QUIET)
