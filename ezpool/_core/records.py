"""The records every side of EzPool shares: outcomes, their times, and the messages
between the calling process and its workers, as named types.

A leaf: it imports nothing of EzPool's, so that the calling side, the worker side
and every backend can use these without importing each other. How they travel::

    calling process                                      worker process
    ───────────────                                      ──────────────
    parallel:    ChunkRequest (pickled, over a pipe) ──▶ run_chunk ─▶ ChunkOutcome
    distributed: ChunkCall (marshal, over Pyro4)    ──▶
    Batch ◀── decoded here ◀── ChunkReply (pickled) ◀── (the outcome, packed)
                                   with a Status (distributed)

A *mark* (``group_mark``) is the one number a worker shares with its caller while it
runs: which task, or group of tiny tasks, runs now.
"""

from __future__ import annotations

import enum
import pickle
from array import array
from collections.abc import Iterator, Sequence
from operator import mul
from typing import Any, NamedTuple, Optional, Union, overload

__all__ = [
    "Batch",
    "ChunkCall",
    "ChunkOutcome",
    "ChunkReply",
    "ChunkRequest",
    "ExceptionRecord",
    "GroupTimes",
    "Status",
    "TaskOutput",
    "group_mark",
    "read_mark",
    "run_time",
]

#: What one task wrote, in order: ``("stdout", text)``, ``("stderr", text)`` and
#: ``("log", fields)``, where ``fields`` are the ``LogRecord`` attributes that travel
#: (``ezpool._worker.output``).
TaskOutput = list[tuple[str, Any]]


class ExceptionRecord(NamedTuple):
    """An exception as it travels: its pickle (if it had one) and its text."""

    blob: Optional[bytes]
    type_name: str
    message: str
    traceback_text: str


class Batch:
    """The outcomes of tasks ``start .. start + len(values) - 1`` of one call.

    Attributes:
        start: position of the first task in the call's list of distinct tasks.
        values: one per task: its value or, where it failed, the exception.
        elapsed: one per task: its run time in seconds, measured where it ran (a list,
            an ``array('d')`` or a ``GroupTimes``).
        failed: offsets (from ``start``) of the tasks whose value is an exception.
        worker: where these tasks ran.
        outputs: what tasks printed and logged, by offset, when the call asked for it
            (``capture_output``); ``None`` otherwise.
        stored: whether these outcomes come from a store rather than from running.
        origin: when the first task started, on the clock of the process that ran it
            (``time.perf_counter``), where known; the timeline corrects it to the
            caller's clock (``ezpool._core.recording``).
        attempt: which run of its tasks this is (2: the second, after a worker died).
        tries: how many times its tasks ran for ``retries`` (1: never run again).
    """

    __slots__ = ("start", "values", "elapsed", "failed", "worker", "outputs", "stored", "origin", "attempt",
                 "tries")

    def __init__(
        self,
        start: int,
        values: list[Any],
        elapsed: Sequence[float],
        failed: Union[frozenset[int], set[int]],
        worker: str,
        outputs: Optional[dict[int, TaskOutput]] = None,
    ) -> None:
        self.start = start
        self.values = values
        self.elapsed = elapsed
        self.failed = failed
        self.worker = worker
        self.outputs = outputs
        self.stored = False
        self.origin: Optional[float] = None
        self.attempt = 1
        self.tries = 1

    def __repr__(self) -> str:
        return (
            f"Batch(start={self.start}, tasks={len(self.values)}, "
            f"failed={len(self.failed)}, worker={self.worker!r})"
        )


class GroupTimes(Sequence[float]):
    """Run times of a chunk's tasks, kept one entry per *group* (see ``run_chunk``).

    The tasks of a group share its time equally, so a group is stored as how many
    tasks it held and the time of each; a reply then carries 16 bytes a group
    rather than 8 a task (for a million ``x*x`` that is a few KB against 8 MB through
    the pipe). Read as a sequence it gives one time per task, like ``array('d')``.
    ``origin`` is when the first task started, on the running process's
    ``time.perf_counter`` (the tasks ran back to back from there).
    """

    __slots__ = ("counts", "seconds", "origin", "_flat")

    def __init__(
        self, counts: Optional[array[int]] = None, seconds: Optional[array[float]] = None,
        origin: Optional[float] = None,
    ) -> None:
        self.counts = counts if counts is not None else array("q")
        self.seconds = seconds if seconds is not None else array("d")
        self.origin = origin
        self._flat: Optional[array[float]] = None

    def add(self, count: int, seconds: float) -> None:
        """``count`` more tasks, each of which took ``seconds``."""
        self.counts.append(count)
        self.seconds.append(seconds)
        self._flat = None

    def expand(self) -> array[float]:
        """One time per task, as an ``array('d')``."""
        if self._flat is None:
            flat = array("d")
            for count, seconds in zip(self.counts, self.seconds):
                flat.extend(array("d", (seconds,)) * count)
            self._flat = flat
        return self._flat

    def total(self) -> float:
        """The run time of all the tasks together, without expanding them."""
        return sum(map(mul, self.counts, self.seconds))

    def __len__(self) -> int:
        return sum(self.counts)

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> array[float]: ...
    def __getitem__(self, index: Union[int, slice]) -> Union[float, array[float]]:
        return self.expand()[index]

    def __iter__(self) -> Iterator[float]:
        return iter(self.expand())

    def __eq__(self, other: object) -> bool:
        return self.expand() == (other.expand() if isinstance(other, GroupTimes) else other)

    def __reduce__(self) -> tuple[Any, ...]:
        return GroupTimes, (self.counts, self.seconds, self.origin)

    def __repr__(self) -> str:
        return f"GroupTimes({len(self.counts)} groups, {len(self)} tasks)"


Times = Union["array[float]", GroupTimes]


def run_time(times: Sequence[float]) -> float:
    """The run time of a batch's tasks together (a ``GroupTimes`` is not expanded for it)."""
    return times.total() if isinstance(times, GroupTimes) else sum(times)


class ChunkOutcome(NamedTuple):
    """What running a chunk came to, filled while it runs: the values (``None`` where a
    task failed), their run times, and the failures by offset in the chunk."""

    values: list[Any]
    times: Times
    failures: dict[int, ExceptionRecord]


class ChunkRequest(NamedTuple):
    """A chunk for a parallel worker process (pickled; see ``ezpool._backends.parallel``).

    Attributes:
        fid: the content id of the function to run (``ezpool._core.parcels``).
        parcel: the function's parcel, when the process may not hold it yet.
        first: the position of the chunk's first task in the call.
        stop: the position after its last task.
        exact: whether every task is marked as it starts, not only each group.
        pieces: the pickles of its tasks, or ``None`` for each that follows as a
            message of its own.
        level: ``None``, or the lowest log level to keep with what tasks print.
    """

    fid: str
    parcel: Any
    first: int
    stop: int
    exact: bool
    pieces: list[Any]
    level: Optional[int]


class ChunkCall(NamedTuple):
    """A chunk for a distributed worker: the arguments of its ``run_chunk``, sent as a
    plain list (Pyro4's ``marshal`` carries only bytes, numbers and strings).

    Attributes:
        identity: the identity the client checked (``hello``); another process
            answers ``Status.WRONG_WORKER``.
        fid: the content id of the code to run (``ezpool._core.shipping``).
        first: the position of the chunk's first task in the call.
        size: how many tasks it holds.
        payloads: the pickles of its tasks.
        timeout: seconds a task may run there (``None``: no limit).
        level: ``None``, or the lowest log level to keep with what tasks print
            (sent only when set, so that a call without it is one any worker knows).
        limits: ``None``, or ``[max_tasks_per_worker, max_memory]`` (0: none), the
            call's limits on the worker's process (sent only when set, like ``level``).
    """

    identity: str
    fid: str
    first: int
    size: int
    payloads: list[bytes]
    timeout: Optional[float]
    level: Optional[int] = None
    limits: Optional[list[int]] = None

    def wire(self) -> list[Any]:
        """The arguments as they travel."""
        if self.limits is not None:
            return list(self)
        return list(self[:-1]) if self.level is not None else list(self[:-2])


class Status(str, enum.Enum):
    """How a distributed worker answered a call (it travels as its text)."""

    OK = "ok"  # the reply is what was asked (an outcome, or a refusal it describes)
    ERROR = "error"  # ``load`` could not load the code: the reply is an ExceptionRecord
    WRONG_WORKER = "wrong-worker"  # not the process the client checked: nothing ran
    NEED_FUNCTION = "need-function"  # the code is not loaded there: nothing ran
    RESTARTING = "restarting"  # it restarts to stop a task past its timeout: nothing ran
    GONE = "gone"  # no answer: the worker hangs up (its client left, or a test's fault)
    LEAVING = "leaving"  # it leaves its pool (told to, or its job ends soon): nothing ran


class ChunkReply(NamedTuple):
    """A chunk's outcome as the calling process reads it: its first position, the values
    (exceptions rebuilt by the caller from ``failures``), the run times, the failures by
    offset, and what the tasks wrote by offset (``None``: nothing, or not captured).

    It travels as a plain tuple, with ``outputs`` only when there are some.
    """

    first: int
    values: list[Any]
    times: Times
    failures: dict[int, ExceptionRecord]
    outputs: Optional[dict[int, TaskOutput]]

    @classmethod
    def decode(cls, reply: Union[bytes, bytearray, memoryview]) -> ChunkReply:
        """Unpickle a reply (raises whatever unpickling raises). Run times kept per group
        stay a ``GroupTimes``: they are expanded only where they are read one by one."""
        decoded = pickle.loads(reply)
        outputs = decoded[4] if len(decoded) == 5 else None
        return cls(decoded[0], decoded[1], decoded[2], decoded[3], outputs)


#: A mark holds a position in its low bits and, above these, how many more tasks
#: its group holds (see ``group_mark``).
_SPAN_SHIFT = 48
_POSITION_BITS = (1 << _SPAN_SHIFT) - 1


def group_mark(position: int, count: int) -> int:
    """A mark saying that tasks ``position .. position + count - 1`` run now."""
    return position | (count - 1) << _SPAN_SHIFT


def read_mark(mark: int) -> tuple[int, int]:
    """What a mark says: the position of the first task running, and how many run
    with it as one group (``(-1, 0)``: none)."""
    if mark < 0:
        return -1, 0
    return mark & _POSITION_BITS, (mark >> _SPAN_SHIFT) + 1
