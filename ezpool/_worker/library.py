"""The code a generic served worker keeps loaded for its clients (``Servant.load``).

A client sends its function or ``BaseWorker`` class once, as a shipment
(``ezpool._core.shipping``) named by its content id ``fid``; the worker keeps the
``FUNCTIONS_KEPT`` most recently used, and tears down a ``BaseWorker`` it set up
when it drops it (or when the worker stops).
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Callable, Optional, cast

from .._core.logs import get_logger
from .._core.shipping import unpack
from ..worker import BaseWorker

logger = get_logger(__name__)

__all__ = ["FUNCTIONS_KEPT", "Library"]

#: Functions a generic worker keeps loaded (the least recently used goes first).
FUNCTIONS_KEPT = 32


def _is_worker_class(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, BaseWorker)


class Library:
    """Loaded code by ``fid``: what runs a chunk that names it."""

    def __init__(self, lock: threading.Condition) -> None:
        self._lock = lock  # the servant's
        self._functions: collections.OrderedDict[str, Callable[..., Any]] = collections.OrderedDict()
        self._instances: dict[str, BaseWorker] = {}  # BaseWorker instances this process set up

    def get(self, fid: str) -> Optional[Callable[..., Any]]:
        return self._functions.get(fid)

    def load(self, fid: str, blob: bytes) -> None:
        """Keep the code in the shipment ``blob`` under ``fid``; raises what stops it loading."""
        with self._lock:
            if fid in self._functions:
                self._functions.move_to_end(fid)
                return
        run = self._prepare(fid, unpack(blob))
        with self._lock:
            self._functions[fid] = run
            while len(self._functions) > FUNCTIONS_KEPT:
                old, _ = self._functions.popitem(last=False)
                self._retire(old)

    def close(self) -> None:
        """Tear down every ``BaseWorker`` this process set up for clients."""
        for fid in list(self._instances):
            self._retire(fid)

    def _prepare(self, fid: str, target: Any) -> Callable[..., Any]:
        if isinstance(target, functools.partial) and _is_worker_class(target.func):
            # A BaseWorker with a context (see ezpool._core.tasks.bind): run(context, *args).
            return functools.partial(self._prepare(fid, target.func), *target.args)
        if _is_worker_class(target):
            instance = target()
            instance.setup()
            self._instances[fid] = instance
            return instance.run
        if not callable(target):
            raise TypeError(f"{target!r} is neither a BaseWorker subclass nor a function")
        return cast(Callable[..., Any], target)

    def _retire(self, fid: str) -> None:
        instance = self._instances.pop(fid, None)
        if instance is not None:
            try:
                instance.teardown()
            except Exception:
                logger.exception("teardown of %s failed", type(instance).__name__)
