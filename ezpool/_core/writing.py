"""Files written whole or not at all: a trace or a report is written to a file of its own
next to the target, then put in its place (``os.replace``), so that a reader, or another
writer of the same path at the same time, never sees half of one."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import IO, Union

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["replacing"]


@contextlib.contextmanager
def replacing(path: Union[str, os.PathLike[str]], encoding: str, errors: str = "strict") -> Iterator[IO[str]]:
    """A text file to write instead of ``path``, put in its place when the block ends well
    (and removed when it does not). Two writers at once each write their own file: the
    last to finish wins, whole."""
    target = os.fspath(path)
    temporary = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(temporary, "w", encoding=encoding, errors=errors) as file:
            yield file
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
