"""What tasks print and log on workers, captured there and shown in the calling process.

With ``capture_output=True`` (parallel and distributed modes)::

    worker process (execution.run_chunk_captured,
                    with ezpool._worker.output.Capture)          calling process (Pool._run)
    ─────────────────────────────────────────────          ───────────────────────────
    for the whole chunk, a ``Capture``:
      sys.stdout, sys.stderr -> streams that keep what
        the thread running the tasks writes
      the root logger's handlers -> one that keeps that
        thread's records at the caller's level, and
        passes other threads' records on as before
    per task: its writes and records, in order,
      under its offset in the chunk ─── the reply's 5th element ──▶ Batch.outputs
                                                                    Relay.show(batch):
                                                                      text -> sys.stdout / sys.stderr
                                                                        (tqdm.write under a bar),
                                                                        each line tagged
                                                                        "[worker task T] "
                                                                      records -> your loggers

This module holds the types and the calling side; the worker side is in
``ezpool._worker.output``, imported only when a worker is asked to capture (it needs
:mod:`logging`, which a run that captures nothing never imports).

Only the thread that runs the tasks is captured: the worker's own threads (its
connection, its watchdogs) keep writing and logging where they did. Text written
straight to file descriptors 1 and 2 (C code, child processes) is not captured.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from .logs import get_logger
from .serialization import short_repr

if TYPE_CHECKING:
    from ..options import Options
    from .progress import Progress
    from .records import Batch

logger = get_logger(__name__)

__all__ = ["Relay", "capture_level"]


def capture_level(options: Options) -> Optional[int]:
    """What a worker is asked to capture: ``None`` (nothing), or the lowest log level to keep.

    The level is this process's root logger's effective level, read at the call.
    """
    if not options.capture_output:
        return None
    import logging

    return logging.getLogger().getEffectiveLevel()


# --- the calling side -----------------------------------------------------------------


class Relay:
    """Shows what tasks wrote on workers, in the calling process, tagged with where and which.

    Text goes to ``sys.stdout``/``sys.stderr`` line by line, each line starting with
    ``[WORKER task TASK]``; a progress bar, if shown, is kept whole (``tqdm.write``).
    Log records go to the logger of the same name here, if it is enabled for their
    level, with the same tag in front of the message and the attributes
    ``ezpool_task`` and ``ezpool_worker`` for filters.
    """

    def __init__(self, keys: Sequence[Any], progress: Progress) -> None:
        self._keys = keys
        self._progress = progress

    def show(self, batch: Batch) -> None:
        outputs = batch.outputs
        if not outputs:
            return
        with self._progress.redirect_logging():
            for offset in sorted(outputs):
                task = self._keys[batch.start + offset]
                tag = f"[{batch.worker} task {short_repr(task, 60)}]"
                for kind, item in outputs[offset]:
                    if kind == "log":
                        _emit(item, tag, task, batch.worker)
                    elif kind in ("stdout", "stderr"):
                        file = sys.stdout if kind == "stdout" else sys.stderr
                        if file is not None:
                            self._progress.write(_tagged(item, tag), file)


def _tagged(text: str, tag: str) -> str:
    """``text`` with ``tag`` in front of every line, ending with a newline."""
    return "".join(f"{tag} {line}\n" for line in text.splitlines())


def _emit(fields: dict[str, Any], tag: str, task: Any, worker: str) -> None:
    import logging  # a worker logged, so this process has it: ``capture_level`` imported it

    record = logging.makeLogRecord(fields)
    record.msg = f"{tag} {record.msg}"
    record.args = None
    record.ezpool_task = task
    record.ezpool_worker = worker
    target = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    if target.isEnabledFor(record.levelno):
        target.handle(record)
