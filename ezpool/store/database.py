"""The store's SQLite file: opening it, its tables, and the one connection its sweeps share.

The file is in WAL mode with ``synchronous=NORMAL``: a commit is durable once
``COMMIT`` returns, against the process being killed at any moment (SIGKILL
included); an operating-system crash or a power cut may take back the last
commits, never the file's integrity. ``PRAGMA application_id`` marks the file as an
ezpool store and ``PRAGMA user_version`` holds its format, checked on opening:
format 4, or format 3 (run times a task only), which is marked 4 once opened to write.

Opening checks whose the file is (``files``) and that it was made under the user's
key (``signing``): its ``signing`` row holds its salt and a check value. A store on
a read-only file system is read with SQLite's ``immutable=1`` when ``mode=ro``
cannot open it (it cannot make the ``-shm`` file there).

A store file removed or replaced under a run is noticed at the next commit, and
at closing: the path no longer names the file the run opened (its device and
inode). Nothing is lost: everything the open connection holds (the run's outcomes
and all it read) is copied into a new file, put at the path when the path is free
(removed), or beside it (replaced: ``NAME.recovered-TIME-PID.EXT``), and the run
goes on in that file; a warning names it.
"""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from .._core.logs import get_logger
from ..errors import StoreError
from ..security import resolve_key
from .files import FileIdentity, check_store_file, identity_of
from .recovery import move_contents
from .signing import SALT_SIZE, Signer, check_store_key, key_source, write_signing

logger = get_logger(__name__)

__all__ = ["Database"]

#: The file's ``PRAGMA application_id`` ("EzPL") and ``user_version``.
APPLICATION_ID = 0x457A504C
SCHEMA_VERSION = 4

#: The format before rows could hold run times by group (``batches.TIMES_GROUPED``): read as it
#: is, and marked ``SCHEMA_VERSION`` when opened to write, so that an ezpool that cannot read
#: such rows refuses the file rather than leave them out.
UNGROUPED_VERSION = 3

#: The format before rows were signed; ``python -m ezpool.store --upgrade`` signs one.
UNSIGNED_VERSION = 2

#: Seconds to wait for another process that holds the file's write lock.
BUSY_TIMEOUT = 30.0

#: The most memory (KiB) SQLite may keep pages in: a lookup that reads a whole sweep
#: runs twice as fast as with its default of 2 MiB.
CACHE_KIB = 65536

#: The file's salt, and the MAC that shows which key made it (see ``signing``).
SIGNING_TABLE = """CREATE TABLE signing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    salt BLOB NOT NULL,
    keycheck BLOB NOT NULL)"""

_SCHEMA = (
    """CREATE TABLE sweeps (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        store_key TEXT NOT NULL,
        code TEXT NOT NULL,
        data TEXT NOT NULL,
        created REAL NOT NULL,
        mac BLOB NOT NULL,
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
        recorded REAL NOT NULL,
        mac BLOB NOT NULL)""",
    "CREATE INDEX batches_of_sweep ON batches (sweep)",
    # One row per ``Sweep.forget_failed`` that forgot anything: the keys of tasks whose
    # outcomes in batches up to ``upto`` (an id) no longer count.
    """CREATE TABLE forgotten (
        id INTEGER PRIMARY KEY,
        sweep INTEGER NOT NULL REFERENCES sweeps (id),
        upto INTEGER NOT NULL,
        keys BLOB NOT NULL,
        mac BLOB NOT NULL)""",
    SIGNING_TABLE,
)

#: The tables of the format before rows were signed (``UNSIGNED_VERSION``), that get a mac column.
SIGNED_TABLES = ("sweeps", "batches", "forgotten")

#: SQLite's result codes for a lock held by another connection, and for a file it cannot open.
_SQLITE_BUSY = 5
_SQLITE_CANTOPEN = 14


class Opened(NamedTuple):
    """A connection to a store, what signs its rows, and the file it opened."""

    db: sqlite3.Connection
    signer: Signer
    identity: Optional[FileIdentity]
    mode: int


class Database:
    """The SQLite connection of one ``Store``, shared by its sweeps and guarded by one lock.

    Opening creates the file and its tables, unless ``readonly``. ``key`` is the
    EzPool key the rows are signed with (``None``: the user's, as
    ``ezpool.security.resolve_key`` finds it). Errors of SQLite come out as
    ``StoreError`` naming the file.
    """

    def __init__(self, path: str, readonly: bool, key: Union[str, bytes, None] = None) -> None:
        self.path = path
        self.readonly = readonly
        self.lock = threading.RLock()
        self._key = resolve_key(key) or b""  # never None: insecure is not asked for
        self._source = "key=" if key is not None else key_source()
        opened = _connect(path, readonly, self._key, self._source)
        self._db: Optional[sqlite3.Connection] = opened.db
        self.signer = opened.signer
        self._identity, self._mode = opened.identity, opened.mode

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
        """Hold the lock and one transaction (a write one if ``write``); commit unless it raises.

        Before a write, a store file removed or replaced under the run is noticed, and
        its contents kept (see the module's docstring).
        """
        with self.lock:
            if write:
                self.check_writable()
                self._follow()
            db = self._open()
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
        """Close the file; what it holds is first kept if it was removed or replaced (see ``transaction``)."""
        with self.lock:
            if self._db is None:
                return
            try:
                if not self.readonly:
                    self._follow()
            finally:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                    logger.debug("%s: closed", self.path)

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._db

    def _follow(self) -> None:
        """Keep the contents when the path no longer names the file this connection writes to."""
        if self._identity is None:
            return
        try:
            now = identity_of(self.path)
        except OSError:  # cannot tell (the directory cannot be searched now, say): carry on
            return
        if now != self._identity:
            self._recover(removed=now is None)

    def _recover(self, removed: bool) -> None:
        """Move everything this connection holds into a new file (see ``recovery``), and use it."""
        old, db = self.path, self._open()
        try:
            target = move_contents(db, old, removed, self._mode)  # closes db, whatever happens
            opened = _connect(target, False, self._key, self._source)
        except BaseException:
            self._db = None
            raise
        self._db, self.signer, self._identity, self.path = opened.db, opened.signer, opened.identity, target


def _connect(path: str, readonly: bool, key: bytes, source: str) -> Opened:
    """Open ``path``: create it and its tables, or check that it is a store of this format and key."""
    existed = check_store_file(path)
    if readonly and existed is None:
        raise FileNotFoundError(errno.ENOENT, "no ezpool store at this path", path)
    try:
        db = _open_readonly(path) if readonly else _sqlite(path)
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        raise StoreError(f"{path} is not an ezpool store: {exc}") from None
    try:
        if existed is None:
            _fix_new_file(path)
        now = check_store_file(path, warn=False)  # still the file checked, and the user's (or made by us)
        if existed is not None and now != existed:
            raise StoreError(f"{path} was replaced while it was being opened; try again")
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if readonly:
            db.execute("PRAGMA query_only = ON")
        else:
            _use_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")
        signer = _check_schema(db, path, readonly, key, source)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.OperationalError):
            raise StoreError(f"cannot open {path}: {exc}{_read_only_hint(path, readonly)}") from exc
        if isinstance(exc, sqlite3.DatabaseError):  # "file is not a database"
            raise StoreError(f"{path} is not an ezpool store: {exc}") from None
        raise
    return Opened(db, signer, now, mode)


def _sqlite(target: str, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(
        target, uri=uri, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )


def _open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro``, or ``immutable=1`` where SQLite cannot make its ``-shm``
    file (a read-only file system or directory) and no ``-wal`` file holds commits not in the file."""
    uri = Path(path).resolve().as_uri()
    db = _sqlite(uri + "?mode=ro", uri=True)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # SQLite opens its files here
        return db
    except sqlite3.OperationalError as exc:
        db.close()
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF != _SQLITE_CANTOPEN or os.path.exists(path + "-wal"):
            raise
    logger.debug("%s: read as immutable (SQLite cannot make its -shm file there)", path)
    return _sqlite(uri + "?immutable=1", uri=True)


def _fix_new_file(path: str) -> None:
    """Results may be private: a new store is never writable by group or others, whatever the umask."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if hasattr(os, "geteuid") and info.st_uid == os.geteuid():
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _read_only_hint(path: str, readonly: bool) -> str:
    if readonly:
        return ""
    try:
        flags = os.statvfs(os.path.dirname(os.path.abspath(path))).f_flag
    except (OSError, AttributeError):
        return ""
    if flags & getattr(os, "ST_RDONLY", 1):
        return " (its file system is read-only: read it with open_store or python -m ezpool.store)"
    return ""


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


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds. Python 3.11 and later
    give the result code; before, the message is all SQLite's module says."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return str(exc) == "database is locked"  # pragma: no cover - Python 3.9 and 3.10


def _check_schema(db: sqlite3.Connection, path: str, readonly: bool, key: bytes, source: str) -> Signer:
    """Make the tables of a new file, or check the format and the key of a store; what signs its rows."""
    if not readonly:
        db.execute("BEGIN IMMEDIATE")  # two processes opening a new file make its tables once
    try:
        (app,) = db.execute("PRAGMA application_id").fetchone()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if app == APPLICATION_ID and version == UNSIGNED_VERSION:
            raise StoreError(
                f"{path} is an ezpool store of format {version}, made by an older ezpool that did not sign "
                f"what stores hold; this one reads only signed stores (format {SCHEMA_VERSION}), because "
                f"loading a store can run the code of whoever wrote it. If you made it yourself, sign it "
                f"with your key once: python -m ezpool.store --upgrade {path}"
            )
        if app == APPLICATION_ID and version not in (UNGROUPED_VERSION, SCHEMA_VERSION):
            raise StoreError(
                f"{path} is an ezpool store of format {version}; this ezpool reads formats "
                f"{UNGROUPED_VERSION} and {SCHEMA_VERSION} (use the ezpool that wrote it, or another file)"
            )
        if app != APPLICATION_ID:
            (tables,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if app or version or tables:
                raise StoreError(f"{path} is an SQLite file, but not an ezpool store")
            if readonly:
                raise StoreError(f"{path} is empty, not an ezpool store")
            for statement in _SCHEMA:
                db.execute(statement)
            signer = Signer(key, secrets.token_bytes(SALT_SIZE))
            write_signing(db, signer)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            logger.debug("%s: created a store", path)
        else:
            signer = check_store_key(db, path, key, source)
            if version == UNGROUPED_VERSION and not readonly:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if db.in_transaction:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return signer
