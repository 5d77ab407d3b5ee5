"""Workers served by ``python -m ezpool.serve`` in the distributed tests (importable)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from ezpool import BaseWorker

NOT_A_WORKER = 42


class NotAWorkerClass:
    def run(self, x: Any) -> Any:
        return x


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Oops(Exception):
    """A custom exception class that the client can rebuild."""


class Square(BaseWorker):
    def run(self, x: Any) -> Any:
        return x * x


class Mirror(BaseWorker):
    """Returns what it gets, after checking it arrived as the type that was sent."""

    def run(self, value: Any) -> Any:
        if isinstance(value, str) and value == "boom":
            raise Oops("custom failure")
        return value


class Napper(BaseWorker):
    def run(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


class Killer(BaseWorker):
    """Kills its own process on task 'die'."""

    def run(self, task: Any) -> Any:
        if task == "die":
            os._exit(7)
        time.sleep(0.05)
        return task


class LateKiller(BaseWorker):
    """Kills its own process a second after it gets a task named ``die-...``; naps 10 ms
    on any other task and returns it."""

    def run(self, task: Any) -> Any:
        if str(task).startswith("die"):
            time.sleep(1.0)
            os._exit(7)
        time.sleep(0.01)
        return task


class Lifecycle(BaseWorker):
    """Writes its setup and teardown to the file named by EZPOOL_TEST_LIFECYCLE."""

    def setup(self) -> None:
        self.path = Path(os.environ["EZPOOL_TEST_LIFECYCLE"])
        with self.path.open("a") as f:
            f.write("setup\n")

    def run(self, x: Any) -> Any:
        return x + 1

    def teardown(self) -> None:
        with self.path.open("a") as f:
            f.write("teardown\n")


def double(x: Any) -> Any:
    return 2 * x


class Arange(BaseWorker):
    """Returns a numpy array (numpy is imported only where it is installed)."""

    def run(self, n: int) -> Any:
        import numpy

        return numpy.arange(n)


class LockMaker(BaseWorker):
    """Returns an unpicklable value for task 'lock'."""

    def run(self, task: Any) -> Any:
        import threading

        return threading.Lock() if task == "lock" else task


class Recorder(BaseWorker):
    """Leaves a file per task run in ``directory``, naps, and returns the task."""

    def run(self, directory: str, task: Any, seconds: float) -> Any:
        Path(directory, f"{task}-{time.monotonic_ns()}").touch()
        time.sleep(seconds)
        return task


class Raiser(BaseWorker):
    """Raises ``SystemExit`` or ``KeyboardInterrupt`` for those tasks; returns the others."""

    def run(self, task: Any) -> Any:
        if task == "exit":
            raise SystemExit(3)
        if task == "interrupt":
            raise KeyboardInterrupt
        return task


class SlowSquare(BaseWorker):
    """Squares, taking a few milliseconds: long runs of many chunks for the soak test."""

    def run(self, x: Any) -> Any:
        time.sleep(0.003)
        return x * x


class SquareNap(BaseWorker):
    """Squares after a nap of 0.05 s; says which process did it: ``(x * x, pid)``."""

    def run(self, x: Any) -> Any:
        time.sleep(0.05)
        return x * x, os.getpid()


#: Seconds a ``straggle`` task sleeps on a worker started with this variable set (else 0.01).
SLOW_VARIABLE = "EZPOOL_TEST_SLOW"


def straggle(task: Any) -> tuple[Any, int]:
    """Sleep (long on a worker marked slow), say which task ran, return ``(task, pid)``."""
    time.sleep(float(os.environ.get(SLOW_VARIABLE, "0.01")))
    print(f"ran {task}")
    return task, os.getpid()


def straggle_and_fail(task: Any) -> None:
    """Sleep as ``straggle`` does, then raise ``Oops`` naming the task and the process."""
    time.sleep(float(os.environ.get(SLOW_VARIABLE, "0.01")))
    raise Oops(f"task {task} failed in pid {os.getpid()}")


class Scaled(BaseWorker):
    """Takes a context: ``run(context, x)`` is ``context * x``; ``setup`` runs once."""

    def setup(self) -> None:
        self.setups = getattr(self, "setups", 0) + 1

    def run(self, context: Any, x: Any) -> Any:
        return (context * x, self.setups)
