"""A pool whose workers dial in: its listener, and the cluster that starts its workers.

Made at the first call that asks for it (``listen``, ``listen_file``, or ``workers``
given a ``Cluster`` or ``"slurm"``), and kept for the life of the pool: later calls
use the workers that have joined, and new ones join whenever they come. A call
waits for the first worker only when it has no other; while it waits, and while
tasks wait for a worker, the cluster is asked (``Cluster.check``) whether any
worker can still come, and a ``ClusterError`` from it reaches the caller.
"""

from __future__ import annotations

import os
import ssl
import time
import weakref
from typing import Any, Optional

from ..._core.logs import get_logger
from ...cluster.base import Cluster, Joining
from ...errors import ClusterError, WorkerUnavailable
from ...options import Options
from ...security import KEY_ENV, user_key_file
from .listener import DialLink, Listener

logger = get_logger(__name__)

__all__ = ["DialIn", "wants_dial_in", "cluster_of"]

#: Seconds between two looks at the cluster while a call waits for workers.
_LOOK_EVERY = 0.5
#: Seconds between two log lines of a call that waits for its first worker.
_SAY_EVERY = 30.0
#: Seconds a "may more workers come?" answer is kept (asking a cluster runs squeue).
_MORE_KEPT = 2.0


def wants_dial_in(options: Options) -> bool:
    """Whether a call with ``options`` uses workers that dial in."""
    return bool(options.listen or options.listen_file or cluster_of(options) is not None)


def cluster_of(options: Options) -> Optional[Cluster]:
    """The cluster ``workers`` names, if any (``"slurm"``: the allocation this runs in)."""
    workers = options.workers
    if isinstance(workers, Cluster):
        return workers
    if workers == "slurm":
        from ...cluster.slurm import Allocation

        return Allocation(procs_per_node=options.procs_per_node)
    return None


class DialIn:
    """The listener of a pool, and the cluster (if any) whose workers dial it."""

    def __init__(self, options: Options, key: Optional[bytes], tls: Optional[ssl.SSLContext]) -> None:
        self.cluster = cluster_of(options)
        self.wanted = (options.listen, options.listen_file, id(options.workers) if self.cluster else None)
        self.listener = Listener(options.listen or ":0", key, tls, _text(options.listen_file))
        self._more: tuple[float, bool] = (0.0, True)
        # A pool left open when the interpreter exits still cancels its jobs and stops its workers.
        self._finalizer = weakref.finalize(self, _close, self.listener, self.cluster)
        if self.cluster is not None:
            joining = Joining(
                self.listener.address, _text(options.listen_file), key, _key_file(options),
                insecure=key is None,
            )
            try:
                self.cluster.start(joining)
            except BaseException:
                self.close()
                raise

    def fits(self, options: Options) -> bool:
        """Whether a call with ``options`` can use this listener (a pool listens at one address)."""
        cluster = cluster_of(options) if isinstance(options.workers, Cluster) else None
        wanted = (options.listen, options.listen_file, id(options.workers) if cluster else None)
        return wanted == self.wanted or not (options.listen or options.listen_file or cluster)

    @property
    def expected(self) -> int:
        return self.cluster.expected if self.cluster is not None else 0

    def links(self, wait: bool) -> list[DialLink]:
        """The workers that have joined; with ``wait``, the first is waited for."""
        joined = self.listener.ready()
        began = said = time.monotonic()
        while wait and not joined:
            if self.listener.closed:
                raise WorkerUnavailable("the pool was shut down while its call waited for workers")
            self._check()
            joined = self.listener.wait(_LOOK_EVERY)
            now = time.monotonic()
            if not joined and now - said >= _SAY_EVERY:
                said = now
                logger.warning("no worker has joined the pool at %s in %.0f s%s", self.listener.address,
                               now - began, self._why_none())
        return joined

    def more(self) -> bool:
        """Whether more workers may join (a cluster still starting them); asked at most every
        ``_MORE_KEPT`` seconds."""
        if self.cluster is None:
            return False
        asked, answer = self._more
        now = time.monotonic()
        if now - asked < _MORE_KEPT:
            return answer
        try:
            self._check()
            answer = True
        except ClusterError as exc:
            logger.warning("%s", exc)
            answer = False
        self._more = (now, answer)
        return answer

    def close(self) -> None:
        self._finalizer()

    def _check(self) -> None:
        if self.cluster is not None:
            self.cluster.check()
        elif self.listener.refused and not self.listener.links:
            raise WorkerUnavailable(f"no worker could join the pool at {self.listener.address}: "
                                    f"{self.listener.refused[-1]}")

    def _why_none(self) -> str:
        if self.listener.listen_file:
            return f" (workers find it in {self.listener.listen_file})"
        return f": start workers with ezpool-serve --connect {self.listener.address}"


def _close(listener: Listener, cluster: Optional[Cluster]) -> None:
    try:
        listener.close()
    finally:
        if cluster is not None:
            cluster.stop()


def _text(path: Any) -> Optional[str]:
    return None if path is None else os.fspath(path)


def _key_file(options: Options) -> Optional[str]:
    """The file the pool's key came from, where workers can read it too (a shared home)."""
    if options.insecure or options.hmac_key is not None or os.environ.get(KEY_ENV):
        return None
    return str(user_key_file())
