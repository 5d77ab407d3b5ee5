"""What every way of starting workers that dial in shares: ``Cluster`` and ``Joining``.

A pool that listens (``Pool(listen=..., listen_file=...)``, or ``workers=`` a
``Cluster``) gives its cluster a ``Joining``: what a worker needs to dial in, the
key excluded unless the cluster has a private channel for it (``key_on_stdin``).
The cluster starts processes running ``worker_command(...)`` wherever it puts
them; they dial the pool, prove the key, and get work. The pool calls ``check``
while it waits for the first worker and while calls run, and ``stop`` when it
closes (and on Ctrl-C)::

    pool                                 cluster (Slurm, SSH, the allocation)
    ────                                 ────────────────────────────────────
    listen on joining.address
    cluster.start(joining) ────────────▶ sbatch / srun / ssh: ezpool-serve --connect ADDRESS
    wait for the first worker;           the workers dial in, one connection each for
      cluster.check() every 0.5 s          chunks and checks
    calls run on whoever has joined
    cluster.stop() ────────────────────▶ scancel / SIGTERM: the workers leave
"""

from __future__ import annotations

import abc
import shlex
import sys
from collections.abc import Sequence
from typing import NamedTuple, Optional

from .._core.logs import get_logger
from .._worker.launch import BOOT

logger = get_logger(__name__)

__all__ = ["Cluster", "Joining", "worker_command"]


class Joining(NamedTuple):
    """What a worker needs to join a pool.

    Attributes:
        address: ``HOST:PORT`` the workers dial.
        listen_file: the file the pool wrote ``address`` into, if any (workers may be
            given it instead of the address: they read it again at every try).
        key: the pool's key (``None``: ``insecure``). Only a cluster with a private
            channel to its workers (standard input over ssh or srun) passes it on.
        key_file: the file the pool's key came from, where it came from a file, so that
            workers on a shared file system read the same file.
        insecure: workers run without a key (``--insecure``).
    """

    address: str
    listen_file: Optional[str] = None
    key: Optional[bytes] = None
    key_file: Optional[str] = None
    insecure: bool = False


class Cluster(abc.ABC):
    """Starts workers that dial in to one pool, watches that they could start, and stops them.

    A cluster serves one pool: ``start`` is called once, when the pool first listens.
    """

    @property
    @abc.abstractmethod
    def expected(self) -> int:
        """How many worker processes it has asked for (the pool waits for the first only)."""

    @abc.abstractmethod
    def start(self, joining: Joining) -> None:
        """Start the workers, returning at once (they join when they can). Arguments that
        cannot work (a misspelt partition, a host that is not known) raise ``ClusterError``
        here, before anything waits."""

    @abc.abstractmethod
    def check(self) -> None:
        """Look at what was started: log once each worker or job that failed, naming its
        host and what it said, and raise ``ClusterError`` when none is left that could
        still join. Cheap: called every half second while the pool waits."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every worker and job it started, and wait (boundedly) until they are gone.
        Safe to call twice, and from a signal's aftermath."""


def worker_command(
    joining: Joining,
    python: str = sys.executable,
    procs: int = 1,
    key_on_stdin: bool = False,
    serve_args: Sequence[str] = (),
    connect_to: Optional[str] = None,
) -> list[str]:
    """The command line of a worker that dials ``joining``'s pool (``connect_to``: another
    address for it, such as the near end of an ssh tunnel).

    It runs ``ezpool.serve`` without ``python -m`` (which would put the current
    directory first on the import path, see ``ezpool._worker.launch``). With
    ``key_on_stdin`` the worker reads the key from its first line of standard input,
    and leaves when standard input ends (the ssh or srun that started it has gone).
    """
    argv = [python, "-c", BOOT, "--connect", connect_to or joining.listen_file or joining.address]
    if procs != 1:
        argv += ["--procs", str(procs)]
    if joining.insecure:
        argv.append("--insecure")
    elif key_on_stdin:
        argv.append("--key-stdin")
    elif joining.key_file:
        argv += ["--hmac-key-file", joining.key_file]
    argv += list(serve_args)
    return argv


def shell_line(argv: Sequence[str]) -> str:
    """``argv`` as one line of ``sh``."""
    return " ".join(shlex.quote(part) for part in argv)
