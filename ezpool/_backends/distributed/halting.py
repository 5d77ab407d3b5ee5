"""Stopping tasks that run on served workers: the only way is to restart the worker.

A served worker runs one chunk at a time, and a running task cannot be stopped but
by replacing its process. So a client that must stop tasks (``Stops``, or a caller
that left a call early) asks the worker, on the link's check connection, to stop
the chunk it runs (``Servant.stop``); the worker restarts itself, as after a
timeout, and never answers that chunk::

    Call (caller's thread)                   driver thread              ezpool.serve
    ──────────────────────                   ─────────────              ────────────
    stops.take() ─▶ positions held by a
      driver: driver.stop_tasks(positions) ── stop(identity, first) ──▶ restarts (no answer)
                                             the call breaks: the ledger's
                                             Stopped: those positions end
                                             cancelled, the rest go back at
                                             no cost; the worker rejoins
      positions not sent yet: work.cancelled ─▶ cancelled as they are taken (``Work``)
    the call ends with chunks out (``imap`` left early, ``stop_all``):
      break the calls off; after ``GRACE``, ask the workers still running them to
      stop; the next call waits for those to answer again (``await_restarts``)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from ..._core.ledger import Stopped
from ..._core.logs import get_logger
from .connect import hello
from .links import Link, LinkEvent, State

logger = get_logger(__name__)

__all__ = ["GRACE", "ask_stop", "await_restarts", "restarted", "stop_left"]

#: Seconds a worker whose client left gets to end its chunk by itself (it stops after
#: the running task or group) before it is asked to stop by restarting.
GRACE = 0.2

#: Seconds a call that ends waits for its workers to say they stop.
_ASK_WAIT = 2.0

#: Seconds the next call waits for a worker stopped by the last one to answer again.
_RESTART_WAIT = 10.0


def ask_stop(link: Link, firsts: Sequence[int], positions: Iterable[int] = (-1,)) -> bool:
    """Ask ``link``'s worker to stop the chunk it runs, if it starts at one of ``firsts``
    (and, for a position other than -1, that task has not finished); whether it will
    restart. Never raises."""
    pinger = link.pinger
    identity = link.identity
    if pinger is None or not identity:
        return False
    position = min(positions, default=-1)
    try:
        for first in firsts:
            if pinger.call("stop", identity, first, position if position >= first else -1):
                link.stopped = (time.monotonic(), identity)
                logger.info("worker %s restarts to stop tasks from %d", link.text, first)
                return True
    except Exception as exc:  # an older worker, or one gone already
        logger.debug("could not ask worker %s to stop: %s", link.text, exc)
    return False


def restarted(link: Link, asked: frozenset[int]) -> Stopped:
    """The worker of ``link`` restarted to stop tasks, as asked: what its chunks meet."""
    if link.connection is not None:
        link.connection.close()
    link.on(LinkEvent.RESTARTING, "it restarts to stop tasks, as asked")
    return Stopped(f"worker {link.text} restarted to stop them", asked)


def stop_left(held: list[tuple[Any, list[int]]], grace: float = GRACE) -> None:
    """The call ended with chunks out (``held``: each driver and the starts of the chunks
    its worker holds): after ``grace`` seconds, ask each worker still running one to stop."""
    held = [(driver, starts) for driver, starts in held if starts and getattr(driver, "link", None)]
    if not held:
        return
    time.sleep(grace)
    threads = [threading.Thread(target=ask_stop, args=(driver.link, starts), daemon=True,
                                name="ezpool-stop") for driver, starts in held]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + _ASK_WAIT  # a worker that does not answer is asked on, unawaited
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def await_restarts(links: Iterable[Link], timeout: Optional[float] = None) -> None:
    """Wait for the workers stopped by an earlier call (``Link.stopped``) to answer as
    new processes, at most ``timeout`` seconds each, and admit them: the call then
    finds them ready, not lost."""
    for link in links:
        stopped, link.stopped = link.stopped, None
        if stopped is None or link.address is None or link.left or link.address.protocol == "DIAL":
            continue
        asked, old = stopped
        if link.identity != old:  # seen again since, as a new process
            continue
        deadline = asked + (timeout or _RESTART_WAIT)
        while time.monotonic() < deadline:
            try:
                info = hello(link, max(0.5, min(2.0, deadline - time.monotonic())))
            except Exception:
                time.sleep(0.05)
                continue
            if info.get("identity") == old or info.get("restarting"):
                time.sleep(0.05)  # not restarted yet
                continue
            if link.state in (State.READY, State.LOST):
                link.admit(info)
            else:
                link.on(LinkEvent.UNREACHABLE, "it restarted")
            break
