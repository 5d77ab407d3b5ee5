"""A process that stops when the process that started it has gone (``--parent-pid``)."""

from __future__ import annotations

import os
import select
import time
from typing import Callable, Optional

__all__ = ["stop_with_parent"]

#: Seconds between two looks at the parent, where no pidfd can wait for it.
_PARENT_EVERY = 0.5


def stop_with_parent(parent_pid: int, ask_stop: Callable[[], None]) -> None:
    """Call ``ask_stop`` once the process that started this one has gone.

    Where Linux offers a pidfd, the thread sleeps in ``poll`` until the parent exits:
    an idle worker (a pool may keep 128) then never wakes for it. Elsewhere it
    looks every ``_PARENT_EVERY`` seconds.
    """
    watched = _parent_fd(parent_pid)
    if watched is not None:
        poller = select.poll()
        poller.register(watched, select.POLLIN)
        try:
            while not poller.poll():
                pass
        finally:
            os.close(watched)
        ask_stop()
        return
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_EVERY)
    ask_stop()


def _parent_fd(parent_pid: int) -> Optional[int]:
    """A pidfd of ``parent_pid`` if it is still this process's parent (Linux 5.3+), else None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd = int(opener(parent_pid))
    except OSError:
        return None
    if os.getppid() != parent_pid:  # it exited before the pidfd was opened (and the pid may be reused)
        os.close(fd)
        return None
    return fd
