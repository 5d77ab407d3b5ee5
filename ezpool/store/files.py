"""Whose a store file is, and whether it is still the file a run writes to.

Reading a store unpickles what it holds, so EzPool reads only stores it can trust
came from the user: the file (and SQLite's ``-wal``, ``-shm`` and ``-journal`` files
beside it) must be a regular file the user owns that neither group nor others can
write. A store planted in a shared directory (``/tmp``, a group's project folder) by
someone else is refused before SQLite opens it, with ``StoreError`` naming the file
and the fix; what it holds is also signed (``signing``), so a file that passes
these checks and holds rows written without the user's key is still never loaded.

A store in a directory that others can write and that is not sticky can be
removed or replaced by them; that is logged as a warning when it is opened. The file's
device and inode are kept (``FileIdentity``) so that a run notices when the path
no longer names the file it writes to (``Database`` then keeps the outcomes).

These checks use POSIX owners and modes; where there are none (Windows) they are skipped.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple, Optional

from .._core.logs import get_logger
from .._core.private import problem_with
from ..errors import StoreError

logger = get_logger(__name__)

__all__ = ["FileIdentity", "check_store_file", "identity_of", "COMPANIONS"]

#: The files SQLite keeps beside a store: the write-ahead log, its index, a rollback journal.
COMPANIONS = ("-wal", "-shm", "-journal")

#: Write bits of group and others.
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class FileIdentity(NamedTuple):
    """A file's device and inode: what a path named when it was checked."""

    device: int
    inode: int


def identity_of(path: str) -> Optional[FileIdentity]:
    """The identity of the file ``path`` names now, or ``None`` when it names none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return FileIdentity(info.st_dev, info.st_ino)


def check_store_file(path: str, warn: bool = True) -> Optional[FileIdentity]:
    """Refuse a store at ``path`` that is not the user's alone to write; its identity, if it exists.

    Raises ``StoreError`` naming the file and the fix when it (or a ``-wal``, ``-shm``,
    ``-journal`` file beside it) is not a regular file, is owned by another user, or
    can be written by group or others. A companion must not be a symbolic link:
    SQLite would write through it. With ``warn``, a directory others can write (not
    sticky) is logged as a warning.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        found = None
    else:
        _check(info, path, "store")
        found = FileIdentity(info.st_dev, info.st_ino)
    for suffix in COMPANIONS:
        companion = path + suffix
        try:
            info = os.lstat(companion)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise StoreError(
                f"{companion}, beside the store {path}, is a symbolic link: SQLite would write through it "
                f"to another file; remove it (rm {companion}) if you did not make it, and keep stores in a "
                f"directory only you can write"
            )
        _check(info, companion, "store's SQLite file")
    if warn:
        _warn_about_directory(path)
    return found


def _check(info: os.stat_result, shown: str, what: str) -> None:
    reason = problem_with(info, shown, f"the {what}", secret=False)
    if reason:
        raise StoreError(
            f"{reason}. Reading a store unpickles what it holds, which can run the code of whoever "
            "wrote it, so EzPool reads only your own"
        )


def _warn_about_directory(path: str) -> None:
    """Log a warning when others can remove or replace files in the store's directory."""
    if not hasattr(os, "geteuid"):
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(directory)
    except OSError:
        return
    if info.st_mode & _OTHERS_WRITE and not info.st_mode & stat.S_ISVTX:
        logger.warning(
            "the store %s is in %s, which others can write (mode %04o, not sticky): they can remove or "
            "replace it; EzPool still loads nothing it did not sign, but keep stores in a directory only "
            "you can write (or a sticky one, like /tmp)",
            path, directory, stat.S_IMODE(info.st_mode),
        )
