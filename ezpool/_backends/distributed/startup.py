"""A worker's start-up in a call: connected, and holding the call's code, before its
first chunk goes out (``PushDriver._launch``)::

    PushDriver                                 ezpool.serve (Servant)
    ──────────                                 ──────────────────────
    prepare(driver, chunk):
      open the link's connection ────────────▶ (TCP, the key's proof both ways)
      a generic worker without the code:
        load(fid, blob) ─────────────────────▶ unpickles and keeps it
      → None: send the chunk; or what became of it (not sent, or failed whole)
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Optional

from ... import _pyro
from ..._core.chunking import Chunk
from ..._core.ledger import Answered, Event, Returned
from ..._core.logs import get_logger
from ..._core.records import Status
from ..._core.serialization import loads
from ..._worker.running import failed_chunk, pack_chunk
from ..._worker.servant import GENERIC
from .connect import CONNECT_TIMEOUT
from .links import LinkEvent

logger = get_logger(__name__)

__all__ = ["prepare"]


def prepare(driver: Any, chunk: Chunk) -> Optional[tuple[Event, bytes]]:
    """Make ``driver``'s worker ready to run the first of its chunks: connected, RUNNING,
    and holding the call's code. What became of ``chunk`` when it cannot go there now."""
    link, work, target = driver.link, driver.work, driver.target
    connection = link.connection
    assert connection is not None
    began = perf_counter()
    opened = connection.is_open
    try:
        link.open(min(CONNECT_TIMEOUT, work.heartbeat))
    except Exception as exc:  # nothing was sent (broken off while connecting: it did not answer)
        if work.stop.is_set():
            return Returned("the call was stopped"), b""
        link.on(LinkEvent.UNREACHABLE, f"cannot connect: {_pyro.translate(exc, link.text)}")
        return Returned(link.reason), b""
    link.on(LinkEvent.SENT)
    if work.superseded(driver, chunk):  # from now on, settling it breaks this connection off
        link.on(LinkEvent.IDLE)
        return Returned("another copy of the chunk answered first"), b""
    fid = target.shipment.fid
    if link.serves != GENERIC or fid in link.loaded:
        if not opened:
            work.started_up(driver, began, "connected")
        return None
    try:
        status, reply = connection.call("load", fid, target.shipment.blob)
    except Exception as exc:
        return driver._broken(chunk, exc), b""
    work.started_up(driver, began, "loaded the code" if opened else "connected and loaded the code")
    if Status(status) is not Status.OK:  # the code cannot run there: every task says why
        link.on(LinkEvent.IDLE)
        failed = failed_chunk(chunk.stop - chunk.start, loads(reply))
        return Answered(chunk.stop - chunk.start), pack_chunk(chunk.start, failed)
    link.loaded.add(fid)
    return None
