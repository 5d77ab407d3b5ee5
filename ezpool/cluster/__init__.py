"""Start workers for a pool on a cluster: they dial in to the pool, so no port opens on them.

``Slurm`` submits batch jobs from a login node, ``SSH`` starts workers on hosts over
the system's ``ssh``; inside a SLURM allocation, ``workers="slurm"`` starts them with
``srun``. Pass either as ``workers=`` of a distributed ``Pool``.
"""

from __future__ import annotations

from .base import Cluster, Joining, worker_command
from .slurm import Slurm
from .ssh import SSH

__all__ = ["Cluster", "Joining", "Slurm", "SSH", "worker_command"]
