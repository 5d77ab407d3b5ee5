"""One thread that watches every busy worker of a pool: heartbeats without a thread each.

A stopped process or a cut network leaves a call waiting forever without any
error. While a worker runs a chunk, the watcher checks it every ``heartbeat / 4``
seconds over a second connection (``ping``); a worker with no answered check for
``heartbeat`` seconds is SILENT and its call is broken off, so that its chunk
goes to others. The checks themselves run on a small thread pool, so one silent
worker never delays the checks of the others.

If this process itself was paused (Ctrl-Z, a suspended laptop), nobody is
judged on the time it lost: every worker gets a fresh window.

A check's answer also says which task the worker runs (``Servant.ping``): the
link keeps it (``Link.running``), so that if the worker is lost later, the tasks
of its chunk that had finished go back at no cost (``breaks.mark``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from ..._core.logs import get_logger
from .links import Link, LinkEvent, State

logger = get_logger(__name__)

__all__ = ["Watcher"]

#: Checks in flight at once, whatever the number of workers.
_CHECKERS = 16


class Watcher:
    """Watches the RUNNING links that ``links()`` returns, until ``stop``."""

    def __init__(self, links: Callable[[], Iterable[Link]]) -> None:
        self._links = links
        self._stopped = threading.Event()
        self._checks = ThreadPoolExecutor(max_workers=_CHECKERS, thread_name_prefix="ezpool-check")
        self._thread = threading.Thread(target=self._run, daemon=True, name="ezpool-watcher")
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._checks.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            running = [link for link in self._links() if link.state is State.RUNNING]
            tick = min((link.heartbeat / 8 for link in running), default=0.5)
            if self._stopped.wait(max(0.02, min(tick, 0.5))):
                return
            now = time.monotonic()
            paused = now - last > max(4 * tick, 1.0)
            last = now
            for link in running:
                try:
                    self._look(link, now, paused)
                except Exception:  # never let one link stop the watching of all
                    logger.exception("checking worker %s failed", link.text)

    def _look(self, link: Link, now: float, paused: bool) -> None:
        if link.state is not State.RUNNING:
            return
        if paused:
            link.alive_at = max(link.alive_at, now)
        pending = link.pinging
        if pending is not None and pending.done():
            link.pinging = None
            sent, answered, running = pending.result()
            if answered:
                link.alive_at = max(link.alive_at, sent)
            if running is not None:
                link.running = (*running, sent)
        if now - link.alive_at >= link.heartbeat:
            if link.on(LinkEvent.SILENT) is State.SILENT:
                if link.connection is not None:
                    link.connection.abort()  # its driver finds the call broken off
                logger.warning(
                    "worker %s left a check unanswered for %s s; its chunk goes to the others",
                    link.text, link.heartbeat,
                )
            return
        if link.pinging is None and now - link.alive_at >= link.heartbeat / 4:
            link.pinging = self._checks.submit(_check, link, now)


def _check(link: Link, sent: float) -> tuple[float, bool, Optional[tuple[str, int, int]]]:
    """Ask the worker for proof of life; ``(when asked, whether it answered as itself,
    what it runs: (fid, first, mark), or None)``."""
    pinger = link.pinger
    try:
        assert pinger is not None
        identity, busy = pinger.call("ping")
    except Exception as exc:
        logger.debug("check of %s failed: %s", link.text, exc)
        return sent, False, None
    if identity != link.identity:
        return sent, False, None
    running = None
    if isinstance(busy, (tuple, list)) and len(busy) == 3:  # (an older worker says only True)
        fid, first, mark = busy
        if isinstance(fid, str) and type(first) is int and type(mark) is int:
            running = (fid, first, mark)
    return sent, True, running
