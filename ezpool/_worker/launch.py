"""How EzPool starts an ``ezpool.serve`` process itself, and the import path it gets.

A pool starts its own workers, ``serve --procs`` starts one process per port, and a
worker replaces itself to stop a task past its timeout. None of them runs
``python -m ezpool.serve``: ``-m`` (and ``-c``) put the current directory first on
``sys.path``, so an ``ezpool/`` package, or a module named like the user's, planted
in a shared directory the user works from would run as the user. Instead::

    python -c "<BOOT: drop '' from sys.path; then import ezpool.serve and run it>" ARGS...
        environment: PYTHONPATH = the starting process's sys.path (see ``import_path``)

Nothing is imported before ``''`` is gone (Python has imported only its own start-up
modules, and ``site``, which never looks in the current directory). The worker then
imports what a client sends by name from the very directories the client imports
from, in the same order, and from nowhere else.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping, Sequence
from typing import Optional

from .._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["BOOT", "serve_command", "import_path", "worker_env", "leave_shared_directory"]

#: The program a started worker runs: ``''`` (the current directory, which ``-c`` puts
#: first on ``sys.path``) leaves the path before anything is imported from it.
BOOT = (
    "import sys; sys.path[:] = [p for p in sys.path if p]; "
    "from ezpool.serve import main; sys.exit(main(sys.argv[1:]))"
)


def serve_command(argv: Sequence[str]) -> list[str]:
    """The command line that runs ``ezpool.serve`` with ``argv``, the current directory
    kept off its import path."""
    return [sys.executable, "-c", BOOT, *argv]


def import_path(path: Sequence[str]) -> list[str]:
    """``path`` (a ``sys.path``) as a started worker gets it.

    ``''`` stands for the current directory, which is kept (as its full path) only where
    no one else can write it: owned by this user or root, and writable by neither group
    nor others. The same holds for an entry that names the current directory. Others
    are kept as they are: the starting process imports from them itself.
    """
    cwd = os.getcwd()
    kept: list[str] = []
    for entry in path:
        here = entry == "" or _same(entry, cwd)
        if here and not _trusted(cwd):
            logger.warning(
                "not putting the current directory %s on the import path of the workers started "
                "here: others can write it, and what they put there would run as you. Code "
                "from it travels by value if listed in ship_modules", cwd,
            )
            continue
        full = cwd if entry == "" else entry
        if full not in kept:
            kept.append(full)
    return kept


def worker_env(base: Mapping[str, str], path: Sequence[str]) -> dict[str, str]:
    """``base`` with ``PYTHONPATH`` set to ``import_path(path)``."""
    return dict(base, PYTHONPATH=os.pathsep.join(import_path(path)))


def leave_shared_directory(path: list[str]) -> Optional[str]:
    """Take the current directory off the front of ``path`` (where ``python -m`` puts it)
    if others can write it; the directory taken off, if any.

    What was imported before (EzPool itself, by then) may have come from there; what is
    imported from now on (Pyro4, cloudpickle, the modules clients name) does not."""
    if not path:
        return None
    cwd = os.getcwd()
    if (path[0] == "" or _same(path[0], cwd)) and not _trusted(cwd):
        del path[0]
        return cwd
    return None


def _same(entry: str, cwd: str) -> bool:
    try:
        return os.path.samefile(entry, cwd)
    except OSError:
        return False


def _trusted(directory: str) -> bool:
    """Whether only this user (or root) can add files to ``directory``."""
    try:
        info = os.stat(directory)
    except OSError:
        return False
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # pragma: no cover - not POSIX: no owners to check
        return True
    return info.st_uid in (geteuid(), 0) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
