"""The serial mode: a plain loop in the calling process."""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Sequence
from time import perf_counter
from typing import Any, Callable

from ..options import Options
from ..tasks import call
from .base import Backend, Batch

logger = logging.getLogger(__name__)

__all__ = ["SerialBackend"]

#: Seconds between batches when nobody needs to hear of every task at once.
_FLUSH_EVERY = 0.05


class SerialBackend(Backend):
    """Runs each task in turn in this process; an exception is kept, not raised."""

    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool
    ) -> Generator[Batch, None, None]:
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {fun!r}")
        if options.timeout is not None:
            logger.debug("serial mode cannot stop a running task; timeout=%s ignored", options.timeout)
        if options.capture_output:
            logger.debug("serial mode: tasks write here directly; capture_output ignored")
        worker = f"pid {os.getpid()}"
        start, values, times, failed = 0, [], [], set()
        flushed = perf_counter()
        for position, task in enumerate(tasks):
            began = perf_counter()
            try:
                value = call(fun, task)
            except Exception as exc:
                value = exc
                failed.add(position - start)
            finished = perf_counter()
            values.append(value)
            times.append(finished - began)
            if per_task or finished - flushed >= _FLUSH_EVERY:
                yield Batch(start, values, times, failed, worker)
                start, values, times, failed = position + 1, [], [], set()
                flushed = finished
        if values:
            yield Batch(start, values, times, failed, worker)
