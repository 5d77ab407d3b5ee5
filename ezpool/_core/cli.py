"""What every EzPool command line does alike: go quietly when its reader goes away.

``python -m ezpool.store PATH | head -3``: ``head`` reads three lines and exits, and
the next write to the pipe fails with ``BrokenPipeError`` (Python ignores ``SIGPIPE``,
which would end a C program there). ``command_line`` turns that into a quiet end
(nothing on stderr, exit status ``CLOSED_STDOUT``), as Python's documentation of
``SIGPIPE`` advises: stdout is pointed at ``os.devnull`` so that the interpreter's
last flush at exit fails no more. A ``BrokenPipeError`` from anything else (a
socket to a worker) is no reason to go quietly, and is raised as before.

A server (``serve``, ``nameserver``) writes its address once, as ``stdout_line`` does: if
no one reads it, it serves all the same.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar, cast

__all__ = ["CLOSED_STDOUT", "command_line", "stdout_line"]

#: The exit status when stdout's reader went away: 128 + SIGPIPE, the status a shell
#: reports for ``seq 1 100000 | head -1``'s ``seq`` under ``set -o pipefail``. Scripts
#: that accept it from ``cat`` or ``grep`` accept it from EzPool; it is neither 1 nor 2,
#: which the commands use for their own failures.
CLOSED_STDOUT = 141

_Main = TypeVar("_Main", bound=Callable[..., int])


def command_line(main: _Main) -> _Main:
    """``main``, ending with ``CLOSED_STDOUT`` and nothing on stderr once no one reads stdout."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            status = main(*args, **kwargs)
            sys.stdout.flush()  # what is still buffered fails here, not at exit
        except BrokenPipeError:
            if not _reader_gone():
                raise
            return CLOSED_STDOUT
        return status

    return cast(_Main, run)


def stdout_line(line: str) -> None:
    """Write ``line`` to stdout now; if no one reads stdout any more, from now on to nowhere."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        if not _reader_gone():
            raise


def stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is gone."""
    import select  # only once a write failed

    try:
        descriptor = sys.stdout.fileno()
        poll = select.poll()
        poll.register(descriptor, 0)  # errors and hang-ups are reported whatever is asked
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, ValueError, OSError):  # no stdout, or not a file
        return False


def _reader_gone() -> bool:
    """After a ``BrokenPipeError``: whether it was stdout's reader that went away, and if so,
    stdout pointed at ``os.devnull`` from now on."""
    if not stdout_closed():
        return False
    _stdout_to_devnull()
    return True


def _stdout_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
