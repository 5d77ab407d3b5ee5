"""The worker side of ``capture_output``: what the thread running a chunk writes and logs.

``execution.run_chunk_captured`` enters a ``Capture`` for the whole chunk; see
``ezpool._core.relay`` for the way back to the calling process.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Optional

from .._core.logs import get_logger
from .._core.records import TaskOutput

logger = get_logger(__name__)

__all__ = ["Capture"]

#: The attributes of a log record that travel (the message already formatted).
_FIELDS = (
    "name", "levelno", "levelname", "created", "msecs", "pathname", "filename", "module",
    "lineno", "funcName", "process", "processName", "thread", "threadName",
)

_FORMATTER = logging.Formatter()


class Capture:
    """Keeps what the calling thread writes and logs, task by task, while entered.

    ``begin()`` before a task, ``end()`` after it: ``end`` returns what the task
    wrote, or ``None`` if nothing. Log records are kept from ``level`` up (a logger
    the worker gave a level of its own still decides for its records).
    """

    def __init__(self, level: int) -> None:
        self.level = level
        self._owner = threading.get_ident()
        self._events: Optional[list[tuple[str, Any]]] = None
        self._saved: Optional[tuple[Any, Any, list[logging.Handler], int]] = None
        self._handler = _Handler(self)
        self._streams = (_Stream(self, "stdout", None), _Stream(self, "stderr", None))

    def __enter__(self) -> Capture:
        root = logging.getLogger()
        self._saved = (sys.stdout, sys.stderr, root.handlers, root.level)
        self._owner = threading.get_ident()
        self._streams[0].original, self._streams[1].original = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._streams
        root.handlers = [self._handler]
        if root.level > self.level:  # let the task's records reach the handler at the caller's level
            root.setLevel(self.level)
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._saved is not None
        stdout, stderr, handlers, level = self._saved
        self._saved, self._events = None, None
        # What a task changed on purpose (its own stream, its own handlers) stays.
        if sys.stdout is self._streams[0]:
            sys.stdout = stdout
        if sys.stderr is self._streams[1]:
            sys.stderr = stderr
        root = logging.getLogger()
        added = [each for each in root.handlers if each is not self._handler and each not in handlers]
        root.handlers = [*handlers, *added]
        if root.level != level:
            root.setLevel(level)

    def begin(self) -> None:
        self._events = []

    def end(self) -> Optional[TaskOutput]:
        events, self._events = self._events, None
        if not events:
            return None
        return [(kind, "".join(item) if kind != "log" else item) for kind, item in events]

    def _write(self, kind: str, text: str) -> bool:
        """Keep ``text`` if the task's thread wrote it during a task; whether it was kept."""
        events = self._events
        if events is None or threading.get_ident() != self._owner:
            return False
        if events and events[-1][0] == kind:
            events[-1][1].append(text)
        else:
            events.append((kind, [text]))
        return True

    def _log(self, record: logging.LogRecord) -> bool:
        """Keep ``record`` if the task's thread made it during a task; whether it was kept."""
        events = self._events
        if events is None or threading.get_ident() != self._owner:
            return False
        if record.levelno >= self.level:
            fields = {name: getattr(record, name, None) for name in _FIELDS}
            fields["msg"] = _message(record)
            fields["exc_text"] = record.exc_text or (
                _FORMATTER.formatException(record.exc_info) if record.exc_info else None
            )
            fields["stack_info"] = record.stack_info
            events.append(("log", fields))
        return True

    def _enabled_before(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` (another thread's) would have been made without this capture."""
        assert self._saved is not None
        found = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
        while found.level == logging.NOTSET and found.parent is not None:
            found = found.parent
        level = self._saved[3] if found is logging.getLogger() else found.level
        return record.levelno >= level

    def _forward(self, record: logging.LogRecord) -> None:
        """Hand another thread's record to the root handlers it would have reached."""
        if self._saved is None or not self._enabled_before(record):
            return
        handlers = self._saved[2]
        if not handlers and logging.lastResort is not None:
            handlers = [logging.lastResort]
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


class _Stream:
    """Stands in for ``sys.stdout`` or ``sys.stderr`` while a ``Capture`` is entered."""

    def __init__(self, capture: Capture, kind: str, original: Any) -> None:
        self._capture = capture
        self._kind = kind
        self.original = original

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._capture._write(self._kind, text) or self.original is None:
            return len(text)
        return int(self.original.write(text))

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.original is not None:
            self.original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer, ...: the real stream's
        return getattr(self.original, name)


class _Handler(logging.Handler):
    """The root logger's only handler while a ``Capture`` is entered."""

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self._capture = capture

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        if not self._capture._log(record):
            self._capture._forward(record)
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # a bad format string: say so rather than lose the record
        return f"{record.msg!r} % {record.args!r} (could not be formatted: {exc})"
