"""``Index``: where the latest outcome of each task of a sweep is, built in memory from its rows.

Every task outcome read from the ``batches`` rows gets an *entry number*: entries
are numbered in row id order, so that a row's entries are ``first .. first + n - 1``.
The index maps each task key (``keys.task_key``) to the entry of its latest outcome:
a later row wins, and the dict keeps the order in which each key was first seen,
which is the order ``results`` lists tasks in. A ``forgotten`` row removes keys whose
latest entry is in a row up to its ``upto`` id.

Rows whose tasks are a ``range`` (what a ``map`` over a range records) are not keyed
while every row read is one: a range of tasks is then found by arithmetic (``spans``),
with no key at all, and ``forgotten`` rows are applied to the few failures only (their
entries become *dead*: found no more, never replaced by an older outcome). The first
row of other tasks, or read that needs every key (``results``, counts), keys them,
once, and from then on every row is keyed.

The index remembers the last row and the last ``forgotten`` row it read, so that
``refresh`` reads only what was written since, by this process or any other.

Nothing is unpickled before its MAC is checked (see ``signing``): a row whose tasks
do not verify is left out (logged as a warning), and so are values that do not
verify (their tasks run again).
"""

from __future__ import annotations

import bisect
import pickle
import sqlite3
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from .._core.logs import get_logger
from .batches import Outcomes, load_tasks, load_times, offsets
from .keys import task_key, task_keys
from .signing import MAC_SIZE, Forged, Signer, verify
from .spans import Segment, as_range, segments

logger = get_logger(__name__)

__all__ = ["Index"]

_NEW_BATCHES = """SELECT id, tasks, layout, elapsed, failed, worker, recorded, mac FROM batches
    WHERE sweep = ? AND id > ? ORDER BY id"""
_NEW_FORGOTTEN = "SELECT id, upto, keys, mac FROM forgotten WHERE sweep = ? AND id > ? ORDER BY id"

#: The columns ``Index.load`` takes, in its order.
ROW_COLUMNS = "id, tasks, outcome, layout, elapsed, failed, worker, recorded, mac"


#: Rows per ``IN (...)`` read of the values a lookup found: under SQLite's old limit of
#: 999 parameters a statement.
LOOKUP_GROUP = 899

#: A lookup that needs the values of at least this share of a sweep's rows reads them
#: all, in order, instead of by id.
SCAN_SHARE = 0.3

_ALL_OUTCOMES = "SELECT id, outcome, layout, mac FROM batches WHERE sweep = ? AND id <= ? ORDER BY id"

#: In place of a value that cannot be loaded.
MISSING = object()


class Index:
    """The latest outcome of each task stored in one sweep: its row, offset, run time and state."""

    def __init__(self, sweep_id: int, where: str, signer: Signer) -> None:
        self.sweep_id = sweep_id
        self.where = where  # for log messages
        self.signer = signer
        #: task key -> entry number of its latest outcome, in the order first seen; once ``keyed``.
        self.latest: dict[bytes, int] = {}
        #: Whether ``latest`` holds the rows read (else every row read holds a range of tasks).
        self.keyed = False
        #: (first entry, tasks) of each row read whose tasks are a range, oldest first.
        self.spans: list[tuple[int, range]] = []
        #: The offsets of the failures of each row read.
        self.row_failed: list[array] = []
        #: Entries forgotten before ``keyed``, and (``upto``, entries) of each forgetting, in order.
        self.dead: set[int] = set()
        self.dead_marks: list[tuple[int, list[int]]] = []
        #: Entry numbers of failures.
        self.failed: set[int] = set()
        #: Run time of each entry, and the row it is in.
        self.elapsed = array("d")
        self.row_of = array("I")
        #: Per row read (rows whose tasks cannot be loaded are left out): id, first entry,
        #: worker, time recorded.
        self.ids: list[int] = []
        self.firsts: list[int] = []
        self.workers: list[str] = []
        self.recorded: list[float] = []
        #: The checked MAC of each row's tasks, which its values' MAC must name.
        self.macs: list[bytes] = []
        #: The ids of the last ``batches`` and ``forgotten`` rows read.
        self.last_batch = 0
        self.last_forgotten = 0

    def refresh(self, db: sqlite3.Connection) -> None:
        """Read the rows written since the last refresh (call it inside a transaction)."""
        forgotten = db.execute(_NEW_FORGOTTEN, (self.sweep_id, self.last_forgotten)).fetchall()
        pending = 0  # forgotten rows are applied once the index holds every batch up to their upto
        for batch_id, *row in db.execute(_NEW_BATCHES, (self.sweep_id, self.last_batch)):
            while pending < len(forgotten) and forgotten[pending][1] < batch_id:
                self._forget_row(*forgotten[pending])
                pending += 1
            self._add(batch_id, *row)
        for marker in forgotten[pending:]:
            self._forget_row(*marker)

    def by_key(self) -> dict[bytes, int]:
        """``latest``, once the rows of ranges read so far are keyed too."""
        if self.keyed:
            return self.latest
        self.keyed = True
        latest, marks = self.latest, list(reversed(self.dead_marks))
        key_of: dict[int, bytes] = {}  # the key of each dead entry
        for row, (first, tasks) in enumerate(self.spans):
            while marks and marks[-1][0] < self.ids[row]:  # forgotten before this row was written
                _drop(latest, key_of, marks.pop()[1])
            keys = task_keys(tasks)[0]
            latest.update(zip(keys, range(first, first + len(tasks))))
            key_of.update((entry, keys[entry - first]) for entry in self.dead
                          if first <= entry < first + len(keys))
        while marks:
            _drop(latest, key_of, marks.pop()[1])
        return latest

    def segments(self, tasks: Any) -> Optional[list[Segment]]:
        """Where a range of tasks is stored, by arithmetic (see ``spans``); ``None`` when it
        cannot be told so (other tasks, or rows of other tasks) and keys are needed."""
        if self.keyed:
            return None
        wanted = as_range(tasks)
        found = None if wanted is None else segments(wanted, self.spans)
        return found if found is None or not self.dead else _alive(found, self.dead)

    def stop_of(self, row: int) -> int:
        """The entry after the last of row ``row``."""
        return self.firsts[row + 1] if row + 1 < len(self.firsts) else len(self.elapsed)

    def locate(self, entry: int) -> tuple[int, int]:
        """The row number (in ``ids``) and offset of an entry."""
        row = self.row_of[entry]
        return row, entry - self.firsts[row]

    def failing(self) -> list[bytes]:
        """The keys whose latest outcome is a failure."""
        failed = self.failed
        if not self.keyed:
            alive = sorted(failed - self.dead)
            return [task_key(self._task(entry))[0] for entry in alive if self._is_latest(entry)]
        return [key for key, entry in self.latest.items() if entry in failed] if failed else []

    def _task(self, entry: int) -> int:
        """The task of an entry, before ``keyed`` (every row then holds a range)."""
        first, tasks = self.spans[self.row_of[entry]]
        return tasks[entry - first]

    def _is_latest(self, entry: int) -> bool:
        """Whether ``entry`` holds the latest outcome of its task, before ``keyed``."""
        task = self._task(entry)
        for first, tasks in reversed(self.spans):
            if task in tasks:
                return first + tasks.index(task) == entry
        return False  # pragma: no cover - its own row holds it

    def forget(self, keys: Iterable[bytes], upto: int) -> int:
        """Remove the keys whose latest outcome is in a row up to id ``upto``; how many."""
        if not self.keyed:  # only failures are ever forgotten: find them among those
            wanted, ids = set(keys), self.ids
            gone = [entry for entry in sorted(self.failed - self.dead) if ids[self.row_of[entry]] <= upto
                    and self._is_latest(entry) and task_key(self._task(entry))[0] in wanted]
            self.dead.update(gone)
            self.dead_marks.append((upto, gone))
            return len(gone)
        latest, removed = self.latest, 0
        for key in keys:
            entry = latest.get(key)
            if entry is not None and self.ids[self.locate(entry)[0]] <= upto:
                del latest[key]
                removed += 1
        return removed

    def values(self, db: sqlite3.Connection, rows: set[int]) -> tuple[list[Any], bool]:
        """The value (or rebuilt exception) of every entry in ``rows``, by entry; ``MISSING`` elsewhere.

        Also whether all of them could be loaded. Reads the rows' values by id, or, when
        they are many, all the sweep's rows in order.
        """
        complete = True
        values: list[Any] = [MISSING] * len(self.elapsed)
        for row, blob, layout, mac in self.rows_read(db, rows):
            complete = self._load_row(row, blob, layout, mac, values) and complete
        return values, complete

    def load(self, columns: tuple[Any, ...]) -> tuple[Sequence[Any], Outcomes]:
        """The tasks and values of a row read as ``ROW_COLUMNS``, once both are checked.

        Raises ``Forged`` when they do not verify, before anything is unpickled, and
        whatever unpickling raises for tasks that cannot be loaded here.
        """
        batch_id, tasks, outcome, layout, elapsed, failed, worker, recorded, mac = columns
        tasks_mac = self._checked_tasks(batch_id, tasks, layout, elapsed, failed, worker, recorded, mac)
        return load_tasks(tasks, layout), self._checked_outcomes(batch_id, tasks_mac, outcome, layout, mac)

    def _checked_tasks(
        self, batch_id: int, tasks: bytes, layout: int, elapsed: bytes, failed: bytes, worker: str,
        recorded: float, mac: bytes,
    ) -> bytes:
        """The MAC of a row's tasks, once it is checked; ``Forged`` if it does not verify."""
        expected = self.signer.tasks(self.sweep_id, tasks, layout, elapsed, failed, worker, recorded)
        verify(mac[:MAC_SIZE] if isinstance(mac, bytes) else None, expected, f"stored batch {batch_id}")
        return expected

    def _checked_outcomes(
        self, batch_id: int, tasks_mac: bytes, blob: bytes, layout: int, mac: bytes
    ) -> Outcomes:
        """The values of a row whose tasks' MAC is ``tasks_mac``, once checked; ``Forged``
        if they do not verify."""
        what = f"the values of stored batch {batch_id}"
        if not isinstance(mac, bytes):
            mac = b""
        verify(mac[:MAC_SIZE], tasks_mac, what)
        verify(mac[MAC_SIZE:], self.signer.outcome(tasks_mac, layout, blob), what)
        return Outcomes(blob, layout)

    def _load_row(self, row: int, blob: bytes, layout: int, mac: bytes, values: list[Any]) -> bool:
        """Put the values of one row into ``values`` at their entries; false if one cannot be loaded."""
        first = self.firsts[row]
        loaded, values[first : self.stop_of(row)] = self.row_values(row, blob, layout, mac)
        return loaded

    def row_values(self, row: int, blob: bytes, layout: int, mac: bytes) -> tuple[bool, list[Any]]:
        """Whether every value of row ``row`` (read as ``blob``, ``layout``, ``mac``) loads, and its
        values: each failure rebuilt, ``MISSING`` for one that cannot be loaded (or for every
        one when the row does not verify)."""
        count = self.stop_of(row) - self.firsts[row]
        try:
            outcomes = self._checked_outcomes(self.ids[row], self.macs[row], blob, layout, mac)
        except Forged as exc:
            logger.warning("%s: %s; its tasks run again", self.where, exc)
            return False, [MISSING] * count
        plain, failed = outcomes.plain(), self.row_failed[row]
        todo: Iterable[int] = range(count)
        if plain is not None and len(plain) == count:
            if not failed:
                return True, plain
            values, todo = list(plain), failed
        else:
            values = [MISSING] * count
        loaded = True
        failures = set(failed)
        for offset in todo:
            try:
                values[offset] = outcomes.get(offset, offset in failures)
            except Exception as exc:
                logger.debug("%s: a stored value cannot be loaded (%s); it runs again", self.where, exc)
                values[offset], loaded = MISSING, False
        return loaded, values

    def rows_read(self, db: sqlite3.Connection, rows: set[int]) -> Iterable[tuple[int, bytes, int, bytes]]:
        """``(row, outcome, layout, mac)`` of each of ``rows``: read by id, or, when they are many,
        all the sweep's rows read in order."""
        if len(rows) >= SCAN_SHARE * len(self.ids):
            found = {batch_id: row for row, batch_id in enumerate(self.ids)}
            for batch_id, blob, layout, mac in db.execute(_ALL_OUTCOMES, (self.sweep_id, self.last_batch)):
                row = found.get(batch_id)
                if row in rows:
                    yield row, blob, layout, mac
            return
        ids = [self.ids[row] for row in rows]
        found = {self.ids[row]: row for row in rows}
        for first in range(0, len(ids), LOOKUP_GROUP):
            group = ids[first : first + LOOKUP_GROUP]
            query = f"SELECT id, outcome, layout, mac FROM batches WHERE id IN ({','.join('?' * len(group))})"
            for batch_id, blob, layout, mac in db.execute(query, group):
                yield found[batch_id], blob, layout, mac

    def _add(
        self,
        batch_id: int,
        blob: bytes,
        layout: int,
        elapsed: bytes,
        failed: bytes,
        worker: str,
        recorded: float,
        mac: bytes,
    ) -> None:
        self.last_batch = batch_id
        try:
            tasks_mac = self._checked_tasks(batch_id, blob, layout, elapsed, failed, worker, recorded, mac)
        except Forged as exc:
            logger.warning("%s: %s; left out, never loaded", self.where, exc)
            return
        try:
            tasks = load_tasks(blob, layout)
            span = None if self.keyed else as_range(tasks)
            if span is None:
                self.by_key()  # rows of other tasks: every row is keyed from now on
            keys, complete = _keys(tasks, self.where) if self.keyed else ((), True)
            times = load_times(elapsed, layout)
            if len(times) != len(tasks):
                raise ValueError(f"{len(tasks)} tasks but {len(times)} run times")
            failures = offsets(failed)
        except Exception as exc:
            logger.warning("%s: the tasks of a stored batch cannot be loaded, left out: %s", self.where, exc)
            return
        first = len(self.elapsed)
        self.row_of += array("I", [len(self.ids)]) * len(tasks)
        self.ids.append(batch_id)
        self.firsts.append(first)
        self.workers.append(worker)
        self.recorded.append(recorded)
        self.macs.append(tasks_mac)
        self.elapsed += times
        self.row_failed.append(failures)
        if failures:
            self.failed.update(first + offset for offset in failures)
        if span is not None:
            self.spans.append((first, span))
        if not self.keyed:
            return
        if complete:
            self.latest.update(zip(keys, range(first, first + len(keys))))  # type: ignore[arg-type]
        else:
            self.latest.update((key, first + offset) for offset, key in enumerate(keys) if key is not None)

    def _forget_row(self, row_id: int, upto: int, blob: bytes, mac: bytes) -> None:
        self.last_forgotten = row_id
        try:
            verify(mac, self.signer.forgotten(self.sweep_id, upto, blob), f"forgotten row {row_id}")
        except Forged as exc:
            logger.warning("%s: %s; left out, never loaded", self.where, exc)
            return
        self.forget(pickle.loads(blob), upto)


def _drop(latest: dict[bytes, int], key_of: dict[int, bytes], entries: list[int]) -> None:
    """Remove from ``latest`` the keys whose latest entries are ``entries`` (a forgetting, replayed)."""
    for entry in entries:
        key = key_of.get(entry)
        if key is not None and latest.get(key) == entry:
            del latest[key]


def _alive(found: list[Segment], dead: set[int]) -> list[Segment]:
    """``found`` without the positions of dead entries."""
    kept, ordered = [], sorted(dead)
    for start, stop, entry in found:
        first = bisect.bisect_left(ordered, entry)
        for gone in ordered[first : bisect.bisect_left(ordered, entry + stop - start)]:
            position = start + gone - entry
            if position > start:
                kept.append(Segment(start, position, entry))
            start, entry = position + 1, gone + 1
        if start < stop:
            kept.append(Segment(start, stop, entry))
    return kept


def _keys(tasks: Sequence[Any], where: str) -> tuple[Sequence[Optional[bytes]], bool]:
    """Each task's key (``None`` for a task that has none: it is never found), and whether all have one."""
    try:
        return task_keys(tasks)[0], True
    except TypeError:
        pass
    keys: list[Optional[bytes]] = []
    for task in tasks:
        try:
            keys.append(task_key(task)[0])
        except TypeError as exc:
            logger.warning("%s: a stored task has no key, it is never found: %s", where, exc)
            keys.append(None)
    return keys, False
