"""A store file removed or replaced under a run: everything its connection holds, moved to a new file.

``Database`` notices it at a commit, or at closing: the path no longer names the
file it opened (its device and inode, ``files.FileIdentity``). Until then, commits
went on into the old file, which SQLite still holds open, so nothing is lost yet;
``move_contents`` copies all of it (SQLite's backup, through the open connection)
into a new file in the same directory, closes the old connection, and gives the
new file the path when the path is free (the file was removed), or else a name
beside it, ``NAME.recovered-TIME-PID.EXT`` (the file was replaced, or removed and
made again by another process). A warning names the file the run goes on in.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import tempfile
import time

from .._core.logs import get_logger
from ..errors import StoreError

logger = get_logger(__name__)

__all__ = ["move_contents"]


def move_contents(db: sqlite3.Connection, old: str, removed: bool, mode: int) -> str:
    """Copy all ``db`` holds into a new file with permissions ``mode``, close ``db``; the new file's path.

    ``removed``: nothing is at ``old`` now, and the new file takes its name if it
    still can. Raises ``StoreError`` when no copy can be made (then ``db`` is closed
    and its contents are lost with the process, as SQLite would lose them).
    """
    try:
        try:
            temporary = _copy(db, old, mode)
        finally:
            db.close()  # nothing more goes into the old file
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"the store {old} was {'removed' if removed else 'replaced'} while this run wrote to it, and "
            f"its outcomes cannot be copied to a new file: {exc}"
        ) from exc
    try:
        # The old file's log and its index are still at the path's names: SQLite would take them
        # for those of the file there now (or made there next), and corrupt it.
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old + suffix)
        beside = _beside(old)
        target = _publish(temporary, [old] * removed + [beside, f"{beside}-{secrets.token_hex(4)}"])
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    if target == old:
        logger.warning(
            "the store %s was removed while this run wrote to it; made it again with everything it held, "
            "and this run goes on writing there", old,
        )
    else:
        logger.warning(
            "the store %s was %s while this run wrote to it; everything it held, and the rest of this run, "
            "is in %s", old, "removed and made again by another process" if removed else "replaced", target,
        )
    return target


def _copy(db: sqlite3.Connection, path: str, mode: int) -> str:
    """A new file holding all ``db`` holds, beside ``path`` (or in the working directory
    when the directory of ``path`` is gone)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        directory = os.getcwd()
    descriptor, temporary = tempfile.mkstemp(prefix=".ezpool-store-", suffix=".recovering", dir=directory)
    os.close(descriptor)
    try:
        os.chmod(temporary, mode)
        with contextlib.closing(sqlite3.connect(temporary)) as copy:
            db.backup(copy)
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _beside(path: str) -> str:
    """A new name beside ``path`` for outcomes that cannot go back to it."""
    root, extension = os.path.splitext(path)
    return f"{root}.recovered-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{extension}"


def _publish(temporary: str, names: list[str]) -> str:
    """Give the file ``temporary`` the first of ``names`` that is free (never overwriting one).

    The names are taken in ``temporary``'s directory: the store's own, unless it is gone.
    """
    directory = os.path.dirname(temporary)
    for name in names:
        target = os.path.join(directory, os.path.basename(name))
        try:
            os.link(temporary, target)
            return target
        except FileExistsError:
            continue
    raise StoreError(f"cannot find a free name for the outcomes of {names[0]}")
