"""What a broken call means for the chunk it carried: its worker lost, or only the connection.

A driver's call to its worker breaks when the connection is reset or hung up on,
when the watcher breaks off a silent worker (``watch``), or when another copy of
all the worker holds answered first (``Work.settle``). ``judge`` says what became
of the chunk: ``Returned`` at no cost when the same process still answers, when
it was broken off on purpose, or when none of it can have started; ``Lost`` when
the worker is gone or replaced, with a *mark* (``mark``).

A distant worker's mark cannot be read as it dies, but what the client knows is
enough to spare every task that never started. A worker runs a connection's
chunks one at a time and a chunk's tasks in order, so only the chunk at the head
of the connection can have started; and the watcher's latest check
(``Link.running``) said which of its tasks ran then, so those before it had
finished. The mark runs from that task (else the chunk's first) to the chunk's
end: one of them was running and the rest never started. The ledger sends them
again one per chunk, counting nothing, until a loss falls on one task alone
(``Ledger`` with ``marks_at_death=False``)::

    the chunk at the head:  [start ........ p ......................... stop)
                             finished: back   one of these ran; each runs again
                             at no cost       alone, counted only when alone
"""

from __future__ import annotations

import time
from typing import Optional

from ..._core.chunking import Chunk
from ..._core.ledger import Event, Lost, Returned
from ..._core.logs import get_logger
from ..._core.records import read_mark
from .connect import CONNECT_TIMEOUT, hello, unfit_for
from .links import Link, LinkEvent, State
from .work import Driver, Target, Work

logger = get_logger(__name__)

__all__ = ["judge", "mark"]


def judge(
    driver: Driver, link: Link, work: Work, target: Target, chunk: Chunk, exc: Exception,
    started: Optional[float],
) -> Event:
    """What became of ``chunk``, which ``driver`` sent over ``link``, when the call broke
    with ``exc``; the link is told what was learnt. ``started``: since when the chunk
    may have run (it was at the head of the connection), or ``None`` if it cannot have
    (it was never sent whole)."""
    if link.connection is not None:
        link.connection.close()
    if work.stop.is_set():
        link.on(LinkEvent.IDLE)
        return Returned("the call was stopped")
    silent = f"it left a check unanswered for {work.heartbeat} s"
    if link.on(LinkEvent.BROKEN, silent) is State.LOST:
        return _lost(link, target, chunk, silent, started)
    if work.superseded(driver, chunk):  # broken off on purpose: the worker is fine
        link.on(LinkEvent.IDLE)
        return Returned("another copy of the chunk answered first")
    try:
        info = hello(link, min(CONNECT_TIMEOUT, work.heartbeat))
    except Exception as error:
        reason = f"{exc} (and then: {error})"
        link.on(LinkEvent.UNREACHABLE, reason)
        logger.warning("lost worker %s (%s); its tasks go to the others", link.text, exc)
        return _lost(link, target, chunk, reason, started)
    if info["identity"] == link.identity:
        logger.info("connection to worker %s broke (%s); it still answers, so its chunk is resent",
                    link.text, exc)
        link.on(LinkEvent.IDLE)
        return Returned(str(exc))
    reason = f"its process was replaced while it held the chunk ({exc})"
    unfit = unfit_for(info, target.name, target.code)
    if unfit:
        logger.warning("lost worker %s: %s; the process there now gets no work: %s", link.text, reason, unfit)
        link.on(LinkEvent.UNFIT, unfit)
    else:
        logger.warning("lost worker %s: %s; a new process answers there, and gets work", link.text, reason)
        link.admit(info)
    return _lost(link, target, chunk, reason, started)


def _lost(link: Link, target: Target, chunk: Chunk, reason: str, started: Optional[float]) -> Event:
    what = f"worker {link.text} was lost ({reason})"
    if started is None:
        return Returned(f"it never started: {what}")
    return Lost(what, mark(link, target.shipment.fid, chunk, started), time.monotonic() - started)


def mark(link: Link, fid: str, chunk: Chunk, started: float) -> tuple[int, int]:
    """The ledger's mark for ``chunk`` (of the code ``fid``), at the head of ``link``'s
    connection since ``started`` when its worker was lost: ``(position, count)``, the
    tasks from the one the worker's latest check named, if that check was about this
    chunk, else from its first, to its end (see the module's text)."""
    position = chunk.start
    running = link.running
    if running is not None:
        code, first, marked, asked = running
        at, _ = read_mark(marked)
        if code == fid and first == chunk.start and asked >= started and chunk.start <= at < chunk.stop:
            position = at
    return position, chunk.stop - position
