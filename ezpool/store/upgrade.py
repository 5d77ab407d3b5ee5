"""``python -m ezpool.store --upgrade PATH``: sign a store made by an older EzPool (format 2).

Stores of format 2 hold the same rows as format 3, unsigned. Signing one vouches
for what it holds: do it only for a store you made yourself. It runs nothing and
unpickles nothing: it adds a ``mac`` column to each table of rows, signs each row's
stored bytes with a key derived from the user's EzPool key (see ``signing``), and
sets the format to 3, in one transaction. The file is checked first like any store
(``files``: the user's own, not writable by others).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from typing import Union

from .._core.logs import get_logger
from ..errors import StoreError
from ..security import resolve_key
from .database import (
    APPLICATION_ID,
    BUSY_TIMEOUT,
    SCHEMA_VERSION,
    SIGNED_TABLES,
    SIGNING_TABLE,
    UNSIGNED_VERSION,
    write_signing,
)
from .files import check_store_file
from .signing import SALT_SIZE, Signer

logger = get_logger(__name__)

__all__ = ["upgrade"]

PathLike = Union[str, "os.PathLike[str]"]

_BATCH = "SELECT sweep, tasks, outcome, layout, elapsed, failed, worker, recorded FROM batches WHERE id = ?"


def upgrade(path: PathLike, key: Union[str, bytes, None] = None) -> int:
    """Sign every row of the format-2 store ``path`` with ``key`` (default: the user's); how many rows.

    Raises ``FileNotFoundError`` for a missing file, and ``StoreError`` for a file that
    is not the user's own, or not an ezpool store of format 2.
    """
    shown = os.fspath(path)
    if check_store_file(shown) is None:
        raise FileNotFoundError(2, "no ezpool store at this path", shown)
    signer = Signer(resolve_key(key) or b"", secrets.token_bytes(SALT_SIZE))
    try:
        with contextlib.closing(sqlite3.connect(shown, timeout=BUSY_TIMEOUT, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                signed = _sign_all(db, shown, signer)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot upgrade {shown}: {exc}") from exc
    logger.info("%s: signed %d rows; it is a store of format %d now", shown, signed, SCHEMA_VERSION)
    return signed


def _sign_all(db: sqlite3.Connection, path: str, signer: Signer) -> int:
    (app,) = db.execute("PRAGMA application_id").fetchone()
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if app != APPLICATION_ID:
        raise StoreError(f"{path} is not an ezpool store")
    if version != UNSIGNED_VERSION:
        raise StoreError(
            f"{path} is an ezpool store of format {version}; --upgrade signs stores of format "
            f"{UNSIGNED_VERSION} only"
        )
    for table in SIGNED_TABLES:
        db.execute(f"ALTER TABLE {table} ADD COLUMN mac BLOB NOT NULL DEFAULT x''")
    db.execute(SIGNING_TABLE)
    write_signing(db, signer)
    signed = 0
    for row in db.execute("SELECT id, name, store_key, code, data, created FROM sweeps").fetchall():
        db.execute("UPDATE sweeps SET mac = ? WHERE id = ?", (signer.sweep(*row), row[0]))
        signed += 1
    # Row by row, so that no more than one row's values are held at once.
    for (batch_id,) in db.execute("SELECT id FROM batches ORDER BY id").fetchall():
        columns = db.execute(_BATCH, (batch_id,)).fetchone()
        db.execute("UPDATE batches SET mac = ? WHERE id = ?", (signer.batch(*columns), batch_id))
        signed += 1
    for row_id, sweep, upto, keys in db.execute("SELECT id, sweep, upto, keys FROM forgotten").fetchall():
        db.execute("UPDATE forgotten SET mac = ? WHERE id = ?", (signer.forgotten(sweep, upto, keys), row_id))
        signed += 1
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return signed
