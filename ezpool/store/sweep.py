"""``Sweep``: the stored outcomes of one function: found, recorded, forgotten, summarised.

An outcome is a row keyed by (sweep, task key). Its value is a pickle (cloudpickle
when pickle refuses); an exception is stored as the pickle of a plain tuple, the
fields of its ``ExceptionRecord``, so that it always loads and keeps its traceback
text even when its class cannot be rebuilt.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Optional

import cloudpickle

from ..backends.base import Batch
from ..errors import ResultNotSerializable, StoreError
from ..results import Results, ResultsBuilder
from ..serialization import ExceptionRecord, capture, loads, rebuild, short_repr
from .connection import Connection
from .keys import task_key

logger = logging.getLogger(__name__)

__all__ = ["Sweep", "StoredOutcome"]

#: Buffered outcomes are committed once this many seconds passed since the last commit...
COMMIT_SECONDS = 0.2
#: ...or once this many are buffered.
COMMIT_ROWS = 20_000

#: The largest pickle of a value stored (SQLite's default limit is 10**9 bytes a value).
LARGEST_VALUE = 900_000_000

#: Keys per ``IN (...)`` lookup: under SQLite's old limit of 999 parameters a statement.
LOOKUP_GROUP = 899

#: A lookup of at least this share of a sweep's rows reads them all instead: a row read
#: in order costs about a third of one found by its key.
SCAN_SHARE = 0.3

# An upsert, not INSERT OR REPLACE: the row keeps its rowid, so that ``results`` lists
# tasks in the order they were first recorded.
_UPSERT = """INSERT INTO outcomes (sweep, key, task, value, failed, elapsed, worker, recorded)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (sweep, key) DO UPDATE SET task = excluded.task, value = excluded.value,
        failed = excluded.failed, elapsed = excluded.elapsed, worker = excluded.worker,
        recorded = excluded.recorded"""

_FOUND = "SELECT key, value, failed, elapsed, worker FROM outcomes WHERE sweep = ?"

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class StoredOutcome(NamedTuple):
    """A task's stored outcome: its value (or exception), run time, where it ran, whether it failed."""

    value: Any
    elapsed: float
    worker: str
    failed: bool


class Sweep:
    """The stored outcomes of one function (and ``store_key``) in a ``Store``.

    Get one from ``Store.sweep`` (which checks the function's identity) or
    ``Store.find`` (which does not).
    """

    def __init__(self, connection: Connection, sweep_id: int, name: str, store_key: Optional[str]) -> None:
        self.name = name
        self.store_key = store_key
        self._connection = connection
        self._id = sweep_id
        self._rows: list[tuple[Any, ...]] = []
        self._last_commit = time.monotonic()

    @property
    def label(self) -> str:
        """``name``, or ``name[store_key]``: how ``open_store`` and the command line name it."""
        return label(self.name, self.store_key)

    def __repr__(self) -> str:
        return f"Sweep({self.label!r} in {self._connection.path!r})"

    def lookup(self, tasks: Sequence[Any]) -> dict[int, StoredOutcome]:
        """The stored outcomes of ``tasks``, by position in ``tasks``; tasks not found are left out.

        A task that holds a NaN is never found. Neither is one whose stored value cannot
        be unpickled here, so that it runs again. Raises ``TypeError`` naming a task
        that cannot be stored (see ``ezpool.store.keys``).
        """
        wanted: dict[bytes, int] = {}
        again: dict[bytes, list[int]] = {}  # the later positions of tasks given twice
        for position, task in enumerate(tasks):
            key, findable = task_key(task)
            if findable and wanted.setdefault(key, position) != position:
                again.setdefault(key, []).append(position)
        self.flush()
        found: dict[int, StoredOutcome] = {}
        with self._connection.transaction(write=False) as db:
            (stored,) = db.execute("SELECT count(*) FROM outcomes WHERE sweep = ?", (self._id,)).fetchone()
            if len(wanted) >= SCAN_SHARE * stored:
                groups: Iterable[Any] = [db.execute(_FOUND, (self._id,))]
            else:
                keys = list(wanted)
                groups = (
                    db.execute(_FOUND + f" AND key IN ({','.join('?' * len(group))})", (self._id, *group))
                    for group in _groups(keys, LOOKUP_GROUP)
                )
            for rows in groups:
                for key, blob, failed, elapsed, worker in rows:
                    at = wanted.get(key)
                    if at is None:
                        continue
                    try:
                        value = _load_failure(blob) if failed else loads(blob)
                    except Exception as exc:
                        logger.debug("%s: a stored value cannot be loaded (%s); it runs again", self, exc)
                        continue
                    found[at] = outcome = StoredOutcome(value, elapsed, worker, failed == 1)
                    if again:
                        for other in again.get(key, ()):
                            found[other] = outcome
        return found

    def record(
        self,
        tasks: Sequence[Any],
        start: int,
        values: list[Any],
        elapsed: Sequence[float],
        failed: Collection[int],
        worker: str,
    ) -> None:
        """Record the outcomes of ``tasks[start + i]`` for each ``i`` in ``range(len(values))``.

        ``failed`` holds the offsets ``i`` whose value is an exception; an exception is
        stored with its traceback text. A value that cannot be pickled is stored as a
        failure, ``ResultNotSerializable``, instead: this never raises for a value.
        Outcomes are buffered, and committed once 0.2 s passed since the last commit
        or 20 000 are buffered, and by ``flush`` and ``Store.close``. Recording a task
        again replaces its outcome (it keeps its place in ``results``).
        """
        self._connection.check_writable()
        now, sweep, dumps = time.time(), self._id, pickle.dumps
        rows = []
        for offset, value in enumerate(values):
            task = tasks[start + offset]
            key = task_key(task)[0]
            try:
                task_blob = dumps(task, _PROTOCOL)
            except Exception:
                task_blob = _task_blob(task)
            if offset in failed and isinstance(value, BaseException):
                blob, is_failure = _record_blob(value), True
            else:
                try:
                    blob, is_failure = dumps(value, _PROTOCOL), False
                except Exception:
                    blob, is_failure = _value_blob(task, value)
                if len(blob) > LARGEST_VALUE:
                    blob, is_failure = _too_large(task, value, len(blob)), True
            rows.append((sweep, key, task_blob, blob, is_failure, float(elapsed[offset]), worker, now))
        with self._connection.lock:
            self._rows += rows
            due = time.monotonic() - self._last_commit >= COMMIT_SECONDS
            if due or len(self._rows) >= COMMIT_ROWS:
                self.flush()

    def flush(self) -> None:
        """Commit the buffered outcomes now."""
        with self._connection.lock:
            rows, self._rows = self._rows, []
            self._last_commit = time.monotonic()
            if not rows:
                return
            try:
                self._connection.write(_UPSERT, rows)
            except BaseException:
                self._rows = rows + self._rows  # kept for the next try
                raise

    def forget_failed(self) -> int:
        """Delete the stored failures, so that those tasks run again; how many there were."""
        self.flush()
        return self._connection.write("DELETE FROM outcomes WHERE sweep = ? AND failed = 1", [(self._id,)])

    def results(self) -> Results:
        """Everything stored, as ``Results`` in the order first recorded.

        ``wall_time`` is the recorded span: from the start of the first task to the
        end of the last. A stored value that cannot be unpickled here becomes a
        ``StoreError`` in its task's slot; a task that cannot be is left out (logged).
        """
        self.flush()
        rows = self._connection.read(
            "SELECT task, value, failed, elapsed, worker, recorded FROM outcomes "
            "WHERE sweep = ? ORDER BY rowid",
            (self._id,),
        )
        tasks: list[Any] = []
        values: list[Any] = []
        times: list[float] = []
        runs: list[tuple[int, str, set[int]]] = []  # (start, worker, failed offsets) of each run of rows
        seen: set[Any] = set()
        began, ended = float("inf"), float("-inf")
        for task_blob, blob, failed, elapsed, worker, recorded in rows:
            try:
                task = loads(task_blob)
                hash(task)
            except Exception as exc:
                logger.warning("%s: a stored task cannot be loaded, left out: %s", self, exc)
                continue
            if task in seen:  # equal to a task stored under another key (see keys)
                continue
            seen.add(task)
            try:
                value = _load_value(blob, failed)
            except Exception as exc:
                value = StoreError(f"the stored value of task {short_repr(task)} cannot be loaded: {exc}")
                failed = True
            if not runs or runs[-1][1] != worker:
                runs.append((len(tasks), worker, set()))
            if failed:
                runs[-1][2].add(len(tasks) - runs[-1][0])
            tasks.append(task)
            values.append(value)
            times.append(elapsed)
            began, ended = min(began, recorded - elapsed), max(ended, recorded)
        builder = ResultsBuilder(tasks)
        stops = [start for start, _, _ in runs[1:]] + [len(tasks)]
        for (start, worker, offsets), stop in zip(runs, stops):
            builder.add(Batch(start, values[start:stop], times[start:stop], offsets, worker))
        return builder.finish(ended - began if tasks else 0.0)

    def summary(self, slowest: int = 5) -> str:
        """Several lines: the sweep's name, its counts, total task time, wall span, slowest tasks."""
        self.flush()
        ((created,),) = self._connection.read("SELECT created FROM sweeps WHERE id = ?", (self._id,))
        ((done, failed, busy, began, ended),) = self._connection.read(
            """SELECT count(*), coalesce(sum(failed), 0), coalesce(sum(elapsed), 0.0),
            min(recorded - elapsed), max(recorded) FROM outcomes WHERE sweep = ?""",
            (self._id,),
        )
        lines = [
            f"sweep {self.label} (created {_when(created)})",
            f"  {done} tasks done, {failed} failed",
            f"  task time {busy:.3f} s in all (mean {busy / done if done else 0.0:.6f} s)",
        ]
        if done:
            lines.append(f"  wall span {_when(began)} .. {_when(ended)} ({ended - began:.3f} s)")
        slow = self._connection.read(
            "SELECT task, value, failed, elapsed, worker FROM outcomes WHERE sweep = ? "
            "ORDER BY elapsed DESC LIMIT ?",
            (self._id, slowest),
        )
        if slow:
            lines.append(f"  {len(slow)} slowest tasks:")
        for task_blob, blob, is_failure, elapsed, worker in slow:
            try:
                task = short_repr(loads(task_blob), 60)
            except Exception as exc:
                task = f"<a task that cannot be loaded: {short_repr(exc, 40)}>"
            note = f"  failed: {pickle.loads(blob)[1]}" if is_failure else ""
            lines.append(f"    {elapsed:10.3f} s  {task}  on {worker}{note}")
        return "\n".join(lines)


def label(name: str, store_key: Optional[str]) -> str:
    """How a sweep is named to people: ``name``, or ``name[store_key]``."""
    return f"{name}[{store_key}]" if store_key else name


def _groups(keys: list[bytes], size: int) -> Iterator[list[bytes]]:
    for first in range(0, len(keys), size):
        yield keys[first : first + size]


def _task_blob(task: Any) -> bytes:
    """The cloudpickle of a task plain pickle refused, or ``TypeError`` naming it."""
    try:
        return cloudpickle.dumps(task, _PROTOCOL)
    except Exception as exc:
        raise TypeError(f"task {short_repr(task)} cannot be stored: it cannot be pickled ({exc})") from None


def _value_blob(task: Any, value: Any) -> tuple[bytes, bool]:
    """The cloudpickle of a value plain pickle refused or, failing that, a failure in its place."""
    try:
        return cloudpickle.dumps(value, _PROTOCOL), False
    except Exception as exc:
        error = ResultNotSerializable(
            f"the value of task {short_repr(task)}, {short_repr(value)}, cannot be stored: {exc}"
        )
        return _record_blob(error), True


def _too_large(task: Any, value: Any, size: int) -> bytes:
    error = ResultNotSerializable(
        f"the value of task {short_repr(task)}, {short_repr(value)}, is too large to store: "
        f"its pickle has {size} bytes"
    )
    return _record_blob(error)


def _record_blob(exc: BaseException) -> bytes:
    return pickle.dumps(tuple(capture(exc)), _PROTOCOL)  # a plain tuple: it always loads


def _load_value(blob: bytes, failed: int) -> Any:
    return _load_failure(blob) if failed else loads(blob)


def _load_failure(blob: bytes) -> BaseException:
    return rebuild(ExceptionRecord(*pickle.loads(blob)))


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
