"""The backends, looked up by mode name and imported only when first used."""

from __future__ import annotations

import importlib
from types import MappingProxyType

from .._core.logs import get_logger
from .._core.records import Batch
from .base import Backend

logger = get_logger(__name__)

__all__ = ["Backend", "Batch", "MODES", "check_mode", "create"]

#: Mode name -> (module, class) of the backend that runs it.
_BACKENDS = MappingProxyType(
    {
        "serial": ("ezpool._backends.serial", "SerialBackend"),
        "threads": ("ezpool._backends.threads", "ThreadBackend"),
        "parallel": ("ezpool._backends.parallel.backend", "ParallelBackend"),
        "distributed": ("ezpool._backends.distributed.backend", "DistributedBackend"),
    }
)

MODES = tuple(_BACKENDS)


def check_mode(mode: object) -> str:
    """Return ``mode`` if it names a mode, else raise ``ValueError`` naming it."""
    if not isinstance(mode, str) or mode not in _BACKENDS:
        choices = ", ".join(repr(name) for name in MODES)
        raise ValueError(f"unknown mode {mode!r}: choose one of {choices}")
    return mode


def create(mode: str) -> Backend:
    """Import the backend of ``mode`` (on first use) and make one."""
    module_name, class_name = _BACKENDS[check_mode(mode)]
    module = importlib.import_module(module_name)
    backend: Backend = getattr(module, class_name)()
    logger.debug("created the %s backend", mode)
    return backend
