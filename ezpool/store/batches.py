"""A batch row: the outcomes of one ``Sweep.record`` call, pickled as whole lists.

Recording costs one pickle of the tasks, one of the values and one row, whatever
the number of tasks, because nothing is done per task: no key, no row. The columns:

- ``tasks``: the pickle of the list of tasks;
- ``outcome``: the pickle of the list of values, where a failure is the plain tuple
  of its ``ExceptionRecord`` (so that it always loads, and keeps its traceback text
  when its class cannot be rebuilt);
- ``layout``: which of the two lists was pickled item by item instead (``TASKS_EACH``,
  ``VALUES_EACH``): then the column holds the pickle of a list of pickles. That is
  only done when the whole list cannot be pickled (an item needs cloudpickle, or
  cannot be stored) or is too large;
- ``elapsed``: ``array('d')`` bytes, one run time a task; or, with ``TIMES_GROUPED`` (run
  times as the workers measure tiny tasks, a ``GroupTimes``), the ``array('q')`` bytes of
  how many tasks each group holds, then the ``array('d')`` bytes of each one's run time:
  16 bytes a group instead of 8 a task;
- ``failed``: ``array('q')`` bytes, the offsets of the failures (empty when none).

A value that cannot be pickled, or whose pickle is over ``LARGEST_VALUE`` bytes, is
stored as a failure, ``ResultNotSerializable``. Values pickled one by one are split
over several rows when together they are over ``LARGEST_VALUE``, so that no column
passes SQLite's limit of 10**9 bytes.
"""

from __future__ import annotations

import pickle
import struct
from array import array
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple, Optional

import cloudpickle

from .._core.logs import get_logger
from .._core.records import ExceptionRecord, GroupTimes
from .._core.serialization import loads, rebuild, record_exception, short_repr
from ..errors import ResultNotSerializable
from .keys import task_key

logger = get_logger(__name__)

__all__ = [
    "Encoded", "encode", "load_tasks", "load_times", "Outcomes", "offsets", "TASKS_EACH", "VALUES_EACH",
    "TIMES_GROUPED",
]

#: The largest pickle stored in one column (SQLite's default limit is 10**9 bytes).
LARGEST_VALUE = 900_000_000

#: ``layout`` flags: the tasks, or the values, are a pickled list of pickles.
TASKS_EACH = 1
VALUES_EACH = 2
#: ``layout`` flag: the run times are kept by group (see the module docstring).
TIMES_GROUPED = 4

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class Encoded(NamedTuple):
    """The columns of one batch row that depend on its outcomes."""

    tasks: bytes
    outcome: bytes
    layout: int
    elapsed: bytes
    failed: bytes


def encode(
    tasks: Sequence[Any], values: list[Any], elapsed: Sequence[float], failed: Collection[int]
) -> list[Encoded]:
    """The rows that hold these outcomes: one, unless values pickled one by one are too large together.

    Raises ``TypeError`` naming a task that cannot be stored; never raises for a value.
    """
    stored, failures = _stored_values(values, failed)
    tasks_blob, layout = _tasks_blob(tasks)
    try:
        outcome = pickle.dumps(stored, _PROTOCOL)
    except Exception:
        outcome = b""
    if 0 < len(outcome) <= LARGEST_VALUE:
        if isinstance(elapsed, GroupTimes):
            grouped = array("q", elapsed.counts).tobytes() + array("d", elapsed.seconds).tobytes()
            return [Encoded(tasks_blob, outcome, layout | TIMES_GROUPED, grouped, _offsets_blob(failures))]
        return [Encoded(tasks_blob, outcome, layout, _times_blob(elapsed), _offsets_blob(failures))]
    times = _times_blob(elapsed)
    blobs = [_value_blob(tasks[offset], value, offset in failures) for offset, value in enumerate(stored)]
    failures |= {offset for offset, (_, failure) in enumerate(blobs) if failure}
    rows = []
    for first, stop in _parts([len(blob) for blob, _ in blobs]):
        if (first, stop) != (0, len(tasks)):
            tasks_blob, layout = _tasks_blob(tasks[first:stop])
        rows.append(
            Encoded(
                tasks_blob,
                pickle.dumps([blob for blob, _ in blobs[first:stop]], _PROTOCOL),
                layout | VALUES_EACH,
                times[8 * first : 8 * stop],
                _offsets_blob({offset - first for offset in failures if first <= offset < stop}),
            )
        )
    return rows


def _times_blob(elapsed: Sequence[float]) -> bytes:
    """The bytes of ``array("d", elapsed)``, one run time a task."""
    if isinstance(elapsed, GroupTimes):
        elapsed = elapsed.expand()
    if isinstance(elapsed, array) and elapsed.typecode == "d":
        return elapsed.tobytes()
    return struct.pack(f"@{len(elapsed)}d", *elapsed)  # three times faster than through an array


def load_tasks(blob: bytes, layout: int) -> Sequence[Any]:
    """The tasks of a row; raises when they cannot be loaded here."""
    tasks = loads(blob)
    return [loads(task) for task in tasks] if layout & TASKS_EACH else tasks


def load_times(blob: bytes, layout: int) -> array:
    """The run time of each task of a row, from its ``elapsed`` column."""
    times = array("d")
    if not layout & TIMES_GROUPED:
        times.frombytes(blob)
        return times
    if len(blob) % 16:
        raise ValueError(f"{len(blob)} bytes of run times by group")
    counts, seconds = array("q"), array("d")
    counts.frombytes(blob[: len(blob) // 2])
    seconds.frombytes(blob[len(blob) // 2 :])
    for count, took in zip(counts, seconds):
        if count < 0:
            raise ValueError(f"a group of {count} run times")
        times.extend(array("d", (took,)) * count)
    return times


def offsets(blob: bytes) -> array:
    """The offsets a ``failed`` column holds."""
    found = array("q")
    found.frombytes(blob)
    return found


class Outcomes:
    """The values of one row, loaded once; ``get`` raises for a value that cannot be loaded here."""

    def __init__(self, blob: bytes, layout: int) -> None:
        self._each = bool(layout & VALUES_EACH)
        self._error: Optional[Exception] = None
        try:
            self._values: list[Any] = loads(blob)
        except Exception as exc:
            self._values, self._error = [], exc

    def plain(self) -> Optional[list[Any]]:
        """The list of values as stored (failures as records), when it loaded as one list."""
        return None if self._each or self._error is not None else self._values

    def get(self, offset: int, failed: bool) -> Any:
        """The value at ``offset``, or the exception rebuilt when ``failed``."""
        if self._error is not None:
            raise self._error
        value = self._values[offset]
        if self._each:
            value = loads(value)
        return rebuild(ExceptionRecord(*value)) if failed else value

    def record(self, offset: int) -> ExceptionRecord:
        """The ``ExceptionRecord`` of the failure at ``offset`` (always loads)."""
        if self._error is not None:
            raise self._error
        value = self._values[offset]
        return ExceptionRecord(*(pickle.loads(value) if self._each else value))


def _stored_values(values: list[Any], failed: Collection[int]) -> tuple[list[Any], set[int]]:
    """``values`` with each failure replaced by its record, and the offsets of the failures."""
    count = len(values)
    failures = {at for at in failed if 0 <= at < count and isinstance(values[at], BaseException)}
    if not failures:
        return values, failures
    stored = list(values)
    for offset in failures:
        stored[offset] = tuple(record_exception(values[offset]))  # a plain tuple: it always loads
    return stored, failures


def _tasks_blob(tasks: Sequence[Any]) -> tuple[bytes, int]:
    try:
        return pickle.dumps(tasks, _PROTOCOL), 0
    except Exception:
        return pickle.dumps([_task_blob(task) for task in tasks], _PROTOCOL), TASKS_EACH


def _task_blob(task: Any) -> bytes:
    """The pickle of a task; cloudpickle when pickle refuses, or ``TypeError`` naming it."""
    try:
        return pickle.dumps(task, _PROTOCOL)
    except Exception:
        pass
    task_key(task)  # raises TypeError naming the task when it could never be found again
    try:
        return cloudpickle.dumps(task, _PROTOCOL)
    except Exception as exc:
        raise TypeError(f"task {short_repr(task)} cannot be stored: it cannot be pickled ({exc})") from None


def _value_blob(task: Any, value: Any, failed: bool) -> tuple[bytes, bool]:
    """The pickle of one value (cloudpickle when pickle refuses) and whether it is a failure.

    A value that cannot be pickled, or is too large, becomes a ``ResultNotSerializable``.
    """
    if failed:
        return pickle.dumps(value, _PROTOCOL), True
    try:
        blob = pickle.dumps(value, _PROTOCOL)
    except Exception:
        try:
            blob = cloudpickle.dumps(value, _PROTOCOL)
        except Exception as exc:
            error = ResultNotSerializable(
                f"the value of task {short_repr(task)}, {short_repr(value)}, cannot be stored: {exc}"
            )
            return pickle.dumps(tuple(record_exception(error)), _PROTOCOL), True
    if len(blob) > LARGEST_VALUE:
        error = ResultNotSerializable(
            f"the value of task {short_repr(task)}, {short_repr(value)}, is too large to store: "
            f"its pickle has {len(blob)} bytes"
        )
        return pickle.dumps(tuple(record_exception(error)), _PROTOCOL), True
    return blob, False


def _parts(sizes: list[int]) -> list[tuple[int, int]]:
    """Consecutive ``(first, stop)`` ranges whose sizes add up to at most ``LARGEST_VALUE`` (one at least)."""
    parts, first, total = [], 0, 0
    for offset, size in enumerate(sizes):
        if offset > first and total + size > LARGEST_VALUE:
            parts.append((first, offset))
            first, total = offset, 0
        total += size
    parts.append((first, len(sizes)))
    return parts


def _offsets_blob(failures: Collection[int]) -> bytes:
    return array("q", sorted(failures)).tobytes() if failures else b""
