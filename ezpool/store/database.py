"""The store's SQLite file: opening it, its tables, and the one connection its sweeps share.

The file is in WAL mode with ``synchronous=NORMAL``: a commit is durable once
``COMMIT`` returns, against the process being killed at any moment (SIGKILL
included); an operating-system crash or a power cut may take back the last
commits, never the file's integrity. ``PRAGMA application_id`` marks the file as an
ezpool store and ``PRAGMA user_version`` holds its format, checked on opening.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from .._core.logs import get_logger
from ..errors import StoreError

logger = get_logger(__name__)

__all__ = ["Database"]

#: The file's ``PRAGMA application_id`` ("EzPL") and ``user_version``.
APPLICATION_ID = 0x457A504C
SCHEMA_VERSION = 2

#: Seconds to wait for another process that holds the file's write lock.
BUSY_TIMEOUT = 30.0

#: The most memory (KiB) SQLite may keep pages in: a lookup that reads a whole sweep
#: runs twice as fast as with its default of 2 MiB.
CACHE_KIB = 65536

_SCHEMA = (
    """CREATE TABLE sweeps (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        store_key TEXT NOT NULL,
        code TEXT NOT NULL,
        data TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (name, store_key))""",
    # One row per ``Sweep.record`` call (see ``batches``). Rows are never deleted, so
    # that a later row always has a larger id: a later outcome of a task wins.
    """CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        sweep INTEGER NOT NULL REFERENCES sweeps (id),
        tasks BLOB NOT NULL,
        outcome BLOB NOT NULL,
        layout INTEGER NOT NULL,
        elapsed BLOB NOT NULL,
        failed BLOB NOT NULL,
        worker TEXT NOT NULL,
        recorded REAL NOT NULL)""",
    "CREATE INDEX batches_of_sweep ON batches (sweep)",
    # One row per ``Sweep.forget_failed`` that forgot anything: the keys of tasks whose
    # outcomes in batches up to ``upto`` (an id) no longer count.
    """CREATE TABLE forgotten (
        id INTEGER PRIMARY KEY,
        sweep INTEGER NOT NULL REFERENCES sweeps (id),
        upto INTEGER NOT NULL,
        keys BLOB NOT NULL)""",
)


class Database:
    """The SQLite connection of one ``Store``, shared by its sweeps and guarded by one lock.

    Opening creates the file and its tables, unless ``readonly``. Errors of SQLite
    come out as ``StoreError`` naming the file.
    """

    def __init__(self, path: str, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.lock = threading.RLock()
        self._db: Optional[sqlite3.Connection] = _connect(path, readonly)

    @property
    def closed(self) -> bool:
        return self._db is None

    def check_writable(self) -> None:
        """Raise ``StoreError`` if the store was opened read-only or is closed."""
        if self.readonly:
            raise StoreError(f"the store {self.path} was opened read-only")
        self._open()

    @contextmanager
    def transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one transaction (a write one if ``write``); commit unless it raises."""
        with self.lock:
            db = self._open()
            if write:
                self.check_writable()
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {'write to' if write else 'read'} {self.path}: {exc}") from exc

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows ``sql`` selects."""
        with self.transaction(write=False) as db:
            return db.execute(sql, params).fetchall()

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` once per row, in one transaction; how many rows it changed."""
        with self.transaction(write=True) as db:
            return db.executemany(sql, rows).rowcount

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                logger.debug("%s: closed", self.path)

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._db


def _connect(path: str, readonly: bool) -> sqlite3.Connection:
    """Open ``path``: create it and its tables, or check that it is a store of this format."""
    existed = os.path.exists(path)
    if readonly and not existed:
        raise FileNotFoundError(errno.ENOENT, "no ezpool store at this path", path)
    try:
        target = Path(path).resolve().as_uri() + "?mode=ro" if readonly else path
        db = sqlite3.connect(
            target, uri=readonly, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if readonly:
            db.execute("PRAGMA query_only = ON")
        else:
            _use_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")
        _check_schema(db, path, readonly)
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.OperationalError):
            raise StoreError(f"cannot open {path}: {exc}") from exc
        if isinstance(exc, sqlite3.DatabaseError):  # "file is not a database"
            raise StoreError(f"{path} is not an ezpool store: {exc}") from None
        raise
    if not existed:
        mode = os.stat(path).st_mode
        if mode & 0o002:  # results may be private: never world-writable, whatever the umask
            os.chmod(path, mode & 0o7775)
    return db


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging (it stays so once switched).

    Connections that switch a new file at the same moment can each hold a lock the
    other needs; SQLite then answers "database is locked" at once, without waiting
    (``busy_timeout`` would deadlock), and the statement has to be tried again. Six
    threads opening a new store together met it in about one try in twelve.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


#: SQLite's result code for a lock held by another connection (``SQLITE_BUSY``).
_SQLITE_BUSY = 5


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds. Python 3.11 and later
    give the result code; before, the message is all SQLite's module says."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return str(exc) == "database is locked"  # pragma: no cover - Python 3.9 and 3.10


def _check_schema(db: sqlite3.Connection, path: str, readonly: bool) -> None:
    if not readonly:
        db.execute("BEGIN IMMEDIATE")  # two processes opening a new file make its tables once
    try:
        (app,) = db.execute("PRAGMA application_id").fetchone()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if app == APPLICATION_ID and version != SCHEMA_VERSION:
            raise StoreError(
                f"{path} is an ezpool store of format {version}; this ezpool reads format "
                f"{SCHEMA_VERSION} (use the ezpool that wrote it, or another file)"
            )
        if app != APPLICATION_ID:
            (tables,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if app or version or tables:
                raise StoreError(f"{path} is an SQLite file, but not an ezpool store")
            if readonly:
                raise StoreError(f"{path} is empty, not an ezpool store")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            logger.debug("%s: created a store", path)
        if db.in_transaction:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
