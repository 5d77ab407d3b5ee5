"""Task functions the tests send to worker processes.

They live in an importable module (``tests._helpers``) so that ``spawn`` children,
which start a fresh interpreter, can find them by name.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

Point = collections.namedtuple("Point", "x y")


class CustomError(Exception):
    """An exception class of the tests' own, rebuilt by name in the caller."""


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class UnrebuildableError(Exception):
    """Pickles fine, but unpickling calls ``__init__`` with too few arguments; and so does
    ``__new__``, for picklers that skip ``__init__`` (tblib's, which importing
    ``distributed`` installs for every exception class then defined)."""

    def __new__(cls, message: str, code: int) -> UnrebuildableError:
        return super().__new__(cls, message, code)

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def square(x: Any) -> Any:
    return x * x


def add(a: Any, b: Any) -> Any:
    return a + b


def arguments(*args: Any) -> tuple[Any, ...]:
    """Returns the positional arguments it got, to show how a task was passed."""
    return args


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def pid_after_nap(task: Any, seconds: float = 0.05) -> int:
    """The worker's pid, after a nap long enough that every worker gets a task."""
    time.sleep(seconds)
    return os.getpid()


def record_call(directory: str, task: Any) -> Any:
    """Leaves one file per call in ``directory`` (works across processes); returns the task."""
    Path(directory, f"{task!r}-{os.getpid()}-{time.monotonic_ns()}").touch()
    return task


def nap_then_record(directory: str, task: Any, seconds: float) -> Any:
    """Naps, then leaves ``record_call``'s file: a file per task that ran to its end."""
    time.sleep(seconds)
    return record_call(directory, task)


def record_then_nap(directory: str, task: Any, seconds: float) -> Any:
    """Leaves ``record_call``'s file as it starts, then naps: a file per task that started."""
    record_call(directory, task)
    time.sleep(seconds)
    return task


def calls(directory: Any) -> collections.Counter:
    """How many times ``record_call`` ran each task (by repr)."""
    return collections.Counter(path.name.rsplit("-", 2)[0] for path in Path(directory).iterdir())


def fail_on_odd(n: int) -> int:
    if n % 2:
        raise ValueError(f"odd task {n}")
    return n


def raise_custom(message: str) -> None:
    raise CustomError(message)


def raise_unpicklable(message: str) -> None:
    raise UnpicklableError(message)


def raise_unrebuildable(message: str) -> None:
    raise UnrebuildableError(message, 7)


def raise_base(name: str) -> None:
    raise {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[name]()


def exit_on(bad: int, task: int) -> int:
    """Kills its own process with exit code 3 on task ``bad``."""
    if task == bad:
        os._exit(3)
    return task * 10


def sigkill_on(bad: int, task: int) -> int:
    """Kills its own process with SIGKILL on task ``bad``."""
    if task == bad:
        os.kill(os.getpid(), 9)
    return task * 10


def lock_on(bad: int, task: int) -> Any:
    """Returns an unpicklable value (a lock) on task ``bad``."""
    return threading.Lock() if task == bad else task * 10


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def make_error(message: str) -> ValueError:
    """Returns (does not raise) an exception."""
    return ValueError(message)


class BadStrError(Exception):
    """An exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of BadStrError failed")


def raise_bad_str(task: Any) -> None:
    raise BadStrError(task)


# --- nested parallelism: tasks that start process pools of their own ---

#: Pools that ``nested_pmap(keep_open=True)`` leaves open in a worker process, the
#: way a script that never calls ``shutdown()`` would.
_LEFT_OPEN: list[Any] = []


def _ezpool_children() -> list[int]:
    return sorted(p.pid for p in multiprocessing.active_children() if p.name == "ezpool-worker")


def nested_pmap(n: int, keep_open: bool = False) -> tuple[int, dict[int, int], list[int]]:
    """Runs ``square`` over ``range(n)`` with a pmap of its own, on two processes.

    Returns this process's pid, the inner results and the pids of the inner pool's
    processes. With ``keep_open`` the inner pool is never shut down.
    """
    from ezpool import Pool

    if not keep_open:
        with Pool(progress=False) as pool:
            values = dict(pool.pmap(square, range(n), ncpu=2))
            return os.getpid(), values, _ezpool_children()
    if not _LEFT_OPEN:
        _LEFT_OPEN.append(Pool(progress=False))
    values = dict(_LEFT_OPEN[0].pmap(square, range(n), ncpu=2))
    return os.getpid(), values, _ezpool_children()


def multiprocessing_pool_map(n: int) -> list[int]:
    """Runs ``square`` over ``range(n)`` with a ``multiprocessing.Pool`` of its own."""
    with multiprocessing.get_context().Pool(2) as pool:
        return pool.map(square, range(n))


def nested_then(directory: str, then: str) -> str:
    """Starts a pool of its own, notes its processes' pids in ``directory``, then:
    ``'return'``, ``'exit'`` (this process, code 3) or ``'hang'`` (in the inner pool).
    """
    from ezpool import Pool

    with Pool(progress=False) as pool:
        pool.pmap(square, range(2), ncpu=2)
        for pid in _ezpool_children():
            Path(directory, str(pid)).touch()
        if then == "exit":
            os._exit(3)
        if then == "hang":
            pool.pmap(nap, [600, 601], ncpu=2)
    return then


class CountsUnpickling:
    """Appends a line to ``path`` each time it is unpickled: counts how often code was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (_loaded, (self.path,))


def _loaded(path: str) -> CountsUnpickling:
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    return CountsUnpickling(path)


def chatty(task: Any, nap: float = 0.0) -> Any:
    """Prints to stdout and stderr and logs at info and warning level, naming the task.

    Task ``"bad"`` raises ``ValueError`` after all that; ``nap`` seconds pass first.
    """
    time.sleep(nap)
    print(f"out {task}")
    print(f"err {task}", file=sys.stderr)
    log = logging.getLogger("tests.chatty")
    log.info("told %s", task)
    log.warning("warned %s", task)
    if task == "bad":
        raise ValueError(f"bad task {task}")
    return task


def wait_for(path: str, value: Any = None, timeout: float = 60.0) -> Any:
    """Block until the file ``path`` exists (or ``timeout`` passes), then return ``value``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def pid(_: Any = None) -> int:
    """The id of the process that runs the task."""
    return os.getpid()


class Counted:
    """A task that counts how often it is pickled in this process (``Counted.reduced``)."""

    reduced = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        Counted.reduced += 1
        return Counted, (self.n,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counted) and other.n == self.n

    def __hash__(self) -> int:
        return hash(self.n)


def counted_n(task: Counted) -> int:
    return task.n


def megabyte_from(n: int) -> bytes:
    """1 MB of bytes, starting with ``n``."""
    return n.to_bytes(8, "little") + bytes((1 << 20) - 8)


def process_gone(pid: int) -> bool:
    """Whether a process has exited (a zombie not yet reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")
