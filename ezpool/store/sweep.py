"""``Sweep``: the stored outcomes of one function: found, recorded, forgotten, summarised.

``record`` appends one ``batches`` row a call (see ``batches``) and computes no
task key: that is what keeps it cheap. Everything that reads (``lookup``,
``results``, ``summary``, ``forget_failed``, the counts of ``Store.sweeps``) goes
through an ``Index`` built in memory from the sweep's rows, the first time one is
needed, and kept on the ``Sweep``: each later read first reads the rows written
since (by this process or another), and keys their tasks unless they are ranges
(see ``spans``). ``found`` gives what is stored as ``Batch``es, cut at rows, each
row's values loaded once; ``lookup`` gives the same outcomes by position.
"""

from __future__ import annotations

import heapq
import pickle
import threading
import time
from collections.abc import Collection, Sequence
from itertools import compress, count, repeat
from operator import is_not, sub
from typing import Any, Callable, NamedTuple, Optional, cast

from .._core.feed import Feed
from .._core.logs import get_logger
from .._core.records import Batch
from .._core.serialization import short_repr
from ..errors import StoreError
from ..results import Results, ResultsBuilder
from .batches import Outcomes, encode
from .database import Database
from .index import MISSING, ROW_COLUMNS, Index
from .keys import task_keys
from .signing import Forged
from .spans import Segment

logger = get_logger(__name__)

__all__ = ["Sweep", "StoredOutcome"]

#: Buffered outcomes are committed once this many seconds passed since the last commit...
COMMIT_SECONDS = 0.2
#: ...or once this many tasks' outcomes are buffered.
COMMIT_ROWS = 20_000

_INSERT = """INSERT INTO batches (sweep, tasks, outcome, layout, elapsed, failed, worker, recorded, mac)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""

_ALL_ROWS = f"SELECT {ROW_COLUMNS} FROM batches WHERE sweep = ? AND id <= ? ORDER BY id"


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

    def __init__(self, connection: Database, sweep_id: int, name: str, store_key: Optional[str]) -> None:
        self.name = name
        self.store_key = store_key
        self._connection = connection
        self._id = sweep_id
        self._rows: list[tuple[Any, ...]] = []
        self._buffered = 0  # tasks in self._rows
        self._last_commit = time.monotonic()
        self._index: Optional[Index] = None
        self._timer: Optional[threading.Timer] = None  # commits what waits when no record comes
        self.on_close: Optional[Callable[[], None]] = None  # what close() closes: the file, if it owns it

    @property
    def label(self) -> str:
        """``name``, or ``name[store_key]``: how ``open_store`` and the command line name it."""
        return label(self.name, self.store_key)

    def __repr__(self) -> str:
        return f"Sweep({self.label!r} in {self._connection.path!r})"

    def known(self) -> bool:
        """Whether anything was recorded in this sweep: if not, ``lookup`` would find nothing."""
        with self._connection.lock:
            if self._rows or (self._index is not None and self._index.last_batch):
                return True
            return bool(self._connection.read("SELECT 1 FROM batches WHERE sweep = ? LIMIT 1", (self._id,)))

    def lookup(self, tasks: Sequence[Any]) -> dict[int, StoredOutcome]:
        """The stored outcomes of ``tasks``, by position in ``tasks``; tasks not found are left out.

        A task that holds a NaN is never found. Neither is one whose stored value cannot
        be unpickled here, so that it runs again. Raises ``TypeError`` naming a task
        that cannot be stored (see ``ezpool.store.keys``). The first lookup reads the
        whole sweep; later ones read only what was recorded since.
        """
        self.flush()
        with self._connection.transaction(write=False) as db:
            index = self._refreshed(db)
            spans = index.segments(tasks)
            if spans is not None:
                return _per_task(_stored(index, db, spans))
            return _by_keys(index, db, tasks)

    def found(self, tasks: Sequence[Any]) -> list[Batch]:
        """The stored outcomes of ``tasks`` as batches (``Batch.stored``), in the positions of
        ``tasks``, in position order; a batch a run of one row's outcomes. As ``lookup`` finds
        them, but a range of tasks stored as ranges is found with no task key, and the values
        of each row are loaded once, a batch at a time."""
        self.flush()
        with self._connection.transaction(write=False) as db:
            index = self._refreshed(db)
            spans = index.segments(tasks)
            if spans is not None:
                return _stored(index, db, spans)
            return _keyed_batches(index, db, tasks)

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
        if not values:
            return
        stop = start + len(values)
        if type(tasks) is list or type(tasks) is range or isinstance(tasks, Feed):
            chunk = tasks[start:stop]  # a range stays one: three numbers to store, and no key to compare
        else:
            chunk = [tasks[i] for i in range(start, stop)]
        now, sweep, sign = time.time(), self._id, self._connection.signer.batch
        rows = [
            (sweep, *encoded, worker, now, sign(sweep, *encoded, worker, now))
            for encoded in encode(chunk, values, elapsed, failed)
        ]
        with self._connection.lock:
            self._rows += rows
            self._buffered += len(values)
            due = time.monotonic() - self._last_commit >= COMMIT_SECONDS
            if due or self._buffered >= COMMIT_ROWS:
                self.flush()
            elif self._timer is None:
                # Outcomes must not wait for the next one (which may come hours later).
                self._timer = threading.Timer(COMMIT_SECONDS, self._flush_later)
                self._timer.daemon = True
                self._timer.start()

    def _flush_later(self) -> None:
        with self._connection.lock:
            self._timer = None
            if self._connection.closed:
                return
            try:
                self.flush()
            except Exception:  # the next record or close tries again, and raises there
                logger.warning("could not commit outcomes to %s yet", self._connection.path, exc_info=True)

    def flush(self) -> None:
        """Commit the buffered outcomes now."""
        with self._connection.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            rows, buffered, self._rows, self._buffered = self._rows, self._buffered, [], 0
            self._last_commit = time.monotonic()
            if not rows:
                return
            try:
                self._connection.write(_INSERT, rows)
            except BaseException:
                # kept for the next try
                self._rows, self._buffered = rows + self._rows, buffered + self._buffered
                raise

    def close(self) -> None:
        """Commit what is buffered; close the file too if this sweep was opened on its own
        (``open_sweep``)."""
        if self.on_close is not None:
            self.on_close()  # Store.close flushes every sweep, this one included
        else:
            self.flush()

    def forget_failed(self) -> int:
        """Forget the tasks whose latest outcome is a failure, so that they run again; how many.

        The rows stay; a ``forgotten`` row records the keys of the tasks forgotten.
        """
        self.flush()
        with self._connection.transaction(write=True) as db:
            index = self._refreshed(db)
            keys = index.failing()
            if not keys:
                return 0
            try:
                blob = pickle.dumps(keys, pickle.HIGHEST_PROTOCOL)
                mac = self._connection.signer.forgotten(self._id, index.last_batch, blob)
                row_id = db.execute(
                    "INSERT INTO forgotten (sweep, upto, keys, mac) VALUES (?, ?, ?, ?)",
                    (self._id, index.last_batch, blob, mac),
                ).lastrowid
                index.last_forgotten = int(row_id or 0)
                return index.forget(keys, index.last_batch)
            except BaseException:
                self._index = None  # read again from the file
                raise

    def results(self) -> Results:
        """Everything stored, as ``Results`` in the order first recorded.

        ``wall_time`` is the recorded span: from the start of the first task to the
        end of the last. A stored value that cannot be unpickled here becomes a
        ``StoreError`` in its task's slot; a task that cannot be is left out (logged).
        """
        self.flush()
        with self._connection.transaction(write=False) as db:
            index = self._refreshed(db)
            places = [(entry, *index.locate(entry)) for entry in index.by_key().values()]
            needed = {row for _, row, _ in places}
            rows = {batch_id: row for row, batch_id in enumerate(index.ids)}
            loaded: dict[int, tuple[Sequence[Any], Outcomes]] = {}
            for columns in db.execute(_ALL_ROWS, (self._id, index.last_batch)):
                row = rows.get(columns[0])
                if row in needed:
                    try:
                        loaded[row] = index.load(columns)
                    except Forged as exc:  # changed since the index read it: left out
                        logger.warning("%s: %s; left out, never loaded", self, exc)
            failed, elapsed, workers, recorded = index.failed, index.elapsed, index.workers, index.recorded
            tasks: list[Any] = []
            values: list[Any] = []
            times: list[float] = []
            runs: list[tuple[int, str, set[int]]] = []  # (start, worker, failed offsets) of each run of rows
            seen: set[Any] = set()
            began, ended = float("inf"), float("-inf")
            for entry, row, offset in places:
                if row not in loaded:
                    continue
                task_list, outcomes = loaded[row]
                task = task_list[offset]
                try:
                    hash(task)
                except Exception as exc:
                    logger.warning("%s: a stored task cannot be loaded, left out: %s", self, exc)
                    continue
                if task in seen:  # equal to a task stored under another key (see keys)
                    continue
                seen.add(task)
                is_failure = entry in failed
                try:
                    value = outcomes.get(offset, is_failure)
                except Exception as exc:
                    value = StoreError(f"the stored value of task {short_repr(task)} cannot be loaded: {exc}")
                    is_failure = True
                worker = workers[row]
                if not runs or runs[-1][1] != worker:
                    runs.append((len(tasks), worker, set()))
                if is_failure:
                    runs[-1][2].add(len(tasks) - runs[-1][0])
                tasks.append(task)
                values.append(value)
                took = elapsed[entry]
                times.append(took)
                began, ended = min(began, recorded[row] - took), max(ended, recorded[row])
        builder = ResultsBuilder(tasks)
        stops = [start for start, _, _ in runs[1:]] + [len(tasks)]
        for (start, worker, offsets), stop in zip(runs, stops):
            builder.add(Batch(start, values[start:stop], times[start:stop], offsets, worker))
        return builder.finish(ended - began if tasks else 0.0)

    def summary(self, slowest: int = 5) -> str:
        """Several lines: the sweep's name, its counts, total task time, wall span, slowest tasks."""
        self.flush()
        with self._connection.transaction(write=False) as db:
            ((created,),) = db.execute("SELECT created FROM sweeps WHERE id = ?", (self._id,)).fetchall()
            index = self._refreshed(db)
            entries = list(index.by_key().values())
            elapsed = index.elapsed
            slow = heapq.nlargest(slowest, entries, key=elapsed.__getitem__)
            slow_rows = {index.locate(entry)[0] for entry in slow}
            loaded = {}
            for row in slow_rows:
                query = f"SELECT {ROW_COLUMNS} FROM batches WHERE id = ?"
                for columns in db.execute(query, (index.ids[row],)):
                    try:
                        loaded[row] = index.load(columns)
                    except Forged as exc:
                        logger.warning("%s: %s; never loaded", self, exc)
            done, failed = len(entries), len(index.failed.intersection(entries))
            busy = sum(elapsed[entry] for entry in entries)
            began, ended = float("inf"), float("-inf")
            for entry in entries:
                recorded = index.recorded[index.locate(entry)[0]]
                began, ended = min(began, recorded - elapsed[entry]), max(ended, recorded)
            slowest_lines = []
            for entry in slow:
                row, offset = index.locate(entry)
                if row not in loaded:
                    slowest_lines.append(f"    {elapsed[entry]:10.3f} s  (a row that does not verify)")
                    continue
                task_list, outcomes = loaded[row]
                task = short_repr(task_list[offset], 60)
                note = f"  failed: {outcomes.record(offset).type_name}" if entry in index.failed else ""
                slowest_lines.append(f"    {elapsed[entry]:10.3f} s  {task}  on {index.workers[row]}{note}")
        lines = [
            f"sweep {self.label} (created {_when(created)})",
            f"  {done} tasks done, {failed} failed",
            f"  task time {busy:.3f} s in all (mean {busy / done if done else 0.0:.6f} s)",
        ]
        if done:
            lines.append(f"  wall span {_when(began)} .. {_when(ended)} ({ended - began:.3f} s)")
        if slow:
            lines.append(f"  {len(slow)} slowest tasks:")
        return "\n".join(lines + slowest_lines)

    def counts(self) -> tuple[int, int]:
        """How many tasks have an outcome, and how many of those failed."""
        self.flush()
        with self._connection.transaction(write=False) as db:
            index = self._refreshed(db)
            latest = index.by_key()
            return len(latest), len(index.failed.intersection(latest.values()))

    def _refreshed(self, db: Any) -> Index:
        """The index, brought up to date with the file (call it inside a transaction)."""
        if self._index is None:
            self._index = Index(self._id, repr(self), self._connection.signer)
        try:
            self._index.refresh(db)
        except BaseException:
            self._index = None  # read again from the start next time
            raise
        return self._index


def _by_keys(index: Index, db: Any, tasks: Sequence[Any]) -> dict[int, StoredOutcome]:
    """``lookup`` by task keys (inside a transaction, with the index refreshed)."""
    keys, lost = task_keys(tasks)
    entries = list(map(index.by_key().get, keys))
    for position in lost:
        entries[position] = None
    # The rest is written with map and zip, so that it loops in C: a loop in Python
    # would cost more than the index it uses.
    hits = list(map(is_not, entries, repeat(None)))
    chosen = cast("list[int]", list(compress(entries, hits)))  # the entries found
    row_of = index.row_of
    rows = set(map(row_of.__getitem__, chosen))
    if not rows:
        return {}
    values, complete = index.values(db, rows)
    outcomes = zip(
        map(values.__getitem__, chosen),
        map(index.elapsed.__getitem__, chosen),
        map(index.workers.__getitem__, map(row_of.__getitem__, chosen)),
        map(index.failed.__contains__, chosen),
    )
    # StoredOutcome(*outcome), without the call of its __new__
    found = dict(zip(compress(count(), hits), map(tuple.__new__, repeat(StoredOutcome), outcomes)))
    if not complete:
        found = {position: outcome for position, outcome in found.items() if outcome[0] is not MISSING}
    return found


def _keyed_batches(index: Index, db: Any, tasks: Sequence[Any]) -> list[Batch]:
    """``found`` by task keys: runs of positions whose entries follow one another in one row."""
    keys, lost = task_keys(tasks)
    entries = list(map(index.by_key().get, keys))
    for position in lost:
        entries[position] = None
    hits = list(map(is_not, entries, repeat(None)))
    positions = list(compress(count(), hits))
    chosen = cast("list[int]", list(compress(entries, hits)))
    if not chosen:
        return []
    row_of = index.row_of
    values, complete = index.values(db, set(map(row_of.__getitem__, chosen)))
    firsts = set(index.firsts)
    steps = zip(map(sub, positions[1:], positions), map(sub, chosen[1:], chosen), chosen[1:])
    stops = [at for at, (moved, step, entry) in enumerate(steps, 1)
             if moved != 1 or step != 1 or entry in firsts]  # where a run ends
    spans = [Segment(positions[first], positions[first] + stop - first, chosen[first])
             for first, stop in zip([0, *stops], [*stops, len(chosen)])]
    return _batches(index, spans, lambda row: (complete, values), by_entry=True)


def _per_task(batches: list[Batch]) -> dict[int, StoredOutcome]:
    """The outcomes of stored batches by position."""
    return {
        batch.start + offset: StoredOutcome(value, took, batch.worker, offset in batch.failed)
        for batch in batches
        for offset, (value, took) in enumerate(zip(batch.values, batch.elapsed))
    }


def _stored(index: Index, db: Any, spans: list[Segment]) -> list[Batch]:
    """The batches of stored outcomes the segments ``spans`` point to, each row's values loaded once
    (values that cannot be loaded are left out: their tasks run again)."""
    row_of = index.row_of
    loaded = {row: index.row_values(row, blob, layout, mac)
              for row, blob, layout, mac in index.rows_read(db, {row_of[s.entry] for s in spans})}
    return _batches(index, spans, loaded.get, by_entry=False)


def _batches(
    index: Index, spans: list[Segment], values_of: Callable[[int], Optional[tuple[bool, list[Any]]]],
    by_entry: bool,
) -> list[Batch]:
    """The stored batches of ``spans``, whose values ``values_of(row)`` gives (whether all loaded, and
    the values of the row, or, ``by_entry``, of every entry; ``None``: the row is gone)."""
    row_of = index.row_of
    found = []
    for start, stop, entry in spans:
        row = row_of[entry]
        offset = entry - index.firsts[row]
        count = stop - start
        loaded = values_of(row)
        if loaded is None:  # gone from the file since the index read it
            continue
        complete, values = loaded
        at = entry if by_entry else offset
        if at or count != len(values):
            values = values[at : at + count]
        failed = {spot - offset for spot in index.row_failed[row] if offset <= spot < offset + count}
        runs = [(0, count)] if complete else _loaded_runs(values)
        for first, end in runs:
            part = values if (first, end) == (0, count) else values[first:end]
            failures = failed if (first, end) == (0, count) else {
                spot - first for spot in failed if first <= spot < end}
            elapsed = index.elapsed[entry + first : entry + end]
            batch = Batch(start + first, part, elapsed, failures, index.workers[row])
            batch.stored = True
            found.append(batch)
    return found


def _loaded_runs(values: list[Any]) -> list[tuple[int, int]]:
    """The runs ``(first, stop)`` of ``values`` that are not ``MISSING``."""
    runs: list[tuple[int, int]] = []
    for offset, value in enumerate(values):
        if value is MISSING:
            continue
        if runs and runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], offset + 1)
        else:
            runs.append((offset, offset + 1))
    return runs


def label(name: str, store_key: Optional[str]) -> str:
    """How a sweep is named to people: ``name``, or ``name[store_key]``."""
    return f"{name}[{store_key}]" if store_key else name


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
