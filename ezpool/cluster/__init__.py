"""Start workers for a pool on a cluster: they dial in to the pool, so no port opens on them.

``Slurm`` submits batch jobs from a login node, ``SSH`` starts workers on hosts over
the system's ``ssh``; inside a SLURM allocation, ``workers="slurm"`` starts them with
``srun``. Pass either as ``workers=`` of a distributed ``Pool``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Cluster, Joining, worker_command

if TYPE_CHECKING:
    from .slurm import Slurm
    from .ssh import SSH

__all__ = ["Cluster", "Joining", "Slurm", "SSH", "worker_command"]

#: Imported on first use: ``ezpool.options`` needs only ``Cluster``, and a worker process
#: that imports it (through the options) loads nothing of SLURM's or ssh's.
_LAZY = {"Slurm": ".slurm", "SSH": ".ssh"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
