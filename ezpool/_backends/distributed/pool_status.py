"""What a listening pool answers ``python -m ezpool.status --pool``: its workers' status.

The status client dials the pool's listening address as a worker does, and is
admitted exactly as one (``Listener._admit``): it proves the key first, the pool
proves it back, and only then does the pool ask it ``hello``. Its answer says it
``wants`` the ``status`` (and within how many seconds), so the pool makes no link
of it: it asks each worker that joined for its ``status`` over the connection its
checks travel on, and hands the rows to the client in one signed call
(``workers``), then hangs up::

    status client                        pool (listener, admitting thread)
    ─────────────                        ─────────────────────────────────
    dial, prove the key ───────────────▶ checked; the pool proves it back
    hello ◀──────────────────────────── {"wants": "status", "timeout": T}
                                         status ──▶ each worker (its pinger), T s at most
    workers(rows) ◀──────────────────── one row a worker; hang-up

A worker that does not answer within ``T`` seconds is a row with its name and
why; the others are listed anyway. Nothing travels but strings and numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ... import _pyro
from ..._core.logs import get_logger
from .links import Link

logger = get_logger(__name__)

__all__ = ["wants_status", "answer_status", "ASK_MOST"]

#: The most seconds a status client may ask the pool to wait for its workers.
ASK_MOST = 30.0
#: Workers asked at once.
_ASKING = 32


def wants_status(info: Any) -> bool:
    """Whether a ``hello`` answer is a status client's rather than a worker's."""
    return isinstance(info, dict) and info.get("wants") == "status"


def answer_status(connection: _pyro.Connection, links: Sequence[Link], info: dict[str, Any]) -> None:
    """Ask every worker in ``links`` for its status, hand the rows to the status client
    at the other end of ``connection`` (which said ``info`` at ``hello``), and hang up.

    Nothing here waits for a chunk: a link's chunk connection is busy while its chunk
    runs, but its checks' connection is not, and the worker answers there at once."""
    asked = info.get("timeout")
    timeout = min(ASK_MOST, max(0.1, float(asked))) if isinstance(asked, (int, float)) else 2.0
    try:
        rows = _gather([link for link in links if not link.left], timeout)
        connection.timeout = timeout + 5.0
        connection.call("workers", rows)
        logger.debug("told a status client about %d workers", len(rows))
    except Exception as exc:
        logger.debug("a status client went before the answer: %s", exc)
    finally:
        connection.close()


def _gather(links: Sequence[Link], timeout: float) -> list[dict[str, Any]]:
    """One row a link, asked at once (``_ASKING`` at a time), ``timeout`` seconds at most."""
    rows: list[dict[str, Any]] = [{"worker": link.text, "error": f"no answer in {timeout:g} s"}
                                  for link in links]
    done = threading.Condition()
    left = [len(links)]
    slots = threading.BoundedSemaphore(_ASKING)
    deadline = time.monotonic() + timeout

    def ask(index: int, link: Link) -> None:
        try:
            row = _ask(link, deadline)
            if row is not None:
                rows[index] = row
        finally:
            slots.release()
            with done:
                left[0] -= 1
                done.notify_all()

    for index, link in enumerate(links):
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
        threading.Thread(target=ask, args=(index, link), daemon=True, name="ezpool-status").start()
    with done:
        done.wait_for(lambda: left[0] <= 0, max(0.0, deadline - time.monotonic()))
    return [dict(row) for row in rows]


def _ask(link: Link, deadline: float) -> Any:
    """``link``'s status row; ``None`` if it came too late; a row saying why if it failed."""
    pinger = link.pinger
    if pinger is None:
        return {"worker": link.text, "error": "it has left the pool"}
    try:
        answer = pinger.call("status")
    except Exception as exc:
        logger.debug("worker %s did not give its status: %s", link.text, exc)
        return {"worker": link.text, "error": f"no status: {exc}"}
    if time.monotonic() > deadline:
        return None
    if not isinstance(answer, dict):
        return {"worker": link.text, "error": "no status: it is an EzPool older than this pool"}
    row = {str(k): v for k, v in answer.items() if v is None or isinstance(v, (str, int, float, bool))}
    return {**row, "worker": link.text, "link": link.state.value}
