"""``Store``: task outcomes kept in one SQLite file, so that a sweep that stops can go on.

How a map call with a store uses it::

    Pool.map(fun, tasks, store=...)                     the file (SQLite, WAL mode)
    ───────────────────────────────                     ───────────────────────────
    store.sweep(fun, store_key) ─ name, identity ─────▶ sweeps: name, store_key, code and
                                                          data digests, created
    sweep.known()? ◀──────── any batch row? ──────────  batches: one row per record call:
    sweep.found(tasks) ◀─── the index, built from ────    tasks (a range, or the list
        the rows once, then kept up to date:              pickled whole), values (pickled
        stored Batches, a row's values loaded once        whole), run times, failed
    run the other tasks; for each Batch:                  offsets, worker, recorded
    sweep.record(tasks, start, values, ...)
        one row, buffered; committed every 0.2 s ─────▶
        or 20 000 tasks
    sweep.forget_failed() ─ the keys forgotten ───────▶ forgotten: keys, up to which row
    sweep.flush() / store.close() ─ the rest ─────────▶

Recording is cheap because it does nothing per task: no key, no row, one pickle of
each list; the tasks of a ``map`` over a ``range`` are stored as a range slice (three
numbers a row), and run times as the workers measure tiny tasks, by group. Reading
pays instead, where it must: the sweep's rows are read in id order into an in-memory
index (task -> latest outcome; a later row wins, and ``results`` keeps the order in
which each task was first recorded). While every row holds a range of tasks (or a
list equal to one), a range of tasks is found by arithmetic on the ranges, with no
key at all (``spans``); otherwise each task's key is computed (``keys``). The index
is kept on the ``Sweep``; each later read first takes in the rows written since, by
this process or another, so a lookup never misses an outcome that was committed.
``Sweep.found`` hands outcomes back a batch at a time: each row's values are checked
and unpickled once, as one list, and never one task at a time.

Memory: an index of ranges holds 13 bytes a stored task (its run time and row); an
index of keys about 135-145 bytes (its key and dict slot besides), measured with
``tracemalloc`` for 10**5 ``int``, ``str`` and 2-tuple tasks; a lookup holds besides
the values of the rows it found tasks in. The file takes about 5 bytes a task for
tiny ``int`` tasks and values stored from a range (6.4 with the run times of the
parallel mode's groups; 18 as format 3 stored them, a run time a task and the tasks
pickled; 87 with one row a task).

Costs measured for 10**5 tiny tasks (``int`` tasks and values) recorded in batches
of 2,000, medians of five, on a shared 2-core machine loaded 4-7 (the figures vary by
up to half from run to run); format 3's, measured alongside, in brackets:

- ``record`` of the 50 rows, with opening and closing the file: 35 ms (36 ms);
- ``found`` of all 10**5 from a fresh open: 6-13 ms for a range stored as ranges
  (0.19 s), 11-15 ms for a list equal to a range (0.33 s); 2-tuple tasks of an
  ``int`` and a ``float``, matched by key: 0.6-1.3 s (0.8 s);
- ``known``: 50-90 µs, so a first run skips the lookup;
- ``results`` from a fresh open keys every task: 0.17-0.25 s (the same).

``map(store=...)`` over ``range(n)`` of ``x*x`` on two processes (``python -m bench
--only store``), against ``map`` without a store in the same run, load 8-12: a new
file 2.0x at 10**5 and 1.4x at 10**6 (3.4x and 1.8x before); a re-run over a full
store 0.62x and 0.63x (13.4x and 13.4x before). What a new file still costs is
pickling the values (the workers pickled them once already, for the pipe), creating
the file and SQLite's checkpoint with its two ``fdatasync`` when it is closed
(about 3 ms at 10**5).

Signing and checking rows (``signing``) costs one HMAC-SHA256 over each row's bytes
when it is written and again when it is read: about 6 µs a row and 2 ns a byte, so
about 1.2 ms for the 4 rows (0.6 MB) of a ``map(store=...)`` of 10**5 tiny tasks;
opening a store reads the key and checks the file, 0.3-0.7 ms more.

- ``keys``: a task is found by its key; tasks equal as dict keys share one.
- ``identity``: a sweep is named by its function (and an optional ``store_key``) and
  remembers the function's code and captured values, so that outcomes of changed
  code are never mixed with new ones.
- ``database``: the file, its tables, and durability: every committed outcome
  survives the process being killed at any moment, SIGKILL included; a file removed
  or replaced under a run is noticed, and its outcomes kept.
- ``files``: only the user's own stores are read: a store file another user owns,
  or that group or others can write, is refused.
- ``signing``: every row is signed with a key derived from the user's EzPool key,
  and checked before anything in it is unpickled; a store made under another key
  is refused.
- ``batches``: one row of outcomes: how tasks and values are pickled, and loaded.
- ``index``: the in-memory index of a sweep's rows.
- ``spans``: rows of ranges, matched against a range of tasks by arithmetic.
- ``sweep``: finding, recording, forgetting and summarising outcomes.
- ``python -m ezpool.store PATH``: what a file holds (``__main__``).
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple, Optional, Union

from .._core.logs import get_logger
from ..errors import StoreError, StoreMismatch
from ..results import Results
from .database import Database
from .identity import Identity, identity, sweep_name
from .signing import verify
from .sweep import StoredOutcome, Sweep, label

logger = get_logger(__name__)

__all__ = ["Store", "Sweep", "SweepInfo", "StoredOutcome", "open_store", "open_sweep"]

PathLike = Union[str, "os.PathLike[str]"]


class SweepInfo(NamedTuple):
    """One sweep in a store: its name, ``store_key``, creation time (epoch seconds) and counts.

    ``done`` counts every task with a stored outcome; ``failed`` those whose latest outcome is an exception.
    """

    name: str
    store_key: Optional[str]
    created: float
    done: int
    failed: int

    @property
    def label(self) -> str:
        """``name``, or ``name[store_key]``: what ``open_store`` and ``--sweep`` accept."""
        return label(self.name, self.store_key)


class Store:
    """One SQLite file (WAL mode) holding the outcomes of one or more sweeps.

    Opening creates the file and its tables, unless ``readonly``: then a missing file
    raises ``FileNotFoundError``, and a file that is not an ezpool store (or not
    SQLite at all) raises ``StoreError``, each naming the path. Use it in a ``with``
    block, or call ``close``: outcomes still buffered are committed then. One
    ``Store`` may be shared by threads, and several processes may use one file.

    Only the user's own stores are opened: ``StoreError`` refuses a file another
    user owns or that group or others can write, and a store made under another
    key. Rows are signed with ``key`` (default: the user's EzPool key, as
    ``ezpool.security.resolve_key`` finds it) and checked before they are loaded.
    """

    def __init__(
        self, path: PathLike, *, readonly: bool = False, key: Union[str, bytes, None] = None
    ) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._connection = Database(self.path, readonly, key)
        self._sweeps: list[Sweep] = []

    def __repr__(self) -> str:
        state = "closed" if self._connection.closed else "read-only" if self.readonly else "open"
        return f"Store({self.path!r}, {state})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sweep(self, fun: Any, store_key: Optional[str] = None) -> Sweep:
        """Open (or create) the sweep of ``fun``, named by its qualified name and ``store_key``.

        The sweep records ``fun``'s identity: a digest of its code and one of the values
        it captures (see ``ezpool.store.identity``). If the sweep holds outcomes of
        another identity, this raises ``StoreMismatch`` saying what changed, rather
        than mix old outcomes with new ones. A ``store_key`` keeps a separate set of
        outcomes (say, one per version of your code or data); its identity is recorded
        and checked all the same, so when you change the code, change the key too, or
        use another file.
        """
        if store_key is not None and (not isinstance(store_key, str) or not store_key):
            raise TypeError(f"store_key must be a non-empty string or None, got {store_key!r}")
        name, now = sweep_name(fun), identity(fun)
        named = label(name, store_key)
        signer = self._connection.signer
        with self._connection.transaction(write=not self.readonly) as db:
            found = db.execute(f"{_SWEEPS} WHERE name = ? AND store_key = ?", (name, store_key or ""))
            row = found.fetchone()
            if row is not None:
                sweep_id = self._checked(row)[0]
                _check_identity(self.path, named, store_key, Identity(row[3], row[4]), now)
            elif self.readonly:
                raise StoreError(f"{self.path} holds no sweep {named}")
            else:
                created = time.time()
                sweep_id = db.execute(
                    "INSERT INTO sweeps (name, store_key, code, data, created, mac) "
                    "VALUES (?, ?, ?, ?, ?, x'')",
                    (name, store_key or "", now.code, now.data, created),
                ).lastrowid
                mac = signer.sweep(int(sweep_id or 0), name, store_key or "", now.code, now.data, created)
                db.execute("UPDATE sweeps SET mac = ? WHERE id = ?", (mac, sweep_id))
                logger.debug("%s: new sweep %s", self.path, named)
        return self._add(Sweep(self._connection, int(sweep_id), name, store_key))

    def find(self, name: Optional[str] = None) -> Sweep:
        """The sweep called ``name`` (``name`` or ``name[store_key]``), or the only sweep.

        Runs and checks nothing. Raises ``StoreError`` listing the sweeps when there is
        no such sweep, or when ``name`` is not given and there are several (or none).
        """
        rows = map(self._checked, self._connection.read(f"{_SWEEPS} ORDER BY id"))
        sweeps = [(int(row[0]), row[1], row[2] or None) for row in rows]
        if name is None:
            matches = sweeps
        else:
            matches = [s for s in sweeps if label(s[1], s[2]) == name] or [s for s in sweeps if s[1] == name]
        if len(matches) == 1:
            return self._add(Sweep(self._connection, *matches[0]))
        listed = ", ".join(label(s[1], s[2]) for s in sweeps) or "none"
        if name is None and not sweeps:
            raise StoreError(f"{self.path} holds no sweeps")
        if name is None:
            raise StoreError(f"{self.path} holds several sweeps; name one of: {listed}")
        what = "several sweeps are" if matches else "no sweep is"
        raise StoreError(f"in {self.path}, {what} called {name!r}; its sweeps: {listed}")

    def sweeps(self) -> list[SweepInfo]:
        """Every sweep in the file, oldest first, with its counts of outcomes."""
        self._flush_all()
        rows = map(self._checked, self._connection.read(f"{_SWEEPS} ORDER BY id"))
        infos = []
        for sweep_id, name, key, _, _, created, _ in rows:
            opened = [sweep for sweep in self._sweeps if sweep._id == sweep_id]
            sweep = opened[0] if opened else Sweep(self._connection, sweep_id, name, key or None)
            infos.append(SweepInfo(name, key or None, created, *sweep.counts()))
        return infos

    def close(self) -> None:
        """Commit what is buffered and close the file. Closing twice does nothing."""
        with self._connection.lock:
            if self._connection.closed:
                return
            try:
                self._flush_all()
            finally:
                self._connection.close()

    def _checked(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row of ``_SWEEPS``, once its MAC is checked; ``StoreError`` if it does not verify."""
        sweep_id, name, key, code, data, created, mac = row
        expected = self._connection.signer.sweep(sweep_id, name, key, code, data, created)
        verify(mac, expected, f"in {self.path}, the row of sweep {label(name, key or None)}")
        return row

    def _add(self, sweep: Sweep) -> Sweep:
        with self._connection.lock:
            self._sweeps.append(sweep)
        return sweep

    def _flush_all(self) -> None:
        for sweep in self._sweeps:
            sweep.flush()


#: A sweep's row, as ``Store._checked`` checks it.
_SWEEPS = "SELECT id, name, store_key, code, data, created, mac FROM sweeps"


def open_sweep(path: PathLike, fun: Any, store_key: Optional[str] = None) -> Sweep:
    """Open (or create) ``path`` and the sweep of ``fun`` in it, for one map call.

    Closing the sweep commits what is buffered and closes the file.
    """
    store = Store(path)
    try:
        sweep = store.sweep(fun, store_key)
    except BaseException:
        store.close()
        raise
    sweep.on_close = store.close
    return sweep


def open_store(path: PathLike, sweep: Optional[str] = None) -> Results:
    """The stored ``Results`` of the store's only sweep, or of the one named; runs nothing.

    ``sweep`` is a name as ``python -m ezpool.store PATH`` lists it: ``module.function``,
    or ``module.function[store_key]``. The file is opened read-only. Raises
    ``FileNotFoundError`` for a missing file, and ``StoreError`` for a file that is not
    a store, for an unknown name, or when there are several sweeps and none is named
    (each message lists the sweeps); also for a store that is not the user's own (see
    ``Store``): what it holds is never loaded.
    """
    with Store(path, readonly=True) as store:
        return store.find(sweep).results()


def _check_identity(path: str, named: str, store_key: Optional[str], stored: Identity, now: Identity) -> None:
    """Raise ``StoreMismatch`` when ``now`` is not the identity the sweep was stored with."""
    changes = []
    if stored.code != now.code:
        changes.append("its code changed")
    if stored.data and now.data and stored.data != now.data:
        changes.append("the values it captures changed")
    if not changes:
        return
    advice = "pass another store_key" if store_key else 'pass store_key="..." (say, store_key="v2")'
    raise StoreMismatch(
        f"{path} holds outcomes of another version of {named}: {' and '.join(changes)} since they "
        f"were stored. To keep both sets of results apart, {advice}; or use another file."
    )
