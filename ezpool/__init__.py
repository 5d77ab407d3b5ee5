"""EzPool: run a function over many tasks, in a loop, on every core, or on many machines.

>>> from ezpool import Pool
>>> with Pool() as pool:
...     results = pool.smap(abs, [-2, -1, 0])
>>> results
{-2: 2, -1: 1, 0: 0}
"""

from .errors import (
    AuthenticationError,
    EzPoolError,
    RemoteError,
    RemoteTraceback,
    ResultNotSerializable,
    SecurityError,
    TaskTimeout,
    WorkerCrashed,
    WorkerUnavailable,
)
from .executor import PoolExecutor
from .naming import list_workers
from .options import Options
from .pool import EzPool, Pool
from .results import Results, TaskOutcome
from .worker import BaseWorker

__version__ = "0.1.0"

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
    "WorkerUnavailable",
    "TaskTimeout",
    "ResultNotSerializable",
    "AuthenticationError",
    "SecurityError",
]
