"""EzPool: run a function over many tasks, in a loop, on every core, or on many machines.

>>> from ezpool import Pool
>>> with Pool() as pool:
...     results = pool.smap(abs, [-2, -1, 0])
>>> results
{-2: 2, -1: 1, 0: 0}
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .errors import (
    AuthenticationError,
    ClusterError,
    EzPoolError,
    IgnoredOptionWarning,
    MainNotGuarded,
    RemoteError,
    RemoteTraceback,
    ResultNotSerializable,
    SecurityError,
    StoreError,
    StoreMismatch,
    TaskNotSerializable,
    TaskTimeout,
    WorkerCrashed,
    WorkerOutOfMemory,
    WorkerUnavailable,
)

if TYPE_CHECKING:
    from .executor import PoolExecutor
    from .naming import list_workers
    from .options import Options
    from .pool import EzPool, Pool
    from .results import Results, TaskOutcome
    from .store import open_store
    from .worker import BaseWorker

#: Names imported on first use, from the module that holds them. ``import ezpool``
#: loads only the errors: a worker process, which imports ``ezpool._backends.parallel.child``
#: or ``ezpool.serve``, never loads the ``Pool`` side; and the caller has no SQLite,
#: no cloudpickle, and no ``ssl`` or ``hashlib`` (which ``list_workers`` needs).
_LAZY = {
    "Pool": ".pool",
    "EzPool": ".pool",
    "Options": ".options",
    "Results": ".results",
    "TaskOutcome": ".results",
    "BaseWorker": ".worker",
    "open_store": ".store",
    "PoolExecutor": ".executor",
    "list_workers": ".naming",
}

__all__ = [
    "Pool",
    "EzPool",
    "PoolExecutor",
    "BaseWorker",
    "Options",
    "list_workers",
    "Results",
    "TaskOutcome",
    "EzPoolError",
    "RemoteError",
    "RemoteTraceback",
    "WorkerCrashed",
    "IgnoredOptionWarning",
    "MainNotGuarded",
    "WorkerOutOfMemory",
    "WorkerUnavailable",
    "TaskTimeout",
    "ResultNotSerializable",
    "TaskNotSerializable",
    "AuthenticationError",
    "SecurityError",
    "StoreError",
    "StoreMismatch",
    "ClusterError",
    "open_store",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ezpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
