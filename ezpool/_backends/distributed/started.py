"""The local workers a pool started itself: they hold a key of that pool's own, and die with it.

``stop`` kills each one and waits for it to exit, so that no later pool of this
process meets one still holding the address (and refusing its key), and none is
started again once the pool has stopped, not even by a call still running.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

from ... import security
from ..._core.logs import get_logger
from ...errors import WorkerUnavailable
from .connect import start_worker
from .links import Link

logger = get_logger(__name__)

__all__ = ["Started", "STOP_GRACE"]

#: Seconds a worker the pool started has to leave after SIGTERM, when the pool closes.
STOP_GRACE = 5.0


class Started:
    """The workers a pool started on this machine, by address; they die with the pool."""

    def __init__(self) -> None:
        self._lock = threading.Condition()  # drivers' threads start workers again
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._starting = 0  # workers being started now (stop waits for them)
        self._stopped = False

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The processes of the workers started and not stopped, by address (a copy)."""
        with self._lock:
            return dict(self._processes)

    def start(self, link: Link) -> dict[str, Any]:
        """Start a generic worker for ``link`` that only this pool can talk to (a key of
        its own); its hello. ``WorkerUnavailable`` once the pool has stopped."""
        with self._lock:
            if self._stopped:
                raise WorkerUnavailable(f"the pool was shut down: no worker is started for {link.text}")
            self._starting += 1
        try:
            link.key, link.tls = security.private_key(), None
            link.reconnect(link.heartbeat)
            process, info = start_worker(link)
            with self._lock:
                old = self._processes.get(link.text)
                stopped = self._stopped
                if not stopped:
                    self._processes[link.text] = process
            for gone in (old, process if stopped else None):
                if gone is not None:
                    _kill(gone)
        finally:
            with self._lock:
                self._starting -= 1
                self._lock.notify_all()
        if stopped:
            raise WorkerUnavailable(f"the pool was shut down while starting a worker for {link.text}")
        return info

    def restart(self, link: Link) -> bool:
        """Start again the worker started for ``link``, if its process has died; whether it did."""
        with self._lock:
            process = None if self._stopped else self._processes.get(link.text)
        if process is None or process.poll() is None:
            return False
        ended = link.process.ended() if link.process is not None else None  # out of memory, say
        logger.warning("the worker started for %s %s; starting it again", link.text,
                       ended or f"exited ({process.returncode})")
        try:
            info = self.start(link)
        except Exception as exc:
            logger.warning("could not start %s again: %s", link.text, exc)
            return False
        link.admit(info)
        return True

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every worker started (SIGTERM, or SIGKILL at once when ``grace`` is 0;
        SIGKILL after ``grace`` seconds) and wait for each to exit, and for those being
        started (which are then killed); none is started again."""
        with self._lock:
            self._stopped = True
            processes, self._processes = self._processes, {}
        for process in processes.values():
            if process.poll() is None and grace > 0:
                process.terminate()
            elif process.poll() is None:
                process.kill()
        deadline = time.monotonic() + grace
        for uri, process in processes.items():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(process)
            logger.debug("stopped the worker started for %s", uri)
        with self._lock:
            self._lock.wait_for(lambda: not self._starting)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` (if it still runs) and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait()
